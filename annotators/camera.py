"""Camera trajectory and QCM tokens per clip, estimated from the clip's optical flow on CPU.

Per pair of consecutive sampled frames the flow gives dense correspondences. Model selection, in order:
1. too little texture, too few valid points, or no model that explains `min_inliers` of them -> unknown: identity
   motion, confidence 0, token `none`;
2. static: the median image motion is below half the smallest QCM threshold -> identity, flagged static;
3. rotation only: a RANSAC homography explains (almost) every point an essential matrix explains, so there is no
   parallax -> rotation K^-1 H K projected onto SO(3), no translation. Zooms land here too, and project to
   (almost) no rotation: a zoom is not a camera move. Except when the homography's residuals are parallax about
   one epipole inside the frame (`radial_parallax`): a dolly, whose sub-pixel parallax the inlier counts miss, goes
   on to 4;
4. otherwise the camera translates: a RANSAC essential matrix gives the rotation and the translation direction.
   Unless the points only the essential matrix explains sit in ONE compact region of the homography's outliers
   (`mover_region_share` of them in one 8-connected blob on the sampling grid, the blob at most `mover_max_area` of
   the points) whose residual to the homography is nearly constant (`mover_uniformity`), or in up to
   `mover_max_blobs` such regions over at most half that area together: then they are objects moving on their own. An
   epipolar constraint is loose enough to absorb a rigid mover as "parallax", which would read a pan as a translation
   and explain the object away; real parallax shows wherever the depth differs from the dominant plane, in many
   places at once, and varies with depth and with the direction to the epipole (measured: a mover under a rotating
   camera puts 100 % of those points in one blob whose residual varies by 5-7 % of itself; strafes and dollies
   through the corpus's layered depth at most 83 % in one blob, or a residual varying by >= 29 %).
   When the essential matrix fit to every point decomposes wrongly and the step shows radial parallax, it is refit
   on the dominant depth and the radial points only (objects moving during a dolly).

Steps are not independent: after a rotation step, the points the previous homography still predicts are the
background (`background_homography`), so an object that fills most of the view and starts moving cannot take the
homography over, and its blob may cover up to `mover_max_area_tracked` of the points.

The geometry (sampling, the mover and parallax tests, the essential matrix's decomposition) is in
`annotators.camera_geometry`.

Monocular video has no metric scale. The translation is stored as a unit direction times a parallax magnitude:
the median image motion left after removing the rotation, in radians of view angle. Trajectories are therefore
in "parallax units", comparable in direction and relative speed within a clip, not in metres. The intrinsics come
from `camera.fov_x_deg` (the horizontal field of view of the SOURCE video, recorded with the run) and the resize
that produced the stored frames. Axes are OpenCV's (x right, y down, z forward); frame 0 is the identity.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import cv2
import numpy as np

from annotators.base import AnnotatorError, Batch, per_clip
from annotators.camera_geometry import (
    MIN_POINTS,
    background_homography,
    continues,
    correspondences,
    decompose_translation,
    essential_matrix,
    homography_rotation,
    independent_movers,
    radial_parallax,
)
from annotators.motion import pair_intervals
from annotators.qcm import (
    QCMConfig,
    clip_token,
    condition_text,
    motion_segments,
    quantize_steps,
    speed_indicators,
    split_token,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CameraConfig:
    """Camera estimation settings; `qcm` holds the token thresholds."""

    enabled: bool = True
    fov_x_deg: float = 60.0  # assumed horizontal field of view of source videos (a typical phone/action camera)
    ransac_px: float = 1.0  # RANSAC inlier threshold on the flow grid, pixels
    parallax_inlier_gain: float = 0.06  # translation needs the essential matrix to explain this share more points
    # than a homography (measured on the sample corpus at 256 px: translation 0.08-0.18, rotation/zoom <= 0.04)
    grid_points: int = 2000  # correspondences sampled per frame pair
    texture_gradient: float = 20.0  # Sobel magnitude (uint8 gray) that counts as texture
    min_texture: float = 0.02  # share of textured pixels below which a pair is "unknown" (dark, flat, blown out)
    # ... and the share of points the chosen model must explain: below it the pair is "unknown", not a guess.
    # Measured at the default preset: every corpus step >= 0.9 but a whip pan's blurred steps 0.13-0.22.
    min_inliers: float = 0.3
    # An independent mover, not parallax: essential-only inliers at least this share in one blob, ... Measured on the
    # corpus at the default preset: pan_objects' mover 1.00 with spread 0.05-0.07; strafe_right's nearest discs
    # 0.48-0.83 (spread 0.03-0.51); forward's up to 1.00 but spread >= 0.29.
    mover_region_share: float = 0.9
    mover_max_area: float = 0.4  # ... when that blob holds at most this share of the points (larger: a near surface)
    mover_max_blobs: int = 2  # ... or that many blobs together (two objects moving in view), each moving as one
    mover_uniformity: float = 0.15  # ... and its residual to the homography varies by at most this share of itself
    # ... A blob may cover up to `mover_max_area_tracked` of the points when the homography continues the previous
    # step's camera rotation (within `ransac_px`): the background is still what it was, and a near object moving on
    # its own fills most of the view (the motion corpus's large mover covers 31-54 % of the points at the default
    # crop, and reads as a strafe otherwise)
    mover_max_area_tracked: float = 0.7
    # A translation along the view (a dolly) through layered depth barely beats a homography on inliers (its
    # parallax is a pixel or less at the frame's edge), but the homography's residuals then lie on lines through one
    # epipole inside the frame, from several sides (`radial_parallax`): residuals above `radial_noise_px` within
    # `radial_consistency` (|cos|) of the line to the epipole on at least `radial_min_share` of all the points, in
    # directions no more aligned than `radial_max_alignment` (axial mean resultant length; one mover's or a
    # strafe's residuals are parallel: 0.91-1.0) make it a translation. Measured on the motion corpus at both
    # presets: every dolly step has 0.20-0.52 of its points radial, alignment 0.03-0.77; zooms at most 0.12, pans,
    # tilts, shakes and a large mover fail the alignment or the share; some strafe steps with movers pass (a
    # translation too).
    radial_noise_px: float = 0.3
    radial_min_share: float = 0.15
    radial_consistency: float = 0.9
    radial_max_alignment: float = 0.9
    qcm: QCMConfig = dataclasses.field(default_factory=QCMConfig)

    def __post_init__(self) -> None:
        if not (0.0 < self.mover_region_share <= 1.0 and 0.0 <= self.mover_max_area <= 1.0):
            raise ValueError("camera.mover_region_share must be in (0, 1] and camera.mover_max_area in [0, 1]")
        if self.mover_max_blobs < 1:
            raise ValueError("camera.mover_max_blobs must be >= 1")
        if not (self.radial_noise_px > 0 and 0 < self.radial_min_share <= 1 and 0 < self.radial_consistency <= 1):
            raise ValueError("camera needs radial_noise_px > 0, radial_min_share and radial_consistency in (0, 1]")
        if not 0 <= self.radial_max_alignment <= 1:
            raise ValueError("camera.radial_max_alignment must be in [0, 1]")
        if not 0.0 <= self.mover_max_area_tracked <= 1.0:
            raise ValueError("camera.mover_max_area_tracked must be in [0, 1]")
        if self.mover_uniformity < 0:
            raise ValueError("camera.mover_uniformity must be >= 0 (0: never treat a blob as an independent mover)")
        if not 10.0 <= self.fov_x_deg <= 170.0:
            raise ValueError("camera.fov_x_deg must be in [10, 170]")
        if self.ransac_px <= 0 or self.grid_points < MIN_POINTS or not 0 <= self.min_texture < 1:
            raise ValueError("camera needs ransac_px > 0, grid_points >= 24 and 0 <= min_texture < 1")
        if not 0.0 <= self.min_inliers < 1.0:
            raise ValueError("camera.min_inliers must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class StepMotion:
    """Relative camera motion from frame t to t+1: rotation and translation of camera t+1 in camera t's frame."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,) unit direction x parallax (radians); zeros when not translating
    parallax: float  # translation magnitude proxy, radians of view angle
    confidence: float  # 0..1
    model: str  # unknown | static | rotation | translation
    homography: np.ndarray | None = None  # a rotation's image homography (flow grid): the next step's reference


