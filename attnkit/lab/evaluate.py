"""What the shapes model draws, read by the detector: per prompt-seed pair, whether the picture is right, and if
not, how it fails in the ways the papers target.

- **neglect** (Attend-and-Excite, A-STAR): a shape the prompt asks for is missing;
- **binding** (Structured Diffusion Guidance): every shape is there, but a colour sits on the wrong one;
- **localisation** (observe): a word's attention mass on its own object, divided by the object's share of the
  picture (1: no better than uniform; the model "localises" from 2 up);
- **edits** (Dynamic Prompt Learning + Prompt-to-Prompt): a rendered picture of two shapes, one of them changed in
  its caption (shape or colour); the edit succeeds when the detector reads the edited caption, and the background
  is preserved when the picture outside the edited object (PSNR) stays as it was.

Paired comparisons (a method against the plain model on the same prompts and seeds) come with an exact McNemar
test and a paired-bootstrap 95 % interval of the difference in rates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .detector import detect
from .world import COLOURS, HELD_OUT, OBJECTS, SHAPES, SIZE, Scene, held_out, masks, random_scene


def shape_words(names) -> list[str]:
    """Each object's shape word as attnkit picks it in the caption: ``"circle"``, or ``"square#1"``, ``"square#2"``
    when two objects share a shape (a repeated word would stand for both)."""
    shapes = [n.split()[1] for n in names]
    seen: Counter = Counter()
    out = []
    for shape in shapes:
        seen[shape] += 1
        out.append(f"{shape}#{seen[shape]}" if shapes.count(shape) > 1 else shape)
    return out


@dataclass
class Case:
    """A prompt and seed to draw, and the coloured shapes it asks for."""

    prompt: str
    names: tuple[str, ...]
    seed: int
    held_out: bool = False

    @property
    def words(self) -> list[str]:
        """The words the methods act on: each object's shape word, in the prompt's order."""
        return shape_words(self.names)


@dataclass
class Outcome:
    case: Case
    found: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return sorted(self.found) == sorted(self.case.names)

    @property
    def neglect(self) -> bool:
        """A shape the prompt asks for is missing (whatever its colour)."""
        wanted = Counter(n.split()[1] for n in self.case.names)
        drawn = Counter(n.split()[1] for n in self.found)
        return bool(wanted - drawn)

    @property
    def binding_error(self) -> bool:
        """Every asked shape is there, but not every one in its colour."""
        return not self.neglect and not all(n in self.found for n in self.case.names)


def cases(count: int, objects: int, seed: int = 0, held: bool | None = None) -> list[Case]:
    """``count`` prompt-seed pairs of ``objects`` (1 or 2) coloured shapes; for pairs, ``held`` picks only held-out
    pairs (``True``), only training pairs (``False``) or a mix with an eighth held out (``None``)."""
    rng = np.random.default_rng([seed, objects])
    held_pairs = sorted(HELD_OUT)
    out = []
    for i in range(count):
        if objects == 1:
            names = (OBJECTS[int(rng.integers(len(OBJECTS)))],)
        elif held is True or (held is None and i % 8 == 7):
            names = tuple(held_pairs[int(rng.integers(len(held_pairs)))])
        else:
            names = tuple(t.name for t in random_scene(rng, 2, training=True).things)
        prompt = " and ".join(f"a {n}" for n in names)
        out.append(Case(prompt, names, int(rng.integers(2**31)), held_out(names)))
    return out


def draw(pipe, case: Case, methods=(), steps: int = 20, guidance: float = 7.5):
    """The picture the model draws for ``case`` (with ``methods``), and attnkit's result."""
    import attnkit

    result = attnkit.generate(pipe, case.prompt, list(methods), seed=case.seed, num_inference_steps=steps,
                              guidance_scale=guidance, height=64, width=64)
    return result.images[0], result


def judge(image, case: Case) -> Outcome:
    return Outcome(case, [f.name for f in detect(image)])


