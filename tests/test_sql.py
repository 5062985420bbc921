"""Every file in sql/ runs against a real run; the query command is read-only and binds parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.duck import SQL_DIR, QueryError, connect, load_named, named_queries, run_query
from curation.query import main as query_main

PARAMS = {
    "clips_longer_than": {"min_seconds": 2.0},
    "select_training_set": {
        "min_scores": '{"sharpness": 1.0}',
        "max_scores": "{}",
        "apply_dedup": True,
        "event_top_fraction": 0.5,
        "drop_diffuse": False,
    },
}


@pytest.mark.parametrize("name", named_queries())
def test_every_named_query_runs(smoke_run, name):
    table = run_query(connect(smoke_run), load_named(name), PARAMS.get(name))
    assert table.num_columns > 0


def test_every_sql_file_is_exercised():
    assert {p.stem for p in SQL_DIR.glob("*.sql")} == {"views", *named_queries()}


def test_views_agree_with_the_tables(smoke_run):
    con = connect(smoke_run)
    n_clips = con.sql("SELECT count(*) FROM clips").fetchall()[0][0]
    assert n_clips == con.sql("SELECT count(*) FROM shards").fetchall()[0][0] > 0
    # Every clip's (shard, shard_row) locator points at its own row in the shards.
    mismatched = con.sql("""
        SELECT count(*) FROM clips c JOIN shards s ON c.run = s.run AND c.shard = s.shard AND c.shard_row = s.shard_row
        WHERE c.clip_id <> s.clip_id
    """).fetchall()[0][0]
    assert mismatched == 0
    per_source = run_query(con, load_named("clips_per_source")).to_pylist()
    assert sum(r["clips"] for r in per_source) == n_clips
    assert con.sql("SELECT count(*) FROM videos").fetchall()[0][0] == len(per_source)


def test_parameters_are_bound_not_formatted(smoke_run):
    con = connect(smoke_run)
    sql = load_named("clips_longer_than")
    long = run_query(con, sql, {"min_seconds": 2.5}).num_rows
    everything = run_query(con, sql, {"min_seconds": 0}).num_rows
    assert 0 < long < everything
    with pytest.raises(QueryError):
        run_query(con, sql, {"min_seconds": "0; DROP VIEW clips"})
    assert run_query(con, "SELECT count(*) AS n FROM clips").to_pylist()[0]["n"] == everything


@pytest.mark.parametrize(
    "sql",
    [
        "COPY clips TO '/tmp/x.csv'",
        "CREATE TABLE t AS SELECT 1",
        "DROP VIEW clips",
        "ATTACH '/tmp/x.db'",
        "SELECT 1; SELECT 2",
    ],
)
def test_writes_are_refused(smoke_run, sql):
    with pytest.raises(QueryError):
        run_query(connect(smoke_run), sql)


def test_query_command_outputs(smoke_run, tmp_path, capsys):
    assert query_main([str(smoke_run), "--name", "rejected_by_reason"]) == 0
    assert query_main([str(smoke_run), "SELECT clip_id FROM clips ORDER BY clip_id", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "stage" in out and "clip_id" in out
    target = tmp_path / "clips.parquet"
    assert (
        query_main(
            [
                str(smoke_run),
                "--name",
                "clips_longer_than",
                "--param",
                "min_seconds=1",
                "--format",
                "parquet",
                "--out",
                str(target),
            ]
        )
        == 0
    )
    assert target.stat().st_size > 0
    assert query_main([str(smoke_run), "--name", "nope"]) == 2
    assert query_main([str(smoke_run), "DELETE FROM clips"]) == 2
    assert query_main([str(Path("/nonexistent"))]) == 2


def test_the_shards_view_leaves_out_every_tensor_and_ranks_events(smoke_run):
    from curation.schema import SHARD_TENSORS

    con = connect(smoke_run)
    columns = {row[0] for row in con.sql("DESCRIBE shards").fetchall()}
    assert not columns & set(SHARD_TENSORS) and {f"{t}_shape" for t in ("frames", "event_activity")} <= columns
    scores = [row["event_score"] for row in run_query(con, load_named("event_clips")).to_pylist()]
    assert (
        scores == sorted(scores, reverse=True) and len(scores) == con.sql("SELECT count(*) FROM clips").fetchall()[0][0]
    )


def test_duplicates_and_quality_summary_queries(smoke_run):
    con = connect(smoke_run)
    pairs = run_query(con, load_named("duplicates")).to_pylist()
    dropped = con.sql("SELECT count(*) FROM rejected WHERE stage = 'dedup'").fetchall()[0][0]
    assert len(pairs) == dropped > 0  # every dropped clip finds its kept clip among the curated ones
    assert all(p["kept_clip_id"] != p["dropped_clip_id"] and "bits" in p["evidence"] for p in pairs)
    summary = run_query(con, load_named("quality_summary")).to_pylist()
    assert sum(r["clips"] for r in summary) == con.sql("SELECT count(*) FROM clips").fetchall()[0][0]
    sharpness = [r["sharpness"] for r in summary]
    assert sharpness == sorted(sharpness) and all(r["captioned"] == 0 for r in summary)  # no captioner here


def test_score_histograms_cover_every_filterable_score(smoke_run):
    from curation.filters import FILTERABLE

    sql = load_named("score_histograms")
    con = connect(smoke_run)
    # The SQL follows the schema's score columns through the `score_columns` variable.
    assert con.sql("SELECT getvariable('score_columns')").fetchall()[0][0] == list(FILTERABLE)
    rows = run_query(con, sql).to_pylist()
    per_score = {}
    for r in rows:
        per_score[r["score"]] = per_score.get(r["score"], 0) + r["clips"]
        assert 0 <= r["bin"] < 20 and r["bin_start"] <= r["bin_end"]
    n = con.sql("SELECT count(sharpness), count(event_score) FROM clips").fetchall()[0]
    assert per_score["sharpness"] == n[0] and per_score["event_score"] == n[1] > 0
    assert "aesthetic_score" not in per_score  # not computed without weights: no made-up bins


def test_clips_per_source_accounts_for_every_drop(smoke_run):
    con = connect(smoke_run)
    rows = {r["source_uri"]: r for r in run_query(con, load_named("clips_per_source")).to_pylist()}
    in_videos = con.sql("SELECT count(*) FROM rejected WHERE source_uri IN (SELECT source_uri FROM videos)")
    assert sum(r["rejected"] for r in rows.values()) == in_videos.fetchall()[0][0]
    copy = next(r for uri, r in rows.items() if uri.endswith("cuts_cropped.avi"))
    assert copy["clips"] == 0 and copy["yield"] == 0 and copy["dropped"].startswith("dedup/duplicate: ")
    assert all(0 <= r["yield"] <= 1.0001 for r in rows.values() if r["yield"] is not None)


@pytest.fixture
def second_run(smoke_run, tmp_path):
    """A copy of the smoke run under another directory: the same clips, a different `run`."""
    import shutil

    copy = tmp_path / "second"
    shutil.copytree(smoke_run, copy, ignore=shutil.ignore_patterns("_work"))
    return copy


def test_views_over_several_runs(smoke_run, second_run, capsys):
    one, both = connect(smoke_run), connect([smoke_run, second_run])
    for view in ("videos", "scenes", "clips", "rejected", "shards"):
        n = one.sql(f"SELECT count(*) FROM {view}").fetchall()[0][0]
        per_run = both.sql(f"SELECT run, count(*) FROM {view} GROUP BY run ORDER BY run").fetchall()
        assert [c for _, c in per_run] == [n, n] and {r for r, _ in per_run} == {
            str(smoke_run.resolve()),
            str(second_run.resolve()),
        }, view
    # Joins stay inside a run: the same clip ids in two runs do not pair across them.
    assert len(run_query(both, load_named("duplicates"))) == 2 * len(run_query(one, load_named("duplicates")))
    per_source = run_query(both, load_named("clips_per_source")).to_pylist()
    assert sum(r["clips"] for r in per_source) == 2 * one.sql("SELECT count(*) FROM clips").fetchall()[0][0]
    sql = "SELECT run, count(*) AS n FROM clips GROUP BY run"
    assert query_main([str(smoke_run), "--run", str(second_run), sql, "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 3  # header + one line per run


def test_unreadable_runs_are_clear_errors(second_run, capsys):
    import json

    run_json = second_run / "_run.json"
    meta = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**meta, "schema_version": 1}))
    with pytest.raises(QueryError, match="schema version 1"):
        connect(second_run)
    assert query_main([str(second_run), "--name", "clips_per_source"]) == 2
    assert "schema version 1" in capsys.readouterr().err
    run_json.write_text(json.dumps(meta))
    for table in second_run.glob("clips/*.parquet"):
        table.unlink()
    with pytest.raises(QueryError, match="no clips table"):
        connect(second_run)
    with pytest.raises(QueryError, match="no run directory"):
        connect([])


def test_runs_view_has_one_row_per_run(smoke_run):
    import json

    run_json = json.loads((smoke_run / "_run.json").read_text())
    con = connect(smoke_run)
    (row,) = run_query(con, "SELECT run, run_id, status, schema_version, counts FROM runs").to_pylist()
    assert row["run"] == str(smoke_run.resolve()) and row["status"] == "complete"
    assert row["run_id"] == f"{run_json['config_hash']}-{run_json['inputs_hash']}"
    assert row["counts"]["clips"] == con.sql("SELECT count(*) FROM clips").fetchall()[0][0]


def test_event_vs_motion_covers_every_scored_shard_row(smoke_run):
    con = connect(smoke_run)
    rows = run_query(con, load_named("event_vs_motion")).to_pylist()
    scored = "SELECT count(*) FROM shard_rows WHERE event_score IS NOT NULL AND motion_mean IS NOT NULL"
    assert len(rows) == con.sql(scored).fetchall()[0][0] > 0
    curated = {r[0] for r in con.sql("SELECT clip_id FROM clips").fetchall()}
    assert all(r["kept"] == (r["clip_id"] in curated) for r in rows)
    assert all((r["dropped_by"] is None) == r["kept"] for r in rows)  # every dropped row says why
    # Object motion on a still camera has the most event score per unit of motion; a pure pan the least.
    ratio = {Path(r["source_uri"]).stem: r["ratio"] for r in rows if r["kept"] or r["dropped_by"] == "dedup/duplicate"}
    assert max(ratio, key=ratio.get) in ("objects", "objects_reencoded", "fast_object")
    assert ratio["pan_right"] < ratio["objects"] / 10
