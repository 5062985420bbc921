"""Benchmark: the metadata plane at scale. Synthesises a finished run's metadata for N clips (no video) and times
the steps that read it, each in a fresh child process so its peak RSS is its own.

Synthetic run (written in batches; never all N rows in memory): videos of 1-15 clips (mean 8) with the per-input
JSON records a run leaves in `_work/` (ingest, scenes, clips: every `clips` column, realistic values), and the
shard rows already packed (`part-*.parquet`, the names and member footers `curation.packing` gives, 16-row row
groups as packing keeps them) with every scalar shard column and a 768-d float16 `clip_embedding`. Near-duplicate
structure: about 4% of clips are in groups of 2-4 copies of a first clip; a group is all hash copies (0-3 bits
flipped per key frame, cosine to the first 0.90-0.94: below the threshold), all embedding copies (fresh hashes,
cosine to the first 0.99-0.998) or both, so every two members of a group are near-duplicates (<= 6 bits, cosine >=
0.96). Embeddings as bench/dedup_scale.py makes them: unrelated clips ~0.5 apart (CLIP's cone), a video's clips share
a topic; unrelated hashes are ~32 bits apart. 1% of the other clips' key frames have no hash. `_bench/clips.parquet`
holds every clip's group (-1: none), its key-frame hashes and the fields dedup ranks by (the shards lack some).

Steps (`--steps`, in order): finalize (pipelines.finalize over the records and packs, as a run's end does: collect,
pack_run, curate with its dedup, write_tables, _run.json), dedup (curation.dedup.find_duplicates, method
approximate, on the clips that passed the score filter, their embeddings streamed from the shards into a float16
memmap), queries (the
named queries of sql/ through curation.duck), snapshot (curation.snapshot.create_snapshot), loader (one epoch plan
of training.data over the snapshot), report (curation.report).

`--tables-only` synthesises what finalize leaves instead (the four tables, packed shards without embeddings, the
manifest, _run.json; dedup rejections synthesised, no score or event filter), column-wise: the steps after finalize
(queries, snapshot, loader) at sizes whose per-input records do not fit on the disk (~3 KB of JSON per clip).

    python bench/metadata_scale.py --clips 100000 [--no-embeddings | --tables-only] [--keep DIR]
        [--steps finalize,dedup,...] [--json OUT] [--tag NAME]

Prints one JSON object (per step: wall seconds, CPU seconds, which are steadier on a shared machine, and the step
process's peak RSS) and merges it into --json (default bench/results/metadata_scale.json) under the clip count
(plus --tag).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.ids import shard_name  # noqa: E402
from curation.tables import atomic_write_json  # noqa: E402
from pipelines.config import RuntimeConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, also when loaded by path (the test)
from metadata_synth import (  # noqa: E402
    BENCH_DIR,
    OVERRIDES,
    RANK_COLUMNS,
    TABLE_OVERRIDES,
    run_config,
    synthesize,
    video_plan,
    write_complete_run_json,
)
from metadata_synth_tables import synthesize_tables  # noqa: E402

STEPS = ("finalize", "dedup", "queries", "snapshot", "loader", "report")
TABLE_STEPS = ("queries", "snapshot", "loader")  # --tables-only: nothing for finalize and dedup to read
SYNTH_FILE = "synthesized.json"  # what synthesis wrote, for --reuse
QUERY_PARAMS = {"clips_longer_than": {"min_seconds": 5.0}}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- steps (each in its own process) ----------------------------------------------------------------------------------


def step_finalize(run_dir: Path) -> dict[str, Any]:
    """What `pipelines.orchestrate._finish` does at the end of a run, without Ray and the report."""
    from pipelines.collect import collect, collect_workers
    from pipelines.compaction import Compactor
    from pipelines.finalize import curate, pack_run, remove_stale_temp_files, remove_used_frames, write_tables
    from pipelines.manifest_blocks import manifest_extra
    from pipelines.orchestrate import STEPS_OF, compact_records, input_rank

    cfg = run_config()
    inputs = json.loads((run_dir / BENCH_DIR / "inputs.json").read_text())
    extra = manifest_extra(cfg)
    out, t = {}, time.perf_counter()
    out["collect_workers"] = collect_workers(cfg.runtime.collect_workers, len(inputs))
    data = collect(run_dir, inputs, ("ingest", "scenes", "clips"), out["collect_workers"])
    out["collect_s"], t = time.perf_counter() - t, time.perf_counter()
    remove_stale_temp_files(run_dir)
    remove_used_frames(run_dir)
    out["cleanup_s"], t = time.perf_counter() - t, time.perf_counter()
    pack_run(run_dir, data, cfg)
    out["pack_s"], t = time.perf_counter() - t, time.perf_counter()
    extra["curation"] = curate(data, cfg, run_dir)
    out["curate_s"], t = time.perf_counter() - t, time.perf_counter()
    write_tables(run_dir, data, cfg.content_hash(), with_manifest=True, extra=extra)
    write_complete_run_json(
        run_dir,
        cfg,
        inputs,
        data.counts(),
        worker_seconds=dict(data.seconds),
        ray={},
        faults=data.faults(),
        throughput={},
        bottleneck=None,
        actors=[],
        spilled_bytes=None,
        stalls=[],
    )
    out["write_s"], t = time.perf_counter() - t, time.perf_counter()
    # the run's last act: the records still small files go into batch files
    compact_records(Compactor(run_dir, STEPS_OF["all"], input_rank(inputs)))
    out["compact_s"] = time.perf_counter() - t
    files = sum(1 for p in run_dir.rglob("*") if p.is_file() and BENCH_DIR not in p.relative_to(run_dir).parts)
    out["files_per_1000_videos"] = round(1000 * files / max(1, len(inputs)), 2)
    out["curation"] = {k: v for k, v in extra["curation"].items() if k != "filters"}
    out["curation"]["filters_excluded"] = extra["curation"].get("filters", {}).get("excluded")
    out["clips"] = len(data.clips)
    return out


def step_dedup(run_dir: Path) -> dict[str, Any]:
    """find_duplicates (approximate) over the clips that passed the score filters, as finalize's dedup saw them
    (every clip when finalize did not finish): hashes and rank fields from `_bench/clips.parquet`, embeddings
    streamed from the shards into a float16 memmap."""
    import pyarrow.compute as pc

    from curation.dedup import DedupConfig, find_duplicates_in, hash_arrays, quality_rank

    t = time.perf_counter()
    cfg = run_config()
    table = pq.read_table(run_dir / BENCH_DIR / "clips.parquet", columns=list(RANK_COLUMNS))
    finalized = (run_dir / "rejected").is_dir()  # else (finalize did not finish): every clip, as if none was filtered
    names = ["stage", "clip_id"]
    empty = pa.table({n: pa.array([], pa.string()) for n in names})
    rejected = pq.read_table(run_dir / "rejected", columns=names) if finalized else empty
    filtered = rejected.filter(pc.equal(rejected["stage"], "filters"))["clip_id"]
    passed = pc.invert(pc.is_in(table["clip_id"], value_set=filtered.combine_chunks())).to_numpy(zero_copy_only=False)
    table = table.filter(pa.array(passed))
    out = {"read_s": time.perf_counter() - t}
    t = time.perf_counter()
    emb_path = run_dir / BENCH_DIR / "embeddings.npy"
    embeddings = _stream_embeddings(run_dir, passed, emb_path)
    out["embeddings_s"], t = time.perf_counter() - t, time.perf_counter()
    # as finalize's remove_duplicates: hashes as arrays, rank fields read only for clips in a group (a dict per
    # clip would take about 10 GB at 10 M clips)
    values, valid = hash_arrays(table["key_frame_hashes"])
    ranked = table.drop_columns(["key_frame_hashes"])
    out["rows_s"], t = time.perf_counter() - t, time.perf_counter()
    dcfg = DedupConfig(**{**vars(cfg.dedup), "method": "approximate"})
    found = find_duplicates_in(
        values, valid, embeddings, lambda i: quality_rank(ranked.slice(i, 1).to_pylist()[0]), dcfg
    )
    out["find_s"] = time.perf_counter() - t
    out["excluded"] = len(found)
    dropped = rejected.filter(pc.equal(rejected["stage"], "dedup"))["clip_id"].to_pylist()
    found_ids = ranked["clip_id"].take(pa.array([d.dropped for d in found], pa.int64())).to_pylist()
    out["matches_finalize"] = set(found_ids) == set(dropped) if finalized else None
    del embeddings
    emb_path.unlink(missing_ok=True)
    return out


def _shard_files(run_dir: Path) -> list[Path]:
    """The packed shard files in run order: the manifest's, or (finalize did not finish) the packs ordered by their
    first member's video."""
    manifest = run_dir / "shards" / "manifest.json"
    if manifest.exists():
        return [run_dir / "shards" / s["name"] for s in json.loads(manifest.read_text())["shards"]]
    from curation.packing import read_members

    args = json.loads(os.environ["METADATA_SCALE_ARGS"])
    _, video_ids = video_plan(args["clips"], args["seed"])
    rank = {shard_name(v, 0): i for i, v in enumerate(video_ids)}
    packs = sorted((run_dir / "shards").glob("part-*.parquet"))
    return sorted(packs, key=lambda p: rank[read_members(p)[0][0]])


