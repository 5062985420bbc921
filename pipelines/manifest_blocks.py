"""What a run's manifest records of its configuration beyond the shards: the noise, latents, frame storage, bucket
and appearance blocks, with the symbolic shapes (`Dims`) a reader needs before opening a shard."""

from __future__ import annotations

import dataclasses

from pipelines.clip_writer import flow_grid, tensor_columns
from pipelines.config import RunConfig


def manifest_extra(cfg: RunConfig) -> dict:
    """What a training job must know about the shard tensors: shapes, dtypes, and the noise's latent grid."""
    dims = Dims.of(cfg)
    t, steps = dims.t, dims.steps
    fc = cfg.frames
    tensors: dict[str, dict] = {}
    if fc.store != "none":
        storage = fc.video_codec.dtype if fc.store == "video" else "raw"
        tensors["frames"] = {"dtype": "uint8", "shape": [t, dims.h, dims.w, 3], "storage": storage}
    columns = tensor_columns(cfg)
    extra: dict = {"tensors": tensors, "buckets": buckets_block(cfg), "frames_store": frames_store_block(cfg)}
    if "flow" in columns:
        s = cfg.flow.store_scale
        if not cfg.buckets.enabled:
            fh, fw = flow_grid(cfg)
            stored = [fh // s, fw // s]
        else:  # per bucket: the frames' size (or the short side flow.short_side), and that / store_scale
            fh, fw = ("H", "W") if not cfg.flow.short_side else ("h", "w")
            stored = [fh, fw] if s == 1 else [f"{fh}/{s}", f"{fw}/{s}"]
        tensors["flow"] = {"dtype": "float16", "shape": [steps, 2, *stored], "layout": "forward t->t+1, (dx, dy) px"}
        tensors["global_homography"] = {"dtype": "float32", "shape": [steps, 3, 3]}
        extra["flow"] = {"backend": cfg.flow.backend, "grid": [fh, fw], "store_scale": s, "stored_grid": stored}
    if "warped_noise" in columns:
        from annotators.noise_warp_version import WARPER_VERSION

        nc = cfg.noise
        grid = dims.grid(nc.factor)
        tensors["warped_noise"] = {"dtype": "float16", "shape": [dims.latent_t(nc.temporal_factor), nc.channels, *grid]}
        extra["noise"] = {
            "channels": nc.channels,
            "factor": nc.factor,
            "grid": grid,
            "temporal_factor": nc.temporal_factor,
            "temporal": nc.temporal if nc.temporal_factor > 1 else "every frame",
            "warp_scale": nc.warp_scale,
            "seed": nc.seed,
            "warper_version": WARPER_VERSION,
            "beta_applied": False,  # pure warped noise: mix with independent noise at training time
        }
    if "camera_c2w" in columns:
        from annotators.qcm import KEYS, MOUSE

        tensors["camera_c2w"] = {"dtype": "float32", "shape": [t, 4, 4], "layout": "camera-to-world, OpenCV axes"}
        tensors["camera_tokens"] = {"dtype": "int16", "shape": [steps]}
        tensors["camera_intrinsics"] = {"dtype": "float32", "shape": [3, 3], "layout": "pinhole K on the flow grid"}
        extra["camera"] = {
            "fov_x_deg": cfg.camera.fov_x_deg,
            "qcm": dataclasses.asdict(cfg.camera.qcm),
            "keys": list(KEYS),
            "mouse": list(MOUSE),
            "token": "key_index * 9 + mouse_index",
            "translation_units": "parallax: radians of view angle per step (monocular video has no metric scale)",
        }
    if "event_activity" in columns:
        ec = cfg.events
        grid = dims.grid(ec.cell)
        et = dims.latent_t(ec.temporal_factor)
        layout = "frame t: change t-1 -> t" if ec.temporal_factor == 1 else "latent frame k: max over frames 4k-3..4k"
        tensors["event_activity"] = {"dtype": "float16", "shape": [et, *grid], "layout": layout}
        tensors["event_active"] = {"dtype": "uint8", "shape": [et, *grid]}
        tensors["event_phase"] = {"dtype": "float16", "shape": [et]}
        extra["events"] = {
            "grid": grid,
            "temporal_factor": ec.temporal_factor,
            "cell": ec.cell,
            "use_camera": ec.use_camera,
            "frame_change": ec.frame_change,
            "hysteresis": {"on": ec.on, "off": ec.off},
            "source": ec.source,
            "score_units": "frame diagonals per second, camera-compensated"
            if ec.source == "flow"
            else "normalised latent units per latent step, camera-compensated",
        }
    if "clip_embedding" in columns:
        tensors["clip_embedding"] = {"dtype": "float16", "shape": ["D"], "layout": "unit-norm mean image embedding"}
    if "latents" in columns:
        extra["latents"] = latents_block(cfg)
        spec = extra["latents"]
        shape = [spec["channels"], dims.latent_t(spec["temporal_factor"]), *dims.grid(spec["spatial_factor"])]
        tensors["latents"] = {"dtype": cfg.latents.store_dtype, "shape": shape, "layout": "normalised, (C, T', h, w)"}
    if "text_embedding" in columns:
        from annotators.text_encoder import check_text_encoder

        extra["text_encoder"] = check_text_encoder(cfg.text_encoder)
        dim = extra["text_encoder"]["dim"]
        tensors["text_embedding"] = {"dtype": "float16", "shape": ["L", dim], "layout": "trimmed to the real tokens"}
    extra["appearance"] = appearance_block(cfg)
    return extra


@dataclasses.dataclass(frozen=True)
class Dims:
    """The stored clip dimensions the manifest's tensor shapes are written in: numbers for the single [frames] shape,
    the symbols T, H and W (per bucket, see the manifest's `buckets`) with buckets."""

    t: int | str
    h: int | str
    w: int | str

    @classmethod
    def of(cls, cfg: RunConfig) -> Dims:
        if cfg.buckets.enabled:
            return cls("T", "H", "W")
        return cls(cfg.frames.num_frames, cfg.frames.height, cfg.frames.width)

    @property
    def steps(self) -> int | str:
        return self.t - 1 if isinstance(self.t, int) else "T-1"

    def latent_t(self, factor: int) -> int | str:
        """Latent frames of a VAE with temporal factor `factor` (1: every frame)."""
        if factor == 1:
            return self.t
        return 1 + (self.t - 1) // factor if isinstance(self.t, int) else f"1+(T-1)/{factor}"

    def grid(self, factor: int) -> list[int | str]:
        if isinstance(self.h, int) and isinstance(self.w, int):
            return [self.h // factor, self.w // factor]
        return [f"H/{factor}", f"W/{factor}"]


def latents_block(cfg: RunConfig) -> dict:
    """The VAE behind the `latents` tensor: class, config and weights hashes, normalisation, frame rule, settings."""
    from pathlib import Path

    from annotators.vae import describe_vae, folder_hashes

    lc = cfg.latents
    spec = describe_vae(lc.model_path)
    config_sha, weights_sha = folder_hashes(Path(lc.model_path).expanduser())
    spec = dataclasses.replace(spec, config_sha256=config_sha, weights_sha256=weights_sha)
    return {
        **spec.as_dict(),
        "posterior": "sample" if lc.sample else "mean",
        "seed": lc.seed if lc.sample else None,
        "dtype": lc.dtype,
        "store_dtype": lc.store_dtype,
    }


def frames_store_block(cfg: RunConfig) -> dict:
    """How the stored frames are kept: raw uint8 bytes, an encoded stream (codec settings), or not at all."""
    fc = cfg.frames
    if fc.store != "video":
        return {"store": fc.store}
    codec = fc.video_codec
    bitstream = "Annex-B" if codec.codec == "h264" else "OBU"  # no container: curation.video_store's header
    return {"store": "video", **dataclasses.asdict(codec), "bitstream": bitstream, "dtype": codec.dtype}


def buckets_block(cfg: RunConfig) -> dict:
    """The manifest's record of how clips were shaped: the buckets (or the one [frames] shape) and the rules."""
    bc, fc = cfg.buckets, cfg.frames
    return {
        "enabled": bc.enabled,
        "buckets": [f"{t}x{h}x{w}" for t, h, w in cfg.stored_shapes()],
        "resize": "cover" if bc.enabled else fc.resize,
        "fps": fc.fps,
        "stride": fc.stride,
        "windows": fc.windows if bc.enabled else 1,
        "frame_rule": "1 + 4k" if bc.enabled else "frames.num_frames",
        "max_upscale": bc.max_upscale if bc.enabled else None,
    }


def appearance_block(cfg: RunConfig) -> dict:
    """Which appearance models produced the run's scores and captions ("none" when no weights were configured)."""
    ac, cc = cfg.aesthetics, cfg.captions
    return {
        "quality": dataclasses.asdict(cfg.quality),
        "aesthetics": {
            "model_path": ac.model_path or "none",
            "model_name": ac.model_name if ac.model_path else None,
            "head_path": ac.head_path or "none",
            "num_frames": ac.num_frames,
        },
        "captions": {
            "model_path": cc.model_path or "none",
            "prompt": cc.prompt if cc.model_path else None,
            "prompt_version": cc.resolved_prompt_version if cc.model_path else None,
            "num_frames": cc.num_frames,
            "max_new_tokens": cc.max_new_tokens,
        },
    }
