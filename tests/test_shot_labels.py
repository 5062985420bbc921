"""tests/data/shot_labels.json, the hand-labelled shot boundaries of the real test videos: the file's own schema and
consistency, and (where the media are present) that each labelled file is still the same bytes and decodes to the
labelled number of frames. Labels are frame indices of curation.decode.iter_frames; see the file's "conventions"."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_MEDIA

LABELS = Path(__file__).parent / "data" / "shot_labels.json"
DOC = json.loads(LABELS.read_text())
VIDEOS = DOC["videos"]
KINDS = {"fade", "dissolve", "wipe", "fade_in", "fade_out"}
VIDEO_KEYS = {"path", "sha256", "n_frames", "fps", "width", "height", "cuts", "gradual", "flat_spans", "notes"}
OPTIONAL_KEYS = {"root", "distribution", "ambiguous"}


def ids(video: dict) -> str:
    return video["path"]


def spans(items: list[dict], n_frames: int, what: str) -> list[tuple[int, int]]:
    """[start, end) pairs, checked to be integer, non-empty, inside [0, n_frames], sorted and non-overlapping."""
    pairs = [(item["start"], item["end"]) for item in items]
    for start, end in pairs:
        assert isinstance(start, int) and isinstance(end, int), f"{what}: {start}, {end}"
        assert 0 <= start < end <= n_frames, f"{what} [{start}, {end}) outside [0, {n_frames}]"
    for (_, end), (start, _) in zip(pairs, pairs[1:], strict=False):
        assert end <= start, f"{what}: spans unsorted or overlapping: {pairs}"
    return pairs


def test_top_level():
    assert set(DOC) == {"about", "conventions", "videos"}
    assert "0-based" in DOC["conventions"] and "iter_frames" in DOC["conventions"]
    assert len(VIDEOS) >= 20
    paths = [(v.get("root", "shared_media"), v["path"]) for v in VIDEOS]
    assert len(set(paths)) == len(paths), "a video is labelled twice"


@pytest.mark.parametrize("video", VIDEOS, ids=ids)
def test_schema_and_consistency(video: dict):
    assert VIDEO_KEYS <= set(video) <= VIDEO_KEYS | OPTIONAL_KEYS, set(video) ^ VIDEO_KEYS
    assert video.get("root", "shared_media") in {"shared_media", "site-packages"}
    assert ("distribution" in video) == (video.get("root") == "site-packages")
    assert len(video["sha256"]) == 64 and int(video["sha256"], 16) >= 0
    n = video["n_frames"]
    assert isinstance(n, int) and n > 0 and video["fps"] > 0 and video["width"] > 0 and video["height"] > 0
    assert isinstance(video["notes"], str) and video["notes"]

    cuts = video["cuts"]
    assert all(isinstance(c, int) and 0 < c < n for c in cuts), f"cut outside (0, {n}): {cuts}"
    assert cuts == sorted(set(cuts)), "cuts unsorted or repeated"

    gradual = video["gradual"]
    assert all(set(g) == {"kind", "start", "end"} and g["kind"] in KINDS for g in gradual), gradual
    pairs = spans(gradual, n, "gradual")
    for c in cuts:
        assert not any(start <= c <= end for start, end in pairs), f"cut {c} inside a gradual transition"
    for g in gradual:
        if g["kind"] == "fade_in":
            assert all(c > g["end"] for c in cuts), "a cut before a fade_in (a fade_in opens the video)"
        if g["kind"] == "fade_out":
            assert all(c < g["start"] for c in cuts), "a cut after a fade_out (a fade_out closes the video)"

    flat = video["flat_spans"]
    assert all(set(f) == {"start", "end", "what"} and f["what"] for f in flat), flat
    spans(flat, n, "flat_spans")

    ambiguous = video.get("ambiguous", [])
    assert all(set(a) == {"start", "end", "why"} and a["why"] for a in ambiguous), ambiguous
    spans(ambiguous, n, "ambiguous")


def locate(video: dict) -> Path:
    if video.get("root") == "site-packages":  # shipped inside an installed wheel (a declared dependency)
        return Path(importlib.metadata.distribution(video["distribution"]).locate_file(video["path"]))
    return SHARED_MEDIA / video["path"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("video", VIDEOS, ids=ids)
def test_file_matches_its_labels(video: dict):
    """Same bytes, same decoder frame count and geometry as when labelled (probe only, no full decode)."""
    if video.get("root", "shared_media") == "shared_media" and not SHARED_MEDIA.is_dir():
        pytest.skip("../shared/media is absent")
    from curation.decode import probe_video

    path = locate(video)
    assert sha256(path) == video["sha256"], f"{path} changed since it was labelled"
    info = probe_video(str(path))
    assert info.n_frames == video["n_frames"]
    assert (info.width, info.height) == (video["width"], video["height"])
    assert info.fps == pytest.approx(video["fps"], abs=1e-3)
