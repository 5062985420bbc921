"""pipelines.collect: reading a run's records in several processes gives what one process gives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipelines.collect import PARALLEL_MIN_INPUTS, collect, collect_workers
from pipelines.collected import SPILL_PREFIX
from pipelines.config import ConfigError, RuntimeConfig
from pipelines.steps import WorkDir

# video ids by input: "a" again at 20 and 21 (segments after the one that holds it first), "w" twice in one segment
VIDEO_IDS = {20: "v0", 21: "v0", 11: "v10"}
NODES = ("node-a", "node-b", "node-c")


def make_run(run_dir: Path, n: int = 40) -> list[dict]:
    """A run's records over n inputs, with what collection treats specially: an ingest error (5), a video that
    never got its scenes (8), a clips worker that died (14, an attempt log and no record), the same video under
    three names across segments (0, 20, 21) and two in one (10, 11), retried steps, timings on several nodes."""
    work = WorkDir(run_dir)
    inputs = [{"source_uri": f"/v/{i:03d}.mp4", "key": f"k{i:03d}"} for i in range(n)]
    for i, row in enumerate(inputs):
        timing = {"start": float(i), "end": i + 0.5, "node": NODES[i % 3]}
        video = {"video_id": VIDEO_IDS.get(i, f"v{i}"), "source_uri": row["source_uri"], "fps": 24.0, "seconds": 2.0}
        if i == 5:
            video = {**video, "error": "bad", "reason": "unreadable", "detail": "moov atom not found"}
        work.save("ingest", row["key"], {**video, "timing": timing, "seconds": 0.01 * i})
        if i in (5, 8):
            continue
        spans = [{"scene_index": s, "start_frame": 24 * s, "end_frame": 24 * s + 24} for s in range(1 + i % 3)]
        rejected = [{"stage": "scenes", "reason": "too_short", "source_uri": row["source_uri"]}] if i % 4 == 0 else []
        work.save(
            "scenes",
            row["key"],
            {"scenes": spans, "rejected": rejected, "attempts": 1 + (i % 5 == 0), "timing": timing, "seconds": 0.1},
        )
        if i == 14:
            work.attempts_path("clips", row["key"]).write_text(json.dumps({"attempts": [{"node": "node0001"}]}))
            continue
        clips = [
            {"clip_id": f"c{i}-{s}", "video_id": video["video_id"], "start_s": s * 1.0, "end_s": s + 1.0, "shard": "x"}
            for s in range(len(spans))
        ]
        shard = {"name": f"{row['key']}.parquet", "rows": len(clips), "bytes": 100 + i, "video_id": video["video_id"]}
        shards = [shard]
        work.save(
            "clips",
            row["key"],
            {
                "clips": clips,
                "rejected": [],
                "shards": shards,
                "annotator_seconds": {"motion": 0.1 * i, "noise": 0.3},
                "timing": timing,
                "seconds": 1.0 + i,
            },
        )
    return inputs


def collected(run_dir: Path, inputs: list[dict], workers: int) -> dict:
    got = collect(run_dir, inputs, ("ingest", "scenes", "clips"), workers)
    try:
        return {
            "tables": [got.videos.read(), got.scenes.read(), got.clips.read()],
            "rows": [list(t) for t in (got.videos, got.scenes, got.clips)],
            "rejected": got.rejected,
            "shards": got.shards,
            "ready": {k: v for k, v in got.ready.items() if v},
            "timings": {k: list(v) for k, v in got.timings.items()},
            "faults": got.faults(),
            "counts": got.counts(),
            "seconds": dict(got.seconds),
            # the parent's spill folder holds the segments' files: the processes' own folders are gone
            "spills": sum(p.name.startswith(SPILL_PREFIX) for p in (run_dir / "_work").iterdir()),
        }
    finally:
        got.close()


def test_several_processes_collect_what_one_does(tmp_path: Path):
    inputs = make_run(tmp_path)
    one = collected(tmp_path, inputs, 1)
    three = collected(tmp_path, inputs, 3)  # 6 segments of 6-7 inputs: inputs 20 and 21 are in the fourth
    seconds_one, seconds_three = one.pop("seconds"), three.pop("seconds")
    # 79 scenes in all, less those of 5 (error), 8 (no scenes), 11, 20, 21 (duplicates); 14 lost its 3 clips
    assert [t.num_rows for t in one["tables"]] == [40, 79 - 13, 79 - 13 - 3]
    assert all(a.equals(b) for a, b in zip(one.pop("tables"), three.pop("tables"), strict=True))
    assert three == one and one["spills"] == 1
    # sums of the same floats in another order: equal to rounding
    assert seconds_three.keys() == seconds_one.keys()
    assert all(math.isclose(seconds_three[k], seconds_one[k], rel_tol=1e-12) for k in seconds_one)
    reasons = {(r["source_uri"], r["reason"]) for r in one["rejected"]}
    assert {("/v/020.mp4", "duplicate_video"), ("/v/021.mp4", "duplicate_video")} <= reasons
    assert ("/v/011.mp4", "duplicate_video") in reasons and ("/v/005.mp4", "unreadable") in reasons
    details = {r["source_uri"]: r["detail"] for r in one["rejected"] if r["reason"] == "duplicate_video"}
    assert details["/v/021.mp4"] == "same content as /v/000.mp4"  # the first in URI order, from another segment
    assert [r["key"] for r in one["ready"]["scenes"]] == ["k008"]
    assert one["faults"]["by_step"]["clips"]["lost"] == 1


def test_a_segment_sharing_no_video_with_earlier_ones_is_read_once(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    inputs = make_run(tmp_path)
    with caplog.at_level("INFO", logger="pipelines.collect"):
        collected(tmp_path, inputs, 3)
    again = [r.getMessage() for r in caplog.records if "reading it again" in r.getMessage()]
    assert again == ["collect: segment 3 shares 1 videos with earlier ones; reading it again"]


def test_the_number_of_processes(monkeypatch: pytest.MonkeyPatch):
    assert collect_workers(3, 10) == 3  # as configured, whatever the size
    assert collect_workers(0, PARALLEL_MIN_INPUTS - 1) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert collect_workers(0, PARALLEL_MIN_INPUTS) == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert collect_workers(0, PARALLEL_MIN_INPUTS) == 2
    with pytest.raises(ConfigError, match="collect_workers"):
        RuntimeConfig(collect_workers=-1)
