"""Record compaction (`pipelines.records`): records read the same before and after, survive a kill at any point of
it exactly once, and later compactions only append. WorkDir level: no Ray, no videos."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from curation.tables import temp_path
from pipelines.compaction import compact_step
from pipelines.records import RECORDS_DIR, BatchWriter, RecordIndex, data_files, index_path, publish
from pipelines.steps import WorkDir


def record_of(i: int) -> dict:
    """A record with what real ones hold: nesting, floats, unicode, newlines in strings, nulls."""
    return {
        "video_id": f"v{i:05d}",
        "seconds": i / 7,
        "rejected": [{"reason": "no_shots", "detail": f"line one\nline two é {i}"}],
        "clips": [{"clip_id": f"c{i}", "motion_mean": 0.1 * i, "caption": None}],
        "attempts": 1,
    }


def key_of(i: int) -> str:
    return f"{i:016x}"


def save_all(work: WorkDir, step: str, ids: range) -> dict[str, dict]:
    records = {key_of(i): record_of(i) for i in ids}
    for key, record in records.items():
        assert work.save(step, key, record)
    return records


def step_dir(run: Path, step: str = "clips") -> Path:
    return run / "_work" / step


def records_dir(run: Path, step: str = "clips") -> Path:
    return step_dir(run, step) / RECORDS_DIR


def small_files(run: Path, step: str = "clips") -> list[str]:
    return sorted(p.stem for p in step_dir(run, step).glob("*.json"))


def lines_of(run: Path, step: str = "clips") -> list[str]:
    """Every key in the step's batch files, with repeats."""
    return [json.loads(line)["key"] for p in data_files(records_dir(run, step)) for line in p.read_bytes().splitlines()]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def assert_reads(work: WorkDir, step: str, records: dict[str, dict]) -> None:
    for key, record in records.items():
        assert work.done(step, key)
        assert work.load(step, key) == record
        assert work.find(step, key) == record  # done and load in one lookup (finalize's)
        assert not work.save(step, key, {"other": True})  # the record stands, in whichever form
    assert not work.done(step, "f" * 16)
    assert work.find(step, "f" * 16) is None
    with pytest.raises(FileNotFoundError):
        work.load(step, "f" * 16)


def test_done_load_save_are_the_same_before_and_after(tmp_path: Path):
    records = save_all(WorkDir(tmp_path), "clips", range(50))
    assert_reads(WorkDir(tmp_path), "clips", records)
    result = compact_step(step_dir(tmp_path), max_records=20)
    assert (result.records, result.files, result.removed) == (50, 3, 50)
    assert small_files(tmp_path) == [] and sorted(lines_of(tmp_path)) == sorted(records)
    assert_reads(WorkDir(tmp_path), "clips", records)
    # nothing was written by the refused saves, and the record's dict is the identical one, key order included
    assert small_files(tmp_path) == []
    key = key_of(3)
    assert list(WorkDir(tmp_path).load("clips", key)) == list(json.loads(json.dumps(record_of(3), sort_keys=True)))
    assert list(WorkDir(tmp_path).find("clips", key)) == list(WorkDir(tmp_path).load("clips", key))


def test_a_workdir_that_looked_before_the_compaction_still_reads_everything(tmp_path: Path):
    work = WorkDir(tmp_path)
    records = save_all(work, "ingest", range(10))
    assert work.load("ingest", key_of(0)) == records[key_of(0)]  # its (empty) index is built now
    compact_step(step_dir(tmp_path, "ingest"))
    assert_reads(work, "ingest", records)
    shipped = copy.deepcopy(work)  # through __reduce__, as Ray ships a step function: the path, not the index
    assert shipped._indexes == {} and shipped.compacted("ingest").find(key_of(1)) is not None


