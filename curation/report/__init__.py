"""The run's HTML curation report: `RUN_DIR/report.html`, one self-contained file (inline CSS, SVG charts, images
as data URIs, nothing fetched).

Sections: `counts` (the clip funnel and rejections), `buckets` (the curated clips per stored shape, and how the
frames are stored), `histograms` (every score over all shard rows, kept vs dropped, with the thresholds that were
applied), `galleries` (thumbnails per score tercile), `qcm` (camera-motion tokens), `clips` (a few curated clips:
frames, flow, warped noise, camera path, event activity) and `timing`. Everything is read through the DuckDB views
and `curation.shards.read_rows`; the run directory is not modified (except for the report itself, written
atomically).

Modules: `data` (the `_Run` holder and queries), `markup` (HTML primitives, CSS and script), `overview` (header,
counts, buckets), `scores` (histograms, galleries) and `clips` (QCM, example clips, timing).

    python -m curation.report RUN_DIR [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from curation.duck import QueryError
from curation.report.clips import _clips, _qcm, _timing
from curation.report.data import _load
from curation.report.markup import CSS, SCRIPT, _e
from curation.report.overview import _buckets, _counts, _header
from curation.report.scores import _galleries, _histograms

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"


def render_report(run_dir: str | Path) -> str:
    """The report of one finished run as an HTML string (QueryError for a directory that is not a run)."""
    run = _load(Path(run_dir))
    try:
        sections = [
            _counts(run),
            _buckets(run),
            _histograms(run),
            _galleries(run),
            _qcm(run),
            _clips(run),
            _timing(run),
        ]
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


__all__ = ["REPORT_NAME", "main", "render_report", "write_report"]
