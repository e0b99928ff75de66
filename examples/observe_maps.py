"""Where did each word land? Per-word attention maps over the generated image.

    python examples/observe_maps.py [--model shapes] [--prompt "..."] [--words ...] [--out maps.png]

On the built-in shapes model (the default) each shape word's map lands on its shape.
"""

import argparse

import attnkit
from attnkit.methods import Observe

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="shapes")
parser.add_argument("--prompt", default="a red circle and a blue square")
parser.add_argument("--words", default="red circle,blue square")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--out", default="observe_maps.png")
args = parser.parse_args()

pipe = attnkit.load_pipeline(args.model)
size = {"height": 128, "width": 128} if args.model.startswith("tiny-") else {}
result = attnkit.generate(pipe, args.prompt, [Observe(words=args.words.split(","))], seed=0,
                          num_inference_steps=args.steps, **size)
result.heatmaps().save(args.out)
for word, m in result.report["observe"].maps.items():
    peak = divmod(int(m[0].argmax()), m.shape[-1])
    print(f"{word:>10}: strongest at cell {peak} of {tuple(m.shape[-2:])}")
print(f"saved {args.out}")