def test_a_killed_compaction_leaves_every_record_readable_once(tmp_path: Path):
    records = save_all(WorkDir(tmp_path), "scenes", range(30))
    compact_step(step_dir(tmp_path, "scenes"), max_records=10)
    folder = records_dir(tmp_path, "scenes")
    # Killed between publishing a batch and deleting its small files: both forms of keys 0-9 exist.
    first = data_files(folder)[0]
    for key in (json.loads(line)["key"] for line in first.read_bytes().splitlines()):
        WorkDir(tmp_path).root.joinpath("scenes", f"{key}.json").write_text(json.dumps(records[key], sort_keys=True))
    # Killed while writing a batch: a half-written temporary file, and an index published without its data file.
    half = temp_path(folder / "records.jsonl")
    half.write_bytes(b'{"key": "' + key_of(99).encode() + b'", "record": {"vid')
    orphan = folder / "records-00042.index.json"
    orphan.write_text(json.dumps({"keys": [key_of(98)], "offsets": [0], "size": 10}))
    # Killed between publishing a data file and its index file.
    index_path(data_files(folder)[-1]).unlink()

    fresh = WorkDir(tmp_path)
    assert_reads(fresh, "scenes", records)
    assert not fresh.done("scenes", key_of(99)) and not fresh.done("scenes", key_of(98))
    assert len(fresh.compacted("scenes")) == 30

    again = compact_step(step_dir(tmp_path, "scenes"))
    assert (again.records, again.files, again.removed) == (0, 0, 10)  # the copies are deleted, not consolidated again
    assert sorted(lines_of(tmp_path, "scenes")) == sorted(records)  # each record once
    assert not half.exists() and not orphan.exists()
    assert all(index_path(p).exists() for p in data_files(folder))
    assert_reads(WorkDir(tmp_path), "scenes", records)


def test_a_later_compaction_appends_and_leaves_earlier_files_untouched(tmp_path: Path):
    work = WorkDir(tmp_path)
    first = save_all(work, "clips", range(0, 40))
    compact_step(step_dir(tmp_path))
    before = snapshot(records_dir(tmp_path))
    assert len(data_files(records_dir(tmp_path))) == 1

    second = save_all(WorkDir(tmp_path), "clips", range(40, 55))
    result = compact_step(step_dir(tmp_path))
    assert (result.records, result.files) == (15, 1)
    files = data_files(records_dir(tmp_path))
    assert [p.name for p in files] == ["records-00000.jsonl", "records-00001.jsonl"]
    after = snapshot(records_dir(tmp_path))
    assert {name: after[name] for name in before} == before and len(after) == 4  # plus one data and one index file
    assert sorted(lines_of(tmp_path)[40:]) == sorted(second)  # the new file holds only the new records
    assert_reads(WorkDir(tmp_path), "clips", first | second)
    assert_reads(work, "clips", first | second)  # an instance from before both compactions sees the new file too
    assert compact_step(step_dir(tmp_path)).files == 0  # nothing new: no file


def test_publish_never_replaces_a_batch_file(tmp_path: Path):
    folder = tmp_path / RECORDS_DIR
    folder.mkdir()
    (folder / "records-00000.jsonl").write_bytes(b"old\n")
    tmp = temp_path(folder / "records.jsonl")
    tmp.write_bytes(b"new\n")
    assert publish(tmp, folder).name == "records-00001.jsonl"
    assert (folder / "records-00000.jsonl").read_bytes() == b"old\n" and not tmp.exists()


def test_attempt_logs_of_inputs_without_a_record_survive(tmp_path: Path):
    work = WorkDir(tmp_path)
    records = save_all(work, "clips", range(5))
    for i in (0, 1, 7, 8):  # 0, 1: died after saving; 7, 8: died before (finalize reports them as crashes)
        work.attempts_path("clips", key_of(i)).write_text(json.dumps({"attempts": [{"node": "n"}]}))
    (step_dir(tmp_path) / f"{key_of(9)}.inflight").write_text("{}")  # the clips step's own markers: not ours
    result = compact_step(step_dir(tmp_path))
    assert result.attempts_removed == 2
    left = sorted(p.name for p in step_dir(tmp_path).iterdir() if p.is_file())
    assert left == [f"{key_of(7)}.attempts", f"{key_of(8)}.attempts", f"{key_of(9)}.inflight"]
    # after the compaction too: a leftover log of a compacted input goes at the next one
    work.attempts_path("clips", key_of(2)).write_text("{}")
    assert compact_step(step_dir(tmp_path)).attempts_removed == 1
    assert_reads(WorkDir(tmp_path), "clips", records)


def test_an_unreadable_small_record_is_left_alone(tmp_path: Path):
    records = save_all(WorkDir(tmp_path), "ingest", range(3))
    (step_dir(tmp_path, "ingest") / "broken.json").write_text('{"video_id": ')
    compact_step(step_dir(tmp_path, "ingest"))
    assert small_files(tmp_path, "ingest") == ["broken"]
    assert WorkDir(tmp_path).done("ingest", "broken")  # as before: its existence is what done() reads
    assert_reads(WorkDir(tmp_path), "ingest", records)


