"""Pictures of clips and scores: pure functions from numpy arrays to RGB images or SVG strings.

Used by the run's HTML report (`curation.report`) and handy in notebooks. No plotting library: charts are small
hand-written SVGs (`IPython.display.SVG(svg)` shows them), images go to data URIs with `to_data_uri`. Every function
accepts empty or all-NaN input and then draws a "no data" placeholder (or a black image) instead of raising.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from annotators.qcm import KEYS, MOUSE

# A short, colour-blind-safe palette (Okabe-Ito) so charts read the same in every section.
KEPT_COLOR = "#0072b2"
DROPPED_COLOR = "#e69f00"
LINE_COLOR = "#d55e00"
TEXT_COLOR = "#333"
GRID_COLOR = "#ccc"
FONT = "font-family='system-ui, sans-serif'"


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' aria-label='{html.escape(label, quote=True)}' {FONT}>"
    )


def _text(x: float, y: float, s: str, *, size: int = 11, anchor: str = "middle", cls: str = "", **attrs: str) -> str:
    extra = "".join(f" {k.replace('_', '-')}='{v}'" for k, v in attrs.items())
    klass = f" class='{cls}'" if cls else ""
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' fill='{TEXT_COLOR}'{klass}{extra}>"
        f"{html.escape(s)}</text>"
    )


def fmt_number(value: float) -> str:
    """Compact label for a number: 3 significant digits, but whole thousands rather than an exponent."""
    if not math.isfinite(value):
        return str(value)
    if 1e3 <= abs(value) < 1e7:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def empty_svg(message: str = "no data", *, width: int = 360, height: int = 60, title: str = "") -> str:
    """Placeholder chart with a message (what every chart function returns for empty input)."""
    parts = [_svg_open(width, height, f"{title} {message}".strip())]
    parts.append(
        f"<rect x='0.5' y='0.5' width='{width - 1}' height='{height - 1}' fill='#fafafa' stroke='{GRID_COLOR}'/>"
    )
    if title:
        parts.append(_text(width / 2, 16, title, size=12, font_weight="600"))
    parts.append(_text(width / 2, height / 2 + (8 if title else 4), message, size=12, cls="no-data"))
    parts.append("</svg>")
    return "".join(parts)


def _as_float(values: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """A flat float array; None (SQL NULL) becomes NaN so callers can mask it out with isfinite."""
    if values is None:
        return np.zeros(0)
    return np.array([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], dtype=float)


# --- images -----------------------------------------------------------------------------------------------------


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Optical flow `(2, h, w)` or `(h, w, 2)` (dx, dy) to an RGB uint8 image on the usual colour wheel: hue is
    the direction, brightness the magnitude over `max_magnitude` (default: the 99th percentile, so one outlier
    does not darken the rest). Zero (and non-finite) flow is black."""
    arr = np.asarray(flow, dtype=np.float32)
    if arr.ndim != 3 or arr.size == 0:
        return _black()
    if arr.shape[0] == 2 and arr.shape[-1] != 2:
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] != 2:
        raise ValueError(f"flow must be (2, h, w) or (h, w, 2), got {np.shape(flow)}")
    arr = np.where(np.isfinite(arr), arr, 0.0)
    dx, dy = arr[..., 0], arr[..., 1]
    mag = np.hypot(dx, dy)
    scale = float(max_magnitude) if max_magnitude else float(np.percentile(mag, 99))
    if not scale > 0:
        scale = float(mag.max()) or 1.0  # mostly still: normalise by the few moving pixels
    # Image y points down, so the angle of (dx, dy) is measured clockwise: right = red, down = yellow-green.
    hue = (np.degrees(np.arctan2(dy, dx)) % 360.0) / 2.0  # OpenCV's 8-bit hue is 0..180
    hsv = np.empty(arr.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = np.round(hue).astype(np.uint8) % 180
    hsv[..., 1] = 255
    hsv[..., 2] = np.round(np.clip(mag / scale, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _black(h: int = 1, w: int = 1) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def noise_to_gray(noise: np.ndarray) -> np.ndarray:
    """One `(h, w)` frame of N(0, 1) noise to uint8 grey: -3 sigma black, +3 sigma white, NaN mid-grey."""
    arr = np.asarray(noise, dtype=np.float32)
    if arr.ndim > 2:  # (C, h, w) or (1, h, w): show the first channel
        arr = arr[(0,) * (arr.ndim - 2)]
    if arr.ndim != 2 or arr.size == 0:
        return np.zeros((1, 1), np.uint8)
    arr = np.where(np.isfinite(arr), arr, 0.0)
    return np.round((np.clip(arr, -3.0, 3.0) + 3.0) / 6.0 * 255.0).astype(np.uint8)


def activity_overlay(frame_rgb: np.ndarray, activity: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Blend an activity map `(gh, gw)` in [0, 1] over an RGB frame as a heat map. Each token cell is shown as a
    block (nearest upsampling: the map is a token grid, not a smooth field), and a cell's opacity grows with its
    activity so inactive cells leave the frame untouched."""
    frame = np.asarray(frame_rgb)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    if frame.size == 0:
        return _black()
    frame = frame[..., :3].astype(np.uint8)
    act = np.asarray(activity, dtype=np.float32)
    if act.ndim != 2 or act.size == 0:
        return frame.copy()
    act = np.clip(np.where(np.isfinite(act), act, 0.0), 0.0, 1.0)
    h, w = frame.shape[:2]
    up = cv2.resize(act, (w, h), interpolation=cv2.INTER_NEAREST)
    heat = cv2.cvtColor(cv2.applyColorMap(np.round(up * 255).astype(np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    weight = (up * alpha)[..., None]
    return np.round(frame * (1.0 - weight) + heat * weight).astype(np.uint8)


def to_data_uri(image_rgb: np.ndarray, fmt: str = "jpeg", max_side: int | None = None, quality: int = 85) -> str:
    """An RGB (or grey) uint8 image as a `data:` URI (`fmt` jpeg or png), shrunk so its longer side is at most
    `max_side`. An empty image becomes a 1x1 black pixel, so an <img> never breaks."""
    img = np.asarray(image_rgb)
    if img.size == 0 or img.ndim not in (2, 3):
        img = _black()
    if img.dtype != np.uint8:
        img = np.clip(np.nan_to_num(img.astype(np.float32)), 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR)
    fmt = fmt.lower()
    if fmt in ("jpeg", "jpg"):
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        mime = "image/jpeg"
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        mime = "image/png"
    else:
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} image as {fmt}")
    return f"data:{mime};base64,{base64.b64encode(buf.tobytes()).decode('ascii')}"


# --- charts -------------------------------------------------------------------------------------------------------


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values between lo and hi (1-2-5 steps)."""
    span = hi - lo
    if not span > 0:
        return [lo]
    raw = span / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def histogram_svg(
    values: Sequence[float] | np.ndarray | None,
    *,
    bins: int = 20,
    thresholds: Mapping[str, float] | None = None,
    title: str = "",
    kept_mask: Sequence[bool] | np.ndarray | None = None,
    width: int = 380,
    height: int = 190,
) -> str:
    """Histogram of the finite `values` in `bins` equal-width bins (one `<g class='bin'>` each). With `kept_mask`
    (same length as `values`) each bar is stacked: kept below, dropped on top. `thresholds` maps a label (e.g.
    "min 20", "event cutoff") to an x position drawn as a labelled vertical line; the x range widens to show it."""
    vals = _as_float(values)
    mask = np.ones(vals.shape, bool) if kept_mask is None else np.asarray(kept_mask, dtype=bool).ravel()
    if mask.shape != vals.shape:
        raise ValueError(f"kept_mask has {mask.size} entries for {vals.size} values")
    ok = np.isfinite(vals)
    vals, mask = vals[ok], mask[ok]
    lines = {k: float(v) for k, v in (thresholds or {}).items() if v is not None and math.isfinite(float(v))}
    if vals.size == 0:
        return empty_svg("no data", width=width, height=70, title=title)
    bins = max(1, int(bins))
    lo, hi = float(vals.min()), float(vals.max())
    # Widen the range to show a threshold near the data; one far outside would squash every bar into one bin,
    # so it is pinned to the edge instead, with an arrow in its label.
    reach = max(hi - lo, abs(hi), abs(lo), 1e-12) * 0.5
    lo = min([lo, *(v for v in lines.values() if v >= lo - reach)])
    hi = max([hi, *(v for v in lines.values() if v <= hi + reach)])
    if hi <= lo:  # one distinct value: give it a visible width
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, bins + 1)
    kept_counts, _ = np.histogram(vals[mask], bins=edges)
    dropped_counts, _ = np.histogram(vals[~mask], bins=edges)
    top = max(int((kept_counts + dropped_counts).max()), 1)

    left, right, top_pad, bottom = 34, 12, 26 + 12 * min(len(lines), 3), 34
    pw, ph = width - left - right, height - top_pad - bottom

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    def h_of(n: int) -> float:
        return n / top * ph

    base = top_pad + ph
    parts = [_svg_open(width, height, title or "histogram")]
    if title:
        parts.append(_text(left, 14, title, size=12, anchor="start", font_weight="600"))
    if kept_mask is not None:  # legend, top right
        n_kept, n_dropped = int(mask.sum()), int((~mask).sum())
        parts.append(
            f"<rect x='{width - 150}' y='5' width='9' height='9' fill='{KEPT_COLOR}'/>"
            + _text(width - 138, 13, f"kept {n_kept}", size=10, anchor="start")
            + f"<rect x='{width - 80}' y='5' width='9' height='9' fill='{DROPPED_COLOR}'/>"
            + _text(width - 68, 13, f"dropped {n_dropped}", size=10, anchor="start")
        )
    # y axis: 0 and the tallest bar, with a faint gridline at the top.
    parts.append(f"<line x1='{left}' y1='{top_pad}' x2='{left + pw}' y2='{top_pad}' stroke='#eee'/>")
    parts.append(_text(left - 4, top_pad + 4, str(top), size=10, anchor="end"))
    parts.append(_text(left - 4, base + 4, "0", size=10, anchor="end"))
    bw = pw / bins
    for i in range(bins):
        x = left + i * bw
        hk, hd = h_of(int(kept_counts[i])), h_of(int(dropped_counts[i]))
        tip = (
            f"{fmt_number(edges[i])} to {fmt_number(edges[i + 1])}: {kept_counts[i]} kept, {dropped_counts[i]} dropped"
        )
        parts.append(
            f"<g class='bin'><title>{html.escape(tip)}</title>"
            f"<rect class='kept' x='{x + 0.5:.1f}' y='{base - hk:.1f}' width='{max(bw - 1, 0.5):.1f}' "
            f"height='{hk:.1f}' fill='{KEPT_COLOR}'/>"
            f"<rect class='dropped' x='{x + 0.5:.1f}' y='{base - hk - hd:.1f}' width='{max(bw - 1, 0.5):.1f}' "
            f"height='{hd:.1f}' fill='{DROPPED_COLOR}'/></g>"
        )
    # x axis with round ticks.
    parts.append(f"<line x1='{left}' y1='{base}' x2='{left + pw}' y2='{base}' stroke='#666'/>")
    for t in _ticks(lo, hi, 5):
        x = x_of(t)
        parts.append(f"<line x1='{x:.1f}' y1='{base}' x2='{x:.1f}' y2='{base + 4}' stroke='#666'/>")
        # The last label would overflow the right edge if centred on its tick.
        parts.append(_text(x, base + 15, fmt_number(t), size=10, anchor="end" if x > width - 24 else "middle"))
    parts.append(_text(left + pw / 2, height - 4, "value (count per bin)", size=10, fill_opacity="0.7"))
    # Thresholds: labels stagger over up to 3 rows above the plot so close lines do not overprint.
    for row, (label, v) in enumerate(sorted(lines.items(), key=lambda kv: kv[1])):
        x = x_of(min(max(v, lo), hi))
        label = f"← {label}" if v < lo else f"{label} →" if v > hi else label
        y_label = 26 + 12 * (row % 3)
        anchor = "start" if x < left + pw * 0.6 else "end"
        dx = 3 if anchor == "start" else -3
        parts.append(
            f"<g class='threshold'><line x1='{x:.1f}' y1='{y_label - 8}' x2='{x:.1f}' y2='{base}' "
            f"stroke='{LINE_COLOR}' stroke-width='1.5' stroke-dasharray='4 2'/>"
            + _text(x + dx, y_label, f"{label}", size=10, anchor=anchor, fill_opacity="1")
            + "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def qcm_heatmap_svg(counts: np.ndarray | Sequence[Sequence[int]] | None, *, title: str = "", cell: int = 34) -> str:
    """A 9x9 grid of QCM token counts (rows: key states, columns: mouse states, in `annotators.qcm` order), one
    `<rect class='cell'>` per token, shaded by count."""
    arr = _as_float(counts)
    if not np.isfinite(arr).any():
        return empty_svg("no data", title=title)
    if arr.size != len(KEYS) * len(MOUSE):
        raise ValueError(f"expected {len(KEYS)}x{len(MOUSE)} token counts, got {arr.size} values")
    arr = np.where(np.isfinite(arr), arr, 0.0).reshape(len(KEYS), len(MOUSE))
    left, top = 46, 40 + (18 if title else 0)
    width, height = left + cell * len(MOUSE) + 10, top + cell * len(KEYS) + 10
    peak = float(arr.max()) or 1.0
    parts = [_svg_open(width, height, title or "QCM token counts")]
    if title:
        parts.append(_text(4, 14, title, size=12, anchor="start", font_weight="600"))
    parts.append(_text(left + cell * len(MOUSE) / 2, top - 24, "mouse", size=10, fill_opacity="0.7"))
    for j, m in enumerate(MOUSE):
        parts.append(_text(left + (j + 0.5) * cell, top - 6, m, size=12))
    for i, k in enumerate(KEYS):
        parts.append(_text(left - 6, top + (i + 0.5) * cell + 4, k, size=11, anchor="end"))
        for j, m in enumerate(MOUSE):
            n = arr[i, j]
            share = n / peak
            # White to blue; counts print dark on light cells and white on dark ones.
            r, g, b = (round(255 - (255 - c) * share) for c in (0, 114, 178))
            fill = f"#{r:02x}{g:02x}{b:02x}"
            parts.append(
                f"<rect class='cell' x='{left + j * cell}' y='{top + i * cell}' width='{cell - 1}' height='{cell - 1}' "
                f"fill='{fill}' stroke='#eee'><title>{html.escape(f'{k} / {m} (token {i * 9 + j}): {n:g}')}</title>"
                "</rect>"
            )
            if n > 0:
                color = "#fff" if share > 0.55 else TEXT_COLOR
                parts.append(
                    f"<text x='{left + (j + 0.5) * cell:.1f}' y='{top + (i + 0.5) * cell + 4:.1f}' font-size='11' "
                    f"text-anchor='middle' fill='{color}'>{n:g}</text>"
                )
    parts.append("</svg>")
    return "".join(parts)


def line_svg(
    values: Sequence[float] | np.ndarray | None,
    *,
    width: int = 180,
    height: int = 48,
    title: str = "",
    ymin: float | None = None,
    ymax: float | None = None,
) -> str:
    """A sparkline of `values` (e.g. a clip's `event_phase`), y range `[ymin, ymax]` or the data's; non-finite
    values are skipped."""
    vals = _as_float(values)
    idx = np.flatnonzero(np.isfinite(vals))
    if idx.size == 0:
        return empty_svg("no data", width=width, height=max(height, 40), title=title)
    lo = float(vals[idx].min()) if ymin is None else float(ymin)
    hi = float(vals[idx].max()) if ymax is None else float(ymax)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    top = 16 if title else 4
    pad_l, pad_r = 4, 30
    pw, ph = width - pad_l - pad_r, height - top - 4
    n = max(vals.size - 1, 1)
    pts = " ".join(
        f"{pad_l + i / n * pw:.1f},{top + (1 - (float(vals[i]) - lo) / (hi - lo)) * ph:.1f}" for i in idx.tolist()
    )
    parts = [_svg_open(width, height, title or "line")]
    if title:
        parts.append(_text(pad_l, 11, title, size=10, anchor="start"))
    parts.append(f"<rect x='{pad_l}' y='{top}' width='{pw}' height='{ph}' fill='#fafafa' stroke='#eee'/>")
    parts.append(f"<polyline class='line' points='{pts}' fill='none' stroke='{LINE_COLOR}' stroke-width='1.5'/>")
    parts.append(_text(width - pad_r + 3, top + 8, fmt_number(hi), size=9, anchor="start"))
    parts.append(_text(width - pad_r + 3, top + ph, fmt_number(lo), size=9, anchor="start"))
    parts.append("</svg>")
    return "".join(parts)


def camera_path_svg(c2w: np.ndarray | None, *, size: int = 180, title: str = "") -> str:
    """Top-down view (x right, z forward = up) of the camera centres of a `(T, 4, 4)` camera-to-world trajectory,
    as a `<polyline class='path'>` scaled to fit, with a tick per frame showing where the optical axis points and
    the path's extent below. A path whose centre never moves (all identity: a static camera, or a pure rotation)
    is one dot with its heading ticks, labelled "static" or "rotation only"."""
    arr = np.zeros((0, 4, 4)) if c2w is None else np.asarray(c2w, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        arr = np.zeros((0, 4, 4))
    arr = arr[np.isfinite(arr).all(axis=(1, 2))]
    if arr.shape[0] == 0:
        return empty_svg("no camera path", width=size, height=60, title=title)
    x, z = arr[:, 0, 3], arr[:, 2, 3]
    hx, hz = arr[:, 0, 2], arr[:, 2, 2]  # optical axis (third column) in world x-z
    top, caption = (18 if title else 2), 16
    box = size - 4  # square plot area
    parts = [_svg_open(size, top + box + caption, title or "camera path")]
    if title:
        parts.append(_text(4, 12, title, size=11, anchor="start"))
    parts.append(f"<rect x='2' y='{top}' width='{box}' height='{box}' fill='#fafafa' stroke='#eee'/>")
    cx0, cy0 = 2 + box / 2, top + box / 2
    span = max(float(np.ptp(x)), float(np.ptp(z)))
    if span < 1e-9:
        headings = [_unit(a, b) for a, b in zip(hx, hz, strict=True)]
        turns = max(math.dist(h, headings[0]) for h in headings) > 1e-6
        tick = box * 0.3
        for nx, nz in headings:
            parts.append(
                f"<line class='heading' x1='{cx0:.1f}' y1='{cy0:.1f}' x2='{cx0 + nx * tick:.1f}' "
                f"y2='{cy0 - nz * tick:.1f}' stroke='#999' stroke-width='1'/>"
            )
        parts.append(f"<polyline class='path' points='{cx0:.1f},{cy0:.1f}' fill='none'/>")
        parts.append(f"<circle cx='{cx0:.1f}' cy='{cy0:.1f}' r='4' fill='{KEPT_COLOR}'/>")
        parts.append(_text(cx0, top + box + 12, "rotation only" if turns else "static", size=10))
        parts.append("</svg>")
        return "".join(parts)
    margin = 14  # room for the heading ticks at the edges
    scale = (box - 2 * margin) / span
    mx, mz = (x.max() + x.min()) / 2, (z.max() + z.min()) / 2

    def px(i: int) -> tuple[float, float]:
        # SVG y grows downward, world z forward is drawn upward.
        return cx0 + (x[i] - mx) * scale, cy0 - (z[i] - mz) * scale

    tick = min(12.0, box * 0.08)
    for i in range(arr.shape[0]):
        sx, sy = px(i)
        nx, nz = _unit(hx[i], hz[i])
        parts.append(
            f"<line class='heading' x1='{sx:.1f}' y1='{sy:.1f}' x2='{sx + nx * tick:.1f}' y2='{sy - nz * tick:.1f}' "
            "stroke='#999' stroke-width='1'/>"
        )
    pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(i) for i in range(arr.shape[0])))
    parts.append(f"<polyline class='path' points='{pts}' fill='none' stroke='{KEPT_COLOR}' stroke-width='2'/>")
    (sx, sy), (ex, ey) = px(0), px(arr.shape[0] - 1)
    parts.append(f"<circle cx='{sx:.1f}' cy='{sy:.1f}' r='3.5' fill='#009e73'><title>start</title></circle>")
    parts.append(f"<circle cx='{ex:.1f}' cy='{ey:.1f}' r='3.5' fill='{LINE_COLOR}'><title>end</title></circle>")
    # Trajectories have no metric scale, so say how big the drawn box is rather than pretend it is metres.
    parts.append(_text(cx0, top + box + 12, f"extent {fmt_number(span)} (start green)", size=10))
    parts.append("</svg>")
    return "".join(parts)


def _unit(a: float, b: float) -> tuple[float, float]:
    n = math.hypot(a, b)
    return (a / n, b / n) if n > 1e-12 else (0.0, 1.0)
