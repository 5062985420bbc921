"""The closed-loop camera check's measurement (used by `bench/closed_loop.py`): the pipeline's flow, camera and
QCM annotators on a generated video, scored against the commanded tokens; and synthetic videos that truly follow a
command, to show what the measurement can resolve at a frame size."""

from __future__ import annotations

import collections
import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from annotators import qcm
from annotators.base import object_array
from annotators.camera import CameraConfig, CameraEstimator
from annotators.flow import FlowAnnotator, FlowConfig

SOURCE_FPS = 30.0  # frame_pts = frame_indices / this; only the camera text's speeds read it
RENDER_FACTOR = 8  # stored frames / pixel-space grid (the pipeline's noise.factor)


# -- analysis -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The pipeline's flow and camera settings, the frame stride the QCM thresholds scale with, and the upscale of
    the frames before the annotators see them (1 = as generated)."""

    flow: FlowConfig
    camera: CameraConfig
    stride: int
    upscale: int = 1

    @classmethod
    def from_pipeline(cls, overrides: Sequence[str], stride: int, upscale: int = 1) -> Analysis:
        from pipelines.config import load_config

        cfg = load_config(None, list(overrides))
        if cfg.flow.backend == "none":
            raise SystemExit("error: the camera annotator needs flow: flow.backend must not be none")
        return cls(cfg.flow, cfg.camera, stride, upscale)

    def record(self, stride_source: str) -> dict[str, Any]:
        """The settings a result was measured with, for its JSON."""
        return {
            "stride": self.stride,
            "upscale": self.upscale,
            "stride_source": stride_source,
            "flow": dataclasses.asdict(self.flow),
            "camera": dataclasses.asdict(self.camera),
        }

    def annotators(self) -> tuple[FlowAnnotator, CameraEstimator]:
        return FlowAnnotator(self.flow), CameraEstimator(self.camera)


def annotate(frames: np.ndarray, analysis: Analysis, models: tuple[FlowAnnotator, CameraEstimator]) -> dict[str, Any]:
    """Flow then camera on one clip of uint8 (T, H, W, 3) frames, through the annotators' batch interface as the
    pipeline's chain calls them; {"error": ...} when either rejects the clip."""
    flow_annotator, camera = models
    if analysis.upscale > 1:  # bicubic: smooth, so the flow sees no block edges that stay put
        frames = np.stack(
            [
                cv2.resize(f, None, fx=analysis.upscale, fy=analysis.upscale, interpolation=cv2.INTER_CUBIC)
                for f in frames
            ]
        )
    h, w = frames.shape[1:3]
    indices = np.arange(len(frames)) * analysis.stride
    batch: dict[str, Any] = {
        "clip_id": np.array(["closed_loop"]),
        "frames": object_array([frames]),
        "frame_indices": object_array([indices]),
        "frame_pts": object_array([indices / SOURCE_FPS]),
        "source_size": object_array([(w, h)]),
        "decoded_size": object_array([(w, h)]),
    }
    out = flow_annotator(batch)
    if out["flow_error"][0]:
        return {"error": f"flow: {out['flow_error'][0]}"}
    batch["flow"] = out["flow"]
    cam = camera(batch)
    if cam["camera_error"][0]:
        return {"error": f"camera: {cam['camera_error'][0]}"}
    return {c: cam[c][0] for c in ("qcm_token", "camera_tokens", "camera_confidence", "camera_static")}


def score(commanded: Sequence[int], estimate: dict[str, Any], min_segment_steps: int) -> dict[str, Any]:
    """One video's record: the commanded and estimated clip tokens, their match (and per half), the step agreement
    and the confidence. An unusable estimate (rejected, or confidence 0) is a miss on every count."""
    want = qcm.clip_token(np.asarray(commanded), min_segment_steps)
    want_keys, want_mouse = qcm.split_token(want)
    rec: dict[str, Any] = {"commanded": _name(want)}
    confidence = float(estimate.get("camera_confidence") or 0.0)
    if "error" in estimate or confidence == 0.0:
        reason = estimate.get("error", "confidence 0: no step could be estimated")
        miss = dict.fromkeys(("clip_match", "key_match", "mouse_match", "static"), False)
        return {
            **rec,
            "estimated": None,
            **miss,
            "step_agreement": 0.0,
            "confidence": 0.0,
            "unusable": reason,
            "steps": None,
        }
    got = int(estimate["qcm_token"])
    keys, mouse = qcm.split_token(got)
    steps = np.asarray(estimate["camera_tokens"]).astype(int)
    return {
        **rec,
        "estimated": _name(got),
        "clip_match": got == want,
        "key_match": keys == want_keys,
        "mouse_match": mouse == want_mouse,
        "step_agreement": float(np.mean(steps == np.asarray(commanded))),
        "confidence": round(confidence, 4),
        "static": bool(estimate["camera_static"]),
        "unusable": None,
        "steps": [_name(t) for t in steps],
    }


