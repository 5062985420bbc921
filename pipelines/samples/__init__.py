"""Embedded sample corpus: short synthetic videos with exact ground truth, for testing the curation pipeline.

Generate with ``python -m pipelines.samples --out DIR [--only NAME ...] [--seed N]`` or
``generate_corpus(out_dir, only=None, seed=0)``, and the opt-in motion corpus (``specs.MOTION_SPECS``: objects at
rest and moving under pan, tilt, dolly, strafe, zoom and handheld shake; ``motion.py``) with ``--set motion`` or
``generate_corpus(out_dir, collection="motion")``; read a sidecar with ``load_truth(video_path)``. Frames come
from a seeded ``numpy.random.Generator`` and muxers run bit-exact, so a given seed reproduces the truth JSON
exactly (and, with these encoders, the video bytes too).

Each video ``<stem>.<ext>`` gets ``<stem>.json`` (truth), optionally ``<stem>.flow.npz`` (one LZMA-compressed
float16 array; ``np.load`` or ``load_flow`` read it), and the directory gets ``corpus.json`` listing every
registered video present there for this version and seed (``{"generator_version", "seed", "videos": [{"name",
"file", "stem", "truth", "codec", "container", "fps", "n_frames", "width", "height", "tags"}]}``).
Videos (see ``specs.SPECS``): cuts, fade, pan_right, tilt_up, pan_left (AV1: decord cannot read it), forward,
backward (same world as forward), strafe_right, zoom_in, objects, pan_objects, static, dark, blurry, portrait,
odd_size (333x187 MJPEG in AVI: odd sizes survive there and both PyAV and decord decode it), then the
near-duplicates (kind ``copy``, tagged ``duplicate``, never ``camera``): objects_reencoded (objects as VP9 in
WebM), pan_right_small (pan_right at 320x180), cuts_cropped (cuts with 3% cut from each side, 452x254 MPEG-4 in
AVI) and sharp_twin (blurry rendered without its blur: same scene and camera path, VP9 in WebM), then the
aspect-ratio sources for the buckets: wide_long (one 10 s shot at 2.39:1, 430x180, panning right), square
(256x256, two shots) and portrait_rotated (two shots at 270x480 on screen, stored as 480x270 frames with a
90-degree display matrix, as phones record), then the shot-boundary hard cases (``boundaries.py``; none tagged
``camera``): whip_pan (one shot, a pan whipping to ~50 px/frame with motion blur: no cut), fast_object (a still
camera, two large objects crossing the frame at 40-45 px/frame: no cut), dissolve (a 12-frame cross-dissolve),
cut_from_black (hard cut to 10 black frames, hard cut out of them), fade_exact (6-frame ramps over bright shots)
and flat (flat colours and a fade between them: no shot at all).

Truth JSON schema::

    {
      "generator_version": 1, "seed": 0, "name": "pan_right", "file": "pan_right.mp4",
      "codec": "h264", "encoder": "libx264", "container": "mp4", "pix_fmt": "yuv420p",
      "fps": 30.0, "n_frames": 90, "width": 480, "height": 270, "duration_s": 3.0,
      "tags": ["camera", "rotation"],
      "rotation": 90, "coded_size": [480, 270],  # only when stored turned: clockwise degrees a player turns the
                                            # coded frames by; width / height (and all truth) are on screen
      "cuts": [41, 89],                     # first frames of shots that start with a HARD cut (0 excluded)
      "fades": [{"start": 40, "end": 73}],  # transitions through black; frames [start, end) belong to the
                                            # transition: start = first frame dimmer than shot A, end = first
                                            # full frame of B. The hard cases add "kind": "fade" (a ramp) or
                                            # "black" (hard cut to black frames, hard cut out: start = first
                                            # black frame, end = first frame of B); read fade.get("kind", "fade")
      "dissolves": [{"start": 44, "end": 56}],  # hard cases only (read truth.get("dissolves", [])): cross-
                                            # dissolves, start = first frame with any B mixed in, end = first
                                            # pure-B frame
      "shots": [{"start": 0, "end": 41}],   # [start, end) spans of shots, transition frames excluded; shots,
                                            # fades, dissolves and flats tile [0, n_frames)
      "flat": true, "flats": [{"start": 0, "end": 72}],  # flat only (read truth.get("flat", False)): no
                                            # shot at all, every frame one flat colour; its fade between
                                            # colours is no transition between shots, so `fades` is empty
                                            # (brightness_gain has the ramp)
      "brightness_gain": [...],             # fade, fade_exact, flat: per-frame multiplier applied to the content
      "dissolve_weight": [...],             # dissolve only: per-frame weight of shot B in the blend
      "image_speed_px": [...],              # whip_pan only: per step, pan speed at the image centre in pixels
      "objects": [{"id": 0, "shape": "rect",
                   "boxes": [[x0, y0, x1, y1], ...],  # per frame, pixels, end exclusive, integers
                   "moving": [false, ...],   # per frame: the box changes between frame t and t+1
                   "events": [{"start": 30, "end": 75}]}],  # maximal runs of moving == true, [start, end)
      "camera": {                           # every single-shot original (`objects`, `fast_object`: a static
                                            # camera) and the copies that keep its geometry; not in `cuts` /
                                            # `fade` / the other multi-shot videos, whose shots are unrelated
                                            # scenes, nor in cropped / resized copies
        "fov_x_deg": 60.0, "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],  # K of frame 0
        "c2w": [4x4 per frame],             # camera-to-world, OpenCV axes; frame 0 = identity
        "motion": "yaw_right" | "yaw_left" | "pitch_up" | "pitch_down" | "forward" | "backward" | "right" |
                  "zoom_in" | "static" | "shake",  # shake: motion corpus only, jitter under the QCM thresholds
        "expected_keys": "W" | "S" | "A" | "D" | "none",
        "expected_mouse": "right" | "left" | "up" | "down" | "none",
        "per_frame_rotation_deg": [[yaw, pitch, roll], ...],  # n_frames - 1 entries, entry i = frame i -> i+1;
                                            # only when the camera rotates
        "focal_scale": [...],               # zoom only: per-frame focal length / focal length of frame 0
        "plane_depths": [30.0, 10.0, 4.0]   # translation videos only: depths of the rendered planes
      },
      "flow": {"file": "pan_right.flow.npz", "key": "flow", "shape": [T-1, rows, cols, 2], "scale": 0.25,
               "dtype": "float16", "convention": "..."}  # pan/tilt/pan_left/zoom (analytic homography),
                                            # forward/backward/strafe (per-plane homographies, front-most plane
                                            # with alpha >= 0.5 wins), objects / fast_object (displacement on
                                            # object pixels)
      # Copies only (kind "copy"): rendered from the source's spec (its name, hence its random stream) with
      # `overrides` applied to its params, centre-cropped, resized, then encoded with the copy's own encoder.
      # cuts / fades / shots (and brightness_gain) are the source's; camera, objects and flow are kept only when
      # crop_box is the whole frame and size the source's size, otherwise objects is [] and the others are absent.
      "duplicate_of": "pan_right",          # the source video's name
      "copy_transform": {"crop": 0.03,      # fraction of width / height cut from EACH side (centre crop)
                         "crop_box": [14, 8, 466, 262],  # the crop in source pixels, [x0, y0, x1, y1), rounded
                         "size": [452, 254],              # output [width, height] (INTER_AREA when shrinking)
                         "encoder": "mpeg4", "overrides": {"blur_sigma": 0}},  # source params replaced
      "twin_of": "blurry"                   # sharp_twin only: same content as the source, only the blur differs
      # Motion corpus only (specs.MOTION_SPECS): each object also has "depth" (world units, the plane it lies on),
      # its boxes are its outline projected into each frame; the clip says which motion group and role it has.
      "motion_clip": {"family": "pan" | "tilt" | "dolly" | "strafe" | "zoom" | "shake",
                      "role": "camera" | "rest" | "movers" | "large"}
    }

Conventions: OpenCV camera axes (x right, y down, z forward), pixel centres at integer coordinates, principal
point at ((w-1)/2, (h-1)/2), square pixels, ``fx = (w/2) / tan(fov_x/2)``. Relative rotation of frame i+1 in
frame i is ``R_i^T R_{i+1} = Ry(yaw) Rx(pitch) Rz(roll)`` (right-handed rotations about the camera axes).
Yaw right (> 0) turns the optical axis toward +x, so scene content moves LEFT in the image; pitch up (> 0)
turns it toward -y, so content moves DOWN; forward is +z. Flow is forward flow: frame i at pixel p matches frame
i+1 at p + flow[i][p], in stored-resolution pixels, sampled on the grid described by ``convention``.
"""

from __future__ import annotations

from .corpus import GENERATOR_VERSION, generate_corpus, generate_video, load_flow, load_truth
from .model import Rendered, VideoSpec
from .specs import MOTION_SPECS, SPECS, get_spec, spec_names

__all__ = [
    "GENERATOR_VERSION",
    "MOTION_SPECS",
    "SPECS",
    "Rendered",
    "VideoSpec",
    "generate_corpus",
    "generate_video",
    "get_spec",
    "load_flow",
    "load_truth",
    "spec_names",
]
