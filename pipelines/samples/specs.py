"""Registry of the sample videos. Add a video by appending a ``VideoSpec`` to ``SPECS`` (and, for a new kind of
scene, a builder to ``BUILDERS``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .boundaries import (
    build_cut_from_black,
    build_dissolve,
    build_fade_exact,
    build_fast_objects,
    build_flat,
    build_whip_pan,
)
from .copies import build_copy
from .layers import build_layers
from .model import Rendered, VideoSpec
from .motion import build_motion
from .objects import build_objects, build_pan_objects
from .scenes import build_cuts, build_fade, build_rotation

__all__ = ["BUILDERS", "COLLECTIONS", "MOTION_FAMILIES", "MOTION_SPECS", "SPECS", "get_spec", "spec_names"]

Builder = Callable[[VideoSpec, int], Rendered]

BUILDERS: dict[str, Builder] = {
    "rotation": build_rotation,
    "layers": build_layers,
    "objects": build_objects,
    "pan_objects": build_pan_objects,
    "cuts": build_cuts,
    "fade": build_fade,
    "copy": build_copy,
    "whip_pan": build_whip_pan,
    "fast_objects": build_fast_objects,
    "dissolve": build_dissolve,
    "cut_from_black": build_cut_from_black,
    "fade_exact": build_fade_exact,
    "flat": build_flat,
    "motion": build_motion,
}

_CAM = ("camera",)
_FWD = {"velocity": (0.0, 0.0, 1.0 / 24), "motion": "forward", "keys": "W", "scene": "street", "flow": True}
_BWD = {"velocity": (0.0, 0.0, -1.0 / 24), "motion": "backward", "keys": "S", "scene": "street", "flow": True}
_OBJECTS = (
    {"shape": "rect", "size": (64, 44), "start": (40, 40), "velocity": (4, 1), "move": (30, 75)},
    {"shape": "disc", "size": (56, 56), "start": (380, 180), "velocity": (-3, -1), "move": (50, 95)},
)

SPECS: tuple[VideoSpec, ...] = (
    VideoSpec("cuts", "cuts", "libx264", "mp4", 30, 480, 270, 170, ("cuts", "shots"), {"starts": (0, 41, 89, 131)}),
    VideoSpec(
        "fade",
        "fade",
        "mpeg4",
        "avi",
        25,
        320,
        180,
        110,
        ("fade", "shots"),
        {"a_len": 40, "fade_out": 15, "black": 3, "fade_in": 15},
    ),
    VideoSpec(
        "pan_right",
        "rotation",
        "libx264",
        "mp4",
        30,
        480,
        270,
        90,
        (*_CAM, "rotation"),
        {"yaw": 0.3, "motion": "yaw_right", "mouse": "right", "flow": True},
    ),
    VideoSpec(
        "tilt_up",
        "rotation",
        "libvpx-vp9",
        "webm",
        24,
        320,
        180,
        72,
        (*_CAM, "rotation"),
        {"pitch": 0.35, "motion": "pitch_up", "mouse": "up", "flow": True},
    ),
    VideoSpec(
        "pan_left",
        "rotation",
        "libsvtav1",
        "mkv",
        15,
        320,
        180,
        45,
        (*_CAM, "rotation", "av1"),
        {"yaw": -0.5, "motion": "yaw_left", "mouse": "left", "flow": True},
    ),
    VideoSpec("forward", "layers", "libx264", "mp4", 30, 480, 270, 60, (*_CAM, "translation", "parallax"), _FWD),
    VideoSpec("backward", "layers", "mpeg4", "avi", 30, 480, 270, 60, (*_CAM, "translation", "parallax"), _BWD),
    VideoSpec(
        "strafe_right",
        "layers",
        "libx265",
        "mp4",
        25,
        480,
        270,
        75,
        (*_CAM, "translation", "parallax"),
        {"velocity": (0.03, 0.0, 0.0), "motion": "right", "keys": "D", "scene": "yard", "flow": True},
    ),
    VideoSpec(
        "zoom_in",
        "rotation",
        "libx265",
        "mkv",
        24,
        400,
        224,
        72,
        (*_CAM, "zoom"),
        {"zoom_end": 2.0, "motion": "zoom_in", "flow": True},
    ),
    VideoSpec(
        "objects", "objects", "libx264", "mp4", 30, 480, 270, 120, ("objects", "static_camera"), {"objects": _OBJECTS}
    ),
    # One object rests, moves, rests while the camera pans right: events must survive camera motion.
    VideoSpec(
        "pan_objects",
        "pan_objects",
        "libx264",
        "mp4",
        30,
        480,
        270,
        120,
        (*_CAM, "rotation", "objects"),
        {
            "yaw": 0.25,
            "motion": "yaw_right",
            "mouse": "right",
            "flow": True,
            "objects": ({"shape": "rect", "size": (56, 48), "start": (150, 60), "velocity": (3, 2), "move": (35, 85)},),
        },
    ),
    VideoSpec(
        "static",
        "rotation",
        "libx264",
        "mkv",
        15,
        320,
        180,
        45,
        (*_CAM, "static"),
        {"noise_sigma": 1.0, "motion": "static"},
    ),
    VideoSpec(
        "dark",
        "rotation",
        "libx264",
        "mp4",
        24,
        320,
        180,
        60,
        (*_CAM, "dark"),
        {"yaw": 0.25, "gain": 0.32, "noise_sigma": 0.5, "motion": "yaw_right", "mouse": "right"},
    ),
    VideoSpec(
        "blurry",
        "rotation",
        "libvpx-vp9",
        "webm",
        25,
        320,
        180,
        60,
        (*_CAM, "blurry"),
        {"pitch": -0.25, "blur_sigma": 5.0, "motion": "pitch_down", "mouse": "down"},
    ),
    VideoSpec(
        "portrait",
        "rotation",
        "libx264",
        "mp4",
        30,
        270,
        480,
        60,
        (*_CAM, "portrait"),
        {"yaw": 0.15, "pitch": 0.05, "fov": 40.0, "motion": "yaw_right", "mouse": "right"},
    ),
    # Odd sizes: MJPEG in AVI stores 333x187 as is, and both PyAV and decord decode it.
    VideoSpec(
        "odd_size",
        "rotation",
        "mjpeg",
        "avi",
        15,
        333,
        187,
        45,
        (*_CAM, "odd_size"),
        {"yaw": -0.3, "motion": "yaw_left", "mouse": "left"},
        pix_fmt="yuvj420p",
    ),
    # Near-duplicates (kind "copy", see copies.py), appended so the older videos keep their registry order. None
    # is tagged "camera": they repeat videos that are already there.
    VideoSpec(
        "objects_reencoded",
        "copy",
        "libvpx-vp9",
        "webm",
        30,
        480,
        270,
        120,
        ("duplicate", "reencoded"),
        {"of": "objects"},
    ),
    VideoSpec(
        "pan_right_small", "copy", "libx264", "mp4", 30, 320, 180, 90, ("duplicate", "resized"), {"of": "pan_right"}
    ),
    # 3% cut from each side of 480x270 leaves exactly 452x254, stored as is.
    VideoSpec(
        "cuts_cropped",
        "copy",
        "mpeg4",
        "avi",
        30,
        452,
        254,
        170,
        ("duplicate", "cropped"),
        {"of": "cuts", "crop": 0.03},
    ),
    # blurry without its blur: same scene and camera path (blur draws no random numbers), so only sharpness differs.
    VideoSpec(
        "sharp_twin",
        "copy",
        "libvpx-vp9",
        "webm",
        25,
        320,
        180,
        60,
        ("duplicate", "sharp_twin"),
        {"of": "blurry", "overrides": {"blur_sigma": 0}, "twin": True},
    ),
    # Aspect ratios for the buckets (wide, square, portrait stored with a display matrix), appended so the older
    # videos keep their registry order. wide_long is one 10 s shot: the longest clip the default preset keeps
    # whole (scenes.max_clip_s), so it is cut into several windows.
    VideoSpec(
        "wide_long",
        "rotation",
        "libx264",
        "mp4",
        25,
        430,
        180,
        250,
        (*_CAM, "rotation", "wide", "long_shot"),
        {"yaw": 0.15, "motion": "yaw_right", "mouse": "right"},
    ),
    VideoSpec("square", "cuts", "libx264", "mkv", 24, 256, 256, 132, ("cuts", "shots", "square"), {"starts": (0, 60)}),
    # Filmed upright on a phone: 270x480 on screen, stored as 480x270 frames with a 90-degree display matrix.
    VideoSpec(
        "portrait_rotated",
        "cuts",
        "libx264",
        "mp4",
        24,
        270,
        480,
        136,
        ("cuts", "shots", "portrait", "rotated"),
        {"starts": (0, 64)},
        rotation=90,
    ),
    # Shot-boundary hard cases (see boundaries.py), appended so the older videos keep their registry order and
    # bytes. Fast motion that is no cut, transitions with frame-exact ends, and a video with no shot at all. The
    # names that sort before "forward" are not stored as mp4 / mkv, so the tests that take the first .mp4 / .mkv
    # files of the corpus keep taking the same ones.
    VideoSpec(
        "whip_pan",
        "whip_pan",
        "libx264",
        "mp4",
        30,
        480,
        270,
        90,
        ("shots", "fast_motion", "whip_pan"),
        # 10 steps of 30-49 px per frame at the image centre (5.5 deg = 49 px at this focal length)
        {
            "fov": 50.0,
            "slow": 0.2,
            "peak": 5.5,
            "whip_start": 36,
            "ramp": 4,
            "hold": 6,
            "shutter": 0.5,
            "motion": "yaw_right",
            "mouse": "right",
        },
    ),
    VideoSpec(
        "fast_object",
        "fast_objects",
        "libvpx-vp9",
        "webm",
        30,
        480,
        270,
        90,
        ("shots", "fast_motion", "objects", "static_camera"),
        {
            "objects": (  # each crosses the whole frame, edge to edge, in 8 frames
                {"shape": "rect", "size": (160, 128), "start": (0, 30), "velocity": (40, 0), "move": (30, 38)},
                {"shape": "disc", "size": (120, 120), "start": (360, 136), "velocity": (-45, 0), "move": (60, 68)},
            )
        },
    ),
    VideoSpec(
        "dissolve", "dissolve", "mpeg4", "avi", 25, 480, 270, 100, ("shots", "dissolve"), {"a_len": 44, "dissolve": 12}
    ),
    VideoSpec(
        "cut_from_black",
        "cut_from_black",
        "libvpx-vp9",
        "webm",
        24,
        320,
        180,
        84,
        ("shots", "black"),
        {"a_len": 36, "black": 10},
    ),
    VideoSpec(
        "fade_exact",
        "fade_exact",
        "mpeg4",
        "avi",
        30,
        320,
        180,
        72,
        ("shots", "fade"),
        {"a_len": 30, "fade_out": 6, "black": 2, "fade_in": 6, "floor": 110.0},
    ),
    VideoSpec(
        "flat",
        "flat",
        "libvpx-vp9",
        "webm",
        24,
        320,
        180,
        72,
        ("flat",),
        {"first": (128, 128, 128), "second": (70, 120, 180), "a_len": 24, "fade_out": 8, "black": 6, "fade_in": 8},
    ),
)


# The motion corpus (opt-in: `generate_corpus(out, collection="motion")`, `python -m pipelines.samples --set motion`),
# kept out of SPECS so the default corpus that `make run` and the test suite use keeps its clips and its speed.
# Under each camera motion, three clips share one world, sprites and camera path (the scene id): `<motion>_camera`
# (camera only), `<motion>_rest` (two world-anchored objects that never move) and `<motion>_movers` (the same two
# objects move during frames 26-46, the second at half the first's speed, across the camera's image motion), plus
# `pan_large` (one object covering 30 % of the frame moves under a slower pan). 480x270 at 30 fps, 72 frames: the
# default preset's 16 frames at stride 4 span frames 5-65 and its 256x256 cover crop keeps source x 105-375, where
# every object stays; golden 448x256 x 28 frames samples frames 8-62 at stride 2.
_MOVE = (26, 46)
_SIZE = (44, 36)
# motion -> (camera, labels, frame-0 top-left of the first and second object, the first's velocity in px/frame)
MOTION_FAMILIES: dict[str, tuple[dict[str, Any], dict[str, str], tuple[tuple[int, int], ...], tuple[float, float]]] = {
    "pan": ({"yaw": 0.3}, {"motion": "yaw_right", "mouse": "right"}, ((260, 20), (260, 140)), (0.0, 3.0)),
    "tilt": ({"pitch": 0.2}, {"motion": "pitch_up", "mouse": "up"}, ((150, 15), (150, 95)), (3.0, 0.0)),
    "dolly": ({"velocity": (0.0, 0.0, 1 / 24)}, {"motion": "forward", "keys": "W"}, ((178, 82), (178, 152)), (3, 0)),
    "strafe": ({"velocity": (0.03, 0.0, 0.0)}, {"motion": "right", "keys": "D"}, ((260, 20), (260, 140)), (0.0, 3.0)),
    "zoom": ({"zoom_end": 2.0}, {"motion": "zoom_in"}, ((178, 82), (178, 152)), (3.0, 0.0)),
    # handheld: jitter below the QCM thresholds in every step, so its truth is `none` (see motion.py)
    "shake": ({"shake": True}, {"motion": "shake"}, ((200, 60), (200, 170)), (3.0, 0.0)),
}


def _motion_specs() -> tuple[VideoSpec, ...]:
    specs = []
    for family, (camera, labels, starts, (vx, vy)) in MOTION_FAMILIES.items():
        movers = tuple(
            {"shape": "rect", "size": _SIZE, "start": start, "velocity": (vx * speed, vy * speed), "move": _MOVE}
            for start, speed in zip(starts, (1.0, 0.5), strict=True)
        )
        rest = tuple({**o, "velocity": (0.0, 0.0)} for o in movers)
        for role, objs in (("camera", ()), ("rest", rest), ("movers", movers)):
            params = {"scene": f"motion_{family}", "camera": camera, "objects": objs, "family": family, "role": role}
            tags = (*_CAM, "motion_corpus", family, "objects" if objs else "camera_only")
            specs.append(
                VideoSpec(f"{family}_{role}", "motion", "libx264", "mp4", 30, 480, 270, 72, tags, {**params, **labels})
            )
    # 232x168 = 30.1 % of 480x270; a slower pan (0.2 deg/frame) keeps it inside the frame
    large = {"shape": "rect", "size": (232, 168), "start": (200, 50), "velocity": (2.0, 1.0), "move": _MOVE}
    specs.append(
        VideoSpec(
            "pan_large",
            "motion",
            "libx264",
            "mp4",
            30,
            480,
            270,
            72,
            (*_CAM, "motion_corpus", "pan", "objects", "large_object"),
            {
                "scene": "motion_pan_large",
                "camera": {"yaw": 0.2},
                "objects": (large,),
                "family": "pan",
                "role": "large",
                **MOTION_FAMILIES["pan"][1],
            },
        )
    )
    return tuple(specs)


MOTION_SPECS: tuple[VideoSpec, ...] = _motion_specs()
COLLECTIONS: dict[str, tuple[VideoSpec, ...]] = {"default": SPECS, "motion": MOTION_SPECS}


def spec_names(collection: str = "default") -> list[str]:
    """Names of the registered videos of a collection (``default`` = SPECS, ``motion``), in registry order."""
    return [s.name for s in COLLECTIONS[collection]]


def get_spec(name: str) -> VideoSpec:
    """Look up a spec of any collection by name; raises KeyError listing the valid names."""
    for specs in COLLECTIONS.values():
        for spec in specs:
            if spec.name == name:
                return spec
    known = [n for c in COLLECTIONS for n in spec_names(c)]
    raise KeyError(f"unknown sample video {name!r}; known: {', '.join(known)}")