def _stream_embeddings(run_dir: Path, wanted: np.ndarray, path: Path) -> np.memmap | None:
    """The embeddings of the shard rows where `wanted` (bool, one per row in manifest order), streamed batch by
    batch into a float16 .npy file and mapped read-only; None when the shards hold none."""
    files = _shard_files(run_dir)
    if not files or "clip_embedding" not in pq.read_schema(files[0]).names:
        return None
    out, at, written, since_remap = None, 0, 0, 0
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=8192, columns=["clip_embedding"]):
            column = batch.column(0)
            keep = wanted[at : at + len(column)]
            at += len(column)
            flat = np.frombuffer(column.buffers()[2], np.float16)
            offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset : column.offset + len(column) + 1]
            dim = int(offsets[1] - offsets[0]) // 2  # byte offsets of float16 values
            if out is None:
                out = np.lib.format.open_memmap(path, "w+", np.float16, (int(wanted.sum()), dim))
            elif since_remap >= 65536:  # written pages leave the resident set with their mapping (as finalize)
                out.flush()
                out, since_remap = np.load(path, mmap_mode="r+"), 0
            rows = flat[(offsets[:-1, None] // 2 + np.arange(dim))[keep]]
            out[written : written + len(rows)] = rows
            written += len(rows)
            since_remap += len(rows)
    if out is None:
        return None
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def step_queries(run_dir: Path) -> dict[str, Any]:
    from curation.duck import connect, load_named, named_queries, run_query
    from curation.selection import SELECTION_QUERY

    out: dict[str, Any] = {}
    t = time.perf_counter()
    con = connect(run_dir)
    out["connect_s"] = time.perf_counter() - t
    for name in named_queries():
        if name == SELECTION_QUERY:  # the snapshot step runs it
            continue
        t = time.perf_counter()
        table = run_query(con, load_named(name), QUERY_PARAMS.get(name))
        out[name] = {"s": round(time.perf_counter() - t, 3), "rows": table.num_rows}
    t = time.perf_counter()
    out["clips_count"] = run_query(con, "SELECT count(*) AS n FROM clips").column("n")[0].as_py()
    out["count_s"] = time.perf_counter() - t
    return out


def step_snapshot(run_dir: Path) -> dict[str, Any]:
    from curation.snapshot import create_snapshot

    out_dir = run_dir / BENCH_DIR / "snapshot"
    shutil.rmtree(out_dir, ignore_errors=True)
    snap = create_snapshot(run_dir, out_dir)
    return {"clips": snap.num_clips, "snapshot_id": snap.snapshot_id}


def step_loader(run_dir: Path) -> dict[str, Any]:
    from training.data import DataConfig, make_loader

    out, t = {}, time.perf_counter()
    snapshot = run_dir / BENCH_DIR / "snapshot"
    source = snapshot if snapshot.is_dir() else run_dir  # the run itself when the snapshot step did not finish
    loader = make_loader(DataConfig(source=str(source), batch_size=32, shuffle_buffer=1024))
    out["open_s"], t = time.perf_counter() - t, time.perf_counter()
    plan = loader._epoch_plan(0)
    out["plan_s"] = time.perf_counter() - t
    src_kind = loader.src.kind
    out.update(samples=int(plan.samples), batches=loader.num_batches, units=len(loader.src.units), source=src_kind)
    return out


def step_report(run_dir: Path) -> dict[str, Any]:
    from curation.report import write_report

    return {"bytes": write_report(run_dir).stat().st_size}


def _rss_mb(pid: int) -> float:
    """Resident set of a live process (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree_rss_mb(pid: int) -> float:
    """Resident set of a live process and its descendants together (finalize reads records in child processes)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _rss_mb(p)
        with contextlib.suppress(OSError):  # gone meanwhile
            todo.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
    return total


def run_step(name: str, run_dir: Path, in_process: bool = False, max_rss_mb: float = 0) -> dict[str, Any]:
    """Run one step in a fresh child process: its seconds, its own peak RSS (wait4) and what it returned. With
    `in_process` (tests: no interpreter start per step) the RSS is this process's peak so far, not the step's."""
    if in_process:
        t = time.perf_counter()
        detail = globals()[f"step_{name}"](run_dir)
        result = {"seconds": round(time.perf_counter() - t, 2), "peak_rss_mb": round(peak_rss_mb())}
        return {**result, **{k: round(v, 2) if isinstance(v, float) else v for k, v in detail.items()}}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--run-dir", str(run_dir)]
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, cwd=ROOT)
        killed, tree_peak = None, 0.0
        while True:  # wait4 for the child's own rusage; watch its RSS so a runaway step cannot take the machine
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _tree_rss_mb(proc.pid)
            tree_peak = max(tree_peak, rss)
            if max_rss_mb and rss > max_rss_mb and killed is None:
                killed = f"killed at {rss:.0f} MB RSS (--max-rss-mb {max_rss_mb})"
                proc.kill()
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read()
    seconds = time.perf_counter() - t
    result: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),  # steadier than wall time on a shared machine
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        # the step's process and its children together, sampled every 0.2 s (ru_maxrss is the largest one alone)
        "peak_tree_rss_mb": round(tree_peak),
    }
    if killed:
        result["error"] = killed
        return result
    if proc.returncode != 0:
        result["error"] = f"exit status {proc.returncode}"
        return result
    detail = json.loads(stdout.decode().strip().splitlines()[-1])
    result.update({k: round(v, 2) if isinstance(v, float) else v for k, v in detail.items()})
    return result


