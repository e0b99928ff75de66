"""Make every subject appear: Attend-and-Excite (diffusers' defaults) or A-STAR, with the per-step losses.

    python examples/attend_excite_subjects.py [--model shapes] [--method a_star] [--prompt "..."] [--words ...]
"""

import argparse

import attnkit
from attnkit.methods import AStar, AttendExcite

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="shapes")
parser.add_argument("--prompt", default="a yellow triangle and a blue circle")
parser.add_argument("--words", default="triangle,circle")
parser.add_argument("--method", choices=["attend_excite", "a_star"], default="attend_excite")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--out", default="subjects.png")
args = parser.parse_args()

pipe = attnkit.load_pipeline(args.model)
size = {"height": 128, "width": 128} if args.model.startswith("tiny-") else {}
words = args.words.split(",")
method = AttendExcite(words=words) if args.method == "attend_excite" else AStar(words=words)
result = attnkit.generate(pipe, args.prompt, [method], seed=0, num_inference_steps=args.steps, **size)
for record in result.report[args.method].losses[:5]:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items() if k != "max_attention"})
result.images[0].save(args.out)
print(f"saved {args.out}")
