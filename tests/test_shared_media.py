"""Every real file in ../shared/media through the whole pipeline: no crash, every file accounted for, and every
file PyAV can decode (per SOURCES.md) probed without error. Skipped when the folder is absent."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from tests.conftest import SHARED_MEDIA, run_pipeline

pytestmark = pytest.mark.skipif(not SHARED_MEDIA.is_dir(), reason="../shared/media is absent")


def pyav_decodable() -> list[str]:
    """Files whose PyAV column in SOURCES.md's table starts with 'ok'."""
    rows = re.findall(r"^\| `([^`]+)` \| [^|]* \| ([^|]*) \|$", (SHARED_MEDIA / "SOURCES.md").read_text(), re.M)
    return [str(SHARED_MEDIA / path) for path, pyav in rows if pyav.strip().startswith("ok")]


@pytest.fixture(scope="module")
def media_run(tmp_path_factory, ray_local) -> Path:
    run_dir = tmp_path_factory.mktemp("media") / "run"
    args = ["--input", str(SHARED_MEDIA), "--output", str(run_dir), "--set", "ingest.extensions=[]"]
    assert run_pipeline("--stage=all", *args) == 0
    return run_dir


def query(run_dir: Path, sql: str) -> list[tuple]:
    for name in ("videos", "clips", "rejected"):
        duckdb.sql(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{run_dir}/{name}/*.parquet')")
    return duckdb.sql(sql).fetchall()


def test_every_file_is_accounted_for(media_run):
    files = {str(p) for p in SHARED_MEDIA.rglob("*") if p.is_file()}
    assert {r[0] for r in query(media_run, "SELECT source_uri FROM videos")} == files
    unaccounted = query(
        media_run,
        """
        SELECT source_uri FROM videos
        WHERE source_uri NOT IN (SELECT source_uri FROM clips) AND source_uri NOT IN (SELECT source_uri FROM rejected)
    """,
    )
    assert unaccounted == []
    failed_without_reason = query(
        media_run,
        """
        SELECT source_uri FROM videos WHERE error IS NOT NULL
        AND source_uri NOT IN (SELECT source_uri FROM rejected WHERE stage = 'ingest')
    """,
    )
    assert failed_without_reason == []


def test_every_pyav_decodable_file_probes_without_error(media_run):
    expected = pyav_decodable()
    assert len(expected) > 40
    errors = dict(query(media_run, "SELECT source_uri, error FROM videos"))
    assert {f: errors[f] for f in expected if errors[f] is not None} == {}


def test_real_videos_give_clips_and_known_bad_files_give_reasons(media_run):
    assert query(media_run, "SELECT count(*) FROM clips")[0][0] > 50
    reasons = dict(query(media_run, "SELECT source_uri, reason FROM rejected WHERE stage = 'ingest'"))
    assert reasons[str(SHARED_MEDIA / "edge_cases/paul_romeo_opencv_mirror/Megamind.avi.actually_html")]
    assert query(media_run, "SELECT count(*) FROM rejected WHERE reason = 'worker_crashed'")[0][0] == 0
