"""HTML primitives for the report: escaping, number formatting, inline SVG and images, tables, sections, and the
page's CSS and script."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

from curation import visuals

THUMB_SIDE = 112


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


def _secs(value: Any) -> str:
    return f"{float(value):,.2f}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _strip(images: list[tuple[str, str]], cls: str = "") -> str:
    return "<div class='strip'>" + "".join(
        f"<figure>{_img(uri, cap, cls)}<figcaption>{_e(cap)}</figcaption></figure>" for uri, cap in images
    ) + "</div>"  # fmt: skip


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
