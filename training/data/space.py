"""Pixel or latent space: what the source's manifests say about the VAE and the text encoder, checked for one
identity across runs (and against a pinned one), plus the time alignment of per-frame annotations to latent frames.

A causal video VAE (Wan, CogVideoX) maps 1 + 4k frames to 1 + k latent frames: latent frame 0 is frame 0 alone,
latent frame k >= 1 the group of frames 4k-3 .. 4k (`frame_to_latent`). Everything per frame follows that grouping:

* camera tokens: step i moves frame i to i + 1, so latent step k-1 (latent k-1 -> k) is made of the source steps
  4(k-1) .. 4k-1, the ones that lead into frames 4k-3 .. 4k. Its token is the most frequent of those steps; a tie
  goes to the one among the tied that occurs last (the camera's latest motion in the group). QCM tokens come from
  motion segments, so a group is usually uniform; the majority keeps a one-step blip at a boundary from deciding.
* event maps stored per frame (T): latent frame k takes the max over its group (what the pipeline stores at T'
  when it knows the VAE: "latent frame k: max over frames 4k-3..4k"). Maps stored at T' used in pixel space are
  repeated over each group.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation import storage
from curation.shards import read_manifest
from curation.snapshot import SNAPSHOT_FILE
from training.data.config import SPACES


def vae_id(block: dict[str, Any] | None) -> str:
    """The manifest's VAE hash (class, config and weights), "" without latents."""
    if not block:
        return ""
    if block.get("vae_hash"):
        return str(block["vae_hash"])
    key = f"{block.get('cls')}:{block.get('config_sha256')}:{block.get('weights_sha256')}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def text_encoder_id(block: dict[str, Any] | None) -> str:
    """One id for "the same text embeddings": class, weights (with the tokenizer files) and max length."""
    if not block:
        return ""
    key = f"{block.get('cls')}:{block.get('weights_sha256')}:{block.get('max_length')}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DataSpace:
    """What a source holds, the same for every run of it."""

    kind: str  # "pixel" | "latent"
    channels: int  # 3 in pixel space, the VAE's latent channels otherwise
    temporal_factor: int  # 1 in pixel space or for an image VAE
    vae: dict[str, Any] | None  # the manifest's `latents` block (latent space only)
    text: dict[str, Any] | None  # the manifest's `text_encoder` block when every run stores text embeddings

    @property
    def vae_hash(self) -> str:
        return vae_id(self.vae) if self.kind == "latent" else ""

    @property
    def text_hash(self) -> str:
        return text_encoder_id(self.text)

    @property
    def text_dim(self) -> int:
        return int(self.text["dim"]) if self.text else 0

    @property
    def text_length(self) -> int:
        return int(self.text["max_length"]) if self.text else 0


def source_run_dirs(source: str | Path) -> list[storage.Location]:
    """The run directories behind a source (a local path or an object-store URL, `curation.storage`): itself, or
    every run a snapshot lists (in its order)."""
    where = storage.location(source)
    snapshot = storage.join(where, SNAPSHOT_FILE)
    if storage.exists(snapshot):
        record = storage.read_json(snapshot)
        return [storage.location(r["path"]) for r in record.get("runs", [])]
    return [where]


def _has_tensor(manifest: dict[str, Any], name: str) -> bool:
    return name in manifest.get("tensors", {})


