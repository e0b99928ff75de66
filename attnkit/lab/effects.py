"""The effects table: each method against the plain shapes model on the same prompt-seed pairs, on the paper's own
axis, with paired statistics, and the model's own scores. Used by ``attnkit lab eval|effects`` and
``benchmarks/effects.py``."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..methods import AStar, AttendExcite, Observe, StructuredGuidance
from .detector import detect
from .evaluate import (
    bootstrap_difference,
    bootstrap_median,
    cases,
    draw,
    edit_cases,
    judge,
    localisation,
    mcnemar,
    outside_psnr,
    rate,
)


def load(model: str | None = None, run: str | None = None):
    """The shapes pipeline of a training run's current weights (its moving averages), of a saved model file, or
    the built-in one."""
    if run:
        from .train import Trainer

        trainer = Trainer(run)
        print(f"{run}: stage {trainer.stage}, step {trainer.step}")
        return trainer.pipeline()
    if model:
        from .model import load as load_model

        return load_model(model)
    from ..models import shapes_pipeline

    return shapes_pipeline()


@dataclass
class Plain:
    """The plain model on two-object cases (observe reading its maps, which changes no pixel): each case's outcome
    and picture, and the localisation ratios of the objects found."""

    steps: int
    cfg: float
    outcomes: list
    images: list
    ratios: list


def plain_pairs(pipe, count: int, steps: int = 20, cfg: float = 7.5) -> Plain:
    """Draw :func:`cases` ``(count, 2)`` with the plain model, once for :func:`scores` and :func:`effects`."""
    outcomes, images, ratios = [], [], []
    for case in tqdm(cases(count, 2), desc="plain two objects (observe reads its maps)"):
        image, result = draw(pipe, case, [Observe(words=case.words)], steps, cfg)
        outcomes.append(judge(image, case))
        images.append(image)
        ratios += localisation(result.report["observe"].maps, case, image)
    return Plain(steps, cfg, outcomes, images, ratios)


def _plain(pipe, count, steps, cfg, plain: Plain | None) -> Plain:
    if plain is not None and (len(plain.outcomes), plain.steps, plain.cfg) == (count, steps, cfg):
        return plain
    return plain_pairs(pipe, count, steps, cfg)


def scores(pipe, count: int = 100, steps: int = 20, cfg: float = 7.5, plain: Plain | None = None) -> dict:
    """The model's own scores: single-object and two-object pictures right (held-out pairs apart), neglect and
    binding errors, and observe's localisation (median mass on the object over its area share). ``plain``: the
    two-object draws of :func:`plain_pairs`, when already made with the same count and settings."""
    out = {}
    singles = [judge(draw(pipe, c, (), steps, cfg)[0], c) for c in tqdm(cases(count, 1), desc="one object")]
    out["single"] = rate(o.correct for o in singles)
    drawn = _plain(pipe, count, steps, cfg, plain)
    pairs, ratios = drawn.outcomes, drawn.ratios
    seen = [o for o in pairs if not o.case.held_out]
    held = [o for o in pairs if o.case.held_out]
    out.update(pair=rate(o.correct for o in seen), held_out=rate(o.correct for o in held),
               neglect=rate(o.neglect for o in pairs), binding=rate(o.binding_error for o in pairs),
               localisation=statistics.median(ratios) if ratios else float("nan"), objects=len(ratios))
    return out


@dataclass
class Row:
    """One line of the effects table: ``method`` against ``baseline`` on ``axis``."""

    method: str
    axis: str
    baseline: str
    before: float
    after: float
    difference: float
    low: float
    high: float
    p: float | None = None
    unit: str = "%"
    pairs: int = 0

    def cells(self) -> list[str]:
        if self.unit == "%":
            value = lambda x: f"{x:.1%}"  # noqa: E731
            signed = lambda x: f"{x:+.1%}"  # noqa: E731
        else:
            value = lambda x: f"{x:.2f}{self.unit}"  # noqa: E731
            signed = lambda x: f"{x:+.2f}{self.unit}"  # noqa: E731
        return [self.method, self.axis, self.baseline, str(self.pairs), value(self.before), value(self.after),
                signed(self.difference), f"[{signed(self.low)}, {signed(self.high)}]",
                "-" if self.p is None else f"{self.p:.2g}"]


HEADER = ["method", "axis", "against", "pairs", "before", "method's", "difference", "95 % interval", "McNemar p"]


def table(rows: list[Row], markdown: bool = False) -> str:
    lines = [HEADER] + [r.cells() for r in rows]
    if markdown:
        out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines[1:]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _paired(method, axis, before, after, baseline="plain", unit="%") -> Row:
    diff, low, high = bootstrap_difference(before, after)
    p = mcnemar(before, after) if unit == "%" else None
    return Row(method, axis, baseline, float(np.mean(before)), float(np.mean(after)), diff, low, high, p, unit,
               len(before))


def effects(pipe, count: int = 200, steps: int = 20, cfg: float = 7.5, grid: str | None = None, edits: int = 200,
            null_iterations: int = 10, plain: Plain | None = None, workers: int = 1,
            log: str | None = None) -> list[Row]:
    """Each method against its baseline on the same prompts and seeds, on the paper's own axis: Attend-and-Excite
    and A-STAR (both shapes present) and structured (both shapes, right colours) against the plain model on
    ``count`` two-object pairs; observe's localisation on the plain pictures; DPL + Prompt-to-Prompt against
    Prompt-to-Prompt alone on ``edits`` edits of rendered pictures (edit success, PSNR outside the edited object;
    null-text inversion capped at ``null_iterations`` updates per step for both). Prints the table and, with
    ``grid``, saves example pictures; returns the rows. ``plain``: as for :func:`scores`. ``workers``: processes
    that share the edits, ``log``: their JSON-lines log (:func:`edit_effects`)."""
    pairs = cases(count, 2)
    t0 = time.perf_counter()
    drawn = _plain(pipe, count, steps, cfg, plain)
    plain, plain_images, ratios = drawn.outcomes, drawn.images, drawn.ratios
    methods = {
        "attend_excite": lambda c: [AttendExcite(words=c.words)],
        "a_star": lambda c: [AStar(words=c.words)],
        "structured": lambda c: [StructuredGuidance()],
    }
    rows, examples = [], []
    for name, make in methods.items():
        outcomes = []
        for i, case in enumerate(tqdm(pairs, desc=name)):
            image, _ = draw(pipe, case, make(case), steps, cfg)
            outcomes.append(judge(image, case))
            if i < 4:
                examples.append((name, case.prompt, plain_images[i], image))
        if name == "structured":
            rows.append(_paired(name, "both shapes, right colours", [o.correct for o in plain],
                                [o.correct for o in outcomes]))
        else:
            rows.append(_paired(name, "both shapes present", [not o.neglect for o in plain],
                                [not o.neglect for o in outcomes]))
    median, low, high = bootstrap_median(ratios) if ratios else (float("nan"),) * 3  # no object found: no ratio
    rows.append(Row("observe", "mass on object / area share", "uniform", 1.0, median, median - 1.0, low - 1.0,
                    high - 1.0, None, "x", len(ratios)))
    held = sum(c.held_out for c in pairs)
    print(f"\nshapes model: {len(pairs)} two-object prompt-seed pairs ({held} held out), {steps} steps, CFG {cfg:g}")
    if edits:
        edit_rows, edit_examples = edit_effects(pipe, edits, steps, cfg, null_iterations,
                                                   log=log, workers=workers)
        rows += edit_rows
        examples += edit_examples
    print(f"{time.perf_counter() - t0:.0f} s\n")
    print(table(rows))
    if grid and examples:
        from ..viz import labelled_grid

        tiles = []
        for name, prompt, before_image, after_image in examples:
            before_name = "p2p" if name == "dpl + p2p" else "plain"
            tiles += [(f"{before_name}: {prompt}", before_image.resize((192, 192))),
                      (f"{name}: {prompt}", after_image.resize((192, 192)))]
        labelled_grid(tiles, 192, 2).save(grid)
        print(f"saved {grid}")
    return rows


def edit_effects(pipe, count: int = 200, steps: int = 20, cfg: float = 7.5, null_iterations: int = 10,
                 log: str | None = None, seed: int = 0, workers: int = 1):
    """DPL + Prompt-to-Prompt against Prompt-to-Prompt alone (both after null-text inversion) on ``count`` edits of
    rendered two-shape pictures (drawn from ``seed``): ``(rows, examples)``. With ``log``, each edit's outcome is
    appended to that file as one JSON line as soon as it is measured. ``workers`` > 1: the edits are shared among that
    many processes of one torch thread each (every edit is seeded by its own case, so the outcomes are the ones one
    process measures)."""
    jobs = edit_cases(count, seed)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        shares = [list(range(len(jobs)))[k::workers] for k in range(workers)]
        context = multiprocessing.get_context("spawn")  # a forked torch can hang in its thread pool
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_edit_share, pipe, [jobs[i] for i in share], share, steps, cfg, null_iterations,
                                   log, k) for k, share in enumerate(shares) if share]
            measured = sorted((m for f in futures for m in f.result()), key=lambda m: m["edit"])
    else:
        measured = _edit_share(pipe, jobs, list(range(len(jobs))), steps, cfg, null_iterations, log, None)
    done = {name: [m[f"{name} success"] for m in measured] for name in ("p2p", "dpl + p2p")}
    kept = {name: [m[f"{name} psnr"] for m in measured] for name in ("p2p", "dpl + p2p")}
    examples = [("dpl + p2p", f"{m['source']} -> {m['target']}", m["pictures"]["p2p"], m["pictures"]["dpl + p2p"])
                for m in measured[:4]]
    held = sum(c.held_out for c in jobs)
    print(f"edits: {len(jobs)} rendered pictures ({held} edited into held-out pairs), {steps} DDIM steps, "
          f"CFG {cfg:g}, null-text {null_iterations} updates per step")
    rows = [_paired("dpl + p2p", "edit success", done["p2p"], done["dpl + p2p"], baseline="p2p"),
            _paired("dpl + p2p", "PSNR outside the object", kept["p2p"], kept["dpl + p2p"], baseline="p2p",
                    unit=" dB")]
    return rows, examples


def _edit_share(pipe, jobs, numbers, steps, cfg, null_iterations, log, worker) -> list[dict]:
    """Edits ``jobs`` (numbered ``numbers``) with P2P and with DPL + P2P: one record per edit (the pictures of the
    first four kept). ``worker``: this process's place among the workers (one torch thread), ``None`` in-process."""
    import json

    from PIL import Image

    from ..editing import edit
    from .world import render

    if worker is not None:
        import torch

        torch.set_num_threads(1)
    measured = []
    bar = tqdm(list(zip(numbers, jobs)), desc="edits (p2p, dpl + p2p)" + (f" {worker + 1}" if worker is not None
                                                                           else ""), position=worker)
    for i, case in bar:
        source = Image.fromarray(render(case.scene))
        record = {"edit": i, "source": case.source_prompt, "target": case.target_prompt, "held_out": case.held_out}
        pictures = {}
        for name, words in (("p2p", None), ("dpl + p2p", case.words)):
            result = edit(pipe, source, case.source_prompt, case.target_prompt, words=words, seed=case.seed,
                          num_inference_steps=steps, guidance_scale=cfg, null_iterations=null_iterations)
            pictures[name] = result.images[0]
            record[f"{name} success"] = sorted(f.name for f in detect(result.images[0])) == sorted(case.names)
            record[f"{name} psnr"] = outside_psnr(source, result.images[0], case)
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        measured.append({**record, "pictures": pictures if i < 4 else {}})
    return measured


def print_scores(found: dict) -> None:
    print(f"one object right {found['single']:.1%}; two objects right {found['pair']:.1%} (held-out pairs "
          f"{found['held_out']:.1%}); neglect {found['neglect']:.1%}, binding errors {found['binding']:.1%}; "
          f"observe's mass on the object over its area share: median {found['localisation']:.2f} over "
          f"{found['objects']} objects (2 and up: the maps localise)")