def child(name: str, run_dir: Path) -> int:
    result = globals()[f"step_{name}"](run_dir)
    print(json.dumps(result, default=str))
    return 0


def step_synthesize(run_dir: Path) -> dict[str, Any]:
    """The synthetic run, as METADATA_SCALE_ARGS (set by `main`) describes it."""
    args = json.loads(os.environ["METADATA_SCALE_ARGS"])
    if args["tables_only"]:
        return synthesize_tables(run_dir, args["clips"], args["seed"], args["pack_rows"])
    return synthesize(run_dir, args["clips"], args["dim"], args["seed"], args["small_records"])


def disk_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return round(total / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=0)
    p.add_argument("--dim", type=int, default=768, help="embedding width (ViT-L-14: 768); 0: no embeddings")
    p.add_argument("--no-embeddings", action="store_true", help="same as --dim 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", help=f"default: {','.join(STEPS)} ({','.join(TABLE_STEPS)} with --tables-only)")
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="synthesise what finalize leaves (tables, packed shards without embeddings), not the records: for the "
        "steps after finalize at sizes whose records do not fit on the disk",
    )
    p.add_argument("--keep", type=Path, help="write the run here and keep it (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "metadata_scale.json")
    p.add_argument("--tag", default="")
    p.add_argument(
        "--pack-rows", type=int, default=0, help="--tables-only: rows per row group of the packs (0: as finalize packs)"
    )
    p.add_argument(
        "--small-records",
        type=int,
        default=RuntimeConfig().compact_every,
        help="videos whose records are still small files when finalize starts (the rest are in batch files, as "
        "compaction during the run leaves them; default runtime.compact_every); -1: every record a small file",
    )
    p.add_argument("--max-rss-mb", type=float, default=12000, help="kill a step past this RSS (0: never)")
    p.add_argument("--reuse", action="store_true", help="with --keep: reuse a run a previous call synthesised")
    p.add_argument("--in-process", action="store_true", help="run the steps in this process (RSS not per step)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.run_dir)
    dim = 0 if args.no_embeddings or args.tables_only else args.dim
    default = ",".join(TABLE_STEPS if args.tables_only else STEPS)
    steps = [s for s in (default if args.steps is None else args.steps).split(",") if s]  # --steps "": synthesis only
    if unknown := set(steps) - set(STEPS):
        p.error(f"unknown steps {sorted(unknown)}; steps: {', '.join(STEPS)}")
    tmp = None
    if args.keep:
        run_dir = args.keep
        if not (args.reuse and (run_dir / BENCH_DIR / SYNTH_FILE).exists()):
            shutil.rmtree(run_dir, ignore_errors=True)
    else:
        tmp = tempfile.mkdtemp(prefix="metadata_scale_")
        run_dir = Path(tmp) / "run"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    overrides = TABLE_OVERRIDES if args.tables_only else OVERRIDES
    result: dict[str, Any] = {"clips": args.clips, "dim": dim, "overrides": list(overrides), "steps": {}}
    if args.tables_only:
        result["tables_only"] = True
        result["pack_rows"] = args.pack_rows
    else:
        result["small_records"] = args.small_records
    try:
        setup = {"clips": args.clips, "dim": dim, "seed": args.seed, "tables_only": args.tables_only}
        setup.update(pack_rows=args.pack_rows, small_records=args.small_records)
        os.environ["METADATA_SCALE_ARGS"] = json.dumps(setup)
        if (run_dir / BENCH_DIR / SYNTH_FILE).exists():  # --reuse
            result["synthesize"] = {**json.loads((run_dir / BENCH_DIR / SYNTH_FILE).read_text()), "reused": True}
        else:
            run_dir.mkdir()
            result["synthesize"] = run_step("synthesize", run_dir, args.in_process, args.max_rss_mb)
            result["synthesize"]["disk_mb"] = disk_mb(run_dir)
            atomic_write_json(result["synthesize"], run_dir / BENCH_DIR / SYNTH_FILE)
        print(json.dumps({"synthesize": result["synthesize"]}), file=sys.stderr, flush=True)
        for name in steps:
            result["steps"][name] = run_step(name, run_dir, args.in_process, args.max_rss_mb)
            print(json.dumps({name: result["steps"][name]}), file=sys.stderr, flush=True)
        result["total_s"] = round(sum(s["seconds"] for s in result["steps"].values()), 1)
        result["peak_rss_mb"] = max(
            (max(s["peak_rss_mb"], s.get("peak_tree_rss_mb", 0)) for s in result["steps"].values()), default=0
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        saved = json.loads(args.json.read_text()) if args.json.exists() else {}
        saved[f"{args.clips}{args.tag}"] = result
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(saved, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
