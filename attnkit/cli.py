"""The ``attnkit`` command line.

``attnkit generate``: generate an image with methods active, save it, and save the attention heatmaps.
``attnkit edit``: edit a photo by editing its caption (null-text inversion or Dynamic Prompt Learning, then
Prompt-to-Prompt), saving the edit, the reconstruction, a before/after grid and the maps.
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

    def model_args(p, prompt=True):
        p.add_argument("--model", default="shapes",
                       help="shapes | tiny-sd15 | tiny-sdxl | tiny-flux | a diffusers folder | a .safetensors file | "
                            "a hub id (default: shapes, the built-in model of coloured shapes, offline)")
        p.add_argument("--config", help="for single-file checkpoints: a diffusers folder or hub id with its configs")
        p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
        p.add_argument("--dtype", help="float16, bfloat16 or float32 (default: float16 on GPU, float32 on CPU)")
        if prompt:
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
    gen.add_argument("--paper", action="store_true",
                     help="each --method at its paper's settings, and the paper's steps, CFG and sampler where not "
                          "given (e.g. Attend-and-Excite: 50 steps, CFG 7.5, its thresholds, the raw-latent pass)")
    gen.add_argument("--steps", type=int, default=None,
                     help="denoising steps (default: 20 on built-in models, 30 otherwise)")
    gen.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the pipeline's)")
    gen.add_argument("--sampler", default=None,
                     help="Euler, 'Euler a', 'DPM++ 2M', 'DPM++ 2M Karras', DDIM, PNDM, UniPC, Heun, LMS "
                          "(default: the model's own)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--condition", action="append", default=[], metavar="KIND:IMAGE[:KEYWORD]",
                     help="Flux: a condition image (repeatable): spatial:edges.png or subject:cat.png:cat (the prompt "
                          "word naming the subject); runs PKA (position-aligned, keyword-scoped attention)")
    gen.add_argument("--condition-lora", action="append", default=[], metavar="N=PATH",
                     help="a LoRA adapter for condition N (1 = the first --condition)")
    gen.add_argument("--pka-mode", choices=["pka", "full"], default=None,
                     help="pka (default) or full (every token attends to every token: the baseline)")
    gen.add_argument("--pka-window", type=int, default=None, help="position-aligned window side (1)")
    gen.add_argument("--pka-residual", action="store_true", default=None,
                     help="position-aligned attention as the residual reading (aligned values added)")
    gen.add_argument("--pka-epsilon", type=float, default=None, help="keyword mask threshold (0.2)")
    gen.add_argument("--out", default="out.png", help="where to save the image (default: out.png)")
    gen.add_argument("--maps", help="where to save the heatmap grid (needs --method observe)")
    gen.add_argument("--report", help="where to save a JSON summary of the run")

    ed = sub.add_parser("edit", help="edit a photo by editing its caption (DPL / null-text inversion + Prompt-to-Prompt)")
    model_args(ed, prompt=False)
    ed.add_argument("--image", required=True, help="the photo to edit (centre-cropped and resized)")
    ed.add_argument("--source", required=True, help="a caption of the photo, e.g. 'a cat and a dog'")
    ed.add_argument("--target", required=True, help="the caption of the result, e.g. 'a cat and a fox'")
    ed.add_argument("--words", help="nouns of the source caption to make dynamic (DPL), comma-separated; "
                                    "without them: null-text inversion + Prompt-to-Prompt")
    ed.add_argument("--edit", choices=["replace", "refine", "reweight"], default="replace",
                    help="replace: swap words; refine: add/remove words; reweight: strengthen/weaken words")
    ed.add_argument("--reweight", help="word=scale pairs, comma-separated (red=2,blue=0.5)")
    ed.add_argument("--blend-words", help="local blend: words whose region may change (dog,fox)")
    ed.add_argument("--blend-threshold", type=float, default=None, help="local blend mask threshold (0.3)")
    ed.add_argument("--cross-replace", help="part of the run in which cross-attention is injected, as from-to fractions "
                                                   "(default 0-0.8)")
    ed.add_argument("--self-replace", help="part of the run in which coarse self-attention is injected (default 0-0.4)")
    ed.add_argument("--token-iterations", type=int, default=None, help="DPL: most token updates per step (21)")
    ed.add_argument("--null-iterations", type=int, default=None,
                    help="null-text: most updates per step (default: 51 fixed with --words, as DPL's code; 10 with "
                         "early stop without, as null-text inversion)")
    ed.add_argument("--dpl-null-text", action="store_true",
                    help="null-text as in DPL's code also without --words: 51 fixed updates per step from \"\"")
    ed.add_argument("--paper", action="store_true",
                    help="the papers' settings for every option not given (DPL's DPL.sh, Prompt-to-Prompt's notebooks; "
                         "50 steps also on built-in models)")
    ed.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 50; 20 for built-in models)")
    ed.add_argument("--cfg", type=float, default=7.5, help="guidance scale (7.5)")
    ed.add_argument("--seed", type=int, default=1, help="seed of the background mask's k-means (1)")
    ed.add_argument("--height", type=int, default=None)
    ed.add_argument("--width", type=int, default=None)
    ed.add_argument("--out", default="edited.png", help="where to save the edited image (default: edited.png)")
    ed.add_argument("--reconstruction", help="where to save the reconstruction of the photo")
    ed.add_argument("--grid", help="where to save the input / reconstruction / edit grid")
    ed.add_argument("--maps", help="where to save the per-word maps and masks (needs --words)")
    ed.add_argument("--report", help="where to save a JSON summary (losses per step, timings)")

    tok = sub.add_parser("tokens", help="show the prompt's words and the token positions they take")
    model_args(tok)

    lab = sub.add_parser("lab", help="train the shapes model of attnkit's lab (CPU hours; resumable)")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    tr = lab_sub.add_parser("train", help="train or go on training: the autoencoder, then the UNet and text encoder, "
                                                 "then their grounding")
    tr.add_argument("--out", default="~/.cache/attnkit-lab/shapes",
                    help="the run folder (checkpoint.pt, log.jsonl); an existing run resumes where it stopped")
    tr.add_argument("--steps", type=int, default=None, help="stop after this many steps (this call; resumable)")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    tr.add_argument("--vae-steps", type=int, default=None, help="autoencoder steps of a new run (1000)")
    tr.add_argument("--unet-steps", type=int, default=None, help="UNet steps of a new run (4500)")
    tr.add_argument("--ground-steps", type=int, default=None,
                    help="grounding steps of a new run (1500): the UNet's word maps pulled onto their objects")
    tr.add_argument("--batch", type=int, default=None, help="pictures per step of a new run (32)")
    ex = lab_sub.add_parser("export", help="save a training run's model as one file (what attnkit ships as 'shapes')")
    ex.add_argument("--run", default="~/.cache/attnkit-lab/shapes", help="the run folder")
    ex.add_argument("--out", default="shapes.safetensors", help="the model file to write")
    for name, text in (("eval", "the shapes model's own scores (one and two objects, held-out pairs, localisation)"),
                       ("effects", "each method against the plain shapes model, with 95 % intervals and p-values")):
        ev = lab_sub.add_parser(name, help=text)
        ev.add_argument("--model", help="a shapes model file (default: the built-in one)")
        ev.add_argument("--run", help="a training run's folder: its current weights instead")
        ev.add_argument("--pairs", type=int, default=200 if name == "effects" else 100,
                        help="prompt-seed pairs per measure")
        ev.add_argument("--steps", type=int, default=20)
        ev.add_argument("--cfg", type=float, default=7.5)
        if name == "effects":
            ev.add_argument("--edits", type=int, default=200, help="edits of real pictures measured (DPL vs P2P)")
            ev.add_argument("--grid", default="effects.png", help="where to save the example grid")
            ev.add_argument("--workers", type=int, default=1,
                            help="processes sharing the edits, one torch thread each (2 on 2 cores: half the time)")
            ev.add_argument("--log", help="append each edit's outcome to this JSON-lines file as it is measured")
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
    pka = _pka_method(args)
    if pka is not None:
        methods.append(pka)
    return methods


def _pka_method(args):
    """The PKA method of the --condition options (``None`` without conditions)."""
    from .methods import PKA
    from .methods.pka.branches import Condition

    options = {"mode": args.pka_mode, "window": args.pka_window, "residual": args.pka_residual,
               "epsilon": args.pka_epsilon}
    options = {k: v for k, v in options.items() if v is not None}
    if not args.condition:
        if options or args.condition_lora:
            raise AttnKitError("--pka-* and --condition-lora need at least one --condition")
        return None
    loras = {}
    for item in args.condition_lora:
        index, sep, path = item.partition("=")
        if not sep or not index.strip().isdigit() or not 1 <= int(index) <= len(args.condition):
            raise AttnKitError(f"--condition-lora takes N=PATH with N from 1 to {len(args.condition)}; got {item!r}")
        loras[int(index) - 1] = path
    conditions = []
    for i, item in enumerate(args.condition):
        kind, sep, rest = item.partition(":")
        if not sep or not rest:
            raise AttnKitError(f"--condition takes KIND:IMAGE[:KEYWORD] (spatial:edges.png, subject:cat.png:cat); got {item!r}")
        image, keyword = rest, None
        if kind == "subject":
            image, sep, keyword = rest.rpartition(":")
            if not sep:
                raise AttnKitError(f"a subject condition needs its keyword: subject:IMAGE:WORD; got {item!r}")
        if not Path(image).expanduser().is_file():
            raise AttnKitError(f"--condition {item}: no such image file {image!r}")
        conditions.append(Condition(kind=kind, image=image, keyword=keyword, lora=loras.get(i)))
    return PKA(conditions=conditions, **options)



#: the flags of the generation settings a saved image carries
_FLAGS = {"steps": "--steps", "guidance_scale": "--cfg", "width": "--width", "height": "--height", "seed": "--seed"}


def _check_settings(args, seed: bool = True) -> None:
    """The generation settings, held to the caps the saved image's settings are held to, before any work."""
    from .presets import check_settings

    check_settings({"steps": args.steps, "guidance_scale": args.cfg, "width": args.width, "height": args.height,
                    "seed": args.seed if seed else None}, _FLAGS)


