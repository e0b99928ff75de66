"""What each method fixes on the shapes model, against the plain model on the same prompts and seeds.

    python benchmarks/effects.py --run ~/.cache/attnkit-lab/shapes     # a training run's current weights
    python benchmarks/effects.py --model shapes.safetensors            # a saved shapes model
    python benchmarks/effects.py --pairs 40 --steps 10                 # a quicker, wider-interval look

For each method, the paper's own quality axis, on ``--pairs`` two-object prompt-seed pairs (an eighth of them pairs
held out of training):

- Attend-and-Excite, A-STAR: the rate of pictures with both shapes (no neglect);
- Structured Diffusion Guidance: the rate of pictures with both shapes in their own colours (no binding error);
- observe: the attention mass of each shape word on its object over the object's area share (median);

with the difference to the plain model, its paired-bootstrap 95 % interval and the exact McNemar p-value, printed as
a table; a PNG grid of examples (plain above, method below) is written to ``--grid``. The DPL + Prompt-to-Prompt edit
measures are not here yet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm.auto import tqdm  # noqa: E402

from attnkit.lab.evaluate import bootstrap_difference, cases, draw, judge, localisation, mcnemar, rate  # noqa: E402
from attnkit.methods import AStar, AttendExcite, Observe, StructuredGuidance  # noqa: E402


def load(args):
    if args.model:
        from attnkit.lab.model import load as load_model

        return load_model(args.model)
    from attnkit.lab.train import Trainer

    trainer = Trainer(args.run)
    print(f"{args.run}: stage {trainer.stage}, step {trainer.step}")
    return trainer.pipeline()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a shapes model saved by attnkit.lab.model.save")
    parser.add_argument("--run", default=os.path.expanduser("~/.cache/attnkit-lab/shapes"),
                        help="a training run folder (its current weights), when --model is not given")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--grid", default="effects.png")
    args = parser.parse_args(argv)
    pipe = load(args)
    pairs = cases(args.pairs, 2)
    methods = {
        "attend_excite": lambda c: [AttendExcite(words=[n.split()[1] for n in c.names])],
        "a_star": lambda c: [AStar(words=[n.split()[1] for n in c.names])],
        "structured": lambda c: [StructuredGuidance()],
    }
    t0 = time.perf_counter()
    plain, plain_images, localised = [], [], []
    for case in tqdm(pairs, desc="plain (+ observe)"):
        image, result = draw(pipe, case, [Observe(words=sorted({n.split()[1] for n in case.names}))], args.steps,
                             args.cfg)
        plain.append(judge(image, case))
        plain_images.append(image)
        localised += localisation(result.report["observe"].maps, case, image)
    rows = []
    examples = []
    for name, make in methods.items():
        outcomes = []
        for i, case in enumerate(tqdm(pairs, desc=name)):
            image, _ = draw(pipe, case, make(case), args.steps, args.cfg)
            outcomes.append(judge(image, case))
            if i < 4:
                examples.append((f"{name}: {case.prompt}", plain_images[i], image))
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
    held = [o for o in plain if o.case.held_out]
    print(f"\nshapes model, {len(pairs)} two-object prompt-seed pairs ({len(held)} held out), {args.steps} steps, "
          f"CFG {args.cfg:g}; {time.perf_counter() - t0:.0f} s")
    print(f"plain: correct {rate(o.correct for o in plain):.1%} (held-out pairs {rate(o.correct for o in held):.1%}), "
          f"neglect {rate(o.neglect for o in plain):.1%}, binding errors {rate(o.binding_error for o in plain):.1%}")
    print(f"{'method':<15}{'axis':<28}{'plain':>7}{'method':>8}{'diff':>8}{'95% CI':>18}{'McNemar p':>11}")
    for name, axis, a, b, diff, low, high, p in rows:
        print(f"{name:<15}{axis:<28}{a:>7.1%}{b:>8.1%}{diff:>+8.1%}   [{low:+.1%}, {high:+.1%}]{p:>11.3g}")
    if localised:
        print(f"{'observe':<15}{'mass on object / area share':<28} median {statistics.median(localised):.2f} over "
              f"{len(localised)} objects (2 and up: the maps localise)")
    if examples:
        from attnkit.viz import labelled_grid

        tiles = []
        for label, before_image, after_image in examples:
            tiles += [(f"plain: {label.split(': ', 1)[1]}", before_image.resize((192, 192))),
                      (label, after_image.resize((192, 192)))]
        labelled_grid(tiles, 192, 2).save(args.grid)
        print(f"saved {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
