"""Typed run configuration: frozen dataclasses loaded from a TOML preset plus `--set section.key=value` overrides.

Each stage defines its own config class next to the code that uses it; `RunConfig` composes them. Everything is
validated up front so a bad key or value fails before any video is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
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
from annotators.warped_noise import NoiseConfig
from curation.buckets import BucketConfig
from curation.dedup import DedupConfig
from curation.filters import FilterConfig
from curation.ingest import IngestConfig
from curation.sampling import FramesConfig
from curation.scenes import SceneConfig
from curation.shards import ShardConfig
from pipelines.faults import FaultConfig

MIN_FLOW_SIDE = 16  # below this no flow backend resolves anything (annotators.flow rejects such frames too)


FINALIZE_ONLY = ("filters", "dedup")  # config sections used only by the driver's global selection
FINALIZE_ONLY_KEYS = {"events": ("top_fraction", "drop_diffuse")}  # keys of other sections used only there too


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


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
    fault: FaultConfig = dataclasses.field(default_factory=FaultConfig)  # tests only: make one clip fail

    def __post_init__(self) -> None:
        sizes = (self.num_cpus, self.object_store_mb, self.model_actors, self.data_cpus, self.data_object_store_mb)
        if min(*sizes, self.retry_rounds) < 0:
            raise ConfigError(
                "runtime.num_cpus, object_store_mb, model_actors, data_cpus, data_object_store_mb and retry_rounds "
                "must be >= 0"
            )
        if not 0 < self.gpus_per_actor <= 8:
            raise ConfigError(f"runtime.gpus_per_actor must be in (0, 8], got {self.gpus_per_actor}")
        if self.clip_batch < 1:
            raise ConfigError("runtime.clip_batch must be >= 1")
        if self.progress_every_s <= 0:
            raise ConfigError("runtime.progress_every_s must be > 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The whole pipeline's configuration, one section per stage."""

    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    scenes: SceneConfig = dataclasses.field(default_factory=SceneConfig)
    frames: FramesConfig = dataclasses.field(default_factory=FramesConfig)
    buckets: BucketConfig = dataclasses.field(default_factory=BucketConfig)
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    motion: MotionConfig = dataclasses.field(default_factory=MotionConfig)
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    events: EventConfig = dataclasses.field(default_factory=EventConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    aesthetics: AestheticsConfig = dataclasses.field(default_factory=AestheticsConfig)
    captions: CaptionConfig = dataclasses.field(default_factory=CaptionConfig)
    filters: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    shards: ShardConfig = dataclasses.field(default_factory=ShardConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        """Checks that span sections: what the annotators need from the stored frames, what filters need."""
        self._check_filters()
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
    the runtime and what only the run's final selection reads (`FINALIZE_ONLY`, `FINALIZE_ONLY_KEYS`)."""
    data = {k: v for k, v in config.items() if k not in ("runtime", *FINALIZE_ONLY)}
    for section, keys in FINALIZE_ONLY_KEYS.items():
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


def load_dataclass(cls: type, path: Path, overrides: typing.Sequence[str] = ()) -> Any:
    """Build config dataclass `cls` from a TOML file plus `section.key=value` overrides; ConfigError names the key."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    for item in overrides:
        apply_override(data, item)
    return build(cls, data, prefix="")


def apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    *sections, leaf = key.strip().split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {section!r} is not a section")
    node[leaf] = parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    """Parse a CLI value as a TOML literal (numbers, booleans, arrays); anything else stays a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def build(cls: type, data: Any, prefix: str) -> Any:
    """Construct dataclass `cls` from a dict, rejecting unknown keys and wrong types with the key's full name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known in this section: {known})")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from e


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        _, value_type = typing.get_args(hint)
        return {str(k): _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(t, v, key) for t, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has an invalid value {value!r}")
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be null")
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value
