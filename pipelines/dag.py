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

import warnings
from collections.abc import Iterator
from pathlib import Path

import ray

from pipelines.annotate import model_annotators
from pipelines.config import RunConfig
from pipelines.steps import ClipsStep, Row, make_clips_fn, make_ingest_fn, make_scenes_fn

# A decoder that crashes its worker is retried once, then the block is given up (and recorded by the driver).
# Ray Data's default is to retry forever, which turns one deterministic decoder crash into a hung run. There is
# no named parameter for this yet, so it goes through `ray_remote_args` (deprecation warning silenced below).
_RETRY = {"max_retries": 1}
_ACTOR_RETRY = {"max_restarts": 1, "max_task_retries": 1}  # the same policy for actors
warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)


def run_ingest(rows: list[Row], cfg: RunConfig, run_dir: Path) -> Iterator[Row]:
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))  # one block per input: crashes stay local
    ds = ds.map(make_ingest_fn(cfg, run_dir), num_cpus=0.5, **_RETRY)  # 1:1 probe; mostly I/O, so 2 per core
    yield from ds.iter_rows()


def run_video_steps(rows: list[Row], cfg: RunConfig, run_dir: Path, steps: tuple[str, ...]) -> Iterator[Row]:
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))  # one block per video
    if "scenes" in steps:
        ds = ds.map(make_scenes_fn(cfg, run_dir), num_cpus=1, **_RETRY)  # 1:1 low-res decode + PySceneDetect
    if "clips" in steps and (models := model_annotators(cfg)):
        gpus = int(ray.cluster_resources().get("GPU", 0)) if set(models.values()) != {"cpu"} else 0
        # Models (RAFT, open_clip, the captioner) load once per actor: one actor per GPU (or per 2 CPUs without one)
        # decodes, runs flow, scores, captions and writes shards (1:1 per video). Inside, clips are annotated
        # runtime.clip_batch at a time and each model runs its own batch size (flow.batch_size frame pairs,
        # aesthetics.batch_size images, captions.batch_size clips). An actor that dies is restarted once, its task
        # retried once.
        ds = ds.map(
            ClipsStep,
            fn_constructor_args=(cfg, run_dir),
            concurrency=gpus or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2),
            num_cpus=1,
            num_gpus=1 if gpus else 0,
            **_ACTOR_RETRY,
        )
    elif "clips" in steps:
        ds = ds.map(make_clips_fn(cfg, run_dir), num_cpus=1, **_RETRY)  # 1:1 decode, annotate (DIS flow) -> shards
    yield from ds.iter_rows()
