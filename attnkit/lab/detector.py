"""A deterministic reader of shapes-world pictures: which coloured shapes a picture shows.

Each pixel is given the nearest of the palette colours or the grey background; each colour's connected regions of
at least :data:`MIN_AREA` pixels are objects, and an object's shape comes from how much of its bounding box it fills
(a square fills it, a circle about pi/4 of it, a triangle about half).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import BACKGROUND, COLOURS

MIN_AREA = 20
#: fill ratios between the shapes' (triangle 0.5, circle 0.785, square 1.0)
TRIANGLE_BELOW, SQUARE_ABOVE = 0.64, 0.89


@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    area: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a bool mask, as lists of (y, x) indices (iterative flood fill)."""
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out.append(np.array(pixels))
    return out


def detect(image) -> list[Found]:
    """The coloured shapes in a ``(H, W, 3)`` uint8 picture (PIL images are accepted), largest first."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names] + [BACKGROUND], dtype=np.float32)
    distance = ((array[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    label = distance.argmin(-1)
    found = []
    for i, colour in enumerate(names):
        for pixels in _components(label == i):
            if len(pixels) < MIN_AREA:
                continue
            y0, x0 = pixels.min(0)
            y1, x1 = pixels.max(0) + 1
            fill = len(pixels) / float((y1 - y0) * (x1 - x0))
            shape = "triangle" if fill < TRIANGLE_BELOW else ("square" if fill > SQUARE_ABOVE else "circle")
            found.append(Found(colour, shape, len(pixels), (int(x0), int(y0), int(x1), int(y1))))
    return sorted(found, key=lambda f: -f.area)


def shows(image, names) -> bool:
    """Whether the picture shows exactly the coloured shapes ``names`` (e.g. ``["red circle", "blue square"]``)."""
    return sorted(f.name for f in detect(image)) == sorted(names)
