"""Colours and overlays for label maps (OpenCV drawing, BGR)."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

RGB = tuple[int, int, int]

# SegNet's CamVid palette (RGB), so pictures look like the ones people know.
CAMVID_RGB = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
              (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]

# Taught classes: saturated colours that no CamVid base colour comes near (CIE Lab distance >= 50, tested),
# so what the robot just learned stands out. CamVid's own Car purple sits next to Road's.
TAUGHT_RGB: list[RGB] = [(255, 230, 0), (255, 0, 255), (0, 255, 0), (0, 255, 255), (255, 140, 0), (255, 0, 128)]


def color_for(class_id: int) -> tuple[int, int, int]:
    """RGB colour of a class id: CamVid's palette first, then well-spread hues."""
    if class_id < len(CAMVID_RGB):
        return CAMVID_RGB[class_id]
    h = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def taught_color(in_use: set[RGB] | frozenset[RGB] = frozenset()) -> RGB:
    """The colour of a newly taught class: the first taught colour no live class has, then spread hues."""
    for c in TAUGHT_RGB:
        if c not in in_use:
            return c
    return color_for(len(in_use) + 64)


def class_colors(classes: list[dict]) -> dict[int, RGB]:
    """id -> RGB from a node's class table (`classes` message or `list` reply): what overlays should draw."""
    return {int(c["id"]): tuple(int(v) for v in c["color"]) for c in classes if "color" in c}


_DEFAULT_LUT = np.array([color_for(i)[::-1] for i in range(256)], dtype=np.uint8)
_DEFAULT_LUT[255] = 0


def palette_bgr(colors: dict[int, RGB] | None = None) -> np.ndarray:
    """(256,3) uint8 lookup table, the class table's colours over the defaults; 255 (unknown/ignore) is black."""
    lut = _DEFAULT_LUT.copy()
    for cid, rgb in (colors or {}).items():
        if 0 <= cid < 255:
            lut[cid] = rgb[::-1]
    return lut


def palette_rgb(classes: list[dict]) -> np.ndarray:
    """(256,3) RGB lookup table of a `classes` message's table: what the Foxglove colour map and MCAP draw."""
    return np.ascontiguousarray(palette_bgr(class_colors(classes))[:, ::-1])


def overlay(frame_bgr: np.ndarray, labels: np.ndarray, alpha: float = 0.5,
            colors: dict[int, RGB] | None = None) -> np.ndarray:
    colour = palette_bgr(colors)[labels]
    return cv2.addWeighted(frame_bgr, 1.0 - alpha, colour, alpha, 0.0)


LEGEND_COLUMN_W, LEGEND_ROW_H = 170, 20


def legend_rows(height: int, scale: float = 1.0) -> int:
    """Classes one legend column holds at this height."""
    return max(1, (height - round(8 * scale)) // max(1, round(LEGEND_ROW_H * scale)))


def legend_columns(n_names: int, height: int, scale: float = 1.0) -> int:
    """How many columns legend() needs for n_names at this height: the window sizes itself by it."""
    return max(1, -(-n_names // legend_rows(height, scale)))


def legend(names: dict[int, str], height: int, colors: dict[int, RGB] | None = None,
           scale: float = 1.0) -> np.ndarray:
    """A white strip listing class colours and names, to put beside an overlay; as many columns as the classes
    need, so a node with many taught classes never drops one from its legend. `scale` sizes the rows and the
    text for a window shown larger than the frame (text drawn at screen size stays sharp)."""
    lut = palette_bgr(colors)
    col_w, row_h, pad = round(LEGEND_COLUMN_W * scale), max(1, round(LEGEND_ROW_H * scale)), round(8 * scale)
    per_column = legend_rows(height, scale)
    columns = legend_columns(len(names), height, scale)
    strip = np.full((height, col_w * columns, 3), 255, np.uint8)
    thick = max(1, round(scale))
    for k, (cid, name) in enumerate(sorted(names.items())):
        x, y = col_w * (k // per_column), pad + row_h * (k % per_column)
        cv2.rectangle(strip, (x + pad, y), (x + round(24 * scale), y + round(14 * scale)),
                      tuple(int(v) for v in lut[cid]), -1)
        cv2.rectangle(strip, (x + pad, y), (x + round(24 * scale), y + round(14 * scale)), (0, 0, 0), 1)
        cv2.putText(strip, f"{cid} {name}"[:22], (x + round(30 * scale), y + round(12 * scale)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (0, 0, 0), thick, cv2.LINE_AA)
    return strip
