"""Report sections over the scores of every shard row: `histograms` (kept vs dropped, with the thresholds) and
`galleries` (thumbnails per score tercile)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curation import visuals
from curation.report.data import _finite, _Run
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
        f"Every score over all {len(run.rows):,} shard rows: <span class='kept-key'>kept</span> clips stacked under "
        "<span class='dropped-key'>dropped</span> ones (removed by filters, dedup or the event filter). Dashed lines "
        "are the configured thresholds."
    )
    if not run.scores:
        return _section("histograms", "Score histograms", _no_data("no scores: no shard rows or every score is null"))
    charts = []
    for column in run.scores:
        values = [r[column] for r in run.rows]
        kept = [bool(r["kept"]) for r in run.rows]
        svg = visuals.histogram_svg(
            values, bins=20, thresholds=_thresholds(run, column), title=column, kept_mask=kept, width=380, height=190
        )
        charts.append(f"<figure class='chart' id='hist-{_e(column)}'>{_svg(svg)}</figure>")
    return _section("histograms", "Score histograms", f"<div class='grid'>{''.join(charts)}</div>", intro)


def _spread(items: list[Any], k: int) -> list[Any]:
    """k items evenly spaced through the list (ends included)."""
    if k <= 0 or not items:
        return []
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else [items[len(items) // 2]]


def _pick_bucket(bucket: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to n rows, half dropped when there are enough, spread over the bucket's range; shown by score."""
    kept = [r for r in bucket if r["kept"]]
    dropped = [r for r in bucket if not r["kept"]]
    n_dropped = min(len(dropped), max(n // 2, n - len(kept)))
    chosen = _spread(dropped, n_dropped) + _spread(kept, n - n_dropped)
    return sorted(chosen, key=lambda r: (r["_score"], r["clip_id"]))


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


def _galleries(run: _Run) -> str:
    columns = [c for c in GALLERY_SCORES if c in run.scores]
    if not columns:
        return _section("galleries", "Galleries", _no_data("no gallery scores (motion, sharpness, events) computed"))
    plan: list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]] = []
    for column in columns:
        scored = sorted(
            ({**r, "_score": float(r[column])} for r in run.rows if _finite(r[column])),
            key=lambda r: (r["_score"], r["clip_id"]),
        )
        buckets = [list(b) for b in np.array_split(np.arange(len(scored)), 3)]
        named = []
        for name, idx in zip(("low", "mid", "high"), buckets, strict=True):
            members = [scored[i] for i in idx]
            named.append((name, _pick_bucket(members, PER_BUCKET) if members else []))
        plan.append((column, named))
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
