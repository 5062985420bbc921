"""Packed shard files: the plan's properties, the copy's fidelity, idempotence, rebuilding from older packs, and a
kill -9 in the middle of packing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.packing import (
    MIN_FILL,
    Member,
    RowGroups,
    group_members,
    pack_shards,
    plan_packs,
    read_members,
    remove_unlisted,
)
from curation.shards import ShardConfig, ShardWriter, encode_tensor, read_rows
from curation.video_store import VideoCodec

MB = 2**20


def member_list(sizes: list[int], prefix: str = "v") -> list[Member]:
    return [Member(f"{prefix}{i:05d}-0000.parquet", 3, s) for i, s in enumerate(sizes)]


def test_groups_keep_order_cover_everything_and_respect_the_target():
    rng = np.random.default_rng(0)
    members = member_list([int(s) for s in rng.integers(1, 60, 400) * 1000])
    target = 500_000
    groups = group_members(members, target)
    assert [m for g in groups for m in g] == members  # every member once, in order
    for g in groups:
        size = sum(m.bytes for m in g)
        assert g and (size <= target or len(g) == 1)
    # Packs end early only past MIN_FILL of the target: most hold at least that much.
    full = [sum(m.bytes for m in g) for g in groups[:-1]]
    assert np.median(full) >= MIN_FILL * target * 0.9
    assert group_members(members, target) == groups  # a pure function


def test_packs_of_small_rows_stop_at_the_row_cap():
    """Rows with no video bytes would put a whole run in one pack (a footer of ~1 kB per row group and column that
    every reader holds): the row cap ends packs first, with the same content-defined boundaries."""
    rng = np.random.default_rng(2)
    members = [Member(f"v{i:05d}-0000.parquet", int(r), 40 * int(r)) for i, r in enumerate(rng.integers(1, 16, 20000))]
    groups = group_members(members, 512 * MB, max_rows=1000)
    assert [m for g in groups for m in g] == members
    rows = [sum(m.rows for m in g) for g in groups]
    assert max(rows) <= 1000 and len(groups) >= sum(rows) // 1000
    assert np.median(rows[:-1]) >= MIN_FILL * 1000 * 0.9  # filled by rows now, not by bytes
    assert group_members(members, 512 * MB) == [members]  # no cap: one pack, as before
    changed = inserted_changes(members, 512.0, 1000, trials=40)
    assert np.mean(changed) <= 2 and max(changed) <= 20, changed  # the first-candidate rule: 5.3 and up to 84
    with pytest.raises(ValueError):
        group_members(members, 100, max_rows=-1)
    big = group_members([Member("a", 5000, 10), Member("b", 3, 10)], 100_000, max_rows=1000)
    assert [len(g) for g in big] == [1, 1]  # a member past the cap alone


def test_a_member_larger_than_the_target_is_a_pack_of_its_own():
    members = member_list([10, 5000, 10])
    groups = group_members(members, 100)
    assert [len(g) for g in groups] == [1, 1, 1]


def inserted_changes(members: list[Member], target_mb: float, max_rows: int, trials: int) -> list[int]:
    """Packs of the plan that change when one video is inserted at a random place, per trial."""
    rng = np.random.default_rng(7)
    before = {name for name, _ in plan_packs(members, target_mb, max_rows).packs}
    changed = []
    for k in range(trials):
        at, rows = int(rng.integers(0, len(members))), int(rng.integers(1, 16))
        inserted = [*members[:at], Member(f"inserted{k}.parquet", rows, 40 * rows), *members[at:]]
        changed.append(sum(name not in before for name, _ in plan_packs(inserted, target_mb, max_rows).packs))
    return changed


def test_an_inserted_video_changes_the_packs_around_it_not_every_later_one():
    """Content-defined boundaries: a retried or added video must not shift every boundary after it. The pack ends
    at the highest hash of its window, which a small shift rarely moves, so the boundaries meet the old ones again
    within a pack or two (with the first candidate past MIN_FILL, two chains could stay apart for dozens)."""
    rng = np.random.default_rng(1)
    members = member_list([int(s) for s in rng.integers(5, 15, 3000) * 1000])
    assert len(plan_packs(members, 0.1).packs) > 300
    inserted = members[:200] + [Member("v00199-zzzz.parquet", 3, 12_000)] + members[200:]
    before = {name for name, _ in plan_packs(members, 0.1).packs}
    assert sum(name not in before for name, _ in plan_packs(inserted, 0.1).packs) <= 6
    changed = inserted_changes(members, 0.1, 0, trials=40)
    assert np.mean(changed) <= 2 and max(changed) <= 12, changed


def test_names_are_deterministic_and_name_the_members():
    members = member_list([100, 200, 300])
    a, b = plan_packs(members, 1.0), plan_packs(list(members), 1.0)
    assert a == b
    other = plan_packs([*members[:2], Member(members[2].name, 3, 301)], 1.0)
    assert a.packs[0][0] != other.packs[0][0]  # one byte more in one member: another name


def write_video(shard_dir: Path, video: str, n: int, rng: np.random.Generator, coded: bool = False):
    cfg = ShardConfig(rows_per_shard=4, row_group_rows=2)
    codec = VideoCodec() if coded else None
    writer = ShardWriter(shard_dir, video, ["frames"], cfg, uncompressed=["frames"] if coded else [])
    frames = []
    for i in range(n):
        clip = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
        if coded:
            clip[:] = clip[:1]  # smooth enough that the codec's round trip is near exact
        frames.append(clip)
        writer.add(
            {
                "clip_id": f"{video}-c{i}",
                "video_id": video,
                "source_uri": f"/{video}.mp4",
                "scene_index": 0,
                "start_frame": i,
                "end_frame": i + 1,
                "start_s": float(i),
                "end_s": i + 1.0,
                "fps": 8.0,
                "frame_indices": [i] * 5,
                "frame_pts": [0.0] * 5,
                **encode_tensor("frames", clip, video=codec),
            }
        )
    return writer.close(), frames


def staged_run(shard_dir: Path, videos: int = 6, coded: bool = False):
    rng = np.random.default_rng(2)
    members, truth = [], {}
    for v in range(videos):
        files, frames = write_video(shard_dir, f"vid{v}", 3 + v % 5, rng, coded)
        members += [Member(f.name, f.rows, f.bytes) for f in files]
        for i, clip in enumerate(frames):
            truth[f"vid{v}-c{i}"] = clip
    return members, truth


def locators(shard_dir: Path, members: list[Member]) -> list[tuple[str, int, str]]:
    """(member file, row, clip id) of every staged row."""
    out = []
    for m in members:
        ids = pq.read_table(shard_dir / m.name, columns=["clip_id"]).column("clip_id").to_pylist()
        out += [(m.name, r, cid) for r, cid in enumerate(ids)]
    return out


def test_packing_copies_every_row_where_the_locations_say(tmp_path):
    shard_dir = tmp_path / "shards"
    members, truth = staged_run(shard_dir)
    rows = locators(shard_dir, members)
    target = sum(m.bytes for m in members) / MB / 3  # about three packs
    packs, where = pack_shards(shard_dir, members, target)
    assert len(packs) >= 2 and sum(p.rows for p in packs) == len(truth)
    refs = [(where[name][0], where[name][1] + r) for name, r, _ in rows]
    got = read_rows(tmp_path, refs)
    assert [g["clip_id"] for g in got] == [cid for _, _, cid in rows]
    for g in got:
        np.testing.assert_array_equal(g["frames"], truth[g["clip_id"]])
    for p in packs:  # the footer names the members, in row order
        assert sum(r for _, r in read_members(shard_dir / p.name)) == p.rows
        assert pq.read_metadata(shard_dir / p.name).num_rows == p.rows
    assert not list(shard_dir.glob(".*"))


def test_packing_again_writes_nothing_and_cleanup_keeps_what_is_listed(tmp_path):
    shard_dir = tmp_path / "shards"
    members, _ = staged_run(shard_dir)
    packs, _ = pack_shards(shard_dir, members, 0.01)
    stamps = {p.name: (shard_dir / p.name).stat().st_mtime_ns for p in packs}
    again, _ = pack_shards(shard_dir, members, 0.01)
    assert again == packs
    assert stamps == {p.name: (shard_dir / p.name).stat().st_mtime_ns for p in packs}
    assert remove_unlisted(shard_dir, [p.name for p in packs]) == len(members)
    assert sorted(p.name for p in shard_dir.glob("*.parquet")) == sorted(stamps)
    # The per-video files are gone: the same plan still stands on the packs alone.
    assert pack_shards(shard_dir, members, 0.01)[0] == packs


def test_row_groups_fill_to_the_group_size_without_splitting_a_table(tmp_path):
    """Each group but the last holds at least group_bytes, and would not without its last table; rows keep their
    order."""
    rng = np.random.default_rng(5)
    tables = [pa.table({"x": np.arange(n, dtype=np.int64) + 1000 * i}) for i, n in enumerate(rng.integers(1, 40, 60))]
    path = tmp_path / "t.parquet"
    with pq.ParquetWriter(path, tables[0].schema) as writer:
        groups = RowGroups(writer, 1000 / 2**20)
        for t in tables:
            groups.write(t)
        groups.write(tables[0].slice(0, 0))  # nothing: no empty group
        groups.close()
    pf = pq.ParquetFile(path)
    assert pf.num_row_groups == groups.groups
    assert pf.read().column("x").to_pylist() == [v for t in tables for v in t.column("x").to_pylist()]
    sizes = iter([t.nbytes for t in tables])
    for g in range(pf.num_row_groups):
        rows, got = pf.metadata.row_group(g).num_rows, []
        while rows > 0:
            got.append(next(sizes))
            rows -= got[-1] // 8
        assert rows == 0
        if g < pf.num_row_groups - 1:
            assert sum(got) >= 1000 > sum(got[:-1])
    with pytest.raises(ValueError):
        RowGroups(writer, 0)


def test_packs_coalesce_members_into_few_row_groups(tmp_path):
    """Members of a few small rows each share row groups (footers stay small); with a small group size every group
    still holds whole source tables and at least that much data."""
    shard_dir = tmp_path / "shards"
    members, truth = staged_run(shard_dir, videos=12)
    row_bytes = 5 * 16 * 16 * 3
    packs, _ = pack_shards(shard_dir, members, 64.0)
    assert len(packs) == 1 and pq.read_metadata(shard_dir / packs[0].name).num_row_groups == 1
    small_dir = tmp_path / "small" / "shards"
    staged_run(small_dir, videos=12)
    packs, where = pack_shards(small_dir, members, 64.0, group_mb=5 * row_bytes / MB)
    meta = pq.read_metadata(small_dir / packs[0].name)
    rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert sum(rows) == len(truth) and len(rows) >= len(truth) // 7
    assert all(r >= 5 for r in rows[:-1]) and max(rows) <= 6  # source groups hold 2 rows: at most 5 + 1 buffered
    got = read_rows(tmp_path / "small", [(packs[0].name, r) for r in range(len(truth))])
    for g in got:
        np.testing.assert_array_equal(g["frames"], truth[g["clip_id"]])
    # packs of many row groups are sources too: a smaller target rebuilds packs from them, members straddling groups
    remove_unlisted(small_dir, [p.name for p in packs])
    target = sum(m.bytes for m in members) / MB / 4
    repacked, where = pack_shards(small_dir, members, target, group_mb=3 * row_bytes / MB)
    assert len(repacked) >= 3
    refs = [(where[m.name][0], where[m.name][1] + r) for m in members for r in range(m.rows)]
    got = read_rows(tmp_path / "small", refs)
    assert sorted(g["clip_id"] for g in got) == sorted(truth)
    for g in got:
        np.testing.assert_array_equal(g["frames"], truth[g["clip_id"]])


def test_a_new_plan_is_rebuilt_from_older_packs(tmp_path):
    """A rerun that adds a video after packing: the per-video files of the others are gone, their rows come from
    the packs of the previous plan."""
    shard_dir = tmp_path / "shards"
    members, truth = staged_run(shard_dir, videos=5)
    old, _ = pack_shards(shard_dir, members, 1.0)
    remove_unlisted(shard_dir, [p.name for p in old])
    files, frames = write_video(shard_dir, "vid2a", 2, np.random.default_rng(9))
    added = [Member(f.name, f.rows, f.bytes) for f in files]
    truth.update({f"vid2a-c{i}": c for i, c in enumerate(frames)})
    order = sorted(members + added, key=lambda m: m.name)
    packs, where = pack_shards(shard_dir, order, 1.0)
    assert [p.name for p in packs] != [p.name for p in old]
    remove_unlisted(shard_dir, [p.name for p in packs])
    refs = []
    for m in order:
        pack, offset = where[m.name]
        refs += [(pack, offset + r) for r in range(m.rows)]
    got = read_rows(tmp_path, refs)
    assert {g["clip_id"] for g in got} == set(truth)
    for g in got:
        np.testing.assert_array_equal(g["frames"], truth[g["clip_id"]])


def test_rows_in_no_file_are_an_error_naming_them(tmp_path):
    shard_dir = tmp_path / "shards"
    members, _ = staged_run(shard_dir, videos=2)
    (shard_dir / members[0].name).unlink()
    with pytest.raises(FileNotFoundError, match=members[0].name):
        pack_shards(shard_dir, members, 1.0)
    assert not list(shard_dir.glob("part-*"))


def test_coded_frames_stay_uncompressed_in_the_pack(tmp_path):
    shard_dir = tmp_path / "shards"
    members, truth = staged_run(shard_dir, videos=2, coded=True)
    packs, _ = pack_shards(shard_dir, members, 64.0)
    meta = pq.read_metadata(shard_dir / packs[0].name)
    group = meta.row_group(0)
    codecs = {group.column(i).path_in_schema: group.column(i).compression for i in range(group.num_columns)}
    assert codecs["frames"] == "UNCOMPRESSED" and codecs["clip_id"] == "ZSTD"


PACK_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import curation.packing as packing
    from curation.packing import Member

    write = packing.write_pack
    def slow(*args, **kwargs):
        out = write(*args, **kwargs)
        print("packed", flush=True)
        time.sleep(0.3)  # long enough to be killed between two packs, or inside the next one
        return out
    packing.write_pack = slow
    shard_dir = Path(sys.argv[1])
    members = [Member(n, int(r), int(b)) for n, r, b in (line.split() for line in open(sys.argv[2]))]
    packing.pack_shards(shard_dir, members, float(sys.argv[3]), workers=1)
    """
)