def _check_outputs(images: dict[str, str | None], files: dict[str, str | None] = {}) -> None:  # noqa: B006
    """Every output path writable as asked, before any work: an existing folder, an image format PIL writes."""
    from PIL import Image

    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    for flag, path in {**images, **files}.items():
        if not path:
            continue
        target = Path(path).expanduser()
        if target.is_dir():
            raise AttnKitError(f"{flag} {path} is a folder; give a file name, e.g. {target / 'out.png'}")
        if not target.resolve().parent.is_dir():
            raise AttnKitError(f"cannot write {flag} {path}: its folder does not exist")
        if flag in images and target.suffix.lower() not in writable:
            raise AttnKitError(f"{flag} {path}: unknown image type {target.suffix or '(no extension)'!r}; "
                               "use .png (keeps the settings), .jpg or .webp")


def _generate(args) -> int:
    from tqdm.auto import tqdm

    from .core.steps import shown_step, work_text
    from .methods import REGISTRY
    from .models import builtin_size, is_builtin, load_pipeline
    from .presets import PresetError
    from .runtime import generate

    _check_settings(args)
    from .samplers import DEFAULT, check_sampler, using_sampler

    check_sampler(args.sampler)  # a typo is refused before the model loads
    _check_outputs({"--out": args.out, "--maps": args.maps}, {"--report": args.report})
    methods = _method_objects(args)
    paper: dict = {}
    chosen_sampler = args.sampler
    if args.paper:
        from .runtime.drive import at_paper_settings

        if not any(m.paper for m in methods):
            raise AttnKitError("--paper needs a --method with paper settings (attend_excite, a_star, structured)")
        methods, paper_sampler = at_paper_settings(methods, "paper", paper)
        chosen_sampler = args.sampler or paper_sampler
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, config=args.config)
    quick = is_builtin(pipe)
    kwargs = {"num_inference_steps": args.steps or paper.get("num_inference_steps") or (20 if quick else 30)}
    height = args.height or builtin_size(pipe)
    width = args.width or builtin_size(pipe)
    if height:
        kwargs["height"] = height
    if width:
        kwargs["width"] = width
    cfg = args.cfg if args.cfg is not None else paper.get("guidance_scale")
    if cfg is not None:
        kwargs["guidance_scale"] = cfg
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    pipe.set_progress_bar_config(disable=True)
    bar = None

    requested = kwargs["num_inference_steps"]

    def make_bar():
        nonlocal bar
        if bar is None:
            bar = tqdm(total=requested, desc="attnkit", unit="step")
        return bar

    def on_step(step):  # in the steps asked for (a sampler may take more denoiser steps, e.g. PNDM 21 for 20)
        make_bar().update(shown_step(step, requested) - make_bar().n)
        bar.set_postfix_str("")

    def on_work(step, what, done, total):  # a long step's inner passes (refinement tries, iterations)
        make_bar().set_postfix_str(work_text(what, done, total))

    try:
        with using_sampler(pipe, chosen_sampler) as sampler:
            result = generate(pipe, args.prompt, methods, seed=args.seed, on_step=on_step, on_work=on_work,
                              **kwargs)
    finally:
        if bar is not None:
            bar.close()
    if Path(args.out).suffix.lower() == ".png":  # the settings travel with the image (webui's PNG Info reads them)
        from .presets import Preset

        settings = {"steps": kwargs["num_inference_steps"], "seed": args.seed}
        if sampler != DEFAULT:
            settings["sampler"] = sampler
        if cfg is not None:
            settings["guidance_scale"] = cfg
        if height and width:
            settings.update(width=width, height=height)
        presettable = [m for m in methods if m.id in REGISTRY]  # condition images (pka) are not preset data
        try:
            info = Preset.from_methods(presettable, settings=settings).png_info(
                prompt=args.prompt, negative_prompt=args.negative_prompt or "", model=args.model)
        except PresetError as exc:  # the image is kept whatever happens to its settings
            info = None
            print(f"warning: {args.out} is saved without its settings ({exc})", file=sys.stderr)
        result.images[0].save(args.out, format="PNG", pnginfo=info)
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


