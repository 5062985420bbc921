"""Accuracy measures against ground truth (used by tests and benchmarks)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


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
