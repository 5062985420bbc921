"""VAE latents per clip: the stored frames encoded once in the pipeline, so training never runs the VAE.

The VAE and its adapters are in `annotators.vae`; this annotator batches a run's clips through it (clips of one
bucket shape together, `latents.batch_size` at a time, halved on out-of-memory) and stores the normalised latents
(C, T', h, w) as the shard tensor `latents`.
"""

from __future__ import annotations

from typing import ClassVar

from annotators.base import AnnotatorError, Batch, error_text, object_array
from annotators.vae import LatentConfig, encode_batches, load_vae


class LatentEncoder:
    """Normalised VAE latents (C, T', H/f, W/f) per clip from its `frames` column."""

    name: ClassVar[str] = "latents"
    output_columns: ClassVar[tuple[str, ...]] = ("latents", "latents_error")

    def __init__(self, cfg: LatentConfig) -> None:
        self.cfg = cfg
        self.vae = load_vae(cfg)

    def __call__(self, batch: Batch) -> Batch:
        frames = list(batch["frames"])
        latents: list = [None] * len(frames)
        errors: list = [None] * len(frames)
        usable = []
        for i, clip in enumerate(frames):
            try:
                self.vae.check_frames(int(clip.shape[0]))
                usable.append(i)
            except ValueError as e:
                errors[i] = error_text(AnnotatorError("bad_latent_frames", str(e)))
        for i, result in zip(usable, encode_batches(self.vae, [frames[i] for i in usable]), strict=True):
            if isinstance(result, AnnotatorError):
                errors[i] = error_text(result)
            else:
                latents[i] = result
        return {"clip_id": batch["clip_id"], "latents": object_array(latents), "latents_error": object_array(errors)}