def test_kill_9_while_packing_then_packing_again_gives_the_same_files(tmp_path):
    shard_dir, clean_dir = tmp_path / "shards", tmp_path / "clean" / "shards"
    members, truth = staged_run(shard_dir, videos=8)
    staged_run(clean_dir, videos=8)
    target = sum(m.bytes for m in members) / MB / 5
    clean, _ = pack_shards(clean_dir, members, target)
    listing = tmp_path / "members.txt"
    listing.write_text("".join(f"{m.name} {m.rows} {m.bytes}\n" for m in members))
    script = tmp_path / "pack.py"
    script.write_text(PACK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(shard_dir), str(listing), str(target)],
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"packed"
    time.sleep(0.15)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = [p.name for p in shard_dir.glob("part-*.parquet")]
    assert 1 <= len(partial) < len(clean), "the kill came too late to interrupt packing"
    for name in partial:  # what is visible under a final name is complete
        assert pq.read_metadata(shard_dir / name).num_rows == next(p.rows for p in clean if p.name == name)
    packs, where = pack_shards(shard_dir, members, target)
    assert packs == clean
    remove_unlisted(shard_dir, [p.name for p in packs])
    assert sorted(p.name for p in shard_dir.glob("*.parquet")) == sorted(p.name for p in clean)
    for p in packs:
        assert pq.read_table(shard_dir / p.name).equals(pq.read_table(clean_dir / p.name))
    refs = [(where[m.name][0], where[m.name][1] + r) for m in members for r in range(m.rows)]
    assert {g["clip_id"] for g in read_rows(tmp_path, refs, columns=["clip_id"])} == set(truth)
