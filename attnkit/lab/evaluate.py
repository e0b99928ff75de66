"""What the shapes model draws, read by the detector: per prompt-seed pair, whether the picture is right, and if
not, how it fails in the ways the papers target.

- **neglect** (Attend-and-Excite, A-STAR): a shape the prompt asks for is missing;
- **binding** (Structured Diffusion Guidance): every shape is there, but a colour sits on the wrong one;
- **localisation** (observe): a word's attention mass on its own object, divided by the object's share of the
  picture (1: no better than uniform; the model "localises" from 2 up).

Paired comparisons (a method against the plain model on the same prompts and seeds) come with an exact McNemar
test and a paired-bootstrap 95 % interval of the difference in rates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .detector import detect
from .world import HELD_OUT, OBJECTS, held_out, masks, random_scene


@dataclass
class Case:
    """A prompt and seed to draw, and the coloured shapes it asks for."""

    prompt: str
    names: tuple[str, ...]
    seed: int
    held_out: bool = False


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
        word = found.shape
        if word not in maps or found.name not in case.names:
            continue
        heat = maps[word][0].float()
        heat = F.interpolate(heat[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
        heat = heat.clamp_min(0) / heat.clamp_min(0).sum().clamp_min(1e-12)
        x0, y0, x1, y1 = found.bbox
        region = torch.zeros(64, 64, dtype=torch.bool)
        region[y0:y1, x0:x1] = True
        ratios.append(float(heat[region].sum()) / (region.float().mean().item()))
    return ratios


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


def bootstrap_difference(before: list[bool], after: list[bool], samples: int = 2000, seed: int = 0):
    """``(difference, low, high)``: the rate of ``after`` minus that of ``before`` and its paired-bootstrap 95 %
    interval (pairs resampled together)."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = b[picks].mean(1) - a[picks].mean(1)
    return float(b.mean() - a.mean()), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


__all__ = ["Case", "Outcome", "bootstrap_difference", "cases", "draw", "judge", "localisation", "masks", "mcnemar",
           "rate"]
