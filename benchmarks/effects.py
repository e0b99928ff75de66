"""What each method fixes on the shapes model, against the plain model on the same prompts and seeds.

    python benchmarks/effects.py --run ~/.cache/attnkit-lab/shapes     # a training run's current weights
    python benchmarks/effects.py --model shapes.safetensors            # a saved shapes model
    python benchmarks/effects.py --pairs 40 --steps 10                 # a quicker, wider-interval look

The model's own scores (one object and two objects right, held-out pairs apart, neglect, binding errors, observe's
localisation), then, for each method, the paper's own quality axis on ``--pairs`` two-object prompt-seed pairs (an
eighth of them pairs held out of training):

- Attend-and-Excite, A-STAR: the rate of pictures with both shapes (no neglect);
- Structured Diffusion Guidance: the rate of pictures with both shapes in their own colours (no binding error);

with the difference to the plain model, its paired-bootstrap 95 % interval and the exact McNemar p-value; a PNG grid
of examples (plain above, method below) goes to ``--grid``. (``attnkit lab eval`` and ``attnkit lab effects`` are
the same from the command line.) The DPL + Prompt-to-Prompt edit measures are not here yet.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnkit.lab.effects import effects, load, print_scores, scores  # noqa: E402


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
    pipe = load(args.model, args.run)
    print_scores(scores(pipe, args.pairs, args.steps, args.cfg))
    effects(pipe, args.pairs, args.steps, args.cfg, args.grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
