"""Benchmark: camera/QCM accuracy against the sample corpus's true camera motion, its confusion table, how the
assumed field of view changes it, and the camera stage's seconds per clip on CPU.

Each single-shot camera video of the corpus is annotated as one clip with the default preset (16 frames at
8 fps, 256x256 cover crop; the corpus is rendered with a 60 degree horizontal FOV, 40 for `portrait`). The truth
of every step is the video's constant motion (`expected_keys` / `expected_mouse`).

With `--motion`, the motion corpus instead (`pipelines.samples.MOTION_SPECS`: pan, tilt, dolly, strafe, zoom and
handheld shake, each with a camera-only clip, two objects at rest, and the two moving; plus a large moving object
under a pan) at golden size (448x256, 28 frames) and the default preset, at the corpus's 60 degree FOV, reported per
camera motion: step accuracy on the clips with no object moving (camera-only, at rest) and with objects moving in
view, and the share of shake steps that come out `none`. A shake clip's truth is `none` in every step (its jitter
stays under the QCM thresholds, `pipelines.samples.motion`).

    python bench/camera.py [--fovs 45 60 75 90] [--num-frames 16] [--json OUT]
    python bench/camera.py --motion [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotators.qcm import split_token, token_of  # noqa: E402
from pipelines.annotate import annotate_file, annotators_for  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.samples import generate_corpus, load_truth  # noqa: E402

MOUSE_OF = {"right": "→", "left": "←", "up": "↑", "down": "↓", "none": "none"}


def camera_videos(cache: Path) -> list[Path]:
    # near-duplicates (truth "duplicate_of") would count their source's camera motion twice
    return [p for p in generate_corpus(cache) if (t := load_truth(p)).get("camera") and "duplicate_of" not in t]


def evaluate(videos: list[Path], fov: float, num_frames: int) -> dict:
    # the [frames] shape, not the default preset's aspect buckets
    cfg = load_config(None, ["buckets.aspect_ratios=[]", f"camera.fov_x_deg={fov}", f"frames.num_frames={num_frames}"])
    steps = Counter()  # (truth token, predicted token) over steps
    per_video, clips_right, steps_right, n_steps = {}, 0, 0, 0
    for video in videos:
        cam = load_truth(video)["camera"]
        truth = token_of(cam["expected_keys"], MOUSE_OF[cam["expected_mouse"]])
        out = annotate_file(str(video), cfg)
        tokens = out["camera_tokens"].tolist()
        steps.update((truth, t) for t in tokens)
        right = sum(t == truth for t in tokens)
        steps_right, n_steps, clips_right = (
            steps_right + right,
            n_steps + len(tokens),
            clips_right + (out["qcm_token"] == truth),
        )
        per_video[video.stem] = {
            "truth": "/".join(split_token(truth)),
            "clip": "/".join(split_token(out["qcm_token"])),
            "step_accuracy": round(right / max(1, len(tokens)), 3),
            "confidence": round(out["camera_confidence"], 3),
        }
    seconds = annotators_for(cfg).seconds
    return {
        "fov_x_deg": fov,
        "step_accuracy": round(steps_right / n_steps, 4),
        "clip_accuracy": round(clips_right / len(videos), 4),
        "camera_s_per_clip": round(seconds["camera"] / len(videos), 4),
        "flow_s_per_clip": round(seconds["flow"] / len(videos), 4),
        "videos": per_video,
        "confusion": {f"{'/'.join(split_token(a))} -> {'/'.join(split_token(b))}": n for (a, b), n in steps.items()},
    }


MOTION_CONFIGS = {
    "golden 448x256x28": ["frames.width=448", "frames.height=256", "frames.num_frames=28"],
    "default 256x256x16": [],
}


def clip_truth_token(truth: dict) -> int:
    cam = truth["camera"]
    return token_of(cam["expected_keys"], MOUSE_OF[cam["expected_mouse"]])


def evaluate_motion(videos: list[Path], overrides: list[str]) -> dict:
    """Step accuracy per camera motion of the motion corpus, without and with objects moving in view."""
    cfg = load_config(None, ["buckets.aspect_ratios=[]", "camera.fov_x_deg=60", *overrides])
    annotators = annotators_for(cfg)
    before = dict(annotators.seconds)  # the annotators are shared per config: count this run only
    per_video: dict[str, dict] = {}
    steps = Counter()
    for video in videos:
        truth = load_truth(video)
        want = clip_truth_token(truth)
        out = annotate_file(str(video), cfg)
        tokens = [int(t) for t in out["camera_tokens"]]
        steps.update((want, t) for t in tokens)
        per_video[video.stem] = {
            **truth["motion_clip"],
            "movers": any(obj["events"] for obj in truth["objects"]),
            "truth": "/".join(split_token(want)),
            "clip": "/".join(split_token(out["qcm_token"])),
            "right": sum(t == want for t in tokens),
            "none": sum(t == 0 for t in tokens),
            "steps": len(tokens),
            "confidence": round(out["camera_confidence"], 3),
            "tokens": ["/".join(split_token(t)) for t in tokens],
        }

    def accuracy(rows: list[dict]) -> float | None:
        n = sum(r["steps"] for r in rows)
        return round(sum(r["right"] for r in rows) / n, 4) if n else None

    rows = list(per_video.values())
    families = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        own = [r for r in rows if r["family"] == family]
        families[family] = {
            "still_objects": accuracy([r for r in own if not r["movers"]]),
            "moving_objects": accuracy([r for r in own if r["movers"]]),
            "clips_right": sum(r["clip"] == r["truth"] for r in own),
            "clips": len(own),
        }
    shake = [r for r in rows if r["family"] == "shake"]
    seconds = {k: v - before.get(k, 0.0) for k, v in annotators.seconds.items()}
    return {
        "overrides": overrides,
        "step_accuracy": accuracy(rows),
        "step_accuracy_moving_objects": accuracy([r for r in rows if r["movers"]]),
        "step_accuracy_no_moving_objects": accuracy([r for r in rows if not r["movers"]]),
        "shake_none_share": round(sum(r["none"] for r in shake) / max(1, sum(r["steps"] for r in shake)), 4),
        "camera_vs_flow": round(seconds.get("camera", 0.0) / max(seconds.get("flow", 0.0), 1e-9), 2),
        "families": families,
        "videos": per_video,
        "confusion": {f"{'/'.join(split_token(a))} -> {'/'.join(split_token(b))}": n for (a, b), n in steps.items()},
    }


def print_motion(label: str, r: dict) -> None:
    print(
        f"\n{label}: step accuracy {r['step_accuracy']:.3f} (objects moving in view"
        f" {r['step_accuracy_moving_objects']:.3f}, none moving {r['step_accuracy_no_moving_objects']:.3f}),"
        f" shake -> none {r['shake_none_share']:.3f}, camera {r['camera_vs_flow']}x flow"
    )
    print(f"  {'motion':7s} {'no movers':>9s} {'movers':>7s} {'clips right':>11s}")
    for family, f in r["families"].items():
        print(f"  {family:7s} {f['still_objects']:9.3f} {f['moving_objects']:7.3f} {f['clips_right']:>7d}/{f['clips']}")
    for name, v in r["videos"].items():
        wrong = Counter(t for t in v["tokens"] if t != v["truth"])
        print(f"  {name:14s} truth {v['truth']:9s} clip {v['clip']:9s} {v['right']}/{v['steps']}  wrong: {dict(wrong)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fovs", type=float, nargs="+", default=[45.0, 60.0, 75.0, 90.0])
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache" / "corpus_all")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--motion", action="store_true", help="the motion corpus, per camera motion, golden and default")
    ap.add_argument("--motion-cache", type=Path, default=ROOT / "bench" / ".cache" / "corpus_motion")
    args = ap.parse_args()
    if args.motion:
        videos = generate_corpus(args.motion_cache, collection="motion")
        motion = {label: evaluate_motion(videos, overrides) for label, overrides in MOTION_CONFIGS.items()}
        for label, r in motion.items():
            print_motion(label, r)
        if args.json:
            args.json.write_text(json.dumps(motion, indent=1, ensure_ascii=False))
        return
    videos = camera_videos(args.cache)
    results = [evaluate(videos, fov, args.num_frames) for fov in args.fovs]
    for r in results:
        print(
            f"fov {r['fov_x_deg']:5.1f}: step accuracy {r['step_accuracy']:.3f},"
            f" clip accuracy {r['clip_accuracy']:.3f}, camera {r['camera_s_per_clip']:.3f} s/clip"
            f" (flow {r['flow_s_per_clip']:.3f} s/clip)"
        )
    main_result = next((r for r in results if r["fov_x_deg"] == 60.0), results[0])
    print(f"\nper video at fov {main_result['fov_x_deg']}:")
    for name, v in main_result["videos"].items():
        print(
            f"  {name:13s} truth {v['truth']:10s} clip {v['clip']:10s}"
            f" steps {v['step_accuracy']:.2f} conf {v['confidence']}"
        )
    print("\nstep confusion (truth -> predicted: steps):")
    for pair, n in sorted(main_result["confusion"].items(), key=lambda kv: -kv[1]):
        print(f"  {pair:24s} {n}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
