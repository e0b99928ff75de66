"""The shapes world: 64 px pictures of one or two non-overlapping shapes on grey, and their captions.

Shapes ``circle``, ``square``, ``triangle``; colours ``red``, ``green``, ``blue``, ``yellow`` (each word one CLIP
token). A scene is data (:class:`Scene`), rendered exactly (anti-aliased by 4x supersampling) and captioned as
``"a red circle"`` or ``"a red circle and a blue square"``. Some coloured-shape pairs are held out of training
(:data:`HELD_OUT`): two-object prompts made of them test composition the model never saw.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
BACKGROUND = (128, 128, 128)
#: every coloured shape ("red circle"...)
OBJECTS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
#: unordered pairs of coloured shapes never shown together in training: a fixed, spread-out eighth of all pairs
HELD_OUT = frozenset(pair for i, pair in enumerate(itertools.combinations(OBJECTS, 2)) if i % 8 == 3)
#: words of the world, the only rows of the token-embedding table the model needs
WORDS = ("a", "and", *COLOURS, *SHAPES)


@dataclass(frozen=True)
class Thing:
    """One shape: ``colour``, ``shape``, centre ``(cx, cy)`` and radius ``r`` in pixels (circumscribed)."""

    colour: str
    shape: str
    cx: float
    cy: float
    r: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]

    @property
    def caption(self) -> str:
        return " and ".join(f"a {t.name}" for t in self.things)

    @property
    def pair(self) -> frozenset | None:
        return frozenset(t.name for t in self.things) if len(self.things) == 2 else None


def held_out(names) -> bool:
    """Whether a two-object scene's pair is one kept out of training."""
    return len(names) == 2 and (tuple(names) in HELD_OUT or tuple(reversed(tuple(names))) in HELD_OUT)


def random_scene(rng: np.random.Generator, count: int | None = None, training: bool = True,
                 names: tuple[str, ...] | None = None) -> Scene:
    """A scene of ``count`` (1 or 2, random if ``None``) things at random places, not overlapping.

    ``training``: pairs in :data:`HELD_OUT` are never drawn. ``names``: the coloured shapes to draw, in order.
    """
    if names is None:
        count = count or int(rng.integers(1, 3))
        while True:
            names = tuple(OBJECTS[i] for i in rng.choice(len(OBJECTS), size=count, replace=False))
            if not (training and held_out(names)):
                break
    things: list[Thing] = []
    for name in names:
        colour, shape = name.split()
        for _ in range(200):
            r = float(rng.uniform(8, 14)) if len(names) == 2 else float(rng.uniform(10, 20))
            cx, cy = (float(v) for v in rng.uniform(r + 2, SIZE - r - 2, size=2))
            if all(math.hypot(cx - t.cx, cy - t.cy) > r + t.r + 3 for t in things):
                things.append(Thing(colour, shape, cx, cy, r))
                break
        else:  # no free place: try again from scratch
            return random_scene(rng, count, training, names)
    return Scene(tuple(things))


def _inside(thing: Thing, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    dx, dy = x - thing.cx, y - thing.cy
    if thing.shape == "circle":
        return dx * dx + dy * dy <= thing.r * thing.r
    if thing.shape == "square":
        half = thing.r / math.sqrt(2)
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # an upward equilateral triangle inscribed in the circle of radius r
    top, base = -thing.r, thing.r / 2
    slope = math.tan(math.radians(30))
    return (dy >= top) & (dy <= base) & (np.abs(dx) <= (dy - top) * slope)


def render(scene: Scene, supersample: int = 4) -> np.ndarray:
    """``(64, 64, 3)`` uint8 picture of ``scene``."""
    n = SIZE * supersample
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    x, y = (x + 0.5) / supersample, (y + 0.5) / supersample
    image = np.empty((n, n, 3), dtype=np.float32)
    image[:] = BACKGROUND
    for thing in scene.things:
        image[_inside(thing, x, y)] = COLOURS[thing.colour]
    image = image.reshape(SIZE, supersample, SIZE, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def masks(scene: Scene) -> list[np.ndarray]:
    """Each thing's ``(64, 64)`` bool area (for attention localisation)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    return [_inside(t, x, y) for t in scene.things]