def _name(token: int) -> str:
    from training.stream import command_name

    return command_name(int(token))


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per script and overall rates of a list of video records (each with its `script`)."""
    by_script: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in records:
        by_script[r["script"]].append(r)

    def rates(rs: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rs)
        return {
            "videos": n,
            "clip_match": round(sum(r["clip_match"] for r in rs) / n, 4),
            "key_match": round(sum(r["key_match"] for r in rs) / n, 4),
            "mouse_match": round(sum(r["mouse_match"] for r in rs) / n, 4),
            "step_agreement": round(statistics.fmean(r["step_agreement"] for r in rs), 4),
            "mean_confidence": round(statistics.fmean(r["confidence"] for r in rs), 4),
            "unusable": sum(r["unusable"] is not None for r in rs),
            "static": sum(r["static"] for r in rs),
        }

    per_script = {}
    for script, rs in by_script.items():
        estimated = collections.Counter(r["estimated"] or "unusable" for r in rs)
        per_script[script] = {"commanded": rs[0]["commanded"], **rates(rs), "estimated": dict(estimated)}
    distinct = {r["commanded"] for r in records}
    overall = {**rates(records), "chance": round(1 / len(distinct), 4), "distinct_commanded": len(distinct)}
    return {"overall": {**overall, "seed_dominance": seed_dominance(records)}, "per_script": per_script}


def seed_dominance(records: list[dict[str, Any]]) -> float | None:
    """Share of videos whose estimated clip token is their seed's most common one across the scripts: 1 means the
    seed (the noise) decides the motion whatever the command, ~1/scripts that the command does. None: one script."""
    by_seed: dict[int, list[str]] = collections.defaultdict(list)
    for r in records:
        by_seed[r["seed"]].append(r["estimated"] or "unusable")
    if len({r["script"] for r in records}) < 2:
        return None
    same = sum(collections.Counter(tokens).most_common(1)[0][1] for tokens in by_seed.values())
    return round(same / len(records), 4)


def markdown(summary: dict[str, Any], title: str) -> str:
    ceiling = any("ceiling" in s for s in summary["per_script"].values())
    head = "| script | commanded | videos | clip match | key match | mouse match | step agreement | mean conf | "
    head += "unusable | estimated clip tokens |" + (" ceiling |" if ceiling else "")
    head += "\n|---|---|---|---|---|---|---|---|---|---|" + ("---|" if ceiling else "") + "\n"
    rows = []
    for script, s in summary["per_script"].items():
        est = ", ".join(f"{k} x{v}" for k, v in sorted(s["estimated"].items(), key=lambda kv: -kv[1]))
        rows.append(
            f"| {script} | {s['commanded']} | {s['videos']} | {s['clip_match']:.2f} | {s['key_match']:.2f} | "
            f"{s['mouse_match']:.2f} | {s['step_agreement']:.2f} | {s['mean_confidence']:.2f} | {s['unusable']} | "
            f"{est} |" + (f" {s['ceiling']:.2f} |" if ceiling else "")
        )
    o = summary["overall"]
    rows.append(
        f"| **overall** | | {o['videos']} | **{o['clip_match']:.2f}** | {o['key_match']:.2f} | {o['mouse_match']:.2f} "
        f"| {o['step_agreement']:.2f} | {o['mean_confidence']:.2f} | {o['unusable']} | chance {o['chance']:.2f} |"
        + (" |" if ceiling else "")
    )
    text = f"### {title}\n\n{head}" + "\n".join(rows) + "\n"
    if o.get("resolved_scripts") is not None:
        resolved = ", ".join(o["resolved_scripts"]) or "none"
        match = "n/a" if o["clip_match_resolved"] is None else f"{o['clip_match_resolved']:.2f}"
        chance = "n/a" if o["chance_resolved"] is None else f"{o['chance_resolved']:.2f}"
        text += (
            f"\nScripts the measurement resolves at this size (a synthetic video that follows them scores 1): "
            f"{resolved}; clip match over them {match} (chance {chance}).\n"
        )
    if o.get("seed_dominance") is not None:
        text += (
            f"\nSeed dominance {o['seed_dominance']:.2f}: the share of videos whose estimated clip token is the most "
            f"common one of their noise seed across the scripts (1 = the command changes nothing).\n"
        )
    return text


# -- sanity: synthetic videos that do what the script says -------------------------------------------------------


def synthetic_video(
    token: int,
    steps: int,
    size: tuple[int, int],
    seed: int,
    *,
    gain: float = 1.0,
    degrees: float | None = None,
    factor: int = RENDER_FACTOR,
) -> np.ndarray:
    """uint8 (steps + 1, h, w, 3): a camera executing the command `token` every step in a world of textured planes,
    rendered at factor x (h, w) with a 60 degree field of view and area-reduced to (h, w).

    The turn is `degrees` per step (default: the stream's); the move is sized so that the background plane shifts
    by gain x the stream's commanded parallax per step (parallax = translation / depth)."""
    from pipelines.samples.layers import LAYOUT, build_world, render_planes
    from pipelines.samples.render import intrinsics, make_c2w
    from training.stream import FOV_DEG, STEP_DEGREES, command_pose, step_translation

    h, w = size
    big_h, big_w = h * factor, w * factor
    planes = build_world(seed, "closed_loop", big_w, big_h, FOV_DEG)
    k = intrinsics(big_w, big_h, FOV_DEG)
    background = LAYOUT[0][0]
    pose = command_pose(token, step_translation() * background * gain, STEP_DEGREES if degrees is None else degrees)
    c2w = make_c2w(center=np.array([1.0, 0.0, 0.0]))  # the middle of the box the world is built to be seen from
    out = []
    for _ in range(steps + 1):
        img = np.clip(render_planes(planes, k, c2w, big_w, big_h), 0, 255).astype(np.uint8)
        out.append(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
        c2w = c2w @ pose
    return np.stack(out)


def sanity_records(
    scripts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    size: tuple[int, int],
    analysis: Analysis,
    models: tuple[FlowAnnotator, CameraEstimator],
    *,
    gain: float = 1.0,
    factor: int = RENDER_FACTOR,
) -> list[dict[str, Any]]:
    """Scored records of synthetic videos that truly follow each script (one per script and seed)."""
    from training.stream import parse_command

    records = []
    for command in scripts:
        token = parse_command(command)
        for seed in seeds:
            video = synthetic_video(token, steps, size, seed, gain=gain, factor=factor)
            rec = score([token] * steps, annotate(video, analysis, models), analysis.camera.qcm.min_segment_steps)
            records.append({"script": command, "seed": seed, **rec})
    return records
