"""Report sections over the scores of every shard row: `histograms` (kept vs dropped, with the thresholds) and
`galleries` (thumbnails per score tercile)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation import visuals
from curation.report.data import _Run, rows_by_id, score_column
from curation.report.markup import THUMB_SIDE, _e, _img, _no_data, _num, _section, _short, _svg
from curation.shards import read_rows

GALLERY_SCORES = ("motion_mean", "sharpness", "aesthetic_score", "event_score")
PER_BUCKET = 6


def _thresholds(run: _Run, column: str) -> dict[str, float]:
    filters = run.run_json.get("config", {}).get("filters", {})
    out = {f"{bound} {visuals.fmt_number(float(v))}": float(v) for bound in ("min", "max")
           if (v := filters.get(bound, {}).get(column)) is not None}  # fmt: skip
    events = run.manifest.get("curation", {}).get("events")
    # A cutoff only exists when a top fraction was kept (top_fraction 1 with drop_diffuse records 0).
    if column == "event_score" and events and events.get("top_fraction", 1.0) < 1.0:
        out[f"event cutoff {visuals.fmt_number(float(events['min_event_score']))}"] = float(events["min_event_score"])
    return out


def _histograms(run: _Run) -> str:
    intro = (
        f"Every score over all {run.n_rows:,} shard rows: <span class='kept-key'>kept</span> clips stacked under "
        "<span class='dropped-key'>dropped</span> ones (removed by filters, dedup or the event filter). Dashed lines "
        "are the configured thresholds."
    )
    if not run.scores:
        return _section("histograms", "Score histograms", _no_data("no scores: no shard rows or every score is null"))
    charts = []
    for column in run.scores:  # one column's arrays in memory at a time
        col = score_column(run, column)
        svg = visuals.histogram_svg(
            col["value"],
            bins=20,
            thresholds=_thresholds(run, column),
            title=column,
            kept_mask=col["kept"],
            width=380,
            height=190,
        )
        charts.append(f"<figure class='chart' id='hist-{_e(column)}'>{_svg(svg)}</figure>")
    return _section("histograms", "Score histograms", f"<div class='grid'>{''.join(charts)}</div>", intro)


def _spread(items: Sequence[Any], k: int) -> list[Any]:
    """k items evenly spaced through the list (ends included)."""
    if k <= 0 or not len(items):
        return []
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else [items[len(items) // 2]]


def _pick_bucket(kept: np.ndarray, n: int) -> list[int]:
    """Up to n positions in a bucket (its rows' `kept` flags, in score order), half dropped when there are enough,
    spread over the bucket's range; in score order."""
    kept_at, dropped_at = np.flatnonzero(kept), np.flatnonzero(~kept)
    n_dropped = min(len(dropped_at), max(n // 2, n - len(kept_at)))
    return sorted(int(i) for i in _spread(dropped_at, n_dropped) + _spread(kept_at, n - n_dropped))


def _thumbnails(run: _Run, refs: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """The middle frame of each shard row as a small JPEG data URI, read a few rows at a time (frames are large)."""
    out: dict[tuple[str, int], str] = {}
    for i in range(0, len(refs), 8):
        batch = refs[i : i + 8]
        for ref, row in zip(batch, read_rows(run.run_dir, batch, ["frames"]), strict=True):
            frames = row.get("frames")
            if frames is not None and frames.ndim == 4 and frames.shape[0]:
                out[ref] = visuals.to_data_uri(frames[frames.shape[0] // 2], "jpeg", max_side=THUMB_SIDE, quality=80)
    return out


def _gallery_rows(run: _Run, column: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """(bucket name, rows shown) per score tercile of `column`: terciles of the rows sorted by (score, clip_id),
    the shown rows picked by `_pick_bucket` and read by row id."""
    col = score_column(run, column, order=True)
    picks = []
    for name, idx in zip(("low", "mid", "high"), np.array_split(np.arange(len(col["value"])), 3), strict=True):
        at = idx[0] + np.array(_pick_bucket(col["kept"][idx], PER_BUCKET), dtype=np.int64) if len(idx) else idx
        picks.append((name, [int(i) for i in col["rowid"][at]]))
    found = rows_by_id(run, [i for _, ids in picks for i in ids], column)
    return [(name, [{**found[i], "_score": float(found[i]["_score"])} for i in ids]) for name, ids in picks]


def _galleries(run: _Run) -> str:
    columns = [c for c in GALLERY_SCORES if c in run.scores]
    if not columns:
        return _section("galleries", "Galleries", _no_data("no gallery scores (motion, sharpness, events) computed"))
    plan = [(column, _gallery_rows(run, column)) for column in columns]
    refs = sorted({(r["shard"], int(r["shard_row"])) for _, named in plan for _, rows in named for r in rows})
    thumbs = _thumbnails(run, refs)
    blocks = []
    for column, named in plan:
        rows_html = []
        for name, rows in named:
            if not rows:
                rows_html.append(f"<div class='bucket'><h4>{name}</h4>{_no_data('no clips')}</div>")
                continue
            lo, hi = rows[0]["_score"], rows[-1]["_score"]
            cards = "".join(_card(r, column, thumbs.get((r["shard"], int(r["shard_row"])))) for r in rows)
            rows_html.append(
                f"<div class='bucket'><h4>{name} <span class='range'>{_num(lo)} – {_num(hi)}</span></h4>"
                f"<div class='thumbs'>{cards}</div></div>"
            )
        blocks.append(
            f"<div class='gallery' id='gallery-{_e(column)}'><h3>{_e(column)}</h3>"
            f"<div class='buckets'>{''.join(rows_html)}</div></div>"
        )
    intro = (
        f"Middle frames per score tercile over all shard rows (up to {PER_BUCKET} per bucket, kept and dropped). "
        "Dropped clips have an orange frame and their rejection reason."
    )
    return _section("galleries", "Galleries", "".join(blocks), intro)


def _card(row: dict[str, Any], column: str, uri: str | None) -> str:
    name = Path(str(row.get("source_uri") or "")).name
    alt = f"{row['clip_id']} {name}"
    image = _img(uri, alt) if uri else "<div class='missing'>no frames</div>"
    status = "kept" if row["kept"] else "dropped"
    stage, reason = row["drop_stage"] or "?", row["drop_reason"] or "?"
    why = "" if row["kept"] else f"<br><span class='reason' title='stage {_e(stage)}'>{_e(reason)}</span>"
    return (
        f"<figure class='thumb {status}'>{image}<figcaption><b>{_num(row['_score'])}</b> {status}{why}"
        f"<br><span class='src'>{_e(_short(name, 22))}</span></figcaption></figure>"
    )
