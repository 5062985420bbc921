"""The clips step's writer: one pass over a video's frames, the annotator chain on batches of clips, and each
annotated clip's shard row (scalar columns and tensors, checked finite and cast to their stored dtype)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from annotators.flow import downscale_flow
from curation.decode import iter_frames
from curation.ids import clip_id
from curation.sampling import VideoLayout, decode_size
from curation.schema import CLIPS, SHARD_META, SHARD_TENSORS
from curation.shards import ShardWriter, encode_tensor
from pipelines.annotate import ClipRejected, annotators_for, enabled_annotators
from pipelines.config import RunConfig
from pipelines.faults import CrashGuard
from pipelines.steps import Row, clip_frame, rejected_row, scan_sizes, video_info


class ClipWriter:
    """Streams one video's frames once, annotating clips in batches of `runtime.clip_batch` as their last frames
    arrive, and writes each annotated clip's shard row.

    Memory: the frames of about `clip_batch` clips, plus their annotations.
    """

    def __init__(
        self, video: Row, shard_dir: Path, cfg: RunConfig, record: dict, guard: CrashGuard, layout: VideoLayout
    ) -> None:
        self.video, self.cfg, self.record, self.guard, self.layout = video, cfg, record, guard, layout
        self.annotators = annotators_for(cfg)
        self.pending: list[tuple[dict, dict, dict]] = []  # (span, clip metadata, clip) awaiting annotation
        store = cfg.frames.store
        self.video_codec = cfg.frames.video_codec if store == "video" else None
        tensors = (["frames"] if store != "none" else []) + [t for t in SHARD_TENSORS[1:] if t in tensor_columns(cfg)]
        encoded = ["frames"] if self.video_codec else []  # a coded stream gains nothing from Parquet's zstd
        self.writer = ShardWriter(shard_dir, video["video_id"], tensors, cfg.shards, uncompressed=encoded)

    def write(self, plans: list, path: str, frames: Iterable[tuple[int, float, np.ndarray]] | None = None) -> None:
        """Annotate and write the clips of `plans`. `frames`: the clips' frames already at their stored size (kept by
        the scenes step), else they are decoded from `path`."""
        queue = list(plans)
        if frames is None:
            frames = self._decode(plans, path)
        kept: dict[int, tuple[float, Any]] = {}
        seconds_before = dict(self.annotators.seconds)
        try:
            for index, pts, rgb in frames:
                kept[index] = (pts, rgb)
                while queue and queue[0][1][-1] <= index:
                    self._emit(queue.pop(0), kept)
            self._flush()
            self.record["shards"] = [vars(f) for f in self.writer.close()]
        except BaseException:
            self.writer.abort()
            raise
        seconds = self.annotators.seconds
        self.record["annotator_seconds"] = {k: v - seconds_before.get(k, 0.0) for k, v in seconds.items()}
        for span, _, _ in queue:  # frames never arrived: the file ended early
            self._reject(span, "clips", "decode_failed", "file ended before the clip's frames")

    def _decode(self, plans: list, path: str) -> Iterator[tuple[int, float, np.ndarray]]:
        """The clips' frames from the decoder, in one pass, at their stored size."""
        info = video_info(self.video)
        wanted = sorted({i for _, indices, _ in plans for i in indices})
        scan, _ = scan_sizes(info, self.cfg.scenes, self.layout)  # the scenes step's decode: the same pixels
        size = decode_size(info.width, info.height, self.layout.frames)
        for index, pts, rgb in iter_frames(path, info, size=scan, indices=wanted):
            yield index, pts, clip_frame(rgb, size, self.layout.frames)

    def _reject(self, span: dict, stage: str, reason: str, detail: str) -> None:
        self.record["rejected"].append(
            rejected_row(stage, self.video, reason, detail, (span["start_frame"], span["end_frame"]))
        )

    def _emit(self, plan: tuple, frames: dict) -> None:
        span, indices, stride = plan
        try:
            missing = [i for i in indices if i not in frames]
            if missing:
                detail = f"{len(missing)} of {len(indices)} frames could not be decoded (first: {missing[0]})"
                self._reject(span, "clips", "decode_failed", detail)
            else:
                self._queue(span, indices, stride, frames)
        finally:
            for i in [i for i in frames if i <= indices[-1]]:  # clips are disjoint and ordered: no longer needed
                del frames[i]

    def _queue(self, span: dict, indices: list[int], stride: int, frames: dict) -> None:
        video, fc = self.video, self.layout.frames
        cid = clip_id(video["video_id"], span["start_frame"], span["end_frame"])
        pts = [frames[i][0] for i in indices]
        if "span" in span:  # a window: its times are those of its own frames
            span = dict(span)
            whole = span.pop("span")
            span["start_s"] = pts[0]
            ends_span = span["end_frame"] == whole["end_frame"]
            span["end_s"] = whole["end_s"] if ends_span else pts[-1] + stride / video["fps"]
        meta = {
            "clip_id": cid,
            "video_id": video["video_id"],
            "source_uri": video["source_uri"],
            "scene_index": span["scene_index"],
            "start_frame": span["start_frame"],
            "end_frame": span["end_frame"],
            "start_s": span["start_s"],
            "end_s": span["end_s"],
            "fps": video["fps"],
            "frame_indices": list(indices),
            "frame_pts": pts,
            "frame_stride": stride,
            "bucket": f"{len(indices)}x{fc.height}x{fc.width}",
            "crop_fraction": self.layout.crop_fraction,
            "frame_height": fc.height,
            "frame_width": fc.width,
        }
        clip = {
            "clip_id": cid,
            "frames": np.stack([frames[i][1] for i in indices]),
            "frame_pts": meta["frame_pts"],
            "frame_indices": np.asarray(indices),
            "source_size": (video["width"], video["height"]),
            "decoded_size": decode_size(video["width"], video["height"], fc),
        }
        if self.guard.is_culprit(cid):
            self._reject(span, "clips", "worker_died", self.guard.died_detail())
            return
        if cid in self.guard.alone:  # in flight when a worker died: annotate it on its own
            self._flush()
            self.pending.append((span, meta, clip))
            self._flush()
            return
        self.pending.append((span, meta, clip))
        if len(self.pending) >= self.cfg.runtime.clip_batch:
            self._flush()

    def _flush(self) -> None:
        """Annotate the pending clips together and write each one's shard row (in clip order)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        self.guard.before([clip["clip_id"] for _, _, clip in pending])
        results = self.annotators.annotate([clip for _, _, clip in pending])
        for (span, meta, clip), result in zip(pending, results, strict=True):
            try:
                scalars, tensors = self._split(result)
            except ClipRejected as e:
                self._reject(span, e.stage, e.reason, e.detail)
                continue
            self._write(meta, clip["frames"], scalars, tensors)

    def _write(self, meta: dict, stack: np.ndarray, scalars: dict, tensors: dict[str, np.ndarray]) -> None:
        video = self.video
        row = {**meta, **{k: v for k, v in scalars.items() if k in SHARD_META.names}}  # the writer keeps its columns
        if self.cfg.frames.store != "none":
            row.update(encode_tensor("frames", stack, self.video_codec, self.cfg.frames.fps))
        for name, array in tensors.items():
            row.update(encode_tensor(name, array))
        shard, shard_row = self.writer.add(row)
        self.record["clips"].append(
            {
                **{k: v for k, v in meta.items() if k not in ("frame_indices", "frame_pts")},
                **{k: v for k, v in scalars.items() if k in CLIPS.names},
                "width": video["width"],
                "height": video["height"],
                "num_frames": len(meta["frame_indices"]),
                "shard": shard,
                "shard_row": shard_row,
            }
        )

    def _split(self, out: dict[str, Any] | ClipRejected) -> tuple[dict, dict[str, np.ndarray]]:
        """Scalar columns (shard and clips table) and shard tensors of one annotated clip; raises ClipRejected when
        an annotator gave up on the clip or a tensor is not finite."""
        if isinstance(out, ClipRejected):
            raise out
        scale = self.cfg.flow.store_scale  # the annotators used the full flow; the shard may keep less of it
        tensors = {
            name: _finite_tensor(name, downscale_flow(out[name], scale) if name == "flow" else out[name], dtype)
            for name, dtype in tensor_columns(self.cfg).items()
        }
        scalars_names = set(SHARD_META.names) | set(CLIPS.names)
        scalars = {k: _plain(v) for k, v in out.items() if k not in tensors and k in scalars_names}
        return scalars, tensors


def tensor_columns(cfg: RunConfig) -> dict[str, str]:
    """Annotation tensors this configuration stores in the shards, with their stored dtype."""
    names = enabled_annotators(cfg)
    columns = {}
    if "flow" in names:
        columns.update(flow="float16", global_homography="float32")
    if "warped_noise" in names:
        columns["warped_noise"] = "float16"
    if "camera" in names:
        columns.update(camera_c2w="float32", camera_tokens="int16", camera_intrinsics="float32")
    if "events" in names:
        columns.update(event_activity="float16", event_active="uint8", event_phase="float16")
    if cfg.aesthetics.model_path:
        columns["clip_embedding"] = "float16"
    if cfg.latents.enabled:
        columns["latents"] = cfg.latents.store_dtype
    if cfg.text_encoder.enabled:
        columns["text_embedding"] = "float16"
    return columns


def flow_grid(cfg: RunConfig) -> tuple[int, int]:
    """(height, width) of the flow the annotators use: the frames' size at the flow's working resolution (the
    shards keep it divided by `flow.store_scale`)."""
    from annotators.flow import working_size

    return working_size(cfg.frames.height, cfg.frames.width, cfg.flow.short_side)


def _finite_tensor(name: str, array: np.ndarray, dtype: str) -> np.ndarray:
    """Cast for storage; a value that is (or overflows to) NaN/inf rejects the clip instead of reaching a shard."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is what the check below is for
        stored = np.asarray(array).astype(dtype)
    if not np.isfinite(stored).all():
        raise ClipRejected(name, f"{name}_not_finite: {name} has NaN or inf values after casting to {dtype}")
    return stored


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
