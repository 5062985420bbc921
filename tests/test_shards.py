import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.shards import ShardConfig, ShardWriter, encode_tensor, iter_clips, write_manifest


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
    write_manifest(tmp_path, files, "hash", {})
    got = list(iter_clips(tmp_path))
    assert [r["clip_id"] for r in got] == [f"c{i:03d}" for i in range(7)]
    for row, frames in zip(got, clips, strict=True):
        np.testing.assert_array_equal(row["frames"], frames)
        assert row["frame_indices"].dtype == np.int64 and row["frame_indices"].shape == (4,)
        assert "frames_dtype" not in row


def test_iter_clips_column_selection(tmp_path):
    writer = ShardWriter(tmp_path / "shards", "vid", ["frames"], ShardConfig())
    writer.add(make_row(0, np.zeros((4, 2, 2, 3), np.uint8)))
    write_manifest(tmp_path, writer.close(), "hash", {})
    (row,) = iter_clips(tmp_path, columns=["clip_id"])
    assert set(row) == {"clip_id"}
    (row,) = iter_clips(tmp_path, columns=["clip_id", "frames"])
    assert row["frames"].shape == (4, 2, 2, 3)


def test_aborted_writer_leaves_nothing(tmp_path):
    writer = ShardWriter(tmp_path / "shards", "vid", ["frames"], ShardConfig())
    writer.add(make_row(0, np.zeros((4, 2, 2, 3), np.uint8)))
    writer.abort()
    assert list((tmp_path / "shards").iterdir()) == []


def test_iter_clips_on_unfinished_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not finished"):
        list(iter_clips(tmp_path))
