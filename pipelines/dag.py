"""The Ray Data DAG. The only module that chains `ray.data` operators; step logic lives in `pipelines.steps`.

Two datasets run one after the other, because content de-duplication of inputs is a global decision:
1. ingest: probe every pending input (cheap, I/O bound);
2. scenes -> clips: per video, detect shots, then decode each clip's frames, annotate them (flow, motion scores,
   warped noise, camera, events, quality, aesthetics, captions) and write its shards. Every annotator runs where
   the frames were decoded: frames are decoded once per clip.
Rows carry only `source_uri` and `key`; decoded frames never travel between operators. Near-duplicate removal and
score filters are global decisions made afterwards on the driver (`pipelines.finalize.curate`).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import ray

from pipelines.annotate import model_annotators
from pipelines.config import RunConfig
from pipelines.steps import ClipsStep, Row, make_clips_fn, make_ingest_fn, make_scenes_fn

# A probe that crashes its worker is retried once, then the block is given up (and recorded by the driver).
# Ray Data's default is to retry forever, which turns one deterministic decoder crash into a hung run. Ray 2.60 has
# no named parameter for retries, so they go through `ray_remote_args`, which Ray 2.64 removes: pyproject keeps ray
# below 2.64 until a named mechanism exists (tests/test_constraints.py), and the deprecation is silenced below.
_RETRY = {"max_retries": 1}
# The video steps get 3 retries: a clip that kills its worker needs up to 3 (its batch, then alone twice, see
# pipelines.faults) before the retry that rejects it; a lost node costs one more only if it strikes the same video.
_VIDEO_RETRY = {"max_retries": 3}
_ACTOR_RETRY = {"max_restarts": 3, "max_task_retries": 3}  # the same policy for actors
warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
logger = logging.getLogger(__name__)


def ingest_plan() -> dict[str, dict]:
    return {"ingest": {"kind": "tasks", "num_cpus": _INGEST_CPUS, "slots": _cpus() / _INGEST_CPUS}}


def video_plan(cfg: RunConfig, steps: tuple[str, ...]) -> dict[str, dict]:
    """How the video steps run: per step, tasks or an actor pool, and the resources of each (what _run.json
    reports next to the throughput, so a user sees what a stage had)."""
    plan: dict[str, dict] = {}
    if "scenes" in steps:
        plan["scenes"] = {"kind": "tasks", "num_cpus": 1, "slots": _cpus()}
    if "clips" in steps and (models := model_annotators(cfg)):
        rc = cfg.runtime
        gpus = ray.cluster_resources().get("GPU", 0) if set(models.values()) != {"cpu"} else 0
        # One actor per GPU (gpus_per_actor < 1 packs several per GPU), or one per 2 CPUs without GPUs, unless
        # runtime.model_actors says how many. Never more than the cluster can place with a CPU left for the scenes
        # tasks: actors that hold every CPU starve the stage that feeds them, and the run hangs.
        by_gpu = max(1, int(gpus / rc.gpus_per_actor)) if gpus else None
        limit = min(max(1, int(_cpus()) - 1), by_gpu or 1_000_000)
        actors = rc.model_actors or by_gpu or max(1, int(_cpus()) // 2)
        if actors > limit:
            logger.warning(
                "runtime.model_actors=%d does not fit this cluster (%g CPUs, %g GPUs at %g per actor): using %d",
                actors,
                _cpus(),
                gpus,
                rc.gpus_per_actor,
                limit,
            )
            actors = limit
        plan["clips"] = {
            "kind": "actors",
            "actors": actors,
            "num_cpus": 1,
            "num_gpus": rc.gpus_per_actor if gpus else 0,
            "models": models,
            "slots": actors,
        }
    elif "clips" in steps:
        plan["clips"] = {"kind": "tasks", "num_cpus": 1, "slots": _cpus()}
    return plan


def _cpus() -> float:
    return ray.cluster_resources().get("CPU", 1.0)


_INGEST_CPUS = 0.5  # the probe is mostly I/O: 2 per core


class Execution:
    """Handle on the Ray Data execution behind a `run_*` generator, so that another thread (the driver's stall
    watchdog) can stop it while the generator's consumer is blocked waiting for a row."""

    def __init__(self) -> None:
        self.ds: ray.data.Dataset | None = None

    def stop(self) -> bool:
        """Shut the execution down: its operators cancel their running tasks (force: the worker is killed) and kill
        their actors, and the row iterator ends as if exhausted. False when no execution is running (not started yet,
        or already shut down): the caller tries again while its consumer has not returned.

        Ray Data has no public call for this: a `StreamingExecutor` (a thread named after the dataset) is shut down
        by the iterator that drains it, or on garbage collection. Before its first output the dataset does not hold
        the executor yet (`_current_executor` is set once the first block is out), so it is found by that name."""
        ds = self.ds
        if ds is None:
            return False
        executor = getattr(ds, "_current_executor", None)
        if executor is None:
            name = f"StreamingExecutor-{ds.get_dataset_id()}"
            executor = next((t for t in threading.enumerate() if t.name == name), None)
        if executor is None or getattr(executor, "_shutdown", False):
            return False
        executor.shutdown(force=True)
        return True


