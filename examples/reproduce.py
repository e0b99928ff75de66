"""Every method at its paper's settings, against the plain model, on one seed: a grid and the settings used.

    python examples/reproduce.py [--model tiny-sd15] [--seed 0] [--out reproduce.png] [--only attend_excite,p2p]
                                 [--steps N]   (a quick check with fewer steps; the papers' is 50)

With a real SD 1.x checkpoint (``--model path/or/hub-id``) this is the papers' configuration: 512 px, 50 steps,
CFG 7.5, each method's own options (see ``Method.paper`` and ``Method.paper_source``). On the built-in tiny
random-weight model it runs the same code at 128 px in a minute or two, to check the wiring, not the pictures.
Writes ``<out>`` (rows: plain | method) and ``<out>.json`` (every option and call setting used, per method).
"""

import argparse
import dataclasses
import json
from pathlib import Path

import attnkit
from attnkit.methods import DPL, P2P, AStar, AttendExcite, StructuredGuidance
from attnkit.models import is_tiny
from attnkit.samplers import using_sampler
from attnkit.viz import labelled_grid

CASES = {  # what each paper shows: a prompt of its kind and the words it needs
    "attend_excite": (AttendExcite, "a cat and a frog", ["cat", "frog"]),
    "a_star": (AStar, "a bear and a turtle", ["bear", "turtle"]),
    "structured": (StructuredGuidance, "a red car and a white sheep", None),
}
EDIT = ("a cat riding a bicycle", "a dog riding a bicycle")  # Prompt-to-Prompt's word swap
PHOTO = ("a cat and a dog", "a cat and a fox", ["cat", "dog"])  # DPL: caption, edited caption, dynamic nouns


def settings_of(method) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(method.config).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd15")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reproduce.png")
    parser.add_argument("--only", default="", help="comma-separated: attend_excite, a_star, structured, p2p, dpl")
    parser.add_argument("--steps", type=int, default=None, help="steps instead of the papers' 50 (a quick check)")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    pipe = attnkit.load_pipeline(args.model)
    tiny = is_tiny(pipe)
    size = {"height": 128, "width": 128} if tiny else {}
    steps = {"num_inference_steps": args.steps} if args.steps else {}
    tiles, used = [], {"model": args.model, "seed": args.seed, "size": size or "the model's own",
                       "steps": args.steps or "the papers'"}

    for method_id, (cls, prompt, words) in CASES.items():
        if only and method_id not in only:
            continue
        method = cls(words=words, settings="paper") if words else cls(settings="paper")
        call = {"num_inference_steps": cls.paper_run["steps"], "guidance_scale": cls.paper_run["guidance_scale"],
                **steps}
        with using_sampler(pipe, cls.paper_run.get("sampler")):  # the plain image with the paper's sampler too
            plain = attnkit.generate(pipe, prompt, [], seed=args.seed, **call, **size)
        ours = attnkit.generate(pipe, prompt, [method], seed=args.seed, settings="paper", **steps, **size)
        tiles += [(f"plain: {prompt}", plain.images[0]), (f"{cls.title} (paper)", ours.images[0])]
        used[method_id] = {"prompt": prompt, "options": settings_of(method), "call": dict(cls.paper_run),
                           "source": cls.paper_source, "warnings": ours.report.warnings}
        print(f"{method_id}: done")

    if not only or "p2p" in only:
        result = attnkit.prompt_to_prompt(pipe, *EDIT, seed=args.seed, settings="paper", **steps, **size)
        tiles += [(f"source: {EDIT[0]}", result.images[0]), (f"Prompt-to-Prompt: {EDIT[1]}", result.images[1])]
        used["p2p"] = {"prompts": list(EDIT), "options": settings_of(P2P(settings="paper")), "call": dict(P2P.paper_run),
                       "source": P2P.paper_source}
        print("p2p: done")

    if not only or "dpl" in only:
        caption, edited, nouns = PHOTO
        photo = attnkit.generate(pipe, caption, [], seed=args.seed, **{"num_inference_steps": 50, **steps},
                                 **size).images[0]
        result = attnkit.edit(pipe, photo, caption, edited, words=nouns, settings="paper", seed=1, **steps, **size)
        tiles += [(f"photo: {caption}", photo), (f"DPL + P2P: {edited}", result.images[0])]
        used["dpl"] = {"caption": caption, "edited": edited, "words": nouns, **result.report.settings,
                       "psnr": result.report.psnr, "source": DPL.paper_source}
        print("dpl: done")

    side = 256
    labelled_grid([(label, im.convert("RGB").resize((side, side))) for label, im in tiles], side, 2).save(args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(used, indent=1, default=str))
    print(f"saved {args.out} and {Path(args.out).with_suffix('.json')}")


if __name__ == "__main__":
    main()
