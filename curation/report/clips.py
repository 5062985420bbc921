"""Report sections over the curated clips: `qcm` (camera-motion tokens), `clips` (a few examples: frames, flow,
warped noise, camera path, event activity) and `timing` (seconds and utilisation per stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from annotators.qcm import KEYS, MOUSE
from curation import visuals
from curation.report.data import _columns, _fetch, _Run
from curation.report.markup import THUMB_SIDE, _bar_table, _e, _no_data, _num, _secs, _section, _strip, _svg
from curation.shards import read_rows

MAX_CLIPS = 4
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
