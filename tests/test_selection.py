"""The training selection in SQL picks exactly the pipeline's clips; snapshots freeze it with its lineage; bad input
to the query tools is a clear error (exit 2) that modifies nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from curation.duck import QueryError, connect
from curation.query import main as query_main
from curation.selection import check_params, select_training_set, selection_params
from curation.shards import iter_clips, read_manifest
from curation.snapshot import SnapshotError, create_snapshot, iter_snapshot, load_snapshot
from curation.snapshot import main as snapshot_main
from tests.conftest import run_pipeline


def _curated(run_dir: Path) -> set[str]:
    return {r[0] for r in connect(run_dir).sql("SELECT clip_id FROM clips").fetchall()}


def _quantile(run_dir: Path, column: str, q: float) -> float:
    return connect(run_dir).sql(f"SELECT quantile_cont({column}, {q}) FROM shard_rows").fetchall()[0][0]


@pytest.fixture(scope="module")
def retuned_run(smoke_run, corpus_dir, tmp_path_factory) -> Path:
    """The smoke run re-finalized with thresholds that make every global stage drop clips: score filters, dedup and
    the event filter (top half, diffuse clips out). Only the selection reruns; nothing is recomputed."""
    run_dir = tmp_path_factory.mktemp("retuned") / "run"
    shutil.copytree(smoke_run, run_dir)
    sharp = _quantile(run_dir, "sharpness", 0.25)
    motion = _quantile(run_dir, "motion_p90", 0.9)
    args = [
        f"--set=filters.min.sharpness={sharp}",
        f"--set=filters.max.motion_p90={motion}",
        "--set=events.top_fraction=0.5",
        "--set=events.drop_diffuse=true",
    ]
    assert run_pipeline("--stage=all", "--input", str(corpus_dir), "--output", str(run_dir), *args) == 0
    return run_dir


def test_sql_selection_equals_the_pipeline_selection(smoke_run, retuned_run):
    for run_dir in (smoke_run, retuned_run):
        table, params = select_training_set(run_dir)
        selected = table.column("clip_id").to_pylist()
        assert len(selected) == len(set(selected))
        assert set(selected) == _curated(run_dir)
        assert set(selected) == {c["clip_id"] for c in iter_clips(run_dir, columns=["clip_id"])}
    # The retuned run exercises every stage: each dropped clips that the SQL must drop too.
    curation = read_manifest(retuned_run)["curation"]
    assert curation["filters"]["excluded"] > 0 and curation["dedup"]["excluded"] > 0
    assert curation["events"]["excluded"] > 0 and curation["clips_after"] < curation["clips_before"]
    assert json.loads(params["min_scores"]) == {"sharpness": pytest.approx(_quantile(retuned_run, "sharpness", 0.25))}
    assert params["event_top_fraction"] == 0.5 and params["drop_diffuse"] is True and params["apply_dedup"] is True


def test_each_parameter_changes_the_selection_like_the_pipeline_would(retuned_run):
    base, _ = select_training_set(retuned_run)
    n = base.num_rows
    everything, _ = select_training_set(
        retuned_run,
        {
            "min_scores": "{}",
            "max_scores": "{}",
            "apply_dedup": False,
            "event_top_fraction": 1.0,
            "drop_diffuse": False,
        },
    )
    assert everything.num_rows == connect(retuned_run).sql("SELECT count(*) FROM shard_rows").fetchall()[0][0] > n
    # Without the (relative) event filter, a stricter threshold only removes clips, and only clips below it.
    no_events, _ = select_training_set(retuned_run, {"event_top_fraction": 1.0, "drop_diffuse": False})
    sharp = _quantile(retuned_run, "sharpness", 0.6)
    stricter, _ = select_training_set(
        retuned_run, {"min_scores": json.dumps({"sharpness": sharp}), "event_top_fraction": 1.0, "drop_diffuse": False}
    )
    assert set(stricter.column("clip_id").to_pylist()) < set(no_events.column("clip_id").to_pylist())
    assert all(s >= sharp for s in stricter.column("sharpness").to_pylist() if s is not None)
    assert n < no_events.num_rows
    # The event cutoff keeps ceil(fraction * pool) clips of the ranked pool (no ties in these scores).
    pool = [s for s in no_events.column("event_score").to_pylist() if s is not None]
    quarter, _ = select_training_set(retuned_run, {"event_top_fraction": 0.25, "drop_diffuse": False})
    kept_scores = [s for s in quarter.column("event_score").to_pylist() if s is not None]
    assert len(kept_scores) == max(1, int(np.ceil(0.25 * len(pool))))
    assert min(kept_scores) >= sorted(pool, reverse=True)[len(kept_scores) - 1]


def test_selection_over_two_runs_is_the_union_of_each(smoke_run, retuned_run):
    table, _ = select_training_set([smoke_run, retuned_run], {k: v for k, v in _params(smoke_run).items()})
    per_run: dict[str, set[str]] = {}
    for run, cid in zip(table.column("run").to_pylist(), table.column("clip_id").to_pylist(), strict=True):
        per_run.setdefault(run, set()).add(cid)
    assert per_run[str(smoke_run.resolve())] == _curated(smoke_run)
    with pytest.raises(QueryError, match="other settings"):  # curated differently: the caller must choose
        select_training_set([smoke_run, retuned_run])


def _params(run_dir: Path) -> dict:
    return selection_params(json.loads((run_dir / "_run.json").read_text())["config"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"min_scores": '{"nope": 1}'}, "unknown score column nope"),
        ({"max_scores": '{"sharpness": "high"}'}, "sharpness"),
        ({"min_scores": "[1, 2]"}, "JSON object"),
        ({"event_top_fraction": 0}, r"\(0, 1\]"),
        ({"apply_dedup": "maybe"}, "true or false"),
        ({"top_fraction": 0.5}, "unknown: top_fraction"),
    ],
)
def test_bad_selection_parameters_are_named(smoke_run, override, message):
    with pytest.raises(QueryError, match=message):
        select_training_set(smoke_run, override)


def test_check_params_normalises_cli_values():
    params = check_params(
        {"min_scores": {"b": 1, "a": 2}, "max_scores": "{}", "apply_dedup": "true", "event_top_fraction": "0.3"}
        | {"drop_diffuse": 0}
    )
    assert params == {
        "min_scores": '{"a": 2, "b": 1}',
        "max_scores": "{}",
        "apply_dedup": True,
        "event_top_fraction": 0.3,
        "drop_diffuse": False,
    }


def test_snapshot_records_lineage_and_streams_the_selection(retuned_run, tmp_path):
    snap = create_snapshot(retuned_run, tmp_path / "v1")
    record = load_snapshot(snap.path).record
    assert record["snapshot_id"] == snap.snapshot_id and record["clips"] == len(_curated(retuned_run)) > 0
    assert (
        "FROM shard_rows" in record["sql"]
        and record["sql_sha256"] == hashlib.sha256(record["sql"].encode()).hexdigest()
    )
    assert record["params"] == select_training_set(retuned_run)[1]
    (run,) = record["runs"]
    run_json = json.loads((retuned_run / "_run.json").read_text())
    assert run["run_id"] == f"{run_json['config_hash']}-{run_json['inputs_hash']}"
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in run["shards"])

    streamed = list(iter_snapshot(snap.path))
    by_id = {c["clip_id"]: c for c in iter_clips(retuned_run)}
    assert [c["clip_id"] for c in streamed] == snap_ids(snap.path) and set(by_id) == {c["clip_id"] for c in streamed}
    for clip in streamed:  # the same tensors as the run's own reader
        np.testing.assert_array_equal(clip["frames"], by_id[clip["clip_id"]]["frames"])
        np.testing.assert_array_equal(clip["warped_noise"], by_id[clip["clip_id"]]["warped_noise"])
    only = next(iter_snapshot(snap.path, columns=["frames"]))
    assert set(only) == {"frames"}
    # The snapshot carries each clip's bucket and stored shape, as the clips table has them.
    import pyarrow.parquet as pq

    placed = ["clip_id", "bucket", "crop_fraction", "frame_height", "frame_width"]
    got = {r["clip_id"]: r for r in pq.read_table(snap.path / "clips.parquet", columns=placed).to_pylist()}
    table = {r["clip_id"]: r for r in pq.read_table(retuned_run / "clips", columns=placed).to_pylist()}
    assert got and all(got[c] == table[c] and got[c]["bucket"] for c in got)

    # Same selection, same runs: same id. Another parameter: another id.
    assert create_snapshot(retuned_run, tmp_path / "again").snapshot_id == snap.snapshot_id
    other = create_snapshot(retuned_run, tmp_path / "v2", {"event_top_fraction": 1.0})
    assert other.snapshot_id != snap.snapshot_id and other.num_clips > snap.num_clips


def snap_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path / "clips.parquet", columns=["clip_id"]).column("clip_id").to_pylist()


def test_snapshot_refuses_changed_sources_and_follows_moved_runs(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    snap = create_snapshot(run_dir, tmp_path / "snap")
    run_id = snap.record["runs"][0]["run_id"]
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    with pytest.raises(SnapshotError, match="missing"):
        next(iter_snapshot(snap.path))
    assert len(list(iter_snapshot(snap.path, columns=["clip_id"], runs={run_id: moved}))) == snap.num_clips
    shard = moved / "shards" / snap.record["runs"][0]["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes() + b"x")
    with pytest.raises(SnapshotError, match="changed"):
        next(iter_snapshot(snap.path, runs={run_id: moved}))
    assert snapshot_main(["verify", str(snap.path)]) == 2


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_bad_input_to_the_query_tools_exits_2_and_modifies_nothing(smoke_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    old = tmp_path / "old"
    shutil.copytree(smoke_run, old)
    run_json = json.loads((old / "_run.json").read_text())
    (old / "_run.json").write_text(json.dumps({**run_json, "schema_version": 1}))
    no_clips = tmp_path / "no_clips"
    shutil.copytree(smoke_run, no_clips)
    shutil.rmtree(no_clips / "clips")
    before = {d: _tree_digest(d) for d in (run_dir, old, no_clips)}
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")

    cases = [
        (query_main, [str(old), "SELECT 1"], "schema version 1"),
        (query_main, [str(no_clips), "SELECT 1"], "no clips table"),
        (query_main, [str(run_dir), "--name", "no_such_query"], "unknown query"),
        (query_main, [str(run_dir), "--name", "clips_longer_than", "--param", "min_seconds=long"], "error"),
        (query_main, [str(run_dir), "--name", "clips_longer_than", "--param", "nonsense"], "key=value"),
        (query_main, [str(run_dir), "--name", "select_training_set", "--param", "event_top_fraction=7"], "(0, 1]"),
        (query_main, [str(run_dir), f"COPY clips TO '{run_dir}/clips/x.parquet'"], "read-only"),
        (query_main, [str(run_dir), "DROP VIEW clips"], "read-only"),
        (snapshot_main, ["create", str(run_dir), "--out", str(existing)], "already exists"),
        (snapshot_main, ["create", str(old), "--out", str(tmp_path / "s1")], "schema version"),
        (snapshot_main, ["create", str(run_dir), "--out", str(tmp_path / "s2"), "--param", "min_scores={"], "JSON"),
        (snapshot_main, ["verify", str(tmp_path)], "not a snapshot"),
    ]
    for main, argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert before == {d: _tree_digest(d) for d in (run_dir, old, no_clips)}
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
