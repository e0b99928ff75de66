"""What each method fixes on the shapes model, against its baseline on the same prompts and seeds.

    python benchmarks/effects.py                                       # the built-in shapes model
    python benchmarks/effects.py --run ~/.cache/attnkit-lab/shapes     # a training run's current weights
    python benchmarks/effects.py --model shapes.safetensors            # a saved shapes model
    python benchmarks/effects.py --pairs 40 --edits 20 --steps 10      # a quicker, wider-interval look
    python benchmarks/effects.py --workers 2 --log edits.jsonl         # the edits in two processes, logged

The model's own scores (one object and two objects right, held-out pairs apart, neglect, binding errors, observe's
localisation), then, for each method, the paper's own quality axis on ``--pairs`` two-object prompt-seed pairs (an
eighth of them pairs held out of training) and ``--edits`` edits of rendered pictures:

- Attend-and-Excite, A-STAR: the rate of pictures with both shapes (no neglect), against the plain model;
- Structured Diffusion Guidance: the rate of pictures with both shapes in their own colours, against the plain model;
- observe: a word's attention mass on its object over the object's share of the picture (1 would be uniform);
- Dynamic Prompt Learning + Prompt-to-Prompt: edit success and PSNR outside the edited object, against
  Prompt-to-Prompt alone (both after null-text inversion);

with the difference, its paired-bootstrap 95 % interval and, for rates, the exact McNemar p-value; a PNG grid of
examples (baseline left, method right) goes to ``--grid``, the table as Markdown to ``--markdown``. (``attnkit lab
eval`` and ``attnkit lab effects`` are the same from the command line.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnkit.lab.effects import effects, load, plain_pairs, print_scores, scores, table  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a shapes model saved by attnkit.lab.model.save (default: the built-in one)")
    parser.add_argument("--run", help="a training run folder: its current weights instead")
    parser.add_argument("--pairs", type=int, default=200, help="two-object prompt-seed pairs (and model-score draws)")
    parser.add_argument("--edits", type=int, default=200, help="edits of rendered pictures (DPL + P2P against P2P)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--grid", default="effects.png")
    parser.add_argument("--markdown", help="also write the effects table as Markdown to this file")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the edits, one torch thread each (2 on 2 cores: half the time)")
    parser.add_argument("--log", help="append each edit's outcome to this JSON-lines file as it is measured")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    pipe = load(args.model, args.run)
    plain = plain_pairs(pipe, args.pairs, args.steps, args.cfg)  # drawn once for the scores and the effects
    print_scores(scores(pipe, args.pairs, args.steps, args.cfg, plain=plain))
    rows = effects(pipe, args.pairs, args.steps, args.cfg, args.grid, edits=args.edits, plain=plain,
                   workers=args.workers, log=args.log)
    if args.markdown:
        Path(args.markdown).write_text(table(rows, markdown=True) + "\n", encoding="utf-8")
        print(f"saved {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
