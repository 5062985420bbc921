"""Accuracy measures against ground truth (used by tests and benchmarks)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class Match:
    """Detections matched one-to-one to truth within a tolerance."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0


def match_frames(predicted: Sequence[int], truth: Sequence[int], tolerance: int = 1) -> Match:
    """Greedy one-to-one matching of predicted to true frame indices, nearest first, within `tolerance` frames."""
    pairs = sorted(
        (abs(p - t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth) if abs(p - t) <= tolerance
    )
    used_p: set[int] = set()
    used_t: set[int] = set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    tp = len(used_p)
    return Match(tp, len(predicted) - tp, len(truth) - tp)


def interval_iou(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float:
    """Intersection over union of two half-open intervals [start, end); 1 when both are None (nothing, rightly),
    0 when only one is."""
    if a is None or b is None:
        return 1.0 if a is None and b is None else 0.0
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def box_to_frame(
    box: Sequence[float], source_size: tuple[int, int], decoded_size: tuple[int, int], frame_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A source-pixel box [x0, y0, x1, y1) in stored-frame pixels: scaled to the decoded size, then shifted by the
    centred crop (cover) or pad (fit) that made the stored frame (`curation.sampling.fit_to_target`)."""
    (sw, sh), (dw, dh), (fw, fh) = source_size, decoded_size, frame_size
    dx = -((dw - fw) // 2) if dw >= fw else (fw - dw) // 2
    dy = -((dh - fh) // 2) if dh >= fh else (fh - dh) // 2
    sx, sy = dw / sw, dh / sh
    return box[0] * sx + dx, box[1] * sy + dy, box[2] * sx + dx, box[3] * sy + dy


def box_cover(boxes: Sequence[Sequence[float]], frame_size: tuple[int, int], grid: tuple[int, ...]) -> np.ndarray:
    """(gh, gw) fraction of each grid cell's area that the union of `boxes` (stored-frame pixels) covers."""
    fw, fh = frame_size
    mask = np.zeros((fh, fw), np.float32)
    for x0, y0, x1, y1 in boxes:
        xa, ya = max(0, int(round(x0))), max(0, int(round(y0)))
        xb, yb = min(fw, int(round(x1))), min(fh, int(round(y1)))
        if xb > xa and yb > ya:
            mask[ya:yb, xa:xb] = 1.0
    gh, gw = grid
    return cv2.resize(mask, (gw, gh), interpolation=cv2.INTER_AREA)


def mass_in_boxes(activity: np.ndarray, boxes: Sequence[Sequence[float]], frame_size: tuple[int, int]) -> float:
    """Share of a (gh, gw) activity map's mass that lies inside the union of `boxes` (stored-frame pixels),
    counting each grid cell by the fraction of its area the boxes cover; 0 for an empty map."""
    cover = box_cover(boxes, frame_size, activity.shape)
    total = float(activity.sum())
    return float((activity * cover).sum()) / total if total > 0 else 0.0


def true_moving_steps(
    truth: dict, first_frame: int, last_frame: int, sizes: tuple[tuple[int, int], ...] | None = None
) -> set[int]:
    """Source steps t (frame t -> t + 1) in [first_frame, last_frame) in which any object of a sample video's truth
    moves; with `sizes` (source, decoded and stored frame sizes, as for `box_to_frame`) only while the object
    overlaps the stored frame (a crop can cut an object off for part of its motion)."""
    steps = set()
    for obj in truth.get("objects", []):
        for event in obj["events"]:
            for t in range(max(event["start"], first_frame), min(event["end"], last_frame)):
                if sizes is None or any(_overlaps(box_to_frame(obj["boxes"][i], *sizes), sizes[2]) for i in (t, t + 1)):
                    steps.add(t)
    return steps


def true_event_window(
    truth: dict, first_frame: int, last_frame: int, sizes: tuple[tuple[int, int], ...] | None = None
) -> tuple[int, int] | None:
    """The span [start, end) of source frames in which any object of a sample video's truth moves, clipped to
    the sampled frames [first_frame, last_frame]; None when nothing moves there (see `true_moving_steps`)."""
    steps = true_moving_steps(truth, first_frame, last_frame, sizes)
    return (min(steps), max(steps) + 1) if steps else None


def sampled_motion(steps: set[int], frame_indices: Sequence[int]) -> np.ndarray:
    """(T,) bool: sampled frame i > 0 changed through true motion since frame i - 1 (a moving step in
    [f_(i-1), f_i)), the way the event maps mark change at the later frame; frame 0 has nothing before it."""
    f = [int(x) for x in frame_indices]
    return np.array([i > 0 and any(f[i - 1] <= t < f[i] for t in steps) for i in range(len(f))], dtype=bool)


def frames_iou(found: np.ndarray, expected: np.ndarray) -> float:
    """Intersection over union of two sets of sampled frames (bool masks); 1 when both are empty."""
    union = int((found | expected).sum())
    return float((found & expected).sum()) / union if union else 1.0


def _overlaps(box: tuple[float, float, float, float], frame_size: tuple[int, int]) -> bool:
    return box[0] < frame_size[0] and box[1] < frame_size[1] and box[2] > 0 and box[3] > 0


def event_mass_in_boxes(
    activity: np.ndarray,
    frame_indices: Sequence[int],
    truth: dict,
    source_size: tuple[int, int],
    decoded_size: tuple[int, int],
    frame_size: tuple[int, int],
) -> float:
    """Share of a clip's event activity (T, gh, gw) inside the true object boxes, weighting frames by their
    activity. Frame t holds the change from sampled frame t-1 to t, so its boxes are each object's boxes at both
    frames (where it was and where it is). 0 when there is no activity."""
    inside = total = 0.0
    for t in range(1, len(frame_indices)):
        mass = float(activity[t].sum())
        if mass <= 0:
            continue
        boxes = [
            box_to_frame(obj["boxes"][i], source_size, decoded_size, frame_size)
            for obj in truth.get("objects", [])
            for i in (frame_indices[t - 1], frame_indices[t])
        ]
        inside += mass_in_boxes(activity[t], boxes, frame_size) * mass
        total += mass
    return inside / total if total > 0 else 0.0


Boundary = tuple[int, int]  # (end of the shot before, start of the shot after); a hard cut at c is (c, c)


def truth_boundaries(n_frames: int, cuts: Sequence[int], excluded: Sequence[tuple[int, int]]) -> list[Boundary]:
    """The shot boundaries of a labelled video: every run of frames that belong to no shot (gradual transitions,
    flat stretches; adjacent spans are one run) and every hard cut outside them. A run at the video's start or end
    is a boundary too (the first shot starts late, the last ends early)."""
    out = np.zeros(n_frames + 1, bool)
    for s, e in excluded:
        out[max(0, s) : min(n_frames, e)] = True
    padded = np.concatenate([[False], out[:n_frames], [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    spans = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    cut_marks = [(int(c), int(c)) for c in cuts if 0 < c < n_frames and not out[c] and not out[c - 1]]
    return sorted(spans + cut_marks)


def shot_boundaries(n_frames: int, shots: Sequence[tuple[int, int]]) -> list[Boundary]:
    """The boundaries a detector's shots [start, end) imply: between consecutive shots, and before the first or after
    the last when they do not reach the video's ends. No shot at all is one boundary over the whole video."""
    shots = sorted(shots)
    if not shots:
        return [(0, n_frames)] if n_frames else []
    out = [(0, shots[0][0])] if shots[0][0] > 0 else []
    out += [(a[1], b[0]) for a, b in zip(shots[:-1], shots[1:], strict=True)]
    if shots[-1][1] < n_frames:
        out.append((shots[-1][1], n_frames))
    return out


@dataclasses.dataclass(frozen=True)
class BoundaryMatch:
    """Detected shot boundaries matched one-to-one to truth: both ends within the tolerance, and how many exactly."""

    match: Match
    exact: int

    @property
    def f1(self) -> float:
        p, r = self.match.precision, self.match.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match_boundaries(
    predicted: Sequence[Boundary],
    truth: Sequence[Boundary],
    tolerance: int = 1,
    ignore: Sequence[tuple[int, int]] = (),
) -> BoundaryMatch:
    """Greedy one-to-one matching of boundaries, nearest first; a pair matches when both ends are within `tolerance`
    frames. Predictions inside an `ignore` span (a debatable stretch of the labels) count neither way."""

    def ignored(b: Boundary) -> bool:
        return any(s - tolerance <= b[0] and b[1] <= e + tolerance for s, e in ignore)

    predicted = [p for p in predicted if not ignored(p)]
    pairs = sorted(
        (max(abs(p[0] - t[0]), abs(p[1] - t[1])), i, j)
        for i, p in enumerate(predicted)
        for j, t in enumerate(truth)
        if abs(p[0] - t[0]) <= tolerance and abs(p[1] - t[1]) <= tolerance
    )
    used_p: set[int] = set()
    used_t: set[int] = set()
    exact = 0
    for distance, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            exact += distance == 0
    tp = len(used_p)
    return BoundaryMatch(Match(tp, len(predicted) - tp, len(truth) - tp), exact)


def mean_in_boxes(activity: np.ndarray, boxes: Sequence[Sequence[float]], frame_size: tuple[int, int]) -> float:
    """Mean of a (gh, gw) activity map over the union of `boxes` (stored-frame pixels), each grid cell weighted by
    the fraction of its area the boxes cover; 0 when the boxes miss the frame."""
    cover = box_cover(boxes, frame_size, activity.shape)
    weight = float(cover.sum())
    return float((activity * cover).sum()) / weight if weight > 0 else 0.0


def object_peak_activity(
    activity: np.ndarray,
    frame_indices: Sequence[int],
    obj: dict,
    source_size: tuple[int, int],
    decoded_size: tuple[int, int],
    frame_size: tuple[int, int],
) -> float:
    """Peak over a clip's map frames of the mean activity in one object's boxes, over the frames its own true motion
    reaches (`sampled_motion` of its steps): how strongly the maps mark that object, not the frame's strongest mover.
    Frame t holds the change from sampled frame t-1 to t, so its boxes are the object's at both. 0 if it never
    moves in the sampled, stored frames."""
    sizes = (source_size, decoded_size, frame_size)
    f = [int(x) for x in frame_indices]
    moved = sampled_motion(true_moving_steps({"objects": [obj]}, f[0], f[-1], sizes), f)
    peaks = [
        mean_in_boxes(activity[t], [box_to_frame(obj["boxes"][i], *sizes) for i in (f[t - 1], f[t])], frame_size)
        for t in range(1, len(f))
        if moved[t]
    ]
    return max(peaks, default=0.0)


def snap_to_samples(window: tuple[int, int], frame_indices: Sequence[int]) -> tuple[int, int]:
    """A true window [start, end) of source frames widened to the sampled frames around it: the best window maps on
    those frames can report (frame t holds the change since sampled frame t-1, so a motion that starts between two
    samples is first seen at the later one and dated from the earlier). IoU against it leaves out the sampling."""
    f = sorted(int(x) for x in frame_indices)
    start = max((x for x in f if x <= window[0]), default=f[0])
    end = min((x for x in f if x >= window[1]), default=f[-1])
    return start, end