def resolve_space(
    manifests: Sequence[tuple[str, dict[str, Any]]],
    space: str = "auto",
    vae_hash: str = "",
    text_encoder_hash: str = "",
) -> DataSpace:
    """The space of runs given as (where, manifest). "auto" is latent space when every run stores latents. Raises
    ValueError (one line) when runs mix VAEs or text encoders, when the runs' VAE or text encoder is not the pinned
    one (`vae_hash` / `text_encoder_hash`: the ones a training run was started with), or when `space` is latent and
    a run has no latents."""
    if space not in SPACES:
        raise ValueError(f"data.space must be one of {', '.join(SPACES)}, got {space!r}")
    if not manifests:
        raise ValueError("data: the source lists no runs")
    with_latents = [(w, m) for w, m in manifests if m.get("latents") and _has_tensor(m, "latents")]
    if space == "latent" and len(with_latents) < len(manifests):
        missing = next(w for w, m in manifests if (w, m) not in with_latents)
        raise ValueError(f"data.space=latent but {missing} stores no latents (pipeline: latents.model_path)")
    latent = space == "latent" or (space == "auto" and len(with_latents) == len(manifests))
    if space == "auto" and with_latents and not latent:
        raise ValueError(
            f"the source mixes runs with latents ({with_latents[0][0]}) and without: train on one kind, or set "
            "data.space=pixel"
        )
    vae: dict[str, Any] | None = None
    if latent:
        ids = {w: vae_id(m["latents"]) for w, m in manifests}
        if len(set(ids.values())) > 1:
            listed = ", ".join(f"{w}: {h}" for w, h in ids.items())
            raise ValueError(f"the source mixes latents of {len(set(ids.values()))} VAEs ({listed}): one VAE per run")
        vae = manifests[0][1]["latents"]
        found = vae_id(vae)
        if vae_hash and found != vae_hash:
            raise ValueError(
                f"the shards' latents come from VAE {found} ({vae.get('cls')}), but this training run was started with "
                f"VAE {vae_hash}: use shards encoded with that VAE, or a new --out"
            )
    with_text = [m for _, m in manifests if m.get("text_encoder") and _has_tensor(m, "text_embedding")]
    text: dict[str, Any] | None = None
    if len(with_text) == len(manifests):
        ids = {w: text_encoder_id(m["text_encoder"]) for w, m in manifests}
        if len(set(ids.values())) > 1:
            listed = ", ".join(f"{w}: {h}" for w, h in ids.items())
            raise ValueError(f"the source mixes text embeddings of {len(set(ids.values()))} encoders ({listed})")
        text = manifests[0][1]["text_encoder"]
    if text_encoder_hash:
        found = text_encoder_id(text)
        if found != text_encoder_hash:
            what = f"text encoder {found} ({text.get('cls')})" if text else "no text embeddings (in every run)"
            raise ValueError(
                f"the shards hold {what}, but this training run was started with text encoder {text_encoder_hash}: "
                "use shards embedded with that encoder, or a new --out"
            )
    if vae is None:
        return DataSpace("pixel", 3, 1, None, text)
    return DataSpace("latent", int(vae["channels"]), int(vae.get("temporal_factor") or 1), vae, text)


def read_space(source: str | Path, space: str = "auto", vae_hash: str = "", text_encoder_hash: str = "") -> DataSpace:
    """`resolve_space` over the manifests of a run or snapshot directory."""
    manifests = []
    for run in source_run_dirs(source):
        try:
            manifests.append((str(run), read_manifest(run)))
        except FileNotFoundError as e:
            raise ValueError(f"data: {run} has no shards manifest: {e}") from e
    return resolve_space(manifests, space, vae_hash, text_encoder_hash)


# ---------------------------------------------------------------------------------------------------------------
# Time alignment to latent frames


def latent_frames(num_frames: int, factor: int) -> int:
    """T' of T frames: 1 + (T - 1) // factor for a video VAE, T for factor 1."""
    return num_frames if factor <= 1 else 1 + (num_frames - 1) // factor


def frame_to_latent(num_frames: int, factor: int) -> np.ndarray:
    """(T,) the latent frame of every frame: 0 for frame 0, k for frames 4k-3 .. 4k (factor 4)."""
    i = np.arange(num_frames)
    return i if factor <= 1 else (i + factor - 1) // factor


def camera_tokens_to_latent(tokens: np.ndarray, factor: int) -> np.ndarray:
    """(T-1,) tokens per source step -> (T'-1,) per latent step: the majority of each group of `factor` steps,
    a tie going to the tied token that occurs last (see the module docstring)."""
    if factor <= 1:
        return tokens
    n = len(tokens) // factor
    out = np.empty(n, dtype=tokens.dtype)
    for k in range(n):
        group = tokens[k * factor : (k + 1) * factor].tolist()
        counts: dict[int, int] = {}
        last: dict[int, int] = {}
        for j, tok in enumerate(group):
            counts[tok] = counts.get(tok, 0) + 1
            last[tok] = j
        out[k] = max(counts, key=lambda tok: (counts[tok], last[tok]))
    return out


def events_to_frames(maps: np.ndarray, num_frames: int, factor: int) -> np.ndarray:
    """Event maps (n, gh, gw) stored at T or T' onto `num_frames` frames of the other grid: max over each group
    (T -> T'), or each latent frame repeated over its group (T' -> T); unchanged when n == num_frames."""
    n = maps.shape[0]
    if n == num_frames:
        return maps
    if factor > 1 and latent_frames(n, factor) == num_frames:  # per frame -> per latent frame
        owner = frame_to_latent(n, factor)
        return np.stack([maps[owner == k].max(axis=0) for k in range(num_frames)])
    if factor > 1 and latent_frames(num_frames, factor) == n:  # per latent frame -> per frame
        return maps[frame_to_latent(num_frames, factor)]
    raise ValueError(f"event maps have {n} frames, the clip {num_frames} (temporal factor {factor})")