def localisation(maps: dict, case: Case, image) -> list[float]:
    """For each object the detector finds where the prompt put it: the attention mass of its shape word on its
    region over the region's share of the picture (observe's maps, upsampled to 64 px)."""
    import torch
    import torch.nn.functional as F

    ratios = []
    for found in detect(image):
        if found.name not in case.names:
            continue
        word = case.words[case.names.index(found.name)]
        if word not in maps:
            continue
        heat = maps[word][0].float()
        heat = F.interpolate(heat[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
        heat = heat.clamp_min(0) / heat.clamp_min(0).sum().clamp_min(1e-12)
        x0, y0, x1, y1 = found.bbox
        region = torch.zeros(64, 64, dtype=torch.bool)
        region[y0:y1, x0:x1] = True
        ratios.append(float(heat[region].sum()) / (region.float().mean().item()))
    return ratios


@dataclass
class EditCase:
    """A real picture (a rendered scene of two shapes) and its edit: thing ``changed`` becomes ``target``."""

    scene: Scene
    changed: int
    target: str
    seed: int

    @property
    def source_prompt(self) -> str:
        return self.scene.caption

    @property
    def names(self) -> tuple[str, ...]:
        """The coloured shapes the edited picture should show."""
        return tuple(self.target if i == self.changed else t.name for i, t in enumerate(self.scene.things))

    @property
    def target_prompt(self) -> str:
        return " and ".join(f"a {n}" for n in self.names)

    @property
    def held_out(self) -> bool:
        return held_out(self.names)

    @property
    def words(self) -> list[str]:
        """The source caption's nouns (the words Dynamic Prompt Learning makes dynamic)."""
        return shape_words([t.name for t in self.scene.things])

    def outside(self, margin: float = 3.0) -> np.ndarray:
        """``(64, 64)`` bool: the pixels farther than the edited thing's radius (plus ``margin``) from its centre,
        where nothing should change (the other shape and the background)."""
        thing = self.scene.things[self.changed]
        y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
        return np.hypot(x - thing.cx, y - thing.cy) > thing.r + margin


def edit_cases(count: int, seed: int = 0) -> list[EditCase]:
    """``count`` edits of two-shape pictures: every other one changes a shape's kind, the rest its colour, to one
    that makes a different pair (edited pairs may be held out of training)."""
    rng = np.random.default_rng([seed, 3])
    out = []
    while len(out) < count:
        scene = random_scene(rng, 2, training=True)
        changed = int(rng.integers(2))
        thing = scene.things[changed]
        if len(out) % 2 == 0:
            options = [f"{thing.colour} {s}" for s in SHAPES if s != thing.shape]
        else:
            options = [f"{c} {thing.shape}" for c in COLOURS if c != thing.colour]
        other = scene.things[1 - changed].name
        options = [o for o in options if o != other]
        out.append(EditCase(scene, changed, options[int(rng.integers(len(options)))], int(rng.integers(2**31))))
    return out


def outside_psnr(source, edited, case: EditCase) -> float:
    """PSNR (dB) of the edited picture against the source outside the edited object."""
    a = np.asarray(source, dtype=np.float64) / 255
    b = np.asarray(edited, dtype=np.float64) / 255
    keep = case.outside()
    mse = float(((a - b) ** 2)[keep].mean())
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))  # identical pixels read as 100 dB (a mean stays finite)


def rate(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")


def mcnemar(before: list[bool], after: list[bool]) -> float:
    """Exact two-sided McNemar p-value of paired outcomes (only the discordant pairs count)."""
    from math import comb

    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_difference(before: list, after: list, samples: int = 2000, seed: int = 0):
    """``(difference, low, high)``: the mean of ``after`` minus that of ``before`` (rates of flags, or means of
    values such as PSNR) and its paired-bootstrap 95 % interval (pairs resampled together)."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = b[picks].mean(1) - a[picks].mean(1)
    return float(b.mean() - a.mean()), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def bootstrap_median(values: list[float], samples: int = 2000, seed: int = 0):
    """``(median, low, high)``: the median of ``values`` and its bootstrap 95 % interval."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(v[rng.integers(0, len(v), size=(samples, len(v)))], axis=1)
    return float(np.median(v)), float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


__all__ = ["Case", "EditCase", "Outcome", "bootstrap_difference", "bootstrap_median", "cases", "draw", "edit_cases",
           "judge", "localisation", "masks", "mcnemar", "outside_psnr", "rate", "shape_words"]
