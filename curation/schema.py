"""Arrow schemas of every table in a run directory, and the tensor-column convention of the shards.

Tables (one Parquet file set each under RUN_DIR/<table>/):
- videos:   one row per input file, probe results or the error that stopped it.
- scenes:   one row per detected shot, before any clip filtering.
- clips:    one row per curated clip: every score, the QCM summary, the caption; the curated set itself.
- rejected: one row per dropped clip or failed input, with the stage and a stable snake_case reason.

Shards hold one row per curated clip: the clip's scalar columns plus tensors. A tensor `X` is stored as three
columns: `X` (binary, C-contiguous raw bytes), `X_dtype` (numpy dtype string) and `X_shape` (list<int32>).
This keeps shards readable by DuckDB and any Parquet reader, with no pickles and no extension types.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3  # 2: quality, appearance and dedup columns, clip_embedding tensor; 3: buckets and windows

VIDEOS = pa.schema(
    [
        ("video_id", pa.string()),
        ("source_uri", pa.string()),
        ("decoder", pa.string()),  # decord | pyav; null when no decoder could open the file
        ("n_frames", pa.int64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),  # display size, after rotation
        ("height", pa.int32()),
        ("duration_s", pa.float64()),
        ("rotation", pa.int16()),
        ("codec", pa.string()),
        ("container", pa.string()),
        ("vfr", pa.bool_()),
        ("file_bytes", pa.int64()),
        ("error", pa.string()),  # null on success, else "<reason>: <detail>"
    ]
)

SCENES = pa.schema(
    [
        ("video_id", pa.string()),
        ("source_uri", pa.string()),
        ("scene_index", pa.int32()),
        ("start_frame", pa.int64()),  # source frame index, 0-based
        ("end_frame", pa.int64()),  # exclusive
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("transition", pa.string()),  # how the shot began: start | cut | fade
    ]
)

# Motion scores (annotators.motion): flow magnitude in frame diagonals per second; null when flow.backend = none.
MOTION_SCORES = [
    ("flow_backend", pa.string()),  # which flow estimator produced the flow, e.g. "dis/medium", "raft_small"
    ("motion_mean", pa.float64()),  # mean flow magnitude
    ("motion_p90", pa.float64()),  # 90th percentile over all pixels and frame pairs
    ("motion_residual", pa.float64()),  # mean magnitude left after removing the camera's global homography
]

# Camera annotation (annotators.camera, annotators.qcm): clip-level QCM token (keys x mouse, Yume) and its text.
CAMERA = [
    ("qcm_keys", pa.string()),  # none | W | S | A | D | W+A | W+D | S+A | S+D
    ("qcm_mouse", pa.string()),  # none | → | ← | ↑ | ↓ | ↑→ | ↑← | ↓→ | ↓←
    ("qcm_token", pa.int16()),  # key_index * 9 + mouse_index, 0..80
    ("camera_text", pa.string()),  # condition text built from the token and the speed indicators
    ("camera_confidence", pa.float64()),  # 0..1, mean over steps; ~0 for dark/flat/degenerate clips
    ("camera_static", pa.bool_()),  # every step is a still camera
]
QCM_SEGMENTS = pa.list_(
    pa.struct([("start_step", pa.int32()), ("end_step", pa.int32()), ("token", pa.int16())])
)  # runs of consistent motion over the clip's steps (step t = sampled frame t -> t+1), end exclusive

# Event pseudo-targets (annotators.events, EVD): camera-compensated localized change; see that module.
EVENTS = [
    ("event_score", pa.float64()),  # mean of the top 20% per-pair change, frame diagonals per second
    ("event_confidence", pa.float64()),  # 0..1: activity concentrated in few cells, over several frames
    ("event_entropy", pa.float64()),  # spatial entropy of activity, 0..1 (1 = uniform), 0 without activity
    ("event_gini", pa.float64()),  # Gini of activity over the grid cells, 0 without activity
    ("event_diffuse", pa.bool_()),  # activity spread over the frame: camera-dominated
    ("event_start_frame", pa.int64()),  # main active window [start, end) in source frames; null: no event
    ("event_end_frame", pa.int64()),
]

# Classical quality (annotators.quality), always computed, averaged over a few stored frames.
QUALITY = [
    ("sharpness", pa.float64()),  # variance of the Laplacian of luma (0-255 scale) at the stored size
    ("brightness", pa.float64()),  # mean luma, 0..1
    ("contrast", pa.float64()),  # RMS contrast: std of luma, 0..1
    ("colorfulness", pa.float64()),  # Hasler-Suesstrunk, 0 for grey
    ("clipped_dark", pa.float64()),  # share of pixels with luma <= 4
    ("clipped_bright", pa.float64()),  # share of pixels with luma >= 251
]
KEY_FRAME_HASHES = pa.list_(pa.string())  # 64-bit DCT perceptual hashes (16 hex digits) of key frames; null: flat

# Model-backed appearance annotations; null with backend/model "none" when no weights are configured.
APPEARANCE = [
    ("aesthetic_score", pa.float64()),  # LAION-style MLP on open_clip image embeddings, mean over frames (~1-10)
    ("aesthetic_backend", pa.string()),  # "open_clip:<arch>+<head>" or "none"
    ("caption", pa.string()),
    ("caption_model", pa.string()),  # model id or "none"
    ("caption_prompt_version", pa.string()),
    ("caption_truncated", pa.bool_()),  # generation hit captions.max_new_tokens before the end of sequence
]

# Where a clip's stored frames sit (curation.buckets): the bucket and what the resize cut away.
BUCKET = [
    ("bucket", pa.string()),  # "TxHxW" of the stored frames, e.g. "33x256x448"
    ("crop_fraction", pa.float64()),  # share of the source picture the centre crop cut away (0 = none)
    ("frame_height", pa.int32()),  # stored frame size (`width` / `height` are the source's)
    ("frame_width", pa.int32()),
]

CLIPS = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("source_uri", pa.string()),
        ("scene_index", pa.int32()),
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),  # exclusive
        ("start_s", pa.float64()),  # presentation time of start_frame
        ("end_s", pa.float64()),  # presentation time just after the last frame
        ("fps", pa.float64()),  # source average frame rate
        ("width", pa.int32()),  # source display size
        ("height", pa.int32()),
        ("num_frames", pa.int32()),  # sampled frames stored in the shard
        ("frame_stride", pa.int32()),
        *BUCKET,
        ("shard", pa.string()),  # shard file name under shards/
        ("shard_row", pa.int32()),  # row index inside that shard
        *MOTION_SCORES,
        *CAMERA,
        ("qcm_segments", QCM_SEGMENTS),
        *EVENTS,
        *QUALITY,
        ("key_frame_hashes", KEY_FRAME_HASHES),
        *APPEARANCE,
    ]
)

REJECTED = pa.schema(
    [
        ("stage", pa.string()),  # ingest | scenes | clips | an annotator's name | filters | dedup | events
        ("source_uri", pa.string()),
        ("video_id", pa.string()),
        ("clip_id", pa.string()),  # null for whole-input failures
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),
        ("reason", pa.string()),  # stable snake_case
        ("detail", pa.string()),
    ]
)

# Scalar columns every shard row carries before its tensors.
SHARD_META = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("source_uri", pa.string()),
        ("scene_index", pa.int32()),
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("fps", pa.float64()),
        ("frame_indices", pa.list_(pa.int64())),  # source frame index of each stored frame
        ("frame_pts", pa.list_(pa.float64())),  # presentation time (s) of each stored frame
        *BUCKET,
        *MOTION_SCORES,
        ("noise_seed", pa.int64()),  # seed of the clip's first noise frame (annotators.warped_noise)
        ("noise_warper_version", pa.string()),  # annotators.noise_warp.WARPER_VERSION
        *CAMERA,
        *EVENTS,
        *QUALITY,
        *APPEARANCE,
    ]
)

# Shard tensors, in column order (a run stores the ones its config enables):
# frames (T, H, W, 3) uint8; flow (T-1, 2, h, w) float16, forward flow t -> t+1 as (dx, dy) in pixels of its own
# (h, w) grid; global_homography (T-1, 3, 3) float32, frame t pixel -> frame t+1 pixel on the flow grid;
# warped_noise (T, C, H/f, W/f) float16, before beta mixing; camera_c2w (T, 4, 4) float32, camera-to-world,
# OpenCV axes, frame 0 = identity, translation in parallax units (no metric scale); camera_tokens (T-1,) int16,
# the QCM token of each step; camera_intrinsics (3, 3) float32, the pinhole K (from camera.fov_x_deg) on the
# flow grid (= the stored frames unless flow.short_side is set); event_activity (T, gh, gw) float16 in [0, 1],
# soft; event_active (T, gh, gw) uint8, after hysteresis; event_phase (T,) float16 (frame t of the event maps
# holds the change from frame t-1 to t); clip_embedding (D,) float16, the unit-norm mean of the open_clip image
# embeddings of a few frames (only when aesthetics.model_path is set); latents (C, T', h, w) float16, the normalised
# VAE latents of the frames (only with latents.model_path; the manifest's `latents` block names the VAE);
# text_embedding (L, D) float16, a frozen text encoder's last hidden state of the caption (else the camera text),
# trimmed to its L real tokens (only with text_encoder.model_path).
SHARD_TENSORS = (
    "frames",
    "flow",
    "global_homography",
    "warped_noise",
    "camera_c2w",
    "camera_tokens",
    "camera_intrinsics",
    "event_activity",
    "event_active",
    "event_phase",
    "clip_embedding",
    "latents",
    "text_embedding",
)
UNCOMPRESSED_TENSORS = frozenset({"warped_noise"})  # Gaussian noise does not compress; don't pay to try

TABLES = {"videos": VIDEOS, "scenes": SCENES, "clips": CLIPS, "rejected": REJECTED}


def tensor_fields(name: str) -> list[pa.Field]:
    """The three columns that store tensor `name` in a shard."""
    return [
        pa.field(name, pa.binary()),
        pa.field(f"{name}_dtype", pa.string()),
        pa.field(f"{name}_shape", pa.list_(pa.int32())),
    ]


def shard_schema(tensors: list[str]) -> pa.Schema:
    """Schema of a shard file holding `SHARD_META` plus the named tensors."""
    fields = list(SHARD_META)
    for name in tensors:
        fields.extend(tensor_fields(name))
    return pa.schema(fields, metadata={"schema_version": str(SCHEMA_VERSION)})


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table with an explicit schema (missing keys become null) so empty and partial tables stay typed."""
    return pa.Table.from_pylist(rows, schema=schema)  # keys outside it are ignored; 15x faster than from_pydict
