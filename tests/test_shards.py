import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.shards import ShardConfig, ShardWriter, encode_tensor, iter_clips, visit_tensors, write_manifest
from curation.tables import write_run_table


def make_row(i: int, frames: np.ndarray) -> dict:
    return {
        "clip_id": f"c{i:03d}",
        "video_id": "vid",
        "source_uri": "/x.mp4",
        "scene_index": 0,
        "start_frame": i * 10,
        "end_frame": i * 10 + 10,
        "start_s": i * 1.0,
        "end_s": i + 1.0,
        "fps": 10.0,
        "frame_indices": list(range(i * 10, i * 10 + 4)),
        "frame_pts": [0.0] * 4,
        **encode_tensor("frames", frames),
    }


def finish(run_dir, files, clip_ids) -> None:
    """What finalize writes: the manifest and the `clips` table (the curated set iter_clips reads)."""
    write_manifest(run_dir, files, "hash", {})
    write_run_table(run_dir, "clips", [{"clip_id": c} for c in clip_ids])


def test_writer_chunks_renames_and_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (4, 8, 12, 3), dtype=np.uint8) for _ in range(7)]
    writer = ShardWriter(tmp_path / "shards", "vid", ["frames"], ShardConfig(rows_per_shard=3, row_group_rows=2))
    locations = [writer.add(make_row(i, c)) for i, c in enumerate(clips)]
    assert not list((tmp_path / "shards").glob("*.parquet"))  # nothing visible before close
    files = writer.close()
    assert [f.name for f in files] == ["vid-0000.parquet", "vid-0001.parquet", "vid-0002.parquet"]
    assert [f.rows for f in files] == [3, 3, 1]
    assert locations[4] == ("vid-0001.parquet", 1)
    assert not list((tmp_path / "shards").glob(".*"))  # no temporary files left
    assert pq.ParquetFile(tmp_path / "shards" / "vid-0000.parquet").metadata.row_group(0).num_rows == 2
    finish(tmp_path, files, [f"c{i:03d}" for i in range(7)])
    got = list(iter_clips(tmp_path))
    assert [r["clip_id"] for r in got] == [f"c{i:03d}" for i in range(7)]
    for row, frames in zip(got, clips, strict=True):
        np.testing.assert_array_equal(row["frames"], frames)
        assert row["frame_indices"].dtype == np.int64 and row["frame_indices"].shape == (4,)
        assert "frames_dtype" not in row


def test_two_attempts_at_one_video_write_side_by_side(tmp_path):
    """A task Ray retried while its first attempt still runs (or a worker left over from a killed run) writes the
    same shard as the new attempt: neither may write into the other's file or lose its rename."""
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 255, (4, 8, 12, 3), dtype=np.uint8) for _ in range(3)]
    cfg = ShardConfig(rows_per_shard=8, row_group_rows=1)
    first = ShardWriter(tmp_path / "shards", "vid", ["frames"], cfg)
    second = ShardWriter(tmp_path / "shards", "vid", ["frames"], cfg)
    for i, c in enumerate(clips):  # interleaved, row group by row group
        first.add(make_row(i, c))
        second.add(make_row(i, c))
    assert len(list((tmp_path / "shards").glob(".*.tmp"))) == 2  # one temporary file each
    second_files = second.close()
    first_files = first.close()  # the old fixed temporary name: FileNotFoundError here, and a torn file
    assert [vars(f) for f in first_files] == [vars(f) for f in second_files]
    assert not list((tmp_path / "shards").glob(".*"))
    finish(tmp_path, first_files, ["c000", "c001", "c002"])
    for row, frames in zip(iter_clips(tmp_path), clips, strict=True):
        np.testing.assert_array_equal(row["frames"], frames)


def test_iter_clips_column_selection(tmp_path):
    writer = ShardWriter(tmp_path / "shards", "vid", ["frames"], ShardConfig())
    writer.add(make_row(0, np.zeros((4, 2, 2, 3), np.uint8)))
    finish(tmp_path, writer.close(), ["c000"])
    (row,) = iter_clips(tmp_path, columns=["clip_id"])
    assert set(row) == {"clip_id"}
    (row,) = iter_clips(tmp_path, columns=["clip_id", "frames"])
    assert row["frames"].shape == (4, 2, 2, 3)
    (row,) = iter_clips(tmp_path, columns=["frames"])  # clip_id is read to select rows, not returned
    assert set(row) == {"frames"}


def test_iter_clips_skips_rows_missing_from_clips_table(tmp_path):
    """A clip a global stage dropped after its shard row was written (filter, dedup) is not streamed."""
    writer = ShardWriter(tmp_path / "shards", "vid", ["frames"], ShardConfig())
    for i in range(3):
        writer.add(make_row(i, np.full((4, 2, 2, 3), i, np.uint8)))
    finish(tmp_path, writer.close(), ["c000", "c002"])
    assert [r["clip_id"] for r in iter_clips(tmp_path)] == ["c000", "c002"]
    assert [r["frames"][0, 0, 0, 0] for r in iter_clips(tmp_path, columns=["frames"])] == [0, 2]


