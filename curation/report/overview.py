"""Report sections about the run as a whole: the page header, `counts` (the clip funnel and rejections) and
`buckets` (the shapes the curated clips are stored at, and how their frames are stored)."""

from __future__ import annotations

from typing import Any

from curation.duck import load_named
from curation.report.data import GLOBAL_STAGES, _columns, _fetch, _Run
from curation.report.markup import _bar_table, _e, _no_data, _num, _secs, _section, _short

# The clips columns `bucket_distribution` reads: a run from before buckets lacks some of them.
BUCKET_COLUMNS = (
    "bucket",
    "num_frames",
    "frame_height",
    "frame_width",
    "crop_fraction",
    "start_s",
    "end_s",
    "video_id",
)


def _header(run: _Run) -> str:
    rj, n_clips = run.run_json, run.con.execute("SELECT count(*) FROM clips").fetchone()[0]
    flow = run.manifest.get("flow", {}).get("backend", rj.get("config", {}).get("flow", {}).get("backend"))
    facts = [
        ("run directory", str(run.run_dir.resolve())),
        ("status", f"{rj.get('status', 'unknown')} (stage {rj.get('stage', '?')})"),
        ("config hash", rj.get("config_hash", run.manifest.get("config_hash", "unknown"))),
        ("schema version", rj.get("schema_version", run.manifest.get("schema_version", "unknown"))),
        ("curated clips", f"{n_clips:,} of {run.n_rows:,} shard rows"),
        ("flow backend", flow or "unknown"),
    ]
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
    nav = "".join(
        f"<a href='#{sid}'>{name}</a>"
        for sid, name in (
            ("counts", "counts"),
            ("buckets", "buckets"),
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
    dropped = run.dropped
    curation = run.manifest.get("curation", {})
    n_rows = run.n_rows
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


def _pct(value: Any) -> str:
    return "–" if value is None else f"{float(value) * 100:.1f}%"


def _shapes_note(block: Any) -> str:
    """The manifest's `buckets` record in words: how many buckets and windows, or the single fixed shape."""
    if not isinstance(block, dict) or "enabled" not in block:
        return "not recorded"
    names = [str(b) for b in block.get("buckets") or []]
    if not block["enabled"]:
        return f"buckets off: the single fixed shape {names[0]}" if names else "buckets off: the single fixed shape"
    listed = ", ".join(names) if len(names) <= 8 else ", ".join(names[:8]) + ", …"
    windows = block.get("windows")
    per_clip = f", {windows} window{'s' if windows != 1 else ''} per clip" if windows is not None else ""
    return f"buckets on: {len(names)} bucket{'s' if len(names) != 1 else ''} ({listed}){per_clip}"


def _store_note(block: Any) -> str:
    """The manifest's `frames_store` record in words: raw bytes, an encoded stream (codec, CRF, ...), or none."""
    if not isinstance(block, dict) or "store" not in block:
        return "not recorded"
    store = block["store"]
    if store == "raw":
        return "raw (uint8 bytes)"
    if store == "none":
        return "none (annotations only)"
    if store == "video":
        settings = [str(block.get("codec") or "codec not recorded")]
        if block.get("crf") is not None:
            settings.append(f"CRF {block['crf']}")
        if block.get("preset") is not None:
            settings.append(f"preset {block['preset']}")
        if block.get("pix_fmt"):
            settings.append(str(block["pix_fmt"]))
        return f"video ({', '.join(settings)})"
    return str(store)


def _buckets(run: _Run) -> str:
    line = (
        f"<p class='note'>Shapes: {_e(_shapes_note(run.manifest.get('buckets')))}. "
        f"Frames stored: {_e(_store_note(run.manifest.get('frames_store')))}.</p>"
    )
    if not set(BUCKET_COLUMNS) <= _columns(run.con, "clips"):
        return _section("buckets", "Buckets", line + _no_data("no bucket columns in the clips table (an older run)"))
    rows = _fetch(run.con, load_named("bucket_distribution"))
    if not rows:
        return _section("buckets", "Buckets", line + _no_data("no curated clips"))
    body = "".join(
        f"<tr><td>{_e(r['bucket'] or '–')}</td><td class='num'>{_num(r['clips'])}</td>"
        f"<td class='num'>{'–' if r['clip_seconds'] is None else _secs(r['clip_seconds'])}</td>"
        f"<td class='num'>{_pct(r['share'])}</td>"
        f"<td class='barcell'><div class='bar' style='width:{float(r['share'] or 0) * 100:.1f}%'></div></td>"
        f"<td class='num'>{_pct(r['mean_crop_fraction'])}</td><td class='num'>{_pct(r['max_crop_fraction'])}</td></tr>"
        for r in rows
    )
    table = (
        "<table class='bars'><thead><tr><th>bucket (TxHxW)</th><th>clips</th><th>seconds</th><th>share</th><th></th>"
        f"<th>mean crop</th><th>max crop</th></tr></thead><tbody>{body}</tbody></table>"
    )
    intro = (
        "The shapes the curated clips are stored at (frames x height x width), with each bucket's share of the "
        "clips and how much of the frame its centre crop removed."
    )
    return _section("buckets", "Buckets", line + table, intro)