def _edit(args) -> int:
    from tqdm.auto import tqdm

    from .editing import edit, parse_scales, parse_window
    from .models import is_builtin, load_pipeline

    _check_settings(args)
    _check_outputs({"--out": args.out, "--reconstruction": args.reconstruction, "--grid": args.grid,
                    "--maps": args.maps}, {"--report": args.report})
    if not Path(args.image).expanduser().is_file():
        raise AttnKitError(f"--image {args.image}: no such file")
    words = _split(args.words)
    if args.maps and not words:
        raise AttnKitError("--maps needs --words (the maps come from Dynamic Prompt Learning)")
    knobs = {
        "reweight": parse_scales(args.reweight, "--reweight") or None, "blend_words": _split(args.blend_words),
        "blend_threshold": args.blend_threshold, "token_iterations": args.token_iterations,
        "null_iterations": args.null_iterations,
        "cross_replace": parse_window(args.cross_replace, "--cross-replace") if args.cross_replace else None,
        "self_replace": parse_window(args.self_replace, "--self-replace") if args.self_replace else None,
    }
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if args.dpl_null_text:
        from .editing import DPL_NULL_TEXT

        knobs = {**DPL_NULL_TEXT, **knobs}
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, config=args.config)
    pipe.set_progress_bar_config(disable=True)
    steps = args.steps or (20 if is_builtin(pipe) and not args.paper else 50)
    bars: dict[str, tqdm] = {}
    names = {"invert": "inverting", "optimise": "optimising", "edit": "editing"}

    def on_progress(phase, done, total):
        if phase not in bars:
            bars[phase] = tqdm(total=total, desc=names.get(phase, phase), unit="step")
        bars[phase].update(done - bars[phase].n)

    try:
        result = edit(pipe, args.image, args.source, args.target, words=words, edit=args.edit, seed=args.seed,
                      num_inference_steps=steps, guidance_scale=args.cfg, height=args.height, width=args.width,
                      on_progress=on_progress, settings="paper" if args.paper else None, **knobs)
    finally:
        for bar in bars.values():
            bar.close()
    result.images[0].save(args.out)
    print(f"saved {args.out}")
    if args.reconstruction:
        result.reconstruction.save(args.reconstruction)
        print(f"saved {args.reconstruction}")
    if args.grid:
        result.before_after().save(args.grid)
        print(f"saved {args.grid}")
    if args.maps:
        result.maps_image().save(args.maps)
        print(f"saved {args.maps}")
    report = result.report
    print(f"reconstruction PSNR: {report.psnr['input']:.2f} dB against the photo "
          f"({report.psnr['autoencoder']:.2f} dB against the autoencoder's own round trip)")
    if args.report:
        summary = {
            "settings": report.settings, "timings": report.timings, "psnr": report.psnr,
            "warnings": report.warnings, "null_text": report.null_text, "dpl_losses": report.dpl_losses,
            "token_iterations": report.token_iterations, "cluster_owners": report.owners,
        }
        Path(args.report).write_text(json.dumps(summary, indent=1, default=str))
        print(f"saved {args.report}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _tokens(args) -> int:
    from .core.tokens import prompt_tokens
    from .models import family_of, load_pipeline

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


def _lab(args) -> int:
    if args.lab_command == "export":
        from .lab.model import save
        from .lab.train import Trainer

        run = Path(args.run).expanduser()
        if not (run / "checkpoint.pt").is_file():
            raise AttnKitError(f"no training run in {run}: train one (attnkit lab train) or give --run")
        _check_outputs({}, {"--out": args.out})
        trainer = Trainer(run)
        if trainer.stage == "vae":
            raise AttnKitError(f"{run} is still training its autoencoder (step {trainer.step}); export after the "
                               "UNet has trained")
        size = save(trainer.pipeline(), args.out)
        where = "trained to the end" if trainer.stage == "done" else f"stage {trainer.stage}, step {trainer.step}"
        print(f"saved {args.out} ({size / 2**20:.1f} MiB): {where}")
        return 0
    if args.lab_command != "train":
        from .lab.effects import effects, load, print_scores, scores

        if args.pairs < 1 or args.steps < 1 or getattr(args, "edits", 1) < 0 or getattr(args, "workers", 1) < 1:
            raise AttnKitError("--pairs, --steps and --workers must be at least 1, --edits at least 0")
        if args.model and args.run:
            raise AttnKitError("give --model or --run, not both")
        run = str(Path(args.run).expanduser()) if args.run else None
        if run and not (Path(run) / "checkpoint.pt").is_file():
            raise AttnKitError(f"no training run in {run}: train one (attnkit lab train) or give --model")
        if args.model and not Path(args.model).expanduser().is_file():
            raise AttnKitError(f"--model {args.model}: no such file")
        pipe = load(args.model, run)
        if args.lab_command == "eval":
            print_scores(scores(pipe, args.pairs, args.steps, args.cfg))
        else:
            effects(pipe, args.pairs, args.steps, args.cfg, args.grid, edits=args.edits, workers=args.workers,
                    log=args.log)
        return 0
    import dataclasses

    import torch
    from tqdm.auto import tqdm

    from .lab.train import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    given = {"vae_steps": args.vae_steps, "unet_steps": args.unet_steps, "ground_steps": args.ground_steps,
             "batch": args.batch}
    given = {k: v for k, v in given.items() if v is not None}
    for name, value in given.items():
        if value < 1:
            raise AttnKitError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    folder = Path(args.out).expanduser()
    resuming = (folder / "checkpoint.pt").is_file()
    if resuming and given:
        raise AttnKitError(f"{folder} holds a run already: resume it without --vae-steps/--unet-steps/"
                           "--ground-steps/--batch, or give another --out")
    trainer = Trainer(folder, dataclasses.replace(TrainConfig(), **given))
    print(f"{'resuming' if resuming else 'starting'} {folder}: stage {trainer.stage}, step {trainer.step}")
    bars: dict[str, tqdm] = {}

    def on_log(record):
        stage = record["stage"]
        if stage not in bars:
            bars[stage] = tqdm(total=record["total"], initial=record["step"] - 1, desc=f"lab {stage}", unit="step")
        bar = bars[stage]
        bar.update(record["step"] - bar.n)
        bar.set_postfix_str(" ".join(f"{k} {record[k]:.4g}" for k in ("loss", "psnr", "grounding") if k in record))

    try:
        trainer.run(on_log=on_log, max_steps=args.steps)
    finally:
        for bar in bars.values():
            bar.close()
    print(f"saved {folder / 'checkpoint.pt'}: stage {trainer.stage}, step {trainer.step}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``attnkit`` console script; returns the exit status."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.getLogger("transformers.utils.import_utils").addFilter(_quiet_image_processor_fallback)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        commands = {"generate": _generate, "edit": _edit, "tokens": _tokens, "lab": _lab}
        return commands[args.command](args)
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
