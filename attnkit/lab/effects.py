"""The effects table: each method against the plain shapes model on the same prompt-seed pairs, on the paper's own
axis, with paired statistics, and the model's own scores. Used by ``attnkit lab eval|effects`` and
``benchmarks/effects.py``."""

from __future__ import annotations

import statistics
import time

from tqdm.auto import tqdm

from ..methods import AStar, AttendExcite, Observe, StructuredGuidance
from .evaluate import (
    bootstrap_difference,
    cases,
    draw,
    judge,
    localisation,
    mcnemar,
    rate,
)


def load(model: str | None = None, run: str | None = None):
    """The shapes pipeline of a saved model file, or a training run's current weights (its moving averages)."""
    if model:
        from .model import load as load_model

        return load_model(model)
    from .train import Trainer

    trainer = Trainer(run)
    print(f"{run}: stage {trainer.stage}, step {trainer.step}")
    return trainer.pipeline()


def scores(pipe, count: int = 100, steps: int = 20, cfg: float = 7.5) -> dict:
    """The model's own scores: single-object and two-object pictures right (held-out pairs apart), neglect and
    binding errors, and observe's localisation (median mass on the object over its area share)."""
    out = {}
    singles = [judge(draw(pipe, c, (), steps, cfg)[0], c) for c in tqdm(cases(count, 1), desc="one object")]
    out["single"] = rate(o.correct for o in singles)
    pairs, ratios = [], []
    for case in tqdm(cases(count, 2), desc="two objects"):
        image, result = draw(pipe, case, [Observe(words=sorted({n.split()[1] for n in case.names}))], steps, cfg)
        pairs.append(judge(image, case))
        ratios += localisation(result.report["observe"].maps, case, image)
    seen = [o for o in pairs if not o.case.held_out]
    held = [o for o in pairs if o.case.held_out]
    out.update(pair=rate(o.correct for o in seen), held_out=rate(o.correct for o in held),
               neglect=rate(o.neglect for o in pairs), binding=rate(o.binding_error for o in pairs),
               localisation=statistics.median(ratios) if ratios else float("nan"), objects=len(ratios))
    return out


def effects(pipe, count: int = 200, steps: int = 20, cfg: float = 7.5, grid: str | None = None) -> list[tuple]:
    """Rows ``(method, axis, plain rate, method rate, difference, low, high, McNemar p)`` on ``count`` two-object
    pairs; prints them as a table and, with ``grid``, saves example pictures (plain above, method below)."""
    pairs = cases(count, 2)
    methods = {
        "attend_excite": lambda c: [AttendExcite(words=[n.split()[1] for n in c.names])],
        "a_star": lambda c: [AStar(words=[n.split()[1] for n in c.names])],
        "structured": lambda c: [StructuredGuidance()],
    }
    t0 = time.perf_counter()
    plain, plain_images = [], []
    for case in tqdm(pairs, desc="plain"):
        image, _ = draw(pipe, case, (), steps, cfg)
        plain.append(judge(image, case))
        plain_images.append(image)
    rows, examples = [], []
    for name, make in methods.items():
        outcomes = []
        for i, case in enumerate(tqdm(pairs, desc=name)):
            image, _ = draw(pipe, case, make(case), steps, cfg)
            outcomes.append(judge(image, case))
            if i < 4:
                examples.append((name, case.prompt, plain_images[i], image))
        if name == "structured":
            before = [not o.binding_error and not o.neglect for o in plain]
            after = [not o.binding_error and not o.neglect for o in outcomes]
            axis = "both shapes, right colours"
        else:
            before = [not o.neglect for o in plain]
            after = [not o.neglect for o in outcomes]
            axis = "both shapes present"
        diff, low, high = bootstrap_difference(before, after)
        rows.append((name, axis, rate(before), rate(after), diff, low, high, mcnemar(before, after)))
    held = sum(c.held_out for c in pairs)
    print(f"\nshapes model, {len(pairs)} two-object prompt-seed pairs ({held} held out), {steps} steps, CFG {cfg:g}; "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'method':<15}{'axis':<28}{'plain':>7}{'method':>8}{'diff':>8}{'95% CI':>18}{'McNemar p':>11}")
    for name, axis, a, b, diff, low, high, p in rows:
        print(f"{name:<15}{axis:<28}{a:>7.1%}{b:>8.1%}{diff:>+8.1%}   [{low:+.1%}, {high:+.1%}]{p:>11.3g}")
    if grid and examples:
        from ..viz import labelled_grid

        tiles = []
        for name, prompt, before_image, after_image in examples:
            tiles += [(f"plain: {prompt}", before_image.resize((192, 192))),
                      (f"{name}: {prompt}", after_image.resize((192, 192)))]
        labelled_grid(tiles, 192, 2).save(grid)
        print(f"saved {grid}")
    return rows


def print_scores(found: dict) -> None:
    print(f"one object right {found['single']:.1%}; two objects right {found['pair']:.1%} (held-out pairs "
          f"{found['held_out']:.1%}); neglect {found['neglect']:.1%}, binding errors {found['binding']:.1%}; "
          f"observe's mass on the object over its area share: median {found['localisation']:.2f} over "
          f"{found['objects']} objects (2 and up: the maps localise)")
