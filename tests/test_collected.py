"""Finalize's column-wise collection (pipelines.collected) and the column forms of the curation rules, against the
per-row rules they replace at scale."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotators.events import EventConfig
from curation.dedup import hash_arrays, parse_hashes
from curation.filters import FilterConfig, filter_columns, violation
from curation.schema import CLIPS, tensor_fields
from curation.shards import visit_tensors
from pipelines.collected import SPILL_PREFIX, Collected, TableSpill
from pipelines.finalize import remove_stale_temp_files, select_events, write_tables


def clip(i: int, **more) -> dict:
    return {
        "clip_id": f"c{i:03d}",
        "video_id": f"v{i // 4}",
        "source_uri": f"/in/{i // 4}.mp4",
        "start_frame": 10 * i,
        "end_frame": 10 * i + 8,
        "start_s": 0.0,
        "end_s": 1.0 + i,
        "shard": f"s{i // 4}.parquet",
        "shard_row": i % 4,
        **more,
    }


def test_table_spill_keeps_rows_in_order_across_batches(tmp_path: Path):
    spill = TableSpill(tmp_path / "t.parquet", CLIPS, batch_rows=3)
    rows = [clip(i, motion_mean=float(i)) for i in range(10)]
    spill.extend(rows)
    got = list(spill)
    assert len(spill) == 10 and [r["clip_id"] for r in got] == [r["clip_id"] for r in rows]
    assert [r["motion_mean"] for r in got] == [float(i) for i in range(10)] and got[0]["caption"] is None
    assert pq.ParquetFile(spill.path).num_row_groups == 4  # written 3 rows at a time, not held
    with pytest.raises(RuntimeError, match="after it was read"):
        spill.append(clip(11))
    empty = TableSpill(tmp_path / "e.parquet", CLIPS)
    assert empty.read(["clip_id", "shard_row"]).schema == pa.schema([CLIPS.field("clip_id"), CLIPS.field("shard_row")])
    assert list(empty) == [] and not (tmp_path / "e.parquet").exists()


def test_clip_table_drops_relocates_and_names_what_it_dropped(tmp_path: Path):
    data = Collected(tmp_path)
    data.clips.batch_rows = 4
    data.clips.extend(clip(i) for i in range(12))
    data.seal()
    data.clips.drop("filters", np.array([5, 1]), ["low_sharpness", "low_contrast"], ["d5", "d1"])
    data.clips.drop("dedup", data.clips.live()[[0]], "duplicate", ["of c002"])
    assert len(data.clips) == 9 and data.clips.live().tolist() == [2, 3, 4, 6, 7, 8, 9, 10, 11]
    data.clips.relocate({f"s{v}.parquet": ("pack-a.parquet" if v < 2 else "pack-b.parquet", 4 * v) for v in range(3)})
    kept = list(data.clips)
    assert [c["clip_id"] for c in kept] == [f"c{i:03d}" for i in (2, 3, 4, 6, 7, 8, 9, 10, 11)]
    assert [(c["shard"], c["shard_row"]) for c in kept][:4] == [
        ("pack-a.parquet", 2),
        ("pack-a.parquet", 3),
        ("pack-a.parquet", 4),
        ("pack-a.parquet", 6),
    ]
    assert kept[-1]["shard"] == "pack-b.parquet" and kept[-1]["shard_row"] == 11
    assert data.clips.columns(["shard_row"])["shard_row"].to_pylist() == [2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert data.clips.take(np.array([11, 0]), ["clip_id"])["clip_id"].to_pylist() == ["c011", "c000"]
    rejected = pa.concat_tables(list(data.clips.rejected())).to_pylist()
    assert [(r["stage"], r["clip_id"], r["reason"], r["detail"]) for r in rejected] == [
        ("filters", "c005", "low_sharpness", "d5"),
        ("filters", "c001", "low_contrast", "d1"),
        ("dedup", "c000", "duplicate", "of c002"),
    ]
    assert rejected[0]["start_frame"] == 50 and rejected[0]["source_uri"] == "/in/1.mp4"
    counts = data.counts()
    assert counts["clips"] == 9 and counts["rejected"] == 3
    assert counts["clip_seconds"] == sum(1.0 + i for i in (2, 3, 4, 6, 7, 8, 9, 10, 11))
    assert counts["rejected_by_reason"] == {"filters/low_sharpness": 1, "filters/low_contrast": 1, "dedup/duplicate": 1}
    write_tables(tmp_path, data, "h", with_manifest=False, extra={})
    assert pq.read_table(tmp_path / "clips").num_rows == 9 and pq.read_table(tmp_path / "rejected").num_rows == 3
    folder = data.folder
    data.close()
    assert not folder.exists()


def test_stale_collection_folders_are_removed_but_not_live_ones(tmp_path: Path):
    live = Collected(tmp_path)
    work = tmp_path / "_work"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [work / f"{SPILL_PREFIX}{gone.stdout.strip()}-abc", work / f"{SPILL_PREFIX}deadbeef"]  # a dead pid, none
    other = work / f"{SPILL_PREFIX}1-abc"  # pid 1 is alive: another process's finalize
    for folder in (*stale, other):
        folder.mkdir()
        (folder / "clips.parquet").write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == 2
    assert not any(f.exists() for f in stale) and other.exists() and live.folder.exists()
    folder = live.folder
    del live  # garbage: its folder goes with it
    assert not folder.exists()


def test_hash_arrays_match_parse_hashes():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(300):
        kind = rng.integers(0, 6)
        if kind == 0:
            rows.append(None)
        else:
            row = []
            for _ in range(rng.integers(0, 6)):
                pick = rng.integers(0, 8)
                value = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
                row.append(None if pick == 0 else "" if pick == 1 else f"{value:x}" if pick == 2 else f"{value:016x}")
            rows.append(row)
    array = pa.array(rows, pa.list_(pa.string()))
    for column in (array, array.slice(7), pa.chunked_array([array.slice(0, 100), array.slice(100)])):
        want_values, want_valid = parse_hashes(rows[len(rows) - len(column) :])
        for chunk in (1 << 18, 7, 1):  # one chunk, and many (a large run's hashes are decoded a chunk at a time)
            values, valid = hash_arrays(column, chunk=chunk)
            assert (values == want_values).all() and (valid == want_valid).all()


def test_filter_columns_match_violation_row_by_row():
    rng = np.random.default_rng(1)
    cfg = FilterConfig(min={"sharpness": 20.0, "width": 300}, max={"sharpness": 90.0, "clipped_dark": 0.5})
    n = 400
    columns = {
        "sharpness": rng.uniform(0, 120, n),
        "width": rng.integers(100, 900, n).astype(float),
        "clipped_dark": rng.uniform(0, 1, n),
    }
    columns["sharpness"][::7] = np.nan  # null: the rule does not apply
    idx, reasons, details = filter_columns(columns, cfg)
    want = []
    for i in range(n):
        row = {k: None if math.isnan(v[i]) else int(v[i]) if k == "width" else v[i] for k, v in columns.items()}
        if (broken := violation(row, cfg)) is not None:
            want.append((i, *broken))
    assert list(zip(idx.tolist(), reasons, details, strict=True)) == want and len(want) > 100


def test_select_events_over_columns(tmp_path: Path):
    data = Collected(tmp_path)
    scores = [0.9, 0.1, None, 0.5, 0.5, 0.3, 0.8, 0.2]
    diffuse = [False, False, False, True, False, False, False, False]
    data.clips.extend(
        clip(i, event_score=s, event_diffuse=d, event_entropy=0.9 if d else 0.2)
        for i, (s, d) in enumerate(zip(scores, diffuse, strict=True))
    )
    data.seal()
    rule = select_events(data, EventConfig(top_fraction=0.5, drop_diffuse=True))
    # scored and not diffuse: 0.9 0.1 0.5 0.3 0.8 0.2 -> the top half by score: 0.9 0.8 0.5; unscored clips stay
    assert rule["min_event_score"] == 0.5 and rule["excluded"] == 4 and rule["kept"] == 3
    assert [c["clip_id"] for c in data.clips] == ["c000", "c002", "c004", "c006"]
    rejected = pa.concat_tables(list(data.clips.rejected())).to_pylist()
    assert [(r["clip_id"], r["reason"]) for r in rejected] == [
        ("c003", "event_diffuse"),
        ("c001", "low_event_score"),
        ("c005", "low_event_score"),
        ("c007", "low_event_score"),
    ]
    assert rejected[0]["detail"] == "activity spread over the frame: entropy 0.90 (events.drop_diffuse)"
    assert rejected[1]["detail"].startswith("event_score 0.1 < 0.5, the cutoff of the top 50% of 6 clips")


def test_visit_tensors_reads_the_named_rows(tmp_path: Path):
    (tmp_path / "shards").mkdir()
    fields = [pa.field("clip_id", pa.string()), *tensor_fields("emb")]
    for f, rows in (("a.parquet", 5), ("b.parquet", 3)):
        cells = [np.full(4, 10 * ord(f[0]) + r, np.float16) for r in range(rows)]
        table = pa.table(
            {
                "clip_id": [f"{f}{r}" for r in range(rows)],
                "emb": [None if r == 2 else c.tobytes() for r, c in enumerate(cells)],
                "emb_dtype": ["float16"] * rows,
                "emb_shape": [[4]] * rows,
            },
            schema=pa.schema(fields),
        )
        pq.write_table(table, tmp_path / "shards" / f, row_group_size=2)
    got: dict[int, float] = {}
    codes, rows = np.array([1, 0, 0, 1, 0]), np.array([0, 4, 2, 2, 1])
    n = visit_tensors(
        tmp_path, ["a.parquet", "b.parquet"], codes, rows, ["emb"], lambda i, t: got.update({i: float(t[0][0])})
    )
    assert n == 3 and got == {0: 980.0, 1: 974.0, 4: 971.0}  # row 2 of each file holds no tensor
