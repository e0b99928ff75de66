"""The ``attnkit`` command line.

``attnkit generate``: generate an image with methods active, save it, and save the attention heatmaps.
``attnkit tokens``: show how a prompt is tokenised (which positions each word takes) for a model.

Bad input exits with status 2 and one readable line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import AttnKitError

logger = logging.getLogger("attnkit")


def _parser() -> argparse.ArgumentParser:
    from .methods import REGISTRY

    parser = argparse.ArgumentParser(prog="attnkit", description="Cross-attention control for diffusers pipelines.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--model", default="tiny-sd15",
                       help="tiny-sd15 | tiny-sdxl | tiny-flux | a diffusers folder | a .safetensors file | a hub id "
                            "(default: tiny-sd15, built in, offline)")
        p.add_argument("--config", help="for single-file checkpoints: a diffusers folder or hub id with its configs")
        p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
        p.add_argument("--dtype", help="float16, bfloat16 or float32 (default: float16 on GPU, float32 on CPU)")
        p.add_argument("--prompt", required=True, help="the prompt")

    gen = sub.add_parser("generate", help="generate an image, optionally with attention methods and heatmaps")
    model_args(gen)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--method", action="append", choices=sorted(REGISTRY), default=[],
                     help="a method to apply (repeatable)")
    gen.add_argument("--words", help="comma-separated words/phrases of the prompt the methods target (car,red car)")
    gen.add_argument("--resolution", type=int, help="observe: query grid side to aggregate maps at")
    gen.add_argument("--phrases", help="structured: comma-separated phrases to use instead of the parser")
    gen.add_argument("--parser", help="structured: rules (default), stanza or spacy")
    gen.add_argument("--conjunction", action="store_true", default=None,
                     help="structured: conjunction mode (many keys, one value)")
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default: 20 tiny, 30 otherwise)")
    gen.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the pipeline's)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--out", default="out.png", help="where to save the image (default: out.png)")
    gen.add_argument("--maps", help="where to save the heatmap grid (needs --method observe)")
    gen.add_argument("--report", help="where to save a JSON summary of the run")

    tok = sub.add_parser("tokens", help="show the prompt's words and the token positions they take")
    model_args(tok)
    return parser


def _split(text: str | None) -> list[str] | None:
    return [w.strip() for w in text.split(",") if w.strip()] if text else None


def _method_objects(args) -> list:
    """Methods from the command line; each option goes to the selected methods whose config has that field."""
    import dataclasses

    from .methods import REGISTRY, get_method

    options = {
        "words": _split(args.words), "resolution": args.resolution, "phrases": _split(args.phrases),
        "parser": args.parser, "conjunction": args.conjunction,
    }
    given = {name: value for name, value in options.items() if value is not None}
    used: set[str] = set()
    methods = []
    for method_id in args.method:
        cls = get_method(method_id)
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        fields = {name: value for name, value in given.items() if name in names}
        used.update(fields)
        methods.append(cls(**fields))
    for name in given.keys() - used:
        takers = sorted(m for m, cls in REGISTRY.items()
                        if name in {f.name for f in dataclasses.fields(cls.config_class)})
        raise AttnKitError(f"--{name} needs --method {' or '.join(takers)}")
    if args.maps and "observe" not in args.method:
        raise AttnKitError("--maps needs --method observe (the maps come from it)")
    return methods



def _generate(args) -> int:
    from tqdm.auto import tqdm

    from .models import TINY_IMAGE_SIZE, is_tiny, load_pipeline
    from .runtime import generate

    for name in ("steps", "height", "width"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise AttnKitError(f"--{name} must be a positive integer, got {value}")
    for path in (args.out, args.maps, args.report):
        if path and not Path(path).expanduser().resolve().parent.is_dir():
            raise AttnKitError(f"cannot write {path}: its folder does not exist")
    methods = _method_objects(args)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, config=args.config)
    tiny = is_tiny(pipe)
    kwargs = {"num_inference_steps": args.steps or (20 if tiny else 30)}
    height = args.height or (TINY_IMAGE_SIZE if tiny else None)
    width = args.width or (TINY_IMAGE_SIZE if tiny else None)
    if height:
        kwargs["height"] = height
    if width:
        kwargs["width"] = width
    if args.cfg is not None:
        kwargs["guidance_scale"] = args.cfg
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    pipe.set_progress_bar_config(disable=True)
    bar = None

    def on_step(step):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=step.count, desc="attnkit", unit="step")
        bar.update(1)

    try:
        result = generate(pipe, args.prompt, methods, seed=args.seed, on_step=on_step, **kwargs)
    finally:
        if bar is not None:
            bar.close()
    if Path(args.out).suffix.lower() == ".png":  # the settings travel with the image (webui's PNG Info reads them)
        from .presets import Preset

        settings = {"steps": kwargs["num_inference_steps"], "seed": args.seed}
        if args.cfg is not None:
            settings["guidance_scale"] = args.cfg
        if height and width:
            settings.update(width=width, height=height)
        Preset.from_methods(methods, settings=settings).save_png(
            result.images[0], args.out, prompt=args.prompt, negative_prompt=args.negative_prompt or "",
            model=args.model)
    else:
        result.images[0].save(args.out)
    print(f"saved {args.out}")
    if args.maps:
        result.heatmaps().save(args.maps)
        print(f"saved {args.maps}")
    if args.report:
        summary = {
            "prompt": args.prompt, "model": args.model, "seed": args.seed, "steps": result.report.steps,
            "timings": result.report.timings, "warnings": result.report.warnings,
            "methods": {
                mid: {"timings": rep.timings, "warnings": rep.warnings,
                      "maps": {w: m[0].tolist() for w, m in rep.maps.items()}}
                for mid, rep in result.report.methods.items()
            },
        }
        Path(args.report).write_text(json.dumps(summary, indent=1))
        print(f"saved {args.report}")
    for warning in result.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _tokens(args) -> int:
    from .models import family_of, load_pipeline
    from .tokens import prompt_tokens

    pipe = load_pipeline(args.model, device="cpu", dtype="float32", config=args.config)
    tokens = prompt_tokens(pipe, args.prompt, family_of(pipe))
    for name, tmap in tokens.maps.items():
        mark = " (attention keys)" if name == tokens.key else ""
        print(f"{tmap.name}{mark}: {tmap.length} tokens, keeps positions up to {tmap.last_kept}")
        for word in tmap.words:
            pieces = " ".join(tmap.tokens[p] for p in word.positions)
            print(f"  {word.text:<20} {list(word.positions)}  {pieces}")
    return 0


def _quiet_image_processor_fallback(record: logging.LogRecord) -> bool:
    """Drop transformers' note that its image processors fall back to PIL: attnkit uses none of them."""
    return "falling back to" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``attnkit`` console script; returns the exit status."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.getLogger("transformers.utils.import_utils").addFilter(_quiet_image_processor_fallback)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return _generate(args) if args.command == "generate" else _tokens(args)
    except AttnKitError as exc:
        if args.debug:
            raise
        print(f"attnkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
