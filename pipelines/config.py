"""Typed run configuration: frozen dataclasses loaded from a TOML preset plus `--set section.key=value` overrides.

Each stage defines its own config class next to the code that uses it; `RunConfig` composes them. Everything is
validated up front so a bad key or value fails before any video is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from annotators.aesthetics import AestheticsConfig
from annotators.camera import CameraConfig
from annotators.captions import CaptionConfig
from annotators.events import EventConfig
from annotators.flow import FlowConfig, working_size
from annotators.motion import MotionConfig
from annotators.quality import QualityConfig
from annotators.text_encoder import TextEncoderConfig
from annotators.vae import LatentConfig, VaeError, describe_vae
from annotators.warped_noise import NoiseConfig
from curation.buckets import DEFAULT_ASPECTS, BucketConfig
from curation.dedup import DedupConfig
from curation.filters import FilterConfig
from curation.ingest import IngestConfig
from curation.sampling import FramesConfig
from curation.scenes import SceneConfig
from curation.shards import ShardConfig
from curation.typed_config import ConfigError, build, load_dataclass

__all__ = ["ConfigError", "RunConfig", "build", "load_config", "load_dataclass", "preset_path", "work_settings"]
from pipelines.faults import FaultConfig

MIN_FLOW_SIDE = 16  # below this no flow backend resolves anything (annotators.flow rejects such frames too)


FINALIZE_ONLY = ("filters", "dedup")  # config sections used only by the driver's global selection
FINALIZE_ONLY_KEYS = {"events": ("top_fraction", "drop_diffuse")}  # keys of other sections used only there too
# Keys that change how the per-video work runs but not what it produces (kept frames equal decoded ones bit for bit).
HOW_ONLY_KEYS = {
    "scenes": ("keep_frames", "frame_buffer_mb", "frame_spill_mb", "transnet_device", "transnet_batch"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How the DAG runs: Ray resources and progress reporting."""

    num_cpus: int = 0  # 0 = every CPU of this machine (local Ray only)
    object_store_mb: int = 0  # 0 = Ray's default (30% of RAM)
    ray_address: str = ""  # empty = start a local Ray; also settable with --ray-address or RAY_ADDRESS
    progress_every_s: float = 10.0  # how often the driver logs a progress line
    clip_batch: int = 4  # clips of a video annotated together (model annotators batch across them)
    model_actors: int = 0  # clips actors when a model is configured; 0 = one per GPU, or one per 2 CPUs without GPUs
    gpus_per_actor: float = 1.0  # GPUs each of those actors requests on a cluster with GPUs (0.5 = two per GPU)
    node_ip: str = ""  # this driver's node address; empty = Ray's choice (a loopback --ray-address implies it)
    data_cpus: float = 0.0  # CPUs the pipeline's datasets may use at once; 0 = all of the cluster's
    data_object_store_mb: int = 0  # object store the datasets may fill before back-pressure; 0 = Ray Data's default
    retry_rounds: int = 1  # passes over the videos Ray gave up on (lost node or actor) before the run ends partial
    # Seconds without a finished video, while videos remain, before the driver stops the execution and retries what
    # is left (a cluster shrunk below what an actor pool needs makes Ray Data wait forever); 0 = wait forever. It
    # must exceed the slowest single video's work: minutes for an hour-long video with a captioner.
    stall_timeout_s: float = 1800.0
    # Finished videos between two compactions of the run's records into batch files while the run goes (the driver
    # does it in the background, `pipelines.compaction`); 0 = only at the end of the run.
    compact_every: int = 10_000
    # Processes finalize reads the records with (`pipelines.collect`); 0 = this machine's CPUs, at most 4, for runs
    # of 20,000 inputs or more (below that, starting the processes costs more than they save).
    collect_workers: int = 0
    fault: FaultConfig = dataclasses.field(default_factory=FaultConfig)  # tests only: make one clip fail

    def __post_init__(self) -> None:
        sizes = (self.num_cpus, self.object_store_mb, self.model_actors, self.data_cpus, self.data_object_store_mb)
        if min(*sizes, self.retry_rounds, self.compact_every, self.collect_workers) < 0:
            raise ConfigError(
                "runtime.num_cpus, object_store_mb, model_actors, data_cpus, data_object_store_mb, retry_rounds, "
                "compact_every and collect_workers must be >= 0"
            )
        if not 0 < self.gpus_per_actor <= 8:
            raise ConfigError(f"runtime.gpus_per_actor must be in (0, 8], got {self.gpus_per_actor}")
        if self.clip_batch < 1:
            raise ConfigError("runtime.clip_batch must be >= 1")
        if self.progress_every_s <= 0:
            raise ConfigError("runtime.progress_every_s must be > 0")
        if self.stall_timeout_s < 0:
            raise ConfigError(f"runtime.stall_timeout_s must be >= 0 (0 = no watchdog), got {self.stall_timeout_s}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The whole pipeline's configuration, one section per stage."""

    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    scenes: SceneConfig = dataclasses.field(default_factory=SceneConfig)
    # The production defaults of default.toml: aspect-ratio buckets, each clip cut into up to 3 windows. The
    # sections alone (FramesConfig(), BucketConfig()) keep the single [frames] shape a preset gets with empty
    # [buckets].
    frames: FramesConfig = dataclasses.field(default_factory=lambda: FramesConfig(windows=3))
    buckets: BucketConfig = dataclasses.field(
        default_factory=lambda: BucketConfig(aspect_ratios=DEFAULT_ASPECTS, frames=(9, 17, 33, 49))
    )
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    motion: MotionConfig = dataclasses.field(default_factory=MotionConfig)
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    events: EventConfig = dataclasses.field(default_factory=EventConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    aesthetics: AestheticsConfig = dataclasses.field(default_factory=AestheticsConfig)
    captions: CaptionConfig = dataclasses.field(default_factory=CaptionConfig)
    latents: LatentConfig = dataclasses.field(default_factory=LatentConfig)
    text_encoder: TextEncoderConfig = dataclasses.field(default_factory=TextEncoderConfig)
    filters: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    shards: ShardConfig = dataclasses.field(default_factory=ShardConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        """Checks that span sections: what the annotators need from the stored frames, what filters need."""
        self._check_filters()
        self._fit_latent_grid()
        if self.flow.backend == "none":
            return
        what = "bucket frame counts" if self.buckets.enabled else "frames.num_frames"
        for t, h, w in self.stored_shapes():
            if t < 2:
                raise ConfigError(f"flow needs {what} >= 2 (got {t}); or set flow.backend=none")
            if min(w, h) < MIN_FLOW_SIDE:
                raise ConfigError(
                    f"flow needs frames of at least {MIN_FLOW_SIDE} px (frames are {w}x{h}); or set flow.backend=none"
                )
            size = f"{w}x{h}" + (" of a bucket" if self.buckets.enabled else " (frames.width x frames.height)")
            fh, fw = working_size(h, w, self.flow.short_side)
            if fh % self.flow.store_scale or fw % self.flow.store_scale:
                raise ConfigError(
                    f"flow.store_scale={self.flow.store_scale} must divide the flow grid {fw}x{fh} of frames {size}"
                )
            factor = self.noise.factor
            if self.noise.enabled and (w % factor or h % factor):
                raise ConfigError(
                    f"stored frames {size} must be multiples of noise.factor={factor} so the warped noise matches the "
                    "latent grid"
                )
            cell = self.events.cell
            if self.events.enabled and (w % cell or h % cell):
                raise ConfigError(
                    f"stored frames {size} must be multiples of events.cell={cell} so the event maps sit on the "
                    "token grid"
                )

    def _fit_latent_grid(self) -> None:
        """With a VAE, the latent grid is the VAE's: the warped noise takes its channels, spatial factor and latent
        frames (read from the folder's config.json; the weights are checked before any work, in preflight), and
        every stored shape must map to whole latent frames and cells."""
        if not self.latents.enabled:
            if self.events.enabled and self.events.source == "latent":
                raise ConfigError("events.source=latent measures change in the VAE latents: set latents.model_path")
            return
        try:
            spec = describe_vae(self.latents.model_path)
        except VaeError as e:
            raise ConfigError(f"latents.model_path: {e}") from e
        grid = {"channels": spec.channels, "factor": spec.spatial_factor, "temporal_factor": spec.temporal_factor}
        object.__setattr__(self, "noise", dataclasses.replace(self.noise, **grid))  # frozen: set once, here
        events = dataclasses.replace(self.events, temporal_factor=spec.temporal_factor)
        object.__setattr__(self, "events", events)
        for t, h, w in self.stored_shapes():
            if spec.temporal_factor > 1 and (t - 1) % spec.temporal_factor:
                raise ConfigError(
                    f"latents: {spec.cls} encodes 1 + {spec.temporal_factor}k frames; stored clips of {t} frames "
                    "would lose their last ones (set bucket frames, or frames.num_frames, to 1 + 4k)"
                )
            if h % spec.spatial_factor or w % spec.spatial_factor:
                raise ConfigError(
                    f"latents: stored frames {w}x{h} must be multiples of the VAE's spatial factor "
                    f"{spec.spatial_factor}"
                )

    def stored_shapes(self) -> list[tuple[int, int, int]]:
        """Every (num_frames, height, width) a clip of this configuration can be stored at: the buckets, or the one
        shape of `[frames]`."""
        if self.buckets.enabled:
            return [(b.num_frames, b.height, b.width) for b in self.buckets.buckets()]
        return [(self.frames.num_frames, self.frames.height, self.frames.width)]

    def _check_filters(self) -> None:
        """A threshold on a score this configuration never computes would silently keep every clip."""
        needs = {
            "aesthetic_score": (bool(self.aesthetics.head_path), "aesthetics.head_path"),
            "motion_": (self.flow.backend != "none", "flow.backend other than none"),
            "camera_": (self.flow.backend != "none" and self.camera.enabled, "camera.enabled and a flow backend"),
            "event_": (self.flow.backend != "none" and self.events.enabled, "events.enabled and a flow backend"),
            "qcm_": (self.flow.backend != "none" and self.camera.enabled, "camera.enabled and a flow backend"),
        }
        for column in sorted(self.filters.columns):
            for prefix, (available, requirement) in needs.items():
                if column.startswith(prefix) and not available:
                    raise ConfigError(f"filters on {column} need {requirement}: that score is not computed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def work_hash(self) -> str:
        """Hash of `work_settings`: a run directory is tied to it. The selection settings may change between runs of
        the same directory: rerunning with new thresholds re-selects clips from the recorded scores without
        recomputing them."""
        return _hash(work_settings(self.to_dict()))

    def content_hash(self, exclude: tuple[str, ...] = ("runtime",)) -> str:
        """Hash of the settings that change outputs (runtime knobs excluded), recorded in manifests."""
        return _hash({k: v for k, v in self.to_dict().items() if k not in exclude})


def work_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved config (`RunConfig.to_dict()`) that the per-video work depends on: everything but
    the runtime, what only the run's final selection reads (`FINALIZE_ONLY`, `FINALIZE_ONLY_KEYS`) and settings of how
    the work runs that do not change its results (`HOW_ONLY_KEYS`)."""
    data = {k: v for k, v in config.items() if k not in ("runtime", *FINALIZE_ONLY)}
    for section, keys in [*FINALIZE_ONLY_KEYS.items(), *HOW_ONLY_KEYS.items()]:
        if section in data:
            data[section] = {k: v for k, v in data[section].items() if k not in keys}
    return data


def _hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def preset_path(name: str) -> Path:
    """Path of a preset shipped in `pipelines/configs/` (e.g. 'default', 'smoke')."""
    return Path(str(resources.files("pipelines") / "configs" / f"{name}.toml"))


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Load a TOML preset (default preset when None) and apply `section.key=value` overrides."""
    return load_dataclass(RunConfig, Path(path) if path else preset_path("default"), overrides)