def test_visit_tensors_decodes_a_written_shard(tmp_path):
    writer = ShardWriter(tmp_path / "shards", "vid", ["frames", "clip_embedding"], ShardConfig())
    emb = np.arange(4, dtype=np.float16)
    writer.add({**make_row(0, np.zeros((4, 2, 2, 3), np.uint8)), **encode_tensor("clip_embedding", emb)})
    writer.add(make_row(1, np.zeros((4, 2, 2, 3), np.uint8)))  # no embedding: null
    files = writer.close()
    got: dict[int, np.ndarray] = {}
    names, codes, rows = [f.name for f in files], np.zeros(2, np.int64), np.array([1, 0])
    assert visit_tensors(tmp_path, names, codes, rows, ["clip_embedding"], lambda i, t: got.update({i: t[0]})) == 1
    assert list(got) == [1] and got[1].dtype == np.float16  # position 1 asked for row 0
    np.testing.assert_array_equal(got[1], emb)
    assert visit_tensors(tmp_path, names, codes, rows, ["warped_noise"], lambda i, t: got.update({i: t[0]})) == 0


def test_aborted_writer_leaves_nothing(tmp_path):
    writer = ShardWriter(tmp_path / "shards", "vid", ["frames"], ShardConfig())
    writer.add(make_row(0, np.zeros((4, 2, 2, 3), np.uint8)))
    writer.abort()
    assert list((tmp_path / "shards").iterdir()) == []


def test_iter_clips_on_unfinished_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not finished"):
        list(iter_clips(tmp_path))


def test_files_get_the_umask_mode_not_mkstemps(tmp_path):
    """Shards, packs and records are renamed from temporary files: they must be readable as any file the run
    writes is (a team shares run directories), not mkstemp's owner-only 0600."""
    import importlib
    import os

    import curation.tables as tables

    old = os.umask(0o022)
    try:
        importlib.reload(tables)  # the mode is read from the umask once, at import
        path = tmp_path / "x.json"
        tables.atomic_write_json({"a": 1}, path)
        assert path.stat().st_mode & 0o777 == 0o644
        assert tables.temp_path(tmp_path / "y").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
        importlib.reload(tables)


def test_tensor_blocks_read_what_row_by_row_reads(tmp_path):
    """`visit_tensor_blocks` gives every held tensor exactly as `visit_tensors` does: equal-shaped raw tensors from
    the column buffer, and files with nulls, other shapes or another dtype row by row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.shards import encode_tensor, visit_tensor_blocks, visit_tensors

    rng = np.random.default_rng(0)
    (tmp_path / "shards").mkdir()

    def write(name: str, arrays: list[np.ndarray | None]) -> None:
        rows = [
            encode_tensor("emb", a) if a is not None else {"emb": None, "emb_dtype": None, "emb_shape": None}
            for a in arrays
        ]
        table = pa.Table.from_pylist(
            rows,
            schema=pa.schema([("emb", pa.binary()), ("emb_dtype", pa.string()), ("emb_shape", pa.list_(pa.int64()))]),
        )
        pq.write_table(table, tmp_path / "shards" / name, row_group_size=7)

    write("a.parquet", [rng.standard_normal(6).astype(np.float16) for _ in range(30)])  # the fast path
    write("b.parquet", [None if k % 4 == 0 else rng.standard_normal(6).astype(np.float16) for k in range(20)])
    write("c.parquet", [rng.standard_normal((2, 3) if k % 2 else 6).astype(np.float32) for k in range(9)])
    names = ["a.parquet", "b.parquet", "c.parquet"]
    codes = np.array([0] * 30 + [1] * 20 + [2] * 9)
    rows = np.concatenate([np.arange(30), np.arange(20), np.arange(9)])
    perm = rng.permutation(len(codes))  # clips in any order, as a run lists them
    codes, rows = codes[perm], rows[perm]

    want: dict[int, np.ndarray] = {}
    visit_tensors(tmp_path, names, codes, rows, ("emb",), lambda i, found: want.__setitem__(i, found[0]))
    got: dict[int, np.ndarray] = {}

    def put(ids: np.ndarray, values: np.ndarray) -> None:
        assert len(ids) == len(values)
        for i, v in zip(ids.tolist(), values, strict=True):
            assert i not in got
            got[i] = v

    assert visit_tensor_blocks(tmp_path, names, codes, rows, "emb", put, batch_rows=8) == len(want) == 30 + 15 + 9
    assert sorted(got) == sorted(want)
    for i, v in want.items():
        assert got[i].dtype == v.dtype and got[i].shape == v.shape and np.array_equal(got[i], v), i