def test_an_index_of_20000_keys_is_built_and_queried_quickly(tmp_path: Path):
    folder, n = step_dir(tmp_path), 20_000
    for first in range(0, n, 5_000):  # as 4 compactions of 5,000 records would leave them (small files are slow here)
        batch = BatchWriter(folder / RECORDS_DIR)
        for i in range(first, first + 5_000):
            batch.add(key_of(i), json.dumps({"key": key_of(i), "record": {"i": i}}).encode() + b"\n")
        batch.publish()
    t0 = time.perf_counter()
    index = RecordIndex(folder)
    assert len(index) == n
    build_s = time.perf_counter() - t0
    work = WorkDir(tmp_path)
    t0 = time.perf_counter()
    for i in range(n):
        assert work.done("clips", key_of(i)) and work.load("clips", key_of(i)) == {"i": i}
    lookup_s = time.perf_counter() - t0
    assert not work.done("clips", key_of(n))
    assert index._keys.nbytes + index._fid.nbytes + index._off.nbytes + index._len.nbytes == n * 32  # 32 B a key
    # generous bounds for a shared machine; measured about 0.03 s and 0.5 s
    assert build_s < 2 and lookup_s < 10, (build_s, lookup_s)


def test_a_compaction_without_records_does_nothing(tmp_path: Path):
    assert compact_step(step_dir(tmp_path)).files == 0  # no step folder
    step_dir(tmp_path).mkdir(parents=True)
    assert compact_step(step_dir(tmp_path)).files == 0
    assert not records_dir(tmp_path).exists()
    assert os.listdir(step_dir(tmp_path)) == []


def test_finalize_collects_the_same_run_from_compacted_records(tmp_path: Path):
    """`pipelines.collect` over compacted records: the same tables, and an input whose clips worker died (an attempt
    log, no record) is still reported as `worker_crashed`."""
    from pipelines.collect import collect

    work, inputs = WorkDir(tmp_path), [{"source_uri": f"/v/{i}.mp4", "key": key_of(i)} for i in range(4)]
    for i, row in enumerate(inputs):
        video = {"video_id": f"v{i}", "source_uri": row["source_uri"], "fps": 24.0, "seconds": 0.1}
        work.save("ingest", row["key"], {**video, "timing": {"start": 0, "end": 1, "node": "n"}})
        if i < 3:
            span = {"scene_index": 0, "start_frame": 0, "end_frame": 48}
            work.save("scenes", row["key"], {"scenes": [span], "spans": [span], "rejected": [], "attempts": 2})
        if i < 2:
            clip = {"clip_id": f"c{i}", "video_id": f"v{i}", "start_s": 0.0, "end_s": 2.0, "shard": "s"}
            work.save("clips", row["key"], {"clips": [clip], "rejected": [], "shards": []})
    work.attempts_path("clips", key_of(2)).write_text(json.dumps({"attempts": [{"node": "node0001"}] * 2}))

    def tables() -> tuple:
        got = collect(tmp_path, inputs, attempted=("ingest", "scenes", "clips"))
        tables = [list(t) for t in (got.videos, got.scenes, got.clips)]
        return *tables, got.rejected, dict(got.ready), got.faults(), {k: list(v) for k, v in got.timings.items()}

    before = tables()
    for step in ("ingest", "scenes", "clips"):
        compact_step(step_dir(tmp_path, step))
    assert [p.name for s in ("ingest", "scenes", "clips") for p in step_dir(tmp_path, s).glob("*.json")] == []
    assert tables() == before
    assert [(r["stage"], r["reason"]) for r in before[3]] == [("clips", "worker_crashed"), ("scenes", "worker_crashed")]
    assert "2 attempts on node node0001" in before[3][0]["detail"] and before[5]["by_step"]["clips"]["lost"] == 1