def run_ingest(rows: list[Row], cfg: RunConfig, run_dir: Path, execution: Execution | None = None) -> Iterator[Row]:
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))  # one block per input: crashes stay local
    ds = ds.map(make_ingest_fn(cfg, run_dir), num_cpus=_INGEST_CPUS, **_RETRY)  # 1:1 probe
    if execution is not None:
        execution.ds = ds
    yield from ds.iter_rows()


def run_video_steps(
    rows: list[Row],
    cfg: RunConfig,
    run_dir: Path,
    plan: dict[str, dict],
    session: str,
    stats: dict | None = None,
    execution: Execution | None = None,
) -> Iterator[Row]:
    """Scenes and/or clips over `rows` as `plan` (from `video_plan`) says; yields one small row per video. When
    the rows are exhausted, `stats` gets what Ray Data reports about the execution (bytes spilled); `execution`, when
    given, is where the driver can stop it."""
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))  # one block per video
    if "scenes" in plan:
        # 1:1: the one decode of the video (shot detection, and the clips' frames kept when clips follow)
        scenes = make_scenes_fn(cfg, run_dir, session, keep_frames="clips" in plan)
        ds = ds.map(scenes, num_cpus=1, **_VIDEO_RETRY)
    clips = plan.get("clips")
    if clips and clips["kind"] == "actors":
        # Models (RAFT, open_clip, the captioner) load once per actor. Each actor decodes, runs flow, scores,
        # captions and writes shards (1:1 per video); inside, clips are annotated runtime.clip_batch at a time and
        # each model runs its own batch size (flow.batch_size frame pairs, aesthetics.batch_size images,
        # captions.batch_size clips). An actor that dies is restarted, its task retried (_ACTOR_RETRY).
        ds = ds.map(
            ClipsStep,
            fn_constructor_args=(cfg, run_dir, session),
            compute=ray.data.ActorPoolStrategy(size=clips["actors"]),
            num_cpus=clips["num_cpus"],
            num_gpus=clips["num_gpus"],
            **_ACTOR_RETRY,
        )
    elif clips:
        # 1:1 decode, annotate (DIS flow) -> shards
        ds = ds.map(make_clips_fn(cfg, run_dir, session), num_cpus=1, **_VIDEO_RETRY)
    if execution is not None:
        execution.ds = ds
    yield from ds.iter_rows()
    if stats is not None:
        stats.update(execution_stats(ds))


def execution_stats(ds: ray.data.Dataset) -> dict:
    """Object-store spilling of an executed dataset, as Ray Data's stats report it (None where this Ray version
    does not: the summary is not a public API)."""
    try:
        summary = ds._get_stats_summary()
        return {
            "spilled_bytes": int(summary.global_bytes_spilled),
            "restored_bytes": int(summary.global_bytes_restored),
        }
    except Exception:
        return {"spilled_bytes": None, "restored_bytes": None}
