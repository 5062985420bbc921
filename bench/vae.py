"""Benchmark: VAE encode throughput of the latents stage, as a ratio to decoding the same clips' frames.

Builds tiny randomly initialised diffusers VAEs (the test configs: Wan, CogVideoX, an image AutoencoderKL), saves
each to a folder and loads it back through `annotators.vae.load_vae`, then encodes real corpus clips (17 frames
at 64x112, a 16:9 bucket of the test preset) at batch sizes 1, 4 and 16. The baseline is decoding those frames
from the source video in the same run (`curation.decode.iter_frames`): encode_time / decode_time says how much the
latents stage adds to a clip's cost. It also reports bytes per clip-second of the same clips stored raw (uint8),
as video (the default `frames.store = video` codec) and as latents (float16 at a Wan-shaped 16-channel grid,
zstd level 1 as the shards compress them). With `--gpu`, also a Wan-sized random VAE (base_dim 96, z_dim 16) at 480p in
bfloat16: clips/s and peak memory.

    python bench/vae.py [--clips 16] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotators.vae import LatentConfig, load_vae  # noqa: E402


def corpus_clips(n: int, frames: int, size: tuple[int, int]) -> tuple[list[np.ndarray], float]:
    """`n` clips of `frames` frames at `size` (h, w) from the sample corpus, and the seconds decoding them took."""
    from curation.decode import iter_frames, probe_video
    from pipelines.samples import generate_corpus

    corpus = ROOT / "bench" / ".cache" / "corpus"
    if not corpus.exists() or not any(corpus.iterdir()):
        generate_corpus(corpus)
    videos = sorted(p for p in corpus.iterdir() if p.suffix in (".mp4", ".mkv", ".mov"))
    clips, seconds = [], 0.0
    while len(clips) < n:
        for video in videos:
            info = probe_video(str(video))
            if info.n_frames < frames or len(clips) >= n:
                continue
            t0 = time.perf_counter()
            got = [rgb for _, _, rgb in iter_frames(str(video), info, size=(size[1], size[0]), indices=range(frames))]
            seconds += time.perf_counter() - t0
            clips.append(np.stack(got).astype(np.uint8))
    return clips, seconds


def build(kind: str, folder: Path, big: bool = False) -> None:
    import diffusers

    from tests.test_vae import tiny_cogvideox, tiny_image_vae, tiny_wan

    torch.manual_seed(0)
    if big:
        model = diffusers.AutoencoderKLWan(base_dim=96, z_dim=16, latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    else:
        model = {"wan": tiny_wan, "cogvideox": tiny_cogvideox, "image": tiny_image_vae}[kind]()
    model.save_pretrained(folder)


def time_encode(vae, clips: list[np.ndarray], batch: int) -> float:
    vae.encode(np.stack(clips[:1]))  # warm-up: first-call allocations
    t0 = time.perf_counter()
    for i in range(0, len(clips), batch):
        vae.encode(np.stack(clips[i : i + batch]))
    if vae.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def storage(clips: list[np.ndarray], fps: float = 8.0) -> dict:
    """Bytes per clip-second of `clips` stored raw, as video and as Wan-shaped latents (16 channels, 8x, 4x)."""
    import tempfile as tf

    import pyarrow as pa

    from curation.video_store import VideoCodec, encode_video

    with tf.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "wan16"
        import diffusers

        torch.manual_seed(0)
        diffusers.AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            latents_mean=[0.0] * 16,
            latents_std=[1.0] * 16,
        ).save_pretrained(folder)
        vae = load_vae(LatentConfig(model_path=str(folder), device="cpu"))
        seconds = sum(len(c) for c in clips) / fps
        raw = sum(c.nbytes for c in clips)
        video = sum(len(encode_video(c, VideoCodec(), fps)) for c in clips)
        latents = [vae.encode(c[None])[0].numpy().astype(np.float16) for c in clips]
        codec = pa.Codec("zstd", compression_level=1)
        latent = sum(len(codec.compress(z.tobytes())) for z in latents)
    return {
        "raw_kb_per_s": round(raw / seconds / 1e3, 1),
        "video_kb_per_s": round(video / seconds / 1e3, 1),
        "latent_kb_per_s": round(latent / seconds / 1e3, 1),
        "raw_over_video": round(raw / video, 1),
        "raw_over_latent": round(raw / latent, 1),
        "latent_shape": list(latents[0].shape),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--gpu", action="store_true", help="also a Wan-sized VAE at 480p in bfloat16 on CUDA")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    clips, decode_s = corpus_clips(args.clips, 17, (64, 112))
    report: dict = {"clips": len(clips), "decode_s": round(decode_s, 3), "threads": torch.get_num_threads()}
    report["storage_17x64x112"] = storage(clips)
    big, _ = corpus_clips(min(args.clips, 6), 17, (256, 448))
    report["storage_17x256x448"] = storage(big)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("wan", "cogvideox", "image"):
            folder = Path(tmp) / kind
            build(kind, folder)
            vae = load_vae(LatentConfig(model_path=str(folder), device="cpu"))
            rows = {}
            for batch in (1, 4, 16):
                seconds = time_encode(vae, clips, batch)
                rows[f"batch_{batch}"] = {
                    "clips_per_s": round(len(clips) / seconds, 2),
                    "encode_over_decode": round(seconds / decode_s, 2),
                }
            report[kind] = rows
        if args.gpu and torch.cuda.is_available():
            folder = Path(tmp) / "wan_big"
            build("wan", folder, big=True)
            vae = load_vae(LatentConfig(model_path=str(folder), device="cuda", dtype="bfloat16"))
            video = np.random.default_rng(0).integers(0, 255, (17, 480, 832, 3), dtype=np.uint8)
            torch.cuda.reset_peak_memory_stats()
            seconds = time_encode(vae, [video] * 4, 1)
            report["wan_480p_bf16_gpu"] = {
                "clips_per_s": round(4 / seconds, 3),
                "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
