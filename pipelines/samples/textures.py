"""Seeded procedural textures: multi-scale value noise, palettes, blobs and alpha cut-out masks.

Everything here is driven by a ``numpy.random.Generator`` so that a given seed always yields the same pixels.
Textures are float32 RGB in [0, 255]; they are high-contrast and detailed at several scales on purpose, so
optical flow has gradients to lock onto and scene detectors see strongly different content across shots.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

__all__ = ["value_noise", "random_palette", "colorize", "make_texture", "shape_mask"]


def value_noise(
    rng: np.random.Generator, height: int, width: int, octaves: int = 5, base_cells: int = 3, persistence: float = 0.55
) -> np.ndarray:
    """Fractal value noise in [0, 1], float32 of shape (height, width).

    Each octave is a random lattice upsampled bicubically; finer octaves get geometrically smaller weights.
    """
    out = np.zeros((height, width), np.float32)
    amp, total = 1.0, 0.0
    longest = max(height, width)
    for k in range(octaves):
        cells = base_cells * 2**k
        gh = max(2, round(cells * height / longest)) + 1
        gw = max(2, round(cells * width / longest)) + 1
        lattice = rng.random((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(lattice, (width, height), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= persistence
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def random_palette(rng: np.random.Generator, n: int = 5, hue: float | None = None) -> np.ndarray:
    """``n`` RGB colours (float32, 0..255) around ``hue`` (random if None), alternating dark and bright."""
    base_hue = float(rng.random()) if hue is None else hue
    spread = float(rng.uniform(0.15, 0.45))
    colors = []
    for i in range(n):
        hue = (base_hue + spread * i / max(n - 1, 1) + float(rng.normal(0, 0.03))) % 1.0
        sat = float(rng.uniform(0.45, 0.95))
        val = float(rng.uniform(0.65, 1.0)) if i % 2 else float(rng.uniform(0.08, 0.35))
        colors.append(colorsys.hsv_to_rgb(hue, sat, val))
    return np.asarray(colors, np.float32) * 255.0


def colorize(field: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map a [0, 1] scalar field through a piecewise-linear palette; returns float32 (h, w, 3)."""
    stops = np.linspace(0.0, 1.0, len(palette))
    lut = np.stack([np.interp(np.linspace(0.0, 1.0, 256), stops, palette[:, c]) for c in range(3)], axis=1)
    idx = np.clip(field * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut.astype(np.float32)[idx]


def _draw_shapes(
    rng: np.random.Generator, img: np.ndarray, palette: np.ndarray, count: int, min_r: float, max_r: float
) -> None:
    """Draw filled anti-aliased ellipses / rectangles / checker tiles in palette colours, in place."""
    h, w = img.shape[:2]
    for _ in range(count):
        color = tuple(float(c) for c in palette[int(rng.integers(len(palette)))])
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        rx, ry = (int(v) for v in rng.uniform(min_r, max_r, 2))
        kind = int(rng.integers(3))
        if kind == 0:
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(img, (cx, cy), (rx, ry), angle, 0, 360, color, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (cx - rx, cy - ry), (cx + rx, cy + ry), color, -1, cv2.LINE_AA)
        else:
            # A small checkerboard patch: sharp corners are ideal features for flow / tracking.
            cell = max(2, rx // 3)
            other = tuple(float(c) for c in palette[int(rng.integers(len(palette)))])
            for j in range(-2, 2):
                for i in range(-2, 2):
                    col = color if (i + j) % 2 else other
                    x0, y0 = cx + i * cell, cy + j * cell
                    cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), col, -1)


def make_texture(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray | None = None, detail: float = 1.0
) -> np.ndarray:
    """A detailed, high-contrast colour texture, float32 (height, width, 3) in [0, 255].

    ``detail`` scales shape sizes (use < 1 for textures that will be magnified on screen).
    """
    if palette is None:
        palette = random_palette(rng)
    img = colorize(value_noise(rng, height, width), palette)
    area = height * width
    scale = max(detail, 0.1)
    _draw_shapes(rng, img, palette, count=max(8, area // int(2500 * scale * scale)), min_r=4 * scale, max_r=30 * scale)
    # Multiplicative fine-grain noise adds texture inside flat shapes, again for flow.
    grain = value_noise(rng, height, width, octaves=3, base_cells=max(8, int(max(height, width) / (10 * scale))))
    img *= (0.5 + grain)[..., None]
    return np.clip(img, 0.0, 255.0)


def shape_mask(rng: np.random.Generator, height: int, width: int, count: int, min_r: float, max_r: float) -> np.ndarray:
    """Alpha mask (float32 in [0, 1]) of ``count`` random discs / rectangles / rotated boxes, edges anti-aliased."""
    mask = np.zeros((height, width), np.float32)
    for _ in range(count):
        cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        rx, ry = (float(v) for v in rng.uniform(min_r, max_r, 2))
        kind = int(rng.integers(3))
        if kind == 0:
            cv2.ellipse(mask, (int(cx), int(cy)), (int(rx), int(ry)), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        else:
            angle = 0.0 if kind == 1 else float(rng.uniform(0, 90))
            box = cv2.boxPoints(((cx, cy), (2 * rx, 2 * ry), angle))
            cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1.0, cv2.LINE_AA)
    return np.clip(mask, 0.0, 1.0)
