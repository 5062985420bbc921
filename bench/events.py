"""Benchmark: event pseudo-targets (EVD) against the sample corpus's object truth, and the stage's cost on CPU.

Every single-shot sample video is annotated as one clip. Reported per configuration:
- temporal IoU of the main active window with the true motion window (clipped to the sampled frames and to the
  steps where the object is inside the stored frame); the frames IoU: sampled frames with any active cell against
  sampled frames reached through true motion since the previous one (`curation.metrics.sampled_motion`), which
  counts every burst of motion, not one window (a clip whose objects move at two separate times has one window
  spanning the idle gap); and the share of activity mass inside the true object boxes, for the videos with moving
  objects (goals: >= 0.8, >= 0.7);
- camera-only false activation: the share of (frame, cell) positions switched on, over every video whose camera
  moves with nothing else moving, and how many of those clips look confident (confidence >= 0.5, not diffuse);
- the event-score margin: the weakest object clip's score over the strongest camera-only clip's;
- seconds per clip of the events stage, and as a ratio to the flow stage measured in the same run.
Configurations: the golden one (448x256, 28 frames at 8 fps, the whole 16:9 frame), the default preset
(256x256 cover crop, 16 frames), and ablations without the camera's epipolar geometry and with frame change.
With `--vae DIR` (a diffusers video VAE folder, or `tiny` for a randomly initialised tiny Wan VAE) two more, at
29 frames (1 + 4k) with the maps at the VAE's latent frames: `events.source = flow` (recipe A) and `latent`
(EVD's recipe B, change of the stored latents). A random tiny VAE says how the machinery behaves, not what a
trained VAE's latents give.

    python bench/events.py [--json OUT] [--vae DIR|tiny] [--only-vae]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.decode import probe_video  # noqa: E402
from curation.metrics import (  # noqa: E402
    event_mass_in_boxes,
    frames_iou,
    interval_iou,
    sampled_motion,
    true_event_window,
    true_moving_steps,
)
from curation.sampling import decode_size  # noqa: E402
from pipelines.annotate import annotate_file, annotators_for  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.samples import generate_corpus, load_truth  # noqa: E402

SINGLE = "buckets.aspect_ratios=[]"  # the [frames] shape below, not the default preset's aspect buckets
GOLDEN = [SINGLE, "frames.width=448", "frames.height=256", "frames.num_frames=28"]
CONFIGS = {
    "golden 448x256x28": GOLDEN,
    "default 256x256x16": [SINGLE],
    "golden, no camera epipolar": [*GOLDEN, "events.use_camera=false"],
    "golden, + frame change": [*GOLDEN, "events.frame_change=true"],
}


def single_shot_videos(cache: Path) -> list[Path]:
    # near-duplicates (truth "duplicate_of") would count their source twice
    return [p for p in generate_corpus(cache) if len((t := load_truth(p))["shots"]) == 1 and "duplicate_of" not in t]


def evaluate(videos: list[Path], overrides: list[str]) -> dict:
    cfg = load_config(None, overrides)
    frame_size = (cfg.frames.width, cfg.frames.height)
    objects, camera_only, per_video = [], [], {}
    active_cells = total_cells = 0
    for video in videos:
        truth = load_truth(video)
        out = annotate_file(str(video), cfg)
        info = probe_video(str(video))
        indices = out["frame_indices"]
        row = {
            "score": round(out["event_score"], 5),
            "confidence": round(out["event_confidence"], 3),
            "entropy": round(out["event_entropy"], 3),
            "diffuse": out["event_diffuse"],
            "window": [out["event_start_frame"], out["event_end_frame"]],
            "active_share": round(float(out["event_active"].mean()), 5),
        }
        sizes = (info.width, info.height), decode_size(info.width, info.height, cfg.frames), frame_size
        expected = true_event_window(truth, int(indices[0]), int(indices[-1]), sizes)
        if expected is not None:
            found = (out["event_start_frame"], out["event_end_frame"]) if out["event_start_frame"] is not None else None
            activity = out["event_activity"].astype(np.float32)
            map_indices = indices[:: cfg.events.temporal_factor]  # maps at latent frames: their source frames
            moving = sampled_motion(true_moving_steps(truth, int(indices[0]), int(indices[-1]), sizes), map_indices)
            active = out["event_active"].reshape(len(map_indices), -1).any(axis=1)
            row.update(
                true_window=list(expected),
                iou=round(interval_iou(found, expected), 3),
                frames_iou=round(frames_iou(active, moving), 3),
                mass_in_boxes=round(event_mass_in_boxes(activity, map_indices, truth, *sizes), 3),
            )
            objects.append(row)
        elif truth.get("camera", {}).get("motion", "static") != "static":
            camera_only.append(row)
            active_cells += int(out["event_active"].sum())
            total_cells += out["event_active"].size
        per_video[video.stem] = row
    seconds = annotators_for(cfg).seconds
    strongest_camera = max((r["score"] for r in camera_only), default=0.0)
    return {
        "overrides": overrides,
        "iou_min": min(r["iou"] for r in objects),
        "frames_iou_min": min(r["frames_iou"] for r in objects),
        "mass_in_boxes_min": min(r["mass_in_boxes"] for r in objects),
        "camera_only_false_activation": round(active_cells / max(total_cells, 1), 5),
        "camera_only_confident": sum(r["confidence"] >= 0.5 and not r["diffuse"] for r in camera_only),
        "camera_only_clips": len(camera_only),
        "score_margin": round(min(r["score"] for r in objects) / max(strongest_camera, 1e-9), 2),
        "events_s_per_clip": round(seconds["events"] / len(videos), 4),
        "events_vs_flow": round(seconds["events"] / max(seconds["flow"], 1e-9), 2),
        "videos": per_video,
    }


def tiny_vae(folder: Path, videos: list[Path]) -> Path:
    """A randomly initialised tiny Wan VAE (16 channels, 8x spatial, 4x temporal), saved once, with latents_mean /
    latents_std calibrated on a few corpus clips (the per-channel statistics of its posterior means, which is what
    a real VAE's config holds), so that its normalised latents are about N(0, 1) like a real VAE's."""
    if not (folder / "config.json").exists():
        import diffusers
        import torch

        from curation.decode import iter_frames

        torch.manual_seed(0)
        model = diffusers.AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            latents_mean=[0.0] * 16,
            latents_std=[1.0] * 16,
        ).eval()
        latents = []
        for video in videos[:4]:
            info = probe_video(str(video))
            frames = np.stack([rgb for _, _, rgb in iter_frames(str(video), info, size=(128, 72), indices=range(9))])
            x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            with torch.no_grad():
                latents.append(model.encode(x).latent_dist.mode()[0])
        z = torch.cat([lat.flatten(1) for lat in latents], 1)
        model.register_to_config(latents_mean=z.mean(1).tolist(), latents_std=z.std(1).tolist())
        model.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache" / "corpus_all")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--vae", help="a diffusers video VAE folder, or `tiny`: adds recipe A vs B at its latent frames")
    ap.add_argument("--only-vae", action="store_true", help="only the two VAE configurations")
    ap.add_argument("--latent-only", action="store_true", help="of those, only events.source=latent")
    args = ap.parse_args()
    videos = single_shot_videos(args.cache)
    results = {}
    configs = {} if args.only_vae else dict(CONFIGS)
    if args.vae:
        vae = tiny_vae(args.cache.parent / "tiny_wan_calibrated", videos) if args.vae == "tiny" else args.vae
        latent = [SINGLE, "frames.width=448", "frames.height=256", "frames.num_frames=29", f"latents.model_path={vae}"]
        if not args.latent_only:
            configs["latent grid, source flow"] = latent
        configs["latent grid, source latent"] = [*latent, "events.source=latent"]
    for label, overrides in configs.items():
        r = results[label] = evaluate(videos, overrides)
        print(
            f"{label:28s} IoU min {r['iou_min']:.3f}  frames IoU min {r['frames_iou_min']:.3f}  "
            f"mass in boxes min {r['mass_in_boxes_min']:.3f}  "
            f"camera-only false activation {r['camera_only_false_activation']:.4%} "
            f"(confident {r['camera_only_confident']}/{r['camera_only_clips']})  score margin {r['score_margin']}x  "
            f"events {r['events_s_per_clip']:.3f} s/clip = {r['events_vs_flow']}x flow"
        )
    golden = results[next(iter(results))]["videos"]
    print(f"\nper video, {next(iter(results))}:")
    for name, v in golden.items():
        extra = ""
        if "iou" in v:
            extra = f"  IoU {v['iou']:.3f} frames {v['frames_iou']:.3f} in-box {v['mass_in_boxes']:.3f}"
        print(
            f"  {name:13s} score {v['score']:.4f} conf {v['confidence']:.2f} entropy {v['entropy']:.2f} "
            f"diffuse {str(v['diffuse']):5s} active {v['active_share']:.4f} window {v['window']}{extra}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