def test_records_are_written_in_input_order(tmp_path: Path):
    """With the run's input order (rank), a batch file holds its records in that order, the one finalize reads them
    in; keys without a rank go last, by name."""
    records = save_all(WorkDir(tmp_path), "clips", range(40))
    rank = {key_of(i): (38 - i) // 2 for i in range(0, 40, 2)}  # the even keys, reversed; the odd ones have none
    compact_step(step_dir(tmp_path), max_records=15, rank=rank)
    expected = [key_of(i) for i in range(38, -1, -2)] + sorted(key_of(i) for i in range(1, 40, 2))
    assert lines_of(tmp_path) == expected
    assert_reads(WorkDir(tmp_path), "clips", records)


def test_the_index_grows_file_by_file_as_a_full_sort_would_build_it(tmp_path: Path):
    """Keys of every length, files added a few at a time, a key in two files (as two concurrent compactions would
    leave it: the older copy wins): the same arrays as an index built from all files at once, and `contains` agrees
    with a set."""
    rng = np.random.default_rng(0)
    folder = step_dir(tmp_path)
    grown = RecordIndex(folder)
    everything: dict[str, int] = {}
    for file_no in range(12):
        keys = {"".join(rng.choice(list("0123456789abcdef"), int(rng.integers(1, 24)))) for _ in range(200)}
        if everything:
            keys |= set(rng.choice(sorted(everything), 5).tolist())  # already in an older file
        batch = BatchWriter(folder / RECORDS_DIR)
        for key in sorted(keys):
            batch.add(key, json.dumps({"key": key, "record": {"file": file_no}}).encode() + b"\n")
            everything.setdefault(key, file_no)
        batch.publish()
        if file_no % 3 == 2:
            grown.refresh(force=True)
    grown.refresh(force=True)
    full = RecordIndex(folder)
    assert len(full) == len(grown) == len(everything)
    for name in ("_keys", "_fid", "_off", "_len"):
        assert np.array_equal(getattr(grown, name), getattr(full, name)), name
    assert all(grown.read(k) == {"file": f} for k, f in everything.items())  # the oldest copy
    probe = [*rng.choice(sorted(everything), 50).tolist(), "", "zz", "0" * 40, "g" * 23]
    assert grown.contains(probe).tolist() == [k in everything for k in probe]
    grown.close()


def test_compacting_while_workers_commit_keeps_every_record_exactly_once(tmp_path: Path):
    """The driver compacts in the background (`Compactor`) while workers commit records, read other records and
    retry some: every record is readable the whole time, the first committed copy stands, and after the last
    compaction each record is in exactly one batch line and no small file is left."""
    import threading

    from pipelines.compaction import Compactor

    n, workers = 600, 3
    rank = {key_of(i): i for i in range(n)}
    compactor = Compactor(tmp_path, ["clips"], rank, every=25)
    errors: list[BaseException] = []
    committed: dict[str, dict] = {}

    def worker(w: int) -> None:
        work = WorkDir(tmp_path)  # each worker process has its own
        try:
            for i in range(w, n, workers):
                key = key_of(i)
                assert work.save("clips", key, record_of(i))
                committed[key] = record_of(i)
                assert not work.save("clips", key, {"retry": True})  # a second attempt never replaces it
                for j in range(max(0, i - 30), i, 7):  # records committed earlier, by any worker
                    if key_of(j) in committed:
                        assert work.load("clips", key_of(j)) == record_of(j)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        compactor.tick(5)
        time.sleep(0.002)
    for t in threads:
        t.join()
    compactor.wait()
    assert not errors, errors[0]
    assert sum(c.records for c in compactor.done) > n // 4, "the compactor hardly ran alongside the workers"
    compactor.compact()  # the run's last compaction
    lines = lines_of(tmp_path)
    assert sorted(lines) == sorted(rank) and small_files(tmp_path) == []
    assert_reads(WorkDir(tmp_path), "clips", {key_of(i): record_of(i) for i in range(n)})


def test_records_with_nan_and_huge_numbers_read_the_same_in_both_forms(tmp_path: Path):
    """Records are read with orjson, which refuses the NaN and Infinity that json writes: those records are read by
    json instead, identically, small or compacted."""
    work = WorkDir(tmp_path)
    odd = {"motion_mean": float("nan"), "p90": float("inf"), "low": -float("inf"), "big": 2**63 - 1, "s": "\ud800x"}
    assert work.save("clips", key_of(1), odd) and work.save("clips", key_of(2), record_of(2))

    def same(a: dict, b: dict) -> bool:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN != NaN: compare the text

    assert same(work.load("clips", key_of(1)), odd) and work.load("clips", key_of(2)) == record_of(2)
    compact_step(step_dir(tmp_path))
    fresh = WorkDir(tmp_path)
    assert same(fresh.load("clips", key_of(1)), odd) and fresh.load("clips", key_of(2)) == record_of(2)
