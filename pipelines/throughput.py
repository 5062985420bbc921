"""Per-stage throughput figures of a run, from the start/end times every step record carries (pure functions).

For each stage: rows finished, rows/s over the stage's active window, busy seconds, utilisation of the slots the
DAG gave it (CPU task slots, or the actor pool), the time finished rows of the previous stage queued before this
stage took them (back-pressure: rows that wait in front of a stage whose slots are all busy), and rows per node.
Stages fused into one Ray task (scenes and clips without models) share their slots: there, utilisation tells which
of them the time goes to.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def stage_figures(
    timings: list[dict[str, Any]], slots: float, queued_from: dict[str, float] | float | None
) -> dict[str, Any]:
    """Figures of one stage. `timings`: one {"key", "start", "end", "node", "seconds"} per row; `slots`: how many
    rows the stage could work on at once; `queued_from`: when each row became ready for this stage (the previous
    stage's end per key, or one time for all: the dataset's start)."""
    if not timings:
        return {"rows": 0}
    start = min(t["start"] for t in timings)
    window = max(max(t["end"] for t in timings) - start, 1e-9)
    busy = sum(t["seconds"] for t in timings)
    waits = []
    for t in timings:
        ready = queued_from.get(t.get("key")) if isinstance(queued_from, dict) else queued_from
        if ready is not None:
            waits.append(max(0.0, t["start"] - ready))
    return {
        "rows": len(timings),
        "rows_per_s": round(len(timings) / window, 4),
        "window_s": round(window, 3),
        "busy_s": round(busy, 3),
        "slots": slots,
        "utilisation": round(min(1.0, busy / (slots * window)), 4) if slots else None,
        "queued_s": round(sum(waits), 3) if waits else None,
        "queued_mean_s": round(sum(waits) / len(waits), 3) if waits else None,
        "rows_per_node": dict(Counter(t["node"][:12] for t in timings if t.get("node"))),
    }


def run_throughput(
    timings: dict[str, list[dict[str, Any]]], plan: dict[str, dict[str, Any]], started: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Figures for every stage in `plan` (its slots, from the DAG). `started`: when each dataset was submitted,
    "ingest" and "video" (scenes + clips); rows finished before that (by an earlier, resumed run) are left out."""
    out: dict[str, dict[str, Any]] = {}
    for stage in ("ingest", "scenes", "clips"):
        if stage not in plan:
            continue
        since = started.get("ingest" if stage == "ingest" else "video")
        rows = [t for t in timings.get(stage, []) if since is None or t["start"] >= since]
        queued_from: dict[str, float] | float | None = since
        if stage == "clips" and "scenes" in plan:  # ready when the same video's scenes step ended
            queued_from = {t["key"]: t["end"] for t in timings.get("scenes", []) if "key" in t}
        out[stage] = {**plan[stage], **stage_figures(rows, plan[stage].get("slots", 0), queued_from)}
    return out


def bottleneck(figures: dict[str, dict[str, Any]]) -> str | None:
    """The stage to scale: the most utilised one (busy time over what its slots could give), then the one whose
    rows queued longest."""
    ran = {s: f for s, f in figures.items() if f.get("rows")}
    if not ran:
        return None
    return max(ran, key=lambda s: (ran[s].get("utilisation") or 0.0, ran[s].get("queued_mean_s") or 0.0))
