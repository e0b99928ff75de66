"""Keep each colour on its object: Structured Diffusion Guidance, next to the plain result (same seed).

    python examples/structured_colours.py [--model tiny-sd15] [--conjunction]
"""

import argparse

from PIL import Image

import attnkit
from attnkit.methods import StructuredGuidance

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="tiny-sd15")
parser.add_argument("--prompt", default="a red car and a white sheep")
parser.add_argument("--conjunction", action="store_true")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--out", default="structured_colours.png")
args = parser.parse_args()

pipe = attnkit.load_pipeline(args.model)
size = {"height": 128, "width": 128} if args.model.startswith("tiny-") else {}
plain = attnkit.generate(pipe, args.prompt, [], seed=0, num_inference_steps=args.steps, **size)
guided = attnkit.generate(pipe, args.prompt, [StructuredGuidance(conjunction=args.conjunction)], seed=0,
                          num_inference_steps=args.steps, **size)
print("phrases:", [p["text"] for p in guided.report["structured"].data["phrases"]])
a, b = plain.images[0], guided.images[0]
pair = Image.new("RGB", (a.width * 2, a.height))
pair.paste(a, (0, 0))
pair.paste(b, (a.width, 0))
pair.save(args.out)
print(f"saved {args.out} (left: plain, right: structured)")
