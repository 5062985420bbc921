"""The run's HTML curation report: `RUN_DIR/report.html`, one self-contained file (inline CSS, SVG charts, images
as data URIs, nothing fetched).

Sections: `counts` (the clip funnel and rejections), `histograms` (every score over all shard rows, kept vs
dropped, with the thresholds that were applied), `galleries` (thumbnails per score tercile), `qcm` (camera-motion
tokens), `clips` (a few curated clips: frames, flow, warped noise, camera path, event activity) and `timing`.
Everything is read through the DuckDB views and `curation.shards.read_rows`; the run directory is not modified
(except for the report itself, written atomically).

    python -m curation.report RUN_DIR [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from annotators.qcm import KEYS, MOUSE
from curation import visuals
from curation.duck import QueryError, connect, load_named
from curation.filters import FILTERABLE
from curation.shards import read_manifest, read_rows
from curation.tables import read_json

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
GLOBAL_STAGES = ("filters", "dedup", "events")  # run after shard rows are written: their drops keep their rows
GALLERY_SCORES = ("motion_mean", "sharpness", "aesthetic_score", "event_score")
PER_BUCKET = 6
MAX_CLIPS = 4
THUMB_SIDE = 112
CLIP_TENSORS = ("frames", "flow", "warped_noise", "camera_c2w", "event_activity", "event_phase")
CLIP_SCALARS = (
    "clip_id",
    "source_uri",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "motion_mean",
    "motion_residual",
    "event_score",
    "sharpness",
    "camera_text",
    "camera_confidence",
    "qcm_keys",
    "qcm_mouse",
)
# How the clips section picks its examples: (why, score column, extra SQL condition), best first.
CLIP_PICKS = (
    ("highest motion_mean", "motion_mean", ""),
    ("highest event_score", "event_score", ""),
    ("most confident camera move", "camera_confidence", "AND camera_static IS NOT TRUE"),
    ("highest sharpness", "sharpness", ""),
)


@dataclasses.dataclass
class _Run:
    run_dir: Path
    con: duckdb.DuckDBPyConnection
    run_json: dict[str, Any]
    manifest: dict[str, Any]
    has_shards: bool
    rows: list[dict[str, Any]]  # every shard row: locator, scores, kept, drop stage/reason
    scores: list[str]  # FILTERABLE columns with at least one finite value over the shard rows


# --- data ---------------------------------------------------------------------------------------------------------


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    return {r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()}


def _load(run_dir: Path) -> _Run:
    con = connect(run_dir)  # QueryError for a directory that is not a finished run
    run_json = read_json(run_dir / "_run.json") if (run_dir / "_run.json").exists() else {}
    try:
        manifest = read_manifest(run_dir)
    except FileNotFoundError:
        manifest = {}
    has_shards = any((run_dir / "shards").glob("*.parquet"))
    rows: list[dict[str, Any]] = []
    if has_shards:
        shard_cols, video_cols = _columns(con, "shard_rows"), _columns(con, "videos")
        # width/height are the source video's: not stored per shard row, so they come from `videos`.
        select = [
            f's."{c}"' if c in shard_cols else f'v."{c}"' if c in video_cols else f'NULL::DOUBLE AS "{c}"'
            for c in FILTERABLE
        ]
        rows = _fetch(
            con,
            f"""
            SELECT s.clip_id, s.shard, s.shard_row, s.source_uri, {", ".join(select)},
                   s.clip_id IN (SELECT clip_id FROM clips) AS kept, r.stage AS drop_stage, r.reason AS drop_reason
            FROM shard_rows AS s
            LEFT JOIN (SELECT video_id, any_value(width) AS width, any_value(height) AS height
                       FROM videos GROUP BY video_id) AS v USING (video_id)
            LEFT JOIN (SELECT clip_id, any_value(stage) AS stage, any_value(reason) AS reason FROM rejected
                       WHERE clip_id IS NOT NULL AND stage IN ('filters', 'dedup', 'events') GROUP BY clip_id) AS r
                   USING (clip_id)
            ORDER BY s.shard, s.shard_row
            """,
        )
    scores = [c for c in FILTERABLE if any(_finite(r[c]) for r in rows)]
    return _Run(run_dir, con, run_json, manifest, has_shards, rows, scores)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- html helpers -------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return visuals.fmt_number(value)
    return _e(value)


def _svg(svg: str) -> str:
    # HTML parses inline SVG without a namespace; dropping it keeps the page free of any URL.
    return svg.replace(" xmlns='http://www.w3.org/2000/svg'", "")


def _no_data(message: str = "no data") -> str:
    return f"<p class='no-data'>{_e(message)}</p>"


def _img(uri: str, alt: str, cls: str = "") -> str:
    klass = f" class='{cls}'" if cls else ""
    return f"<img{klass} src='{uri}' alt='{_e(alt)}' title='{_e(alt)}'>"


def _bar_table(
    rows: Iterable[tuple[str, float | int, str]], header: tuple[str, str, str], fmt: Callable[[Any], str] = _num
) -> str:
    """A table whose value column carries a proportional bar; rows are (label, value, note)."""
    rows = list(rows)
    peak = max((float(v) for _, v, _ in rows), default=0.0) or 1.0
    body = "".join(
        f"<tr><td>{label}</td><td class='num'>{fmt(v)}</td>"
        f"<td class='barcell'><div class='bar' style='width:{max(float(v) / peak * 100, 0):.1f}%'></div></td>"
        f"<td class='note'>{note}</td></tr>"
        for label, v, note in rows
    )
    return (
        f"<table class='bars'><thead><tr><th>{header[0]}</th><th>{header[1]}</th><th></th><th>{header[2]}</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def _section(sid: str, title: str, body: str, intro: str = "") -> str:
    lead = f"<p class='intro'>{intro}</p>" if intro else ""
    return f"<section id='{sid}'><h2>{_e(title)}</h2>{lead}{body}</section>"


# --- sections -----------------------------------------------------------------------------------------------------


def _header(run: _Run) -> str:
    rj, n_clips = run.run_json, run.con.execute("SELECT count(*) FROM clips").fetchone()[0]
    flow = run.manifest.get("flow", {}).get("backend", rj.get("config", {}).get("flow", {}).get("backend"))
    facts = [
        ("run directory", str(run.run_dir.resolve())),
        ("status", f"{rj.get('status', 'unknown')} (stage {rj.get('stage', '?')})"),
        ("config hash", rj.get("config_hash", run.manifest.get("config_hash", "unknown"))),
        ("schema version", rj.get("schema_version", run.manifest.get("schema_version", "unknown"))),
        ("curated clips", f"{n_clips:,} of {len(run.rows):,} shard rows"),
        ("flow backend", flow or "unknown"),
    ]
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
    nav = "".join(
        f"<a href='#{sid}'>{name}</a>"
        for sid, name in (
            ("counts", "counts"),
            ("histograms", "histograms"),
            ("galleries", "galleries"),
            ("qcm", "QCM"),
            ("clips", "clips"),
            ("timing", "timing"),
        )
    )
    title = f"<h1>Curation report: {_e(run.run_dir.name)}</h1>"
    return f"<header>{title}<dl class='facts'>{items}</dl><nav>{nav}</nav></header>"


def _counts(run: _Run) -> str:
    con = run.con
    videos, failed = con.execute("SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL) FROM videos").fetchone()
    scenes = con.execute("SELECT count(*) FROM scenes").fetchone()[0]
    curated = con.execute("SELECT count(*) FROM clips").fetchone()[0]
    shard_ids = "(SELECT clip_id FROM shard_rows)" if run.has_shards else "(SELECT NULL::VARCHAR)"
    before_shards = con.execute(
        f"SELECT count(DISTINCT clip_id) FROM rejected WHERE clip_id IS NOT NULL "
        f"AND stage NOT IN ('filters', 'dedup', 'events') AND clip_id NOT IN {shard_ids}"
    ).fetchone()[0]
    dropped = {s: sum(1 for r in run.rows if r["drop_stage"] == s) for s in GLOBAL_STAGES}
    curation = run.manifest.get("curation", {})
    n_rows = len(run.rows)
    funnel = [
        ("videos in", videos, f"{failed:,} failed" if failed else ""),
        ("scenes", scenes, ""),
        ("clip candidates", n_rows + before_shards, f"{n_rows:,} shard rows + {before_shards:,} rejected before"),
    ]
    left = n_rows
    for stage in GLOBAL_STAGES:
        left -= dropped[stage]
        note = f"−{dropped[stage]:,}" if stage in curation else "stage off"
        funnel.append((f"after {stage}", left, note))
    funnel[-1] = (funnel[-1][0] + " = curated", curated, funnel[-1][2])
    table = _bar_table(((_e(k), v, _e(n)) for k, v, n in funnel), ("step", "count", "note"))
    reasons = _fetch(con, load_named("rejected_by_reason"))
    if reasons:
        body = "".join(
            f"<tr><td>{_e(r['stage'])}</td><td>{_e(r['reason'])}</td><td class='num'>{r['n']:,}</td>"
            f"<td class='note'>{_e(_short(r['example'] or '', 140))}</td></tr>"
            for r in reasons
        )
        rejected = (
            "<h3>Rejected by stage and reason</h3><table class='plain'><thead><tr><th>stage</th><th>reason</th>"
            f"<th>n</th><th>example</th></tr></thead><tbody>{body}</tbody></table>"
        )
    else:
        rejected = "<h3>Rejected by stage and reason</h3>" + _no_data("nothing was rejected")
    return _section("counts", "Counts", f"<div class='cols'><div>{table}</div><div>{rejected}</div></div>")


def _secs(value: Any) -> str:
    return f"{float(value):,.2f}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


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


def _qcm(run: _Run) -> str:
    tokens = _fetch(
        run.con,
        "SELECT qcm_token AS token, count(*) AS n FROM clips WHERE qcm_token BETWEEN 0 AND 80 GROUP BY 1",
    )
    total, unknown = run.con.execute("SELECT count(*), count(*) FILTER (WHERE qcm_token IS NULL) FROM clips").fetchone()
    if not tokens:
        return _section("qcm", "Camera motion (QCM tokens)", _no_data("no QCM tokens (no curated clips or camera off)"))
    counts = np.zeros((len(KEYS), len(MOUSE)), np.int64)
    for t in tokens:
        counts[int(t["token"]) // len(MOUSE), int(t["token"]) % len(MOUSE)] = int(t["n"])
    top = sorted(((int(n), i) for i, n in enumerate(counts.ravel()) if n), reverse=True)[:6]
    top_html = "".join(
        f"<tr><td>{_e(KEYS[i // 9])}</td><td>{_e(MOUSE[i % 9])}</td><td class='num'>{n:,}</td></tr>" for n, i in top
    )
    body = (
        f"<div class='cols'><figure class='chart'>{_svg(visuals.qcm_heatmap_svg(counts))}</figure>"
        "<div><h3>Most common</h3><table class='plain'><thead><tr><th>keys</th><th>mouse</th><th>clips</th></tr>"
        f"</thead><tbody>{top_html}</tbody></table>"
        f"<p class='note'>{total:,} curated clips, {unknown:,} without a token.</p></div></div>"
    )
    intro = "Clip tokens of the curated clips: rows are key states (W = forward, D = right), columns mouse states."
    return _section("qcm", "Camera motion (QCM tokens)", body, intro)


def _pick_clips(run: _Run) -> list[tuple[str, dict[str, Any]]]:
    """Up to MAX_CLIPS curated clips, deterministic: the best of each CLIP_PICKS score, then by clip id."""
    clip_cols = _columns(run.con, "clips")
    picked: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for why, column, condition in CLIP_PICKS:
        if column not in clip_cols or (condition and "camera_static" not in clip_cols):
            continue
        rows = _fetch(
            run.con,
            f'SELECT clip_id, shard, shard_row FROM clips WHERE isfinite("{column}"::DOUBLE) {condition} '
            f'ORDER BY "{column}" DESC, clip_id LIMIT {MAX_CLIPS + 1}',
        )
        row = next((r for r in rows if r["clip_id"] not in seen), None)
        if row is not None:
            picked.append((why, row))
            seen.add(row["clip_id"])
    if len(picked) < MAX_CLIPS:
        for row in _fetch(
            run.con, f"SELECT clip_id, shard, shard_row FROM clips ORDER BY clip_id LIMIT {MAX_CLIPS * 2}"
        ):
            if len(picked) < MAX_CLIPS and row["clip_id"] not in seen:
                picked.append(("first by clip id", row))
                seen.add(row["clip_id"])
    return picked[:MAX_CLIPS]


def _strip(images: list[tuple[str, str]], cls: str = "") -> str:
    return "<div class='strip'>" + "".join(
        f"<figure>{_img(uri, cap, cls)}<figcaption>{_e(cap)}</figcaption></figure>" for uri, cap in images
    ) + "</div>"  # fmt: skip


def _clip_block(run: _Run, why: str, ref: dict[str, Any]) -> str:
    row = read_rows(run.run_dir, [(ref["shard"], int(ref["shard_row"]))], [*CLIP_SCALARS, *CLIP_TENSORS])[0]
    name = Path(str(row.get("source_uri") or "")).name
    facts = [
        ("picked for", why),
        ("source", name),
        ("frames", f"{row.get('start_frame')}–{row.get('end_frame')}"),
        ("seconds", f"{_num(row.get('start_s'))}–{_num(row.get('end_s'))}"),
        ("motion_mean", _num(row.get("motion_mean"))),
        ("event_score", _num(row.get("event_score"))),
        ("sharpness", _num(row.get("sharpness"))),
        ("keys / mouse", f"{row.get('qcm_keys') or '–'} / {row.get('qcm_mouse') or '–'}"),
        ("camera confidence", _num(row.get("camera_confidence"))),
    ]
    parts = ["<dl class='facts small'>" + "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)]
    if row.get("camera_text"):
        parts.append(f"<div class='wide'><dt>camera text</dt><dd>{_e(row['camera_text'])}</dd></div>")
    parts.append("</dl>")
    frames = row.get("frames")
    n_frames = frames.shape[0] if frames is not None and frames.ndim == 4 else 0
    shown = sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, min(n_frames, 8))}) if n_frames else []
    if n_frames:
        parts.append(
            "<h4>frames</h4>" + _strip([(visuals.to_data_uri(frames[t], max_side=THUMB_SIDE), f"t={t}") for t in shown])
        )
    else:
        parts.append("<h4>frames</h4>" + _no_data())
    extras = []
    flow = row.get("flow")
    if flow is not None and flow.ndim == 4 and flow.shape[0]:
        m = (flow.shape[0] - 1) // 2
        images = [(visuals.to_data_uri(visuals.flow_to_rgb(flow[m]), max_side=THUMB_SIDE), f"flow {m}→{m + 1}")]
        if m < n_frames:
            images.insert(0, (visuals.to_data_uri(frames[m], max_side=THUMB_SIDE), f"frame {m}"))
        extras.append("<div><h4>flow (middle pair)</h4>" + _strip(images) + "</div>")
    noise = row.get("warped_noise")
    if noise is not None and noise.ndim == 4 and noise.shape[0]:
        idx = sorted({int(round(x)) for x in np.linspace(0, noise.shape[0] - 1, min(noise.shape[0], 4))})
        images = [(visuals.to_data_uri(visuals.noise_to_gray(noise[t, 0]), "png"), f"t={t}") for t in idx]
        extras.append("<div><h4>warped noise, channel 0</h4>" + _strip(images, "pixelated") + "</div>")
    c2w = row.get("camera_c2w")
    if c2w is not None:
        extras.append(f"<div><h4>camera path (top view)</h4>{_svg(visuals.camera_path_svg(c2w, size=150))}</div>")
    phase = row.get("event_phase")
    if phase is not None:
        extras.append(
            "<div><h4>event phase</h4>"
            f"{_svg(visuals.line_svg(np.asarray(phase, np.float32), width=200, height=60, ymin=0.0, ymax=1.0))}</div>"
        )
    if extras:
        parts.append(f"<div class='extras'>{''.join(extras)}</div>")
    activity = row.get("event_activity")
    if activity is not None and activity.ndim == 3 and n_frames:
        overlays = [
            (visuals.to_data_uri(visuals.activity_overlay(frames[t], activity[t]), max_side=THUMB_SIDE), f"t={t}")
            for t in shown
            if t < activity.shape[0]
        ]
        parts.append("<h4>event activity</h4>" + _strip(overlays))
    return f"<article class='clip'><h3>{_e(row.get('clip_id', ref['clip_id']))}</h3>{''.join(parts)}</article>"


def _clips(run: _Run) -> str:
    picked = _pick_clips(run) if run.has_shards else []
    if not picked:
        return _section("clips", "Example clips", _no_data("no curated clips"))
    intro = "A few curated clips, each picked for one score. Parts whose annotator was off are left out."
    return _section("clips", "Example clips", "".join(_clip_block(run, why, ref) for why, ref in picked), intro)


def _timing(run: _Run) -> str:
    worker = run.run_json.get("worker_seconds") or {}
    wall = run.run_json.get("wall_seconds") or {}
    if not worker and not wall:
        return _section("timing", "Timing", _no_data("no timing in _run.json"))
    # Pipeline order; sub-stages ("clips/flow") go under their stage, indented (a stage's own time includes them).
    steps = ("ingest", "scenes", "clips")
    order = sorted(worker, key=lambda s: (steps.index(p) if (p := s.split("/")[0]) in steps else 9, p, "/" in s, s))
    rows = [
        (f"<span class='sub'>{_e(s.split('/', 1)[1])}</span>" if "/" in s else _e(s), float(worker[s]), "")
        for s in order
    ]
    wall_rows = [(_e(s), float(v), "") for s, v in wall.items()]
    body = "<div class='cols'>"
    body += "<div><h3>worker seconds</h3>" + (_bar_table(rows, ("stage", "s", ""), _secs) if rows else _no_data())
    body += "</div><div><h3>wall seconds</h3>"
    body += _bar_table(wall_rows, ("stage", "s", ""), _secs) if wall_rows else _no_data()
    body += "</div>"
    throughput = run.run_json.get("throughput") or {}
    if rates := [(s, f) for s, f in throughput.items() if f.get("rows")]:
        bottleneck = run.run_json.get("bottleneck")
        rows = [
            (
                _e(stage) + (" <b>(bottleneck)</b>" if stage == bottleneck else ""),
                float(f.get("utilisation") or 0.0) * 100,
                f"{f['rows_per_s']:.2f} rows/s on {f['slots']:g} {'actors' if f.get('kind') == 'actors' else 'slots'}"
                + (f", rows queued {f['queued_mean_s']:.1f} s" if f.get("queued_mean_s") is not None else ""),
            )
            for stage, f in rates
        ]
        body += "<div><h3>utilisation %</h3>" + _bar_table(rows, ("stage", "%", "throughput"), _num) + "</div>"
    body += "</div>"
    intro = (
        "Worker seconds are summed over all workers; wall seconds are elapsed. Utilisation is a stage's busy time "
        "over what its slots could give; the most utilised stage is the one to scale (README: Running on a cluster)."
    )
    return _section("timing", "Timing", body, intro)


# --- page ---------------------------------------------------------------------------------------------------------

CSS = """
:root { --kept: #0072b2; --dropped: #e69f00; --ink: #222; --muted: #666; --line: #e3e3e3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0;
       background: #f6f6f4; }
header, section { max-width: 1260px; margin: 0 auto; padding: 16px 24px; }
header { padding-top: 24px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; margin-bottom: 16px; }
h1 { font-size: 22px; margin: 0 0 10px; }
h2 { font-size: 18px; margin: 0 0 8px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
h4 { font-size: 12px; margin: 10px 0 4px; color: var(--muted); font-weight: 600; text-transform: uppercase;
     letter-spacing: .03em; }
nav a { margin-right: 14px; color: var(--kept); text-decoration: none; }
.intro, .note { color: var(--muted); font-size: 13px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 0 0 10px; }
.facts div { min-width: 0; }
.facts dt { font-size: 11px; color: var(--muted); text-transform: uppercase; }
.facts dd { margin: 0; font-family: ui-monospace, monospace; font-size: 13px; overflow-wrap: anywhere; }
.facts.small dd { font-size: 12px; }
.facts .wide { flex-basis: 100%; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.cols > * { flex: 1 1 420px; min-width: 0; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th { text-align: left; font-weight: 600; color: var(--muted); border-bottom: 1px solid var(--line); padding: 3px 6px; }
td { border-bottom: 1px solid #f0f0f0; padding: 3px 6px; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.note { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
td.barcell { width: 40%; }
.bar { height: 12px; background: var(--kept); border-radius: 2px; margin-top: 3px; min-width: 1px; }
.sub { padding-left: 16px; color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(385px, 1fr)); gap: 8px; }
figure { margin: 0; }
figure.chart svg { max-width: 100%; height: auto; }
.kept-key { color: var(--kept); font-weight: 600; }
.dropped-key { color: var(--dropped); font-weight: 600; }
.gallery { border-top: 1px solid var(--line); margin-top: 8px; }
.bucket h4 .range { text-transform: none; font-weight: 400; }
.thumbs, .strip { display: flex; flex-wrap: wrap; gap: 8px; }
.buckets { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 4px 16px; }
.thumb { width: 112px; padding: 4px; border: 2px solid #cfe3f3; border-radius: 4px; background: #fff; }
.thumb.dropped { border-color: var(--dropped); background: #fff8ec; }
.thumb img { width: 100px; height: 100px; object-fit: cover; display: block; }
.thumb figcaption { font-size: 11px; line-height: 1.3; margin-top: 3px; overflow-wrap: anywhere; }
.thumb .reason { color: #a05a00; }
.thumb .src { color: var(--muted); }
.missing { width: 100px; height: 100px; background: #eee; color: var(--muted); font-size: 11px;
           display: flex; align-items: center; justify-content: center; }
.strip figure { text-align: center; }
.strip img { width: 112px; height: 112px; object-fit: contain; display: block; background: #000; }
.strip img.pixelated { image-rendering: pixelated; }
.strip figcaption { font-size: 11px; color: var(--muted); }
.clip { border-top: 1px solid var(--line); padding-top: 6px; margin-top: 10px; }
.clip h3 { font-family: ui-monospace, monospace; }
.extras { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.no-data { color: var(--muted); font-style: italic; background: #fafafa; border: 1px dashed #ddd; padding: 10px;
           border-radius: 4px; }
"""

# Records script errors and broken images on the <body> so a headless browser (and the tests) can check the page.
SCRIPT = """
window.__reportErrors = 0;
window.onerror = function () { window.__reportErrors += 1; };
window.addEventListener("load", function () {
  var broken = 0;
  document.querySelectorAll("img").forEach(function (img) {
    if (!img.complete || img.naturalWidth === 0) { broken += 1; }
  });
  document.body.dataset.errors = String(window.__reportErrors);
  document.body.dataset.brokenImages = String(broken);
  document.body.dataset.reportReady = "1";
});
"""


def render_report(run_dir: str | Path) -> str:
    """The report of one finished run as an HTML string (QueryError for a directory that is not a run)."""
    run = _load(Path(run_dir))
    try:
        sections = [_counts(run), _histograms(run), _galleries(run), _qcm(run), _clips(run), _timing(run)]
        head = _header(run)
    finally:
        run.con.close()
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>Curation report: "
        f"{_e(Path(run_dir).name)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>"
        f"<body>{head}<main>{''.join(sections)}</main></body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the report and write it atomically to `out` (default RUN_DIR/report.html); returns the path."""
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    text = render_report(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp file beside the target, then rename: a reader never sees half a report.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be opened and shared
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory")
    parser.add_argument("--out", type=Path, default=None, help=f"output file (default RUN_DIR/{REPORT_NAME})")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = write_report(args.run_dir, args.out)
    except QueryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(f"{path}  {path.stat().st_size / 1e6:.2f} MB  {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
