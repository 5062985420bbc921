"""Runs the requested stages over the pending inputs, then rebuilds the tables and reports.

Pending work is decided from the resume records alone, so the same code path serves a first run, a resume after
a crash or `kill -9`, and single-stage runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipelines.collect import collect, collect_workers
from pipelines.collected import Collected
from pipelines.compaction import Compactor
from pipelines.config import RunConfig, RuntimeConfig
from pipelines.finalize import (
    curate,
    pack_run,
    remove_stale_temp_files,
    remove_used_frames,
    write_tables,
)
from pipelines.manifest_blocks import manifest_extra
from pipelines.report import inputs_hash, summary_table, write_run_json
from pipelines.runtime import cluster_info, init_ray
from pipelines.steps import WorkDir
from pipelines.throughput import bottleneck, run_throughput

if TYPE_CHECKING:
    from pipelines.dag import Execution

logger = logging.getLogger(__name__)

STEPS_OF = {"all": ("ingest", "scenes", "clips"), "ingest": ("ingest",), "scenes": ("scenes",), "clips": ("clips",)}


T = TypeVar("T")
STOP_GRACE_S = 60.0  # how long a stopped execution may take to let go of its consumer thread


class Stalled(Exception):
    """No row arrived within the stall timeout; the execution behind the rows was stopped."""

    def __init__(self, waited_s: float, stopped: bool) -> None:
        super().__init__(f"no row for {waited_s:.0f} s")
        self.waited_s, self.stopped = waited_s, stopped


def watch(
    rows: Iterator[T], timeout_s: float, stop: Callable[[], object], grace_s: float = STOP_GRACE_S
) -> Iterator[T]:
    """Yield `rows`, read by a background thread, and raise Stalled when none arrives within `timeout_s` seconds
    (0: wait forever). `rows` blocks inside Ray Data while nothing is produced, and a blocked generator can be
    neither interrupted nor closed from outside: the thread takes that wait, and `stop()` (which ends the execution,
    so that `rows` runs out) is called, again every second, until the thread has finished or `grace_s` passed. The
    same happens when the consumer leaves early (an error, Ctrl-C): no thread is left draining an execution."""
    box: queue.SimpleQueue = queue.SimpleQueue()
    end = object()

    def drain() -> None:
        try:
            for row in rows:
                box.put((row, None))
            box.put((end, None))
        except BaseException as e:  # handed to the consumer, raised there
            box.put((end, e))

    thread = threading.Thread(target=drain, name="pipeline-rows", daemon=True)
    thread.start()
    last, stopped = time.monotonic(), None
    try:
        while True:
            try:
                row, error = box.get(timeout=timeout_s or None)
            except queue.Empty:
                break
            if row is end:
                if error is not None:
                    raise error
                return
            last = time.monotonic()
            yield row
        waited = time.monotonic() - last
        stopped = _stop_thread(thread, stop, grace_s)
        while not box.empty():  # rows that came out while the execution stopped: those videos did finish
            row, _ = box.get()
            if row is not end:
                yield row
        raise Stalled(waited, stopped)
    finally:
        if stopped is None and thread.is_alive():  # the consumer left early (an error, Ctrl-C)
            _stop_thread(thread, stop, grace_s)


def _stop_thread(thread: threading.Thread, stop: Callable[[], object], grace_s: float) -> bool:
    """Call `stop` until `thread` ends (True) or `grace_s` passes (False: logged, the daemon thread is left)."""
    deadline = time.monotonic() + grace_s
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            stop()
        except Exception:  # a failing stop must not hide the stall: try again, then give up after the grace period
            logger.exception("stopping the stalled execution failed")
        thread.join(min(1.0, max(0.0, deadline - time.monotonic())))
    if thread.is_alive():
        logger.warning("the stopped execution still holds its consumer thread after %.0f s; leaving it", grace_s)
    return not thread.is_alive()


def _consume(
    rows: Iterator[dict],
    label: str,
    total: int,
    every_s: float,
    actors: dict | None = None,
    stall_timeout_s: float = 0.0,
    stop: Callable[[], object] = lambda: None,
    cluster_start: dict | None = None,
    compactor: Compactor | None = None,
) -> dict | None:
    """Drain the DAG's output, logging a progress line every `every_s` seconds and collecting, in `actors`, where
    the clips actors ran. Raises ModelLoadError when the clips step could not load its models (no video is marked
    done then: a rerun after the fix resumes). When no row arrives for `stall_timeout_s` (0: never), `stop()` ends
    the execution and the stall is returned ({step, waited_s, done, left, stopped, cluster}): the videos without a
    record are the caller's to retry. `cluster_start` (init_ray's answer) is what the stall warning compares the
    cluster to. `compactor` hears of every finished video (it compacts records in the background) and is waited for
    at the end."""
    started = last = time.perf_counter()
    model_error, stall, done = None, None, 0
    try:
        for done, row in enumerate(watch(rows, stall_timeout_s, stop), start=1):
            if compactor is not None:
                compactor.tick()
            model_error = model_error or row.get("model_error")
            if actors is not None and (actor := row.get("actor")):
                key = actor.get("actor_id") or f"{actor['node']}:{actor['pid']}"
                entry = actors.setdefault(key, {**actor, "rows": 0})
                entry["rows"] += 1
            now = time.perf_counter()
            if now - last >= every_s or done == total:
                rate = done / max(now - started, 1e-9)
                eta = (total - done) / rate if rate else float("inf")
                logger.info(
                    "%s: %d/%d videos done (%.0f s elapsed, ~%.0f s left)", label, done, total, now - started, eta
                )
                last = now
    except Stalled as e:
        now = _cluster_now()
        stall = {"step": label, "waited_s": round(e.waited_s, 1), "done": done, "left": total - done}
        stall.update(stopped=e.stopped, cluster=now)
        start = f", {cluster_start['nodes']} nodes / {cluster_start['cpus']:g} CPUs at start" if cluster_start else ""
        logger.warning(
            "%s: no video finished for %.0f s (runtime.stall_timeout_s) with %d of %d left (cluster: %s now%s); "
            "stopped the execution: the videos without a record go to the next retry round, or are recorded as "
            "worker_crashed after the last",
            label,
            e.waited_s,
            total - done,
            total,
            f"{now['nodes']} nodes / {now['cpus']:g} CPUs" if now else "unknown",
            start,
        )
    finally:
        if compactor is not None:  # no compaction left running into the caller's collect
            compactor.wait()
    if model_error:
        from annotators.models import ModelLoadError

        raise ModelLoadError(f"{model_error} (no clip was processed; fix it and rerun the same command)")
    return stall


def _cluster_now() -> dict | None:
    """Nodes and CPUs alive now, for the stall record (None when Ray cannot say)."""
    try:
        info = cluster_info("")
    except Exception:
        return None
    return {"nodes": info["nodes"], "cpus": info["cpus"], "gpus": info["gpus"]}


def warn_cpu_fallback(actors: dict[str, dict]) -> None:
    """One warning on the driver when actors that Ray gave a GPU run their models on CPU (no CUDA there)."""
    fell_back = [a for a in actors.values() if a["gpu_ids"] and "cpu" in a.get("devices", {}).values()]
    if fell_back:
        models = sorted({m for a in fell_back for m, d in a["devices"].items() if d == "cpu"})
        logger.warning(
            "%d of %d clips actors were placed on a GPU but CUDA is not available there: %s ran on CPU",
            len(fell_back),
            len(actors),
            ", ".join(models),
        )


def announce_missing_models(cfg: RunConfig) -> None:
    """Say once, on the driver, which model-backed columns stay null because no weights are configured. A default
    run has none on purpose (weights are local folders the user provides), so this is information, not a warning."""
    off = []
    if not cfg.aesthetics.model_path:
        off.append("aesthetics (no aesthetics.model_path: aesthetic_score null, dedup by key-frame hashes only)")
    elif not cfg.aesthetics.head_path:
        off.append("the aesthetic head (no aesthetics.head_path: clip embeddings only, aesthetic_score null)")
    if not cfg.captions.model_path:
        off.append("captions (no captions.model_path: caption null)")
    if off:
        logger.info("models off: %s; point those keys at local model folders to turn them on", "; ".join(off))


def run_stages(
    run_dir: Path,
    stage: str,
    inputs: list[dict],
    ignored: list[str],
    cfg: RunConfig,
    ray_address: str | None,
    started: float,
) -> Collected:
    from pipelines import dag

    steps = STEPS_OF[stage]
    work, wall, attempted = WorkDir(run_dir), {}, ()
    if "clips" in steps:
        announce_missing_models(cfg)
    cluster = init_ray(cfg.runtime, ray_address)
    plan: dict[str, dict] = {}
    started_at: dict[str, float] = {}
    execution: dict = {"actors": {}, "stalls": []}  # stalls: what the watchdog stopped (`_consume`), per round
    stalls, rc, left = execution["stalls"], cfg.runtime, []
    compactor = Compactor(run_dir, STEPS_OF["all"], input_rank(inputs), rc.compact_every)
    workers = collect_workers(rc.collect_workers, len(inputs))  # processes that read the records
    if "ingest" in steps:
        pending = [r for r in inputs if not work.done("ingest", r["key"])]
        logger.info("ingest: %d inputs, %d already probed", len(inputs), len(inputs) - len(pending))
        t0, started_at["ingest"] = time.perf_counter(), time.time()
        if pending:
            plan.update(dag.ingest_plan())
            left = _ingest_rounds(pending, cfg, run_dir, stalls, cluster, compactor)
        wall["ingest"], attempted = time.perf_counter() - t0, ("ingest",)
    data = collect(run_dir, inputs, attempted, workers)
    if left:
        _mark_stalled(data, "ingest", left, stalls[-1])
    video_steps = tuple(s for s in steps if s != "ingest")
    if video_steps:
        pending = data.ready["scenes"] + data.ready["clips"] if "scenes" in video_steps else data.ready["clips"]
        if stage == "clips" and data.ready["scenes"]:
            logger.warning(
                "%d inputs have not been through `scenes` yet: run --stage scenes", len(data.ready["scenes"])
            )
        label = "+".join(video_steps)
        logger.info("%s: %d videos to process", label, len(pending))
        t0, started_at["video"], session = time.perf_counter(), time.time(), uuid.uuid4().hex
        rounds, collected, stall = 1 + rc.retry_rounds, False, None
        for attempt in range(rounds):
            if not pending:
                break
            if attempt:  # Ray gave these up (a lost node or actor, a worker that died past its retries), or it stalled
                logger.warning(
                    "%d videos %s: retrying them (round %d of %d)",
                    len(pending),
                    "left unfinished by the stopped execution"
                    if stall
                    else "lost their worker (a crash, or a lost node)",
                    attempt,
                    rounds - 1,
                )
            video_plan = dag.video_plan(cfg, video_steps)
            plan.update(video_plan)

            def start(ex: dag.Execution, rows: list[dict] = pending, vp: dict = video_plan) -> Iterator[dict]:
                return dag.run_video_steps(rows, cfg, run_dir, vp, session, stats=execution, execution=ex)

            stall = _watched(start, label, len(pending), rc, cluster, execution["actors"], compactor)
            if stall is not None:
                stalls.append({**stall, "round": attempt})
            keys = {r["key"] for r in pending}
            data, collected = collect(run_dir, inputs, attempted + video_steps, workers), True
            pending = [r for r in data.ready["scenes"] + data.ready["clips"] if r["key"] in keys]
        if stall is not None and pending:  # the last round stalled: say so in the records of what it left
            _mark_stalled(data, video_steps, pending, stalls[-1])
        warn_cpu_fallback(execution["actors"])
        wall[label] = time.perf_counter() - t0
        attempted += video_steps
        if not collected:  # nothing was pending: account the inputs with these steps attempted
            data = collect(run_dir, inputs, attempted, workers)
    execution["throughput"] = run_throughput(data.timings, plan, started_at)
    return _finish(run_dir, stage, inputs, ignored, cfg, data, wall, started, compactor, cluster, execution)


def _ingest_rounds(
    pending: list[dict],
    cfg: RunConfig,
    run_dir: Path,
    stalls: list[dict],
    cluster: dict | None,
    compactor: Compactor | None = None,
) -> list[dict]:
    """Probe `pending` under the stall watchdog; what a stall leaves goes to another round, up to
    `runtime.retry_rounds` (only a stall: a probe that crashed its worker twice is given up on purpose, see
    `dag._RETRY`). Appends each stall to `stalls`; returns the inputs a stalled last round left."""
    from pipelines import dag

    rc, work = cfg.runtime, WorkDir(run_dir)
    for attempt in range(1 + rc.retry_rounds):
        if attempt:
            logger.warning(
                "ingest: probing the %d inputs the stall left (round %d of %d)", len(pending), attempt, rc.retry_rounds
            )

        def start(ex: dag.Execution, rows: list[dict] = pending) -> Iterator[dict]:
            return dag.run_ingest(rows, cfg, run_dir, execution=ex)

        stall = _watched(start, "ingest", len(pending), rc, cluster, compactor=compactor)
        if stall is None:
            return []
        stalls.append({**stall, "round": attempt})
        pending = [r for r in pending if not work.done("ingest", r["key"])]
        if not pending:
            return []
    return pending


def _watched(
    start: Callable[[Execution], Iterator[dict]],
    label: str,
    total: int,
    rc: RuntimeConfig,
    cluster: dict | None,
    actors: dict | None = None,
    compactor: Compactor | None = None,
) -> dict | None:
    """Start one Ray Data execution (`start(handle)`, a `dag.run_*` generator) and consume it under the stall
    watchdog (`runtime.stall_timeout_s`), compacting records as videos finish: the stall, or None."""
    from pipelines.dag import Execution

    handle = Execution()
    rows = start(handle)
    return _consume(
        rows, label, total, rc.progress_every_s, actors, rc.stall_timeout_s, handle.stop, cluster, compactor
    )


def _mark_stalled(data: Collected, steps: str | tuple[str, ...], left: list[dict], stall: dict) -> None:
    """The `worker_crashed` records of the videos a stalled last round left say why they have no record (still
    `worker_crashed`: the run ends partial and a rerun of the same command does them, as for a lost worker)."""
    uris, steps = {r["source_uri"] for r in left}, (steps,) if isinstance(steps, str) else steps
    detail = (
        f"the execution stalled (no video finished for {stall['waited_s']:.0f} s, runtime.stall_timeout_s) and was "
        "stopped before this video's step finished; rerun to retry"
    )
    for row in data.rejected:
        if row["reason"] == "worker_crashed" and row["stage"] in steps and row["source_uri"] in uris:
            row["detail"] = detail


def input_rank(inputs: list[dict]) -> dict[str, int]:
    """Each input's position in the run's order: records are compacted in the order finalize reads them."""
    return {r["key"]: i for i, r in enumerate(inputs)}


def compact_records(compactor: Compactor) -> None:
    """The run's last compaction (`pipelines.compaction`), once finalize has read the records: what is still small
    files goes into batch files. A failure costs only the compaction: the records stay small files, as valid, and
    the next run retries."""
    compactor.wait()
    try:
        compactor.compact()
    except OSError:
        logger.exception("could not compact the records in %s; they stay as they are", compactor.steps[0].parent)


def _finish(
    run_dir: Path,
    stage: str,
    inputs: list[dict],
    ignored: list[str],
    cfg: RunConfig,
    data: Collected,
    wall: dict[str, float],
    started: float,
    compactor: Compactor,
    cluster: dict | None = None,
    execution: dict | None = None,
) -> Collected:
    from curation.schema import SCHEMA_VERSION

    if removed := remove_stale_temp_files(run_dir):
        logger.info("removed %d temporary files left by an interrupted run", removed)
    if removed := remove_used_frames(run_dir):
        logger.info("removed the kept frames of %d videos whose clips step has finished", removed)
    extra = manifest_extra(cfg)
    if "clips" in STEPS_OF[stage]:
        t0 = time.perf_counter()
        pack_run(run_dir, data, cfg)  # before curation: dedup reads the embeddings from the packed files
        wall["pack"] = time.perf_counter() - t0
    extra["curation"] = curate(data, cfg, run_dir)
    if "clip_embedding" in extra["tensors"] and extra["curation"].get("dedup", {}).get("embedding_dim"):
        extra["tensors"]["clip_embedding"]["shape"] = [extra["curation"]["dedup"]["embedding_dim"]]
    if "events" in extra["curation"]:
        extra["events"]["selection"] = extra["curation"]["events"]
    write_tables(run_dir, data, cfg.content_hash(), with_manifest="clips" in STEPS_OF[stage], extra=extra)
    crashed = sum(1 for r in data.rejected if r["reason"] == "worker_crashed")
    incomplete = crashed or any(data.ready.values()) if stage == "all" else crashed
    wall["total"] = time.time() - started
    counts = data.counts()
    execution = execution or {}
    faults = data.faults()
    throughput = execution.get("throughput", {})
    write_run_json(
        run_dir,
        {
            "status": "partial" if incomplete else "complete",
            "stage": stage,
            "schema_version": SCHEMA_VERSION,
            "inputs": len(inputs),
            "inputs_hash": inputs_hash(inputs),
            "ignored_inputs": ignored,
            "config": cfg.to_dict(),
            "config_hash": cfg.content_hash(),
            "counts": counts,
            "worker_seconds": dict(data.seconds),
            "wall_seconds": wall,
            "ray": cluster or {},
            "faults": faults,
            "throughput": throughput,
            "bottleneck": bottleneck(throughput),
            "actors": list(execution.get("actors", {}).values()),
            "spilled_bytes": execution.get("spilled_bytes"),
            "stalls": execution.get("stalls", []),
        },
    )
    if "clips" in STEPS_OF[stage]:
        # The report only reads the run: if it fails the data are still complete, so log and carry on.
        try:
            from curation.report import write_report

            logger.info("report: %s", write_report(run_dir))
        except Exception:
            logger.exception("could not write the HTML report; retry with: python -m curation.report %s", run_dir)
    table = summary_table(counts, dict(data.seconds), wall, faults, throughput, execution.get("stalls"))
    (run_dir / "_summary.txt").write_text(table + "\n")
    print(table)
    compact_records(compactor)
    if crashed:
        logger.warning("%d inputs lost their worker (a crash, or a lost node): rerun the same command", crashed)
    logger.info('run directory: %s (query it with: python -m curation.query %s "SELECT ...")', run_dir, run_dir)
    return data
