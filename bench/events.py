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

With `--motion`, the motion corpus instead (`pipelines.samples.MOTION_SPECS`: under pan, tilt, dolly, strafe, zoom
and handheld shake, a camera-only clip, two world-anchored objects at rest, and the same two moving, the second at
half the first's speed; plus one object covering 30 % of the frame under a pan), at golden size and the default
preset, reported per camera motion: temporal IoU, frames IoU and mass in boxes of the moving clips, false
activation (share of (frame, cell) on) and confident clips among the camera-only and object-at-rest clips, the
second object's peak activity over the first's (`curation.metrics.object_peak_activity`: the peak over its moving
frames of the mean activity in its boxes), and the cost of camera plus events as a ratio to flow.
With `--vae DIR` (a diffusers video VAE folder, or `tiny` for a randomly initialised tiny Wan VAE) two more, at
29 frames (1 + 4k) with the maps at the VAE's latent frames: `events.source = flow` (recipe A) and `latent`
(EVD's recipe B, change of the stored latents). A random tiny VAE says how the machinery behaves, not what a
trained VAE's latents give.

    python bench/events.py [--json OUT] [--vae DIR|tiny] [--only-vae]
    python bench/events.py --motion [--json OUT]
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
    object_peak_activity,
    sampled_motion,
    snap_to_samples,
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
MOTION_CONFIGS = {"golden 448x256x28": GOLDEN, "default 256x256x16": [SINGLE]}


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


def motion_videos(cache: Path) -> list[Path]:
    return generate_corpus(cache, collection="motion")


def evaluate_motion(videos: list[Path], overrides: list[str]) -> dict:
    """Per camera motion of the motion corpus (truth `motion_clip`: family and role): see the module docstring."""
    cfg = load_config(None, overrides)
    frame_size = (cfg.frames.width, cfg.frames.height)
    annotators = annotators_for(cfg)
    before = dict(annotators.seconds)  # the annotators are shared per config: count this run only
    per_video: dict[str, dict] = {}
    for video in videos:
        truth = load_truth(video)
        out = annotate_file(str(video), cfg)
        info = probe_video(str(video))
        indices = out["frame_indices"]
        sizes = (info.width, info.height), decode_size(info.width, info.height, cfg.frames), frame_size
        map_indices = indices[:: cfg.events.temporal_factor]
        active = out["event_active"]
        row = {
            **truth["motion_clip"],
            "confident": bool(out["event_confidence"] >= 0.5 and not out["event_diffuse"]),
            "confidence": round(out["event_confidence"], 3),
            "active_cells": int(active.sum()),
            "cells": int(active.size),
            "window": [out["event_start_frame"], out["event_end_frame"]],
        }
        expected = true_event_window(truth, int(indices[0]), int(indices[-1]), sizes)
        if expected is not None:
            found = (out["event_start_frame"], out["event_end_frame"]) if out["event_start_frame"] is not None else None
            activity = out["event_activity"].astype(np.float32)
            moving = sampled_motion(true_moving_steps(truth, int(indices[0]), int(indices[-1]), sizes), map_indices)
            peaks = [object_peak_activity(activity, map_indices, obj, *sizes) for obj in truth["objects"]]
            row.update(
                true_window=list(expected),
                iou=round(interval_iou(found, expected), 3),
                # against the true window widened to the sampled frames: the IoU the sampling itself allows is 1
                iou_sampled=round(interval_iou(found, snap_to_samples(expected, indices)), 3),
                frames_iou=round(frames_iou(active.reshape(len(map_indices), -1).any(axis=1), moving), 3),
                mass_in_boxes=round(event_mass_in_boxes(activity, map_indices, truth, *sizes), 3),
                peaks=[round(p, 3) for p in peaks],
            )
            if len(peaks) == 2:  # the second object moves at half the first's speed
                row["peak_ratio"] = round(peaks[1] / peaks[0], 3) if peaks[0] > 0 else None
        per_video[video.stem] = row
    families: dict[str, dict] = {}
    for row in per_video.values():
        fam = families.setdefault(row["family"], {})
        if row["role"] in ("camera", "rest"):
            fam[f"{row['role']}_false_activation"] = round(row["active_cells"] / row["cells"], 5)
            fam[f"{row['role']}_confident"] = row["confident"]
        else:
            prefix = "" if row["role"] == "movers" else f"{row['role']}_"
            for key in ("iou", "iou_sampled", "frames_iou", "mass_in_boxes", "peak_ratio"):
                if key in row:
                    fam[prefix + key] = row[key]
    seconds = {k: v - before.get(k, 0.0) for k, v in annotators.seconds.items()}
    flow = max(seconds.get("flow", 0.0), 1e-9)
    quiet = [r for r in per_video.values() if r["role"] in ("camera", "rest")]
    moving = [r for r in per_video.values() if "iou" in r]
    return {
        "overrides": overrides,
        "families": families,
        "iou_min": min(r["iou"] for r in moving),
        "iou_sampled_min": min(r["iou_sampled"] for r in moving),
        "mass_in_boxes_min": min(r["mass_in_boxes"] for r in moving),
        "false_activation_max": max(r["active_cells"] / r["cells"] for r in quiet),
        "confident_quiet_clips": sum(r["confident"] for r in quiet),
        "quiet_clips": len(quiet),
        "peak_ratio_min": min((r["peak_ratio"] or 0.0 for r in moving if "peak_ratio" in r), default=None),
        "events_vs_flow": round(seconds.get("events", 0.0) / flow, 2),
        "camera_plus_events_vs_flow": round((seconds.get("events", 0.0) + seconds.get("camera", 0.0)) / flow, 2),
        "flow_s_per_clip": round(seconds.get("flow", 0.0) / len(videos), 4),
        "videos": per_video,
    }


def print_motion(label: str, r: dict) -> None:
    """One table per configuration: a row per camera motion."""
    print(
        f"\n{label}: IoU min {r['iou_min']:.3f} (sampled {r['iou_sampled_min']:.3f}), mass in boxes min"
        f" {r['mass_in_boxes_min']:.3f}, false activation max {r['false_activation_max']:.3%},"
        f" confident quiet clips {r['confident_quiet_clips']}/{r['quiet_clips']},"
        f" peak ratio min {r['peak_ratio_min']}, camera+events = {r['camera_plus_events_vs_flow']}x flow"
        f" (events {r['events_vs_flow']}x; flow {r['flow_s_per_clip']:.3f} s/clip)"
    )
    print(
        f"  {'motion':7s} {'IoU':>6s} {'smpIoU':>6s} {'frIoU':>6s} {'mass':>6s} {'peak2/1':>7s} {'FA cam':>8s}"
        f" {'FA rest':>8s} {'conf cam/rest':>13s}  large: IoU / mass"
    )
    for family, f in r["families"].items():
        large = f"  {f['large_iou']:.3f} / {f['large_mass_in_boxes']:.3f}" if "large_iou" in f else ""
        ratio = f.get("peak_ratio")
        confident = f"{int(f['camera_confident'])}/{int(f['rest_confident'])}"
        print(
            f"  {family:7s} {f['iou']:6.3f} {f['iou_sampled']:6.3f} {f['frames_iou']:6.3f} {f['mass_in_boxes']:6.3f}"
            f" {'-' if ratio is None else f'{ratio:.3f}':>7s} {f['camera_false_activation']:8.3%}"
            f" {f['rest_false_activation']:8.3%} {confident:>13s}{large}"
        )


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
    ap.add_argument("--motion", action="store_true", help="the motion corpus, per camera motion, golden and default")
    ap.add_argument("--motion-cache", type=Path, default=ROOT / "bench" / ".cache" / "corpus_motion")
    args = ap.parse_args()
    if args.motion:
        videos = motion_videos(args.motion_cache)
        results = {label: evaluate_motion(videos, overrides) for label, overrides in MOTION_CONFIGS.items()}
        for label, r in results.items():
            print_motion(label, r)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return
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