def flow_intrinsics(
    source_size: tuple[int, int],
    decoded_size: tuple[int, int],
    frame_size: tuple[int, int],
    flow_size: tuple[int, int],
    fov_x_deg: float,
) -> np.ndarray:
    """K on the flow grid. Sizes are (width, height); the stored frame is a centred crop/pad of the decoded one."""
    (sw, sh), (dw, dh), (w, h), (fw, fh) = source_size, decoded_size, frame_size, flow_size
    fx = (dw / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    fy = fx * (dh / sh) / (dw / sw)  # differs from fx only for the `stretch` resize
    sx, sy = fw / w, fh / h
    return np.array([[fx * sx, 0.0, (fw - 1) / 2.0], [0.0, fy * sy, (fh - 1) / 2.0], [0.0, 0.0, 1.0]])


def texture_share(frame: np.ndarray, gradient: float) -> float:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return float((magnitude > gradient).mean())


def _identity(model: str, confidence: float) -> StepMotion:
    return StepMotion(np.eye(3), np.zeros(3), 0.0, confidence, model)


def estimate_step(
    flow: np.ndarray,
    k: np.ndarray,
    texture: float,
    stride: int,
    cfg: CameraConfig,
    previous: np.ndarray | None = None,
) -> StepMotion:
    """Relative camera motion of one frame pair from its forward flow (H, W, 2) on the grid of intrinsics `k`.
    previous: the homography of the clip's previous step when that was a camera rotation (`StepMotion.homography`)."""
    q = cfg.qcm
    texture_conf = float(np.clip((texture - cfg.min_texture) / (4 * cfg.min_texture), 0.0, 1.0))
    p1, p2 = correspondences(flow, cfg.grid_points)
    if texture < cfg.min_texture or len(p1) < MIN_POINTS or not np.isfinite(p2).all():
        return _identity("unknown", 0.0)
    focal = float(k[0, 0])
    # Static: the image barely moves. Half the smaller QCM threshold keeps "static" strictly below "moving".
    rotation_thr = math.radians(q.rotation_deg_per_frame) * stride
    parallax_thr = q.parallax_per_frame * stride
    moved = float(np.median(np.linalg.norm(p2 - p1, axis=1)) / focal)  # typical image motion, as an angle
    if moved < 0.5 * min(rotation_thr, parallax_thr):
        return _identity("static", texture_conf)
    hom, h_mask = cv2.findHomography(p1, p2, cv2.RANSAC, cfg.ransac_px)
    if hom is None or not np.isfinite(hom).all():
        return _identity("unknown", 0.0)
    h_inliers = float(h_mask.mean())
    tracked = False
    if previous is not None:
        predicted = cv2.perspectiveTransform(p1[None], previous)[0]  # where the previous step's rotation moves them
        tracked = continues(hom, p1, predicted, cfg.ransac_px)
        # RANSAC's homography may follow a near object that fills most of the view; the points that still move as
        # the previous step's camera rotation moved them are the background: its homography, when they are enough
        background = None if tracked else background_homography(p1, p2, predicted, cfg)
        if background is not None:
            hom, h_mask, tracked = *background, True
            h_inliers = float(h_mask.mean())
    h_in = h_mask.ravel().astype(bool)

    def rotation_step(confidence: float) -> StepMotion:  # the homography's camera rotation, for the next step too
        return StepMotion(homography_rotation(hom, k), np.zeros(3), 0.0, confidence, "rotation", hom)

    # Model selection. An essential matrix always fits at least as well as a homography (it constrains a point to
    # a line, not a point), by a few percent on noisy flow. Only parallax, i.e. translation past scene depth, makes
    # a homography miss a large share of the points that the essential matrix explains. When the homography leaves
    # fewer points than that gain, the essential matrix (most of a step's cost) is fit only if the step shows
    # radial parallax (a dolly): the same decisions, for less.
    could_gain = h_inliers <= 1.0 - cfg.parallax_inlier_gain
    essential, e_mask = essential_matrix(p1, p2, k, cfg) if could_gain else (None, None)
    e_inliers = float(e_mask.mean()) if essential is not None else 0.0
    if e_inliers - h_inliers >= cfg.parallax_inlier_gain and independent_movers(
        p1, p2, hom, h_in, e_mask.ravel().astype(bool), cfg,
        cfg.mover_max_area_tracked if tracked else None,
    ):  # fmt: skip
        e_inliers = h_inliers  # the gain is one object's own motion: the background says rotation
    if max(h_inliers, e_inliers) < cfg.min_inliers:  # neither model explains the pair: no evidence either way
        return _identity("unknown", 0.0)
    size = (flow.shape[1], flow.shape[0])
    gained = e_inliers - h_inliers >= cfg.parallax_inlier_gain
    radial = None if gained else radial_parallax(p1, p2, hom, size, cfg)
    if radial is not None and essential is None:  # not fit above (or its fit failed): the translation needs one
        essential, e_mask = essential_matrix(p1, p2, k, cfg)
        e_inliers = float(e_mask.mean()) if essential is not None else 0.0
        radial = radial if essential is not None else None
    if not gained and radial is None:
        return rotation_step(texture_conf * h_inliers)
    moving = decompose_translation(essential, e_mask, p1, p2, k, moved)
    if moving is None and radial is None:  # the inlier gain led here: is it a dolly, with objects moving in view?
        radial = radial_parallax(p1, p2, hom, size, cfg)
    if moving is None and radial is not None:
        # A second try on the scene's points only (the dominant depth and the parallax about the epipole): an
        # essential matrix fit to every point can absorb objects moving in view and decompose a dolly wrongly
        scene = h_in | radial
        refit, refit_mask = essential_matrix(p1[scene], p2[scene], k, cfg)
        if refit is not None:
            moving = decompose_translation(refit, refit_mask, p1[scene], p2[scene], k, moved)
            e_inliers = float(refit_mask.sum()) / len(p1)  # a share of all the points, for the confidence
    if moving is None:  # no decomposition that removes motion by removing its rotation: trust the homography
        return rotation_step(0.5 * texture_conf * h_inliers)
    rotation, translation, parallax = moving
    return StepMotion(rotation, translation, parallax, texture_conf * e_inliers, "translation")


def trajectory(steps: list[StepMotion]) -> np.ndarray:
    """Camera-to-world poses (T, 4, 4) from relative steps, frame 0 = identity."""
    c2w = [np.eye(4)]
    for s in steps:
        rel = np.eye(4)
        rel[:3, :3], rel[:3, 3] = s.rotation, s.translation
        c2w.append(c2w[-1] @ rel)
    return np.stack(c2w)


class CameraEstimator:
    """Per clip: camera-to-world trajectory, per-step QCM tokens, the clip's token, condition text and confidence."""

    name: ClassVar[str] = "camera"
    output_columns: ClassVar[tuple[str, ...]] = (
        "camera_c2w",
        "camera_tokens",
        "qcm_keys",
        "qcm_mouse",
        "qcm_token",
        "qcm_segments",
        "camera_text",
        "camera_confidence",
        "camera_static",
        "camera_intrinsics",
        "camera_error",
    )

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: Batch) -> Batch:
        keys = ("flow", "frames", "frame_indices", "frame_pts", "source_size", "decoded_size")
        inputs = zip(*(batch[k] for k in keys), strict=True)
        return {"clip_id": batch["clip_id"], **per_clip(self.name, self.output_columns, inputs, self.annotate)}

    def annotate(
        self,
        flow: np.ndarray | None,
        frames: np.ndarray,
        frame_indices: np.ndarray,
        frame_pts: np.ndarray,
        source_size: tuple[int, int],
        decoded_size: tuple[int, int],
    ) -> dict:
        cfg = self.cfg
        n_steps = len(frames) - 1
        strides = np.maximum(np.diff(np.asarray(frame_indices)), 1) if n_steps > 0 else np.zeros(0, int)
        steps: list[StepMotion] = []
        k = None
        if flow is not None and n_steps > 0:
            h, w = frames.shape[1:3]
            k = flow_intrinsics(source_size, decoded_size, (w, h), (flow.shape[3], flow.shape[2]), cfg.fov_x_deg)
            for t in range(n_steps):
                texture = texture_share(frames[t], cfg.texture_gradient)
                field = np.ascontiguousarray(flow[t].transpose(1, 2, 0), dtype=np.float32)
                previous = steps[-1].homography if steps else None
                steps.append(estimate_step(field, k, texture, int(strides[t]), cfg, previous))
        else:  # one-frame clip or no flow: nothing to estimate, say so with zero confidence
            steps = [_identity("unknown", 0.0) for _ in range(n_steps)]
        c2w = trajectory(steps)
        parallax = np.array([s.parallax for s in steps])
        confidence = np.array([s.confidence for s in steps])
        stride = int(np.median(strides)) if n_steps else 1
        tokens = quantize_steps(c2w, parallax, confidence, stride, cfg.qcm).astype(np.int16)
        token = clip_token(tokens, cfg.qcm.min_segment_steps)
        keys, mouse = split_token(token)
        try:
            seconds = pair_intervals(frame_pts) if n_steps else np.zeros(0)
        except AnnotatorError:  # unusable timestamps: speeds become per step rather than per second
            seconds = np.ones(n_steps)
        speeds = speed_indicators(c2w, parallax, seconds)
        segments = [
            {"start_step": a, "end_step": b, "token": int(tok)}
            for a, b, tok in motion_segments(tokens, cfg.qcm.min_segment_steps)
        ]
        return {
            "camera_c2w": c2w.astype(np.float32),
            "camera_tokens": tokens,
            "qcm_keys": keys,
            "qcm_mouse": mouse,
            "qcm_token": int(token),
            "qcm_segments": segments,
            "camera_text": condition_text(keys, mouse, speeds),
            "camera_confidence": float(confidence.mean()) if n_steps else 0.0,
            "camera_static": bool(n_steps) and all(s.model == "static" for s in steps),
            "camera_intrinsics": (np.eye(3) if k is None else k).astype(np.float32),  # on the flow grid
        }
