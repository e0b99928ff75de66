"""Editing with Prompt-to-Prompt: generated images (:func:`prompt_to_prompt`) and real photos (:func:`edit`).

:func:`edit` runs the whole real-image pipeline of Dynamic Prompt Learning (Wang et al., NeurIPS 2023) on the
attnkit runtime, for SD 1.x/2.x pipelines:

1. encode the photo (resized and centre-cropped to the generation size) to ``z*_0`` with the pipeline's VAE;
2. DDIM inversion at guidance 1 with the source caption, keeping every latent; with DPL, attnkit records the
   averaged cross-attention at the maps' grid and the self-attention one grid finer (nothing else);
3. with DPL, the background mask (k-means on the self-attention rows, see :mod:`attnkit.methods.dpl`);
4. per denoising step, from ``z*_T``: DPL's dynamic-token optimisation (when ``words`` are given), then null-text
   inversion of that step, then the guided step with both: the reconstruction;
5. the Prompt-to-Prompt edit: the batch ``[null_i, null_i, C_src,i, C_tgt,i]`` from ``z*_T`` for both prompts, the
   :class:`~attnkit.methods.P2P` controller on the conditional pair, the local blend after each step.

Without ``words`` it is null-text inversion + Prompt-to-Prompt (DPL's baseline). Progress goes to ``on_progress``,
``stop`` interrupts between iterations; attnkit's processors are removed and the pipeline left as it was whatever
happens. SDXL and Flux pipelines are refused (the inversion, the null-text optimisation and DPL's token encoding are
written for one CLIP encoder and a UNet without added conditioning).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..core.phrases import nouns as caption_nouns
from ..core.steps import StepInfo
from ..core.tokens import TokenMap
from ..errors import AttnKitError, UnsupportedModelError, one_line
from ..methods.dpl import (
    DPL,
    DPLConfig,
    DynamicPrompt,
    background_mask,
    dynamic_words,
    target_words,
)
from ..methods.p2p import P2P, Keys, P2PConfig, P2PEdit
from ..models import family_of
from .inversion import (
    DDIM,
    NullTextConfig,
    cfg_step,
    check_stop,
    ddim_invert,
    denoise,
    null_text_step,
)

logger = logging.getLogger("attnkit")

_P2P_FIELDS = {f.name for f in dataclasses.fields(P2PConfig)}
_DPL_FIELDS = {f.name for f in dataclasses.fields(DPLConfig)}
_NULL_FIELDS = {f.name for f in dataclasses.fields(NullTextConfig)}
#: DPL's official null-text setting (``DPL.sh``): 51 fixed iterations per step, each step from ``""``
DPL_NULL_TEXT = {"null_iterations": 51, "null_early_stop": False, "null_start": "empty"}


@dataclass
class EditReport:
    """What an edit reports.

    Attributes:
        timings: seconds per phase (``encode``, ``invert``, ``optimise``, ``edit``, ``decode``, ``total``).
        dpl_losses: per step and inner iteration ``{"step", "iteration", "at", "dj", "bg", "stopped"}`` (DPL only).
        null_text: per step ``{"step", "iterations", "loss_first", "loss_last"}``.
        token_iterations: per step, how many optimiser steps the dynamic tokens took.
        background: ``(h, w)`` bool background mask (DPL), ``None`` when none was found or DPL was off.
        clusters: ``(hs, ws)`` k-means labels and ``owners`` of each cluster (DPL).
        maps: ``{word: (h, w)}`` inversion-averaged cross-attention of the source words (DPL), each summing to 1.
        blend: ``(h, w)`` final local-blend mask at the latent size (when blending).
        psnr: reconstruction vs the input (``"input"``) and vs the autoencoder's own round trip (``"autoencoder"``).
        warnings: what the user should know.
        settings: the effective settings (for reproducing the edit).
    """

    timings: dict[str, float] = field(default_factory=dict)
    dpl_losses: list[dict[str, Any]] = field(default_factory=list)
    null_text: list[dict[str, Any]] = field(default_factory=list)
    token_iterations: list[int] = field(default_factory=list)
    background: torch.Tensor | None = None
    clusters: torch.Tensor | None = None
    owners: list[str] = field(default_factory=list)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    blend: torch.Tensor | None = None
    psnr: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class EditResult:
    """What :func:`edit` returns.

    Attributes:
        images: the edited images (PIL), one per call.
        reconstruction: the source re-rendered from its inversion (PIL).
        source: the input as the model saw it (resized and cropped, PIL).
        report: :class:`EditReport`.
    """

    images: list
    reconstruction: Any
    source: Any
    report: EditReport

    def before_after(self):
        """A labelled grid: input, reconstruction, edit."""
        from ..viz import image_row

        return image_row([self.source, self.reconstruction, self.images[0]], ["input", "reconstruction", "edited"])

    def maps_image(self):
        """A labelled grid of each dynamic word's inversion map and the background mask over the input."""
        from ..viz import heatmap_grid

        maps = {w: m[None] if m.ndim == 2 else m for w, m in self.report.maps.items()}
        if self.report.background is not None:
            bg = self.report.background.float()
            maps["background"] = (bg / bg.sum().clamp_min(1))[None]
        if self.report.blend is not None:
            blend = self.report.blend.float()
            maps["blend mask"] = (blend / blend.sum().clamp_min(1))[None]
        if not maps:
            raise AttnKitError("this edit recorded no maps (maps come with DPL: give words=[...])")
        return heatmap_grid(self.source, {w: m[0] for w, m in maps.items()})


# ------------------------------------------------------------------------------------------------ helpers


def _split_knobs(knobs: dict) -> tuple[dict, dict, dict]:
    p2p, dpl, null = {}, {}, {}
    for name, value in knobs.items():
        if name in _P2P_FIELDS:
            p2p[name] = value
        elif name in _DPL_FIELDS:
            dpl[name] = value
        elif name in _NULL_FIELDS:
            null[name] = value
        else:
            known = sorted(_P2P_FIELDS | _DPL_FIELDS | _NULL_FIELDS)
            raise AttnKitError(f"edit() has no option {name!r}; its options are: {', '.join(known)}")
    return p2p, dpl, null


def parse_scales(text: str | None, label: str) -> dict[str, float]:
    """``"red=2, blue=0.5"`` -> ``{"red": 2.0, "blue": 0.5}`` (the text form of ``reweight``)."""
    out = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        word, sep, value = item.partition("=")
        try:
            if not sep or not word.strip():
                raise ValueError
            out[word.strip()] = float(value)
        except ValueError:
            raise AttnKitError(f"{label} takes word=scale pairs such as red=2, blue=0.5; got {item.strip()!r}") from None
    return out


def parse_window(text: str, label: str) -> tuple[float, float]:
    """``"0-0.8"`` (also ``"0 to 0.8"``, ``"0, 0.8"``) -> ``(0.0, 0.8)``: the text form of a step window."""
    from ..core.steps import parse_range

    return parse_range(text, label, example="0-0.8")


def _p2p_method(edit, knobs: dict, settings: str | None = None) -> P2P:
    """The ``P2P`` of an ``edit=`` argument (a name, a config or a method) with keyword options (at the paper's
    settings first with ``settings="paper"``)."""
    if isinstance(edit, P2P):
        if knobs:
            raise AttnKitError("pass Prompt-to-Prompt options either in the P2P object or as keywords, not both")
        return edit
    if isinstance(edit, P2PConfig):
        return P2P(dataclasses.replace(edit, **knobs))
    return P2P(edit=edit, settings=settings, **knobs)


def _paper_call(settings: str | None, kwargs: dict, steps_name: str = "num_inference_steps") -> None:
    """``settings="paper"``: the paper's steps and guidance where the call gives none."""
    if settings is None:
        return
    if settings != "paper":
        raise AttnKitError(f"settings={settings!r}; the only named settings are 'paper'")
    kwargs.setdefault(steps_name, P2P.paper_run["steps"])
    kwargs.setdefault("guidance_scale", P2P.paper_run["guidance_scale"])


def _check_pipe(pipe) -> None:
    family = family_of(pipe)
    if family != "sd":
        raise UnsupportedModelError(
            f"real-image editing supports SD 1.x/2.x pipelines, not {'SDXL' if family == 'sdxl' else 'Flux'}: "
            "load an SD 1.x/2.x model"
        )


def _size(pipe, height, width) -> tuple[int, int]:
    factor = getattr(pipe, "vae_scale_factor", 8)
    default = pipe.unet.config.sample_size * factor
    h, w = int(height or default), int(width or default)
    if h % factor or w % factor or not (factor * 2 <= h <= 4096 and factor * 2 <= w <= 4096):
        raise AttnKitError(f"height/width {h}x{w} must be multiples of {factor} between {factor * 2} and 4096")
    return h, w


#: the largest input image accepted, in pixels (64 megapixels: an 8000x8000 photo); larger is refused from its
#: header, before any pixel is decoded
MAX_INPUT_PIXELS = 64_000_000


def load_image(image, size: tuple[int, int]):
    """``image`` (a PIL image, a path, an ``(H, W, 3)`` array in [0, 1] or [0, 255]) centre-cropped to the aspect of
    ``size = (h, w)`` and resized to it, as an RGB PIL image.

    The crop comes first, so only the kept part is resized (a 1x40000 strip costs what its pixels cost). A file that
    is not an image, is cut short, or declares more than :data:`MAX_INPUT_PIXELS` pixels is an
    :class:`~attnkit.AttnKitError` naming the file.
    """
    from PIL import Image

    name = "the image"
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        name = f"the image {os.fsdecode(image)!r}" if not isinstance(image, bytes) or len(image) < 300 else name
        try:
            image = Image.open(image)
        except Exception as exc:  # not an image, unreadable, a decompression bomb...
            raise AttnKitError(f"cannot read {name}: {one_line(exc, 200)}") from None
    elif isinstance(image, np.ndarray):
        array = image.astype(np.float32)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise AttnKitError(f"an image array must be (H, W, 3), got {array.shape}")
        if array.max() <= 1.0:
            array = array * 255
        image = Image.fromarray(array[..., :3].clip(0, 255).astype(np.uint8))
    elif not isinstance(image, Image.Image):
        raise AttnKitError(f"image must be a PIL image, a file path or an array, got {type(image).__name__}")
    if image.width * image.height > MAX_INPUT_PIXELS:
        raise AttnKitError(f"{name} is {image.width}x{image.height} pixels; at most {MAX_INPUT_PIXELS // 1_000_000} "
                           "megapixels are read (scale it down first)")
    if image.width < 1 or image.height < 1:
        raise AttnKitError(f"{name} has no pixels ({image.width}x{image.height})")
    h, w = size
    # the largest box of the target's aspect, centred, in the source's pixels
    scale = max(h / image.height, w / image.width)
    box_w, box_h = min(image.width, max(1, round(w / scale))), min(image.height, max(1, round(h / scale)))
    left, top = (image.width - box_w) // 2, (image.height - box_h) // 2
    try:
        cropped = image.crop((left, top, left + box_w, top + box_h)).convert("RGB")
        return cropped.resize((w, h), Image.LANCZOS)
    except Exception as exc:  # truncated data shows up when the pixels are decoded
        raise AttnKitError(f"cannot read {name}: {one_line(exc, 200)}") from None


def pixels(image) -> torch.Tensor:
    """An RGB PIL image as the ``(1, 3, H, W)`` tensor in [-1, 1] a VAE encodes."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def _encode_image(pipe, image) -> torch.Tensor:
    vae = pipe.vae
    x = pixels(image)
    with torch.no_grad():
        dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float() * vae.config.scaling_factor


def _decode(pipe, latents: torch.Tensor):
    vae = pipe.vae
    with torch.no_grad():
        x = vae.decode((latents / vae.config.scaling_factor).to(vae.device, vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(x.float(), output_type="pil")


def psnr(a, b) -> float:
    """PSNR in dB between two images of equal size (PIL or uint8 arrays)."""
    x = np.asarray(a, dtype=np.float64) / 255
    y = np.asarray(b, dtype=np.float64) / 255
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _embed(pipe, text: str) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt(prompt=text, device=pipe._execution_device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=False)[0].float()


def _word_map(attention: torch.Tensor, positions) -> torch.Tensor:
    m = attention[:, :, list(positions)].mean(-1)
    return m / m.sum().clamp_min(1e-12)


# --------------------------------------------------------------------------------------------------- edit


def edit(
    pipe,
    image,
    source_prompt: str,
    target_prompt: str,
    words: list[str] | None = None,
    edit: str | P2P | P2PConfig = "replace",
    seed: int = 1,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    stop=None,
    settings: str | None = None,
    **knobs,
) -> EditResult:
    """Edit a real image by editing its caption.

    Args:
        pipe: an SD 1.x/2.x diffusers pipeline.
        image: the photo (PIL image, path or array); centre-cropped and resized to ``height`` x ``width``.
        source_prompt: a caption of the photo ("a cat and a dog").
        target_prompt: the caption of the result ("a cat and a fox").
        words: nouns of the source caption to make dynamic (DPL), e.g. ``["cat", "dog"]``; ``None`` or empty runs
            null-text inversion + Prompt-to-Prompt only.
        edit: ``"replace"``, ``"refine"`` or ``"reweight"`` (see :class:`~attnkit.methods.P2PConfig`), or a
            configured ``P2P``.
        seed: seeds the k-means of the background mask (the official 1) and torch's random state during the run.
        num_inference_steps, guidance_scale: DDIM steps and classifier-free guidance (DPL: 50 and 7.5).
        on_progress: called as ``on_progress(phase, done, total)`` with phases ``"invert"``, ``"optimise"``,
            ``"edit"``.
        stop: a ``threading.Event`` (or a callable returning ``True``) that interrupts the run.
        settings: ``"paper"``: every option not given at the papers' settings (DPL's ``DPL.sh`` and
            Prompt-to-Prompt's notebooks: 50 steps, CFG 7.5, injection 0.8/0.4, 51 null-text updates from ""...).
        **knobs: Prompt-to-Prompt options (``cross_replace``, ``self_replace``, ``reweight``, ``blend_words``...),
            DPL options (``lambda_at``, ``token_iterations``, ``attn_res``...) and null-text options
            (``null_iterations``, ``null_early_stop``...).

    Returns:
        :class:`EditResult` with ``.images``, ``.reconstruction``, ``.source`` and ``.report``.

    Raises:
        AttnKitError: a bad argument (word not in a caption, unknown option...), with a one-line message.
        Interrupted: ``stop`` was set.
    """
    t_start = time.perf_counter()
    _check_pipe(pipe)
    _paper_call(settings, {})  # edit's own defaults are the papers' steps and guidance (50, 7.5)
    if settings is not None and words:
        knobs = {**DPL.paper, **knobs}
    if not isinstance(source_prompt, str) or not source_prompt.strip():
        raise AttnKitError("source_prompt must be a non-empty caption of the image, e.g. 'a cat and a dog'")
    if not isinstance(target_prompt, str) or not target_prompt.strip():
        raise AttnKitError("target_prompt must be a non-empty caption of the edited image, e.g. 'a cat and a fox'")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AttnKitError(f"seed={seed!r} must be a non-negative integer")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not 1 <= guidance_scale <= 30:
        raise AttnKitError(f"guidance_scale={guidance_scale!r} must be between 1 and 30")
    p2p_knobs, dpl_knobs, null_knobs = _split_knobs(knobs)
    if isinstance(words, str):
        words = [w.strip() for w in words.split(",") if w.strip()]
    words = list(words or [])
    p2p = _p2p_method(edit, p2p_knobs, settings)
    dpl = DPL(**dpl_knobs)
    if words:  # what is not given follows the method: DPL's official null text (51 fixed iterations, from "")
        null_knobs = {**DPL_NULL_TEXT, **null_knobs}
    null_config = NullTextConfig(**null_knobs)
    null_start = null_config.null_start or ("empty" if words else "previous")
    size = _size(pipe, height, width)
    ddim = DDIM(pipe, num_inference_steps)
    steps = ddim.steps
    report = EditReport(settings={
        "source_prompt": source_prompt, "target_prompt": target_prompt, "words": words, "seed": seed,
        "num_inference_steps": steps, "guidance_scale": float(guidance_scale), "size": size,
        "p2p": dataclasses.asdict(p2p.config), "dpl": dataclasses.asdict(dpl.config) if words else None,
        "null_text": {**dataclasses.asdict(null_config), "null_start": null_start},
    })

    def progress(phase, done):
        if on_progress is not None:
            on_progress(phase, done, steps)

    def timed(name, t0):
        report.timings[name] = report.timings.get(name, 0.0) + time.perf_counter() - t0

    # token maps and text encodings: every word error is raised here, before any work
    tokenizer = pipe.tokenizer
    src_map, tgt_map = TokenMap(source_prompt, tokenizer), TokenMap(target_prompt, tokenizer)
    if words:
        dyn = dynamic_words(pipe, src_map, words)
        src_prompt = DynamicPrompt(pipe, src_map, dyn)
        tgt_prompt = DynamicPrompt(pipe, tgt_map, target_words(tgt_map, dyn))
        src_keys, tgt_keys = src_prompt.keys, tgt_prompt.keys
        device = pipe.text_encoder.get_input_embeddings().weight.device
        vectors = {d.pid: d.init.clone().to(device) for d in dyn.values()}
    else:
        src_keys, tgt_keys = Keys(src_map), Keys(tgt_map)
    P2PEdit(p2p.config, src_keys, tgt_keys)  # validates the edit's words before the long work

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        source = load_image(image, size)
        z0 = _encode_image(pipe, source)
        roundtrip = _decode(pipe, z0)[0]
        timed("encode", t0)

        cond_plain = _embed(pipe, source_prompt)
        t0 = time.perf_counter()
        inversion = ddim_invert(pipe, ddim, z0, cond_plain, record=dpl.config if words else None,
                                on_step=lambda i: progress("invert", i + 1), stop=stop)
        timed("invert", t0)
        latents = inversion.latents

        background = None
        if words:
            maps = inversion.maps
            attention = maps.cross_average
            nouns = {w: _word_map(attention, src_map.find(w).positions) for w in words}
            report.maps = {w: m.cpu() for w, m in nouns.items()}
            if dpl.config.cluster_nouns == "caption":  # every noun of the caption may own a cluster, as officially
                taken = {p for w in words for p in src_map.find(w).positions}
                for noun in caption_nouns(source_prompt):
                    where = src_map.positions_of_chars(noun.start, noun.end)
                    if where and not taken & set(where) and noun.text not in nouns:
                        nouns[noun.text] = _word_map(attention, where)
            found = background_mask(maps.self_average, nouns, maps.cross_grid, maps.self_grid,
                                    clusters=dpl.config.clusters, threshold=dpl.config.cluster_threshold, seed=seed,
                                    resize=dpl.config.mask_resize)
            report.clusters, report.owners = found.labels, found.owners
            background = found.mask
            report.background = background
            if background is None:
                report.warnings.append(
                    "dpl: no k-means cluster was background, so the background-leakage loss is off (lambda_bg = 0)"
                )

        # reconstruction: DPL tokens and null text, step by step from z*_T
        t0 = time.perf_counter()
        nulls, conds_src, conds_tgt = [], [], []
        empty = _embed(pipe, "")
        null = empty
        latent = latents[-1]
        dpl_run = None
        try:
            if words:
                from ..runtime import Run

                dpl_run = Run(pipe, [dpl], cfg=False, num_steps=steps)
                dpl_run.install()
                dpl_run.bind(tuple(latent.shape[-2:]))
                controller = dpl_run.controllers[0]
                positions = [src_keys.slots[d.pid][0] for d in dyn.values()]
            for i in range(steps):
                check_stop(stop)
                t = ddim.timesteps[i]
                if words:
                    vectors = _optimise_tokens(controller, dpl.config, src_prompt, vectors, latent, t,
                                               StepInfo(i, steps, float(t)), positions, background, report, stop)
                    with torch.no_grad():
                        cond = src_prompt.encode(vectors).float()
                        conds_tgt.append(tgt_prompt.encode(vectors).float())
                    conds_src.append(cond)
                else:
                    cond = cond_plain
                with dpl_run.bypass() if dpl_run is not None else contextlib.nullcontext():
                    with torch.inference_mode(False), torch.enable_grad():
                        start = empty if null_start == "empty" else null
                        null, record, eps_cond = null_text_step(pipe, ddim, null_config, i, latent, cond, start,
                                                                latents[steps - i - 1], float(guidance_scale), stop)
                    latent = cfg_step(pipe, ddim, i, latent, cond, null, float(guidance_scale), eps_cond)
                report.null_text.append(record)
                nulls.append(null)
                progress("optimise", i + 1)
        finally:
            if dpl_run is not None:
                dpl_run.uninstall()
        timed("optimise", t0)
        if not words:
            conds_src = [cond_plain] * steps
            tgt = _embed(pipe, target_prompt)
            conds_tgt = [tgt] * steps

        t0 = time.perf_counter()
        reconstruction = _decode(pipe, latent)[0]
        timed("decode", t0)

        # the edit
        t0 = time.perf_counter()
        edited_latents, p2p_report = _p2p_loop(pipe, ddim, p2p, source_prompt, (src_keys, tgt_keys), latents[-1],
                                               nulls, conds_src, conds_tgt, float(guidance_scale), progress, stop)
        timed("edit", t0)
        if "blend" in p2p_report.maps:
            report.blend = p2p_report.maps["blend"][0]
        t0 = time.perf_counter()
        edited = _decode(pipe, edited_latents[1:])
        timed("decode", t0)

    report.psnr = {"input": psnr(reconstruction, source), "autoencoder": psnr(reconstruction, roundtrip)}
    report.timings["total"] = time.perf_counter() - t_start
    for w in report.warnings:
        logger.warning(w)
    return EditResult(images=edited, reconstruction=reconstruction, source=source, report=report)


def _optimise_tokens(controller, config: DPLConfig, prompt: DynamicPrompt, vectors: dict, latent, t, step: StepInfo,
                     positions: list[int], background, report: EditReport, stop) -> dict:
    """DPL's inner loop at one step: AdamW on the dynamic tokens until the thresholds hold; returns the new vectors."""
    thresholds = config.thresholds(step.index)
    use_bg = background is not None and step.index >= config.bg_start
    with torch.inference_mode(False), torch.enable_grad():
        params = {pid: v.detach().clone().requires_grad_(True) for pid, v in vectors.items()}
        optimiser = torch.optim.AdamW(list(params.values()), lr=config.token_lr,
                                      weight_decay=config.token_weight_decay)
        latent = latent.detach().clone()  # a clone: a tensor from a caller's inference mode cannot join autograd
        background = background.clone().to(latent.device) if background is not None else None
        taken = 0
        for iteration in range(config.token_iterations + 1):
            check_stop(stop)
            text = prompt.encode(params)
            attention = controller.maps(latent, text, t, step)
            at, dj, bg = controller.losses(attention, positions, background if use_bg else None)
            done = bool(at < thresholds["at"]) and bool(dj < thresholds["dj"]) and (bg is None or bool(bg < thresholds["bg"]))
            report.dpl_losses.append({
                "step": step.index, "iteration": iteration, "at": float(at.detach()), "dj": float(dj.detach()),
                "bg": None if bg is None else float(bg.detach()), "stopped": done,
            })
            if done or iteration == config.token_iterations:
                break
            loss = config.lambda_at * at + config.lambda_dj * dj
            if bg is not None:
                loss = loss + config.lambda_bg * bg
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for p, g in zip(params.values(), grads):
                p.grad = torch.zeros_like(p) if g is None else g
            optimiser.step()
            taken += 1
    report.token_iterations.append(taken)
    return {pid: p.detach() for pid, p in params.items()}


def _p2p_loop(pipe, ddim: DDIM, p2p: P2P, source_prompt: str, sequences, start: torch.Tensor, nulls, conds_src,
              conds_tgt, guidance: float, progress, stop):
    """Denoise ``[source, target]`` from ``start`` with the P2P controller; returns the final ``(2, C, h, w)``
    latents and the controller's report."""
    from ..runtime import Run

    steps = ddim.steps
    run = Run(pipe, [p2p], prompt=source_prompt, sequences=sequences, cfg=True, num_steps=steps)
    run.install()
    latents = torch.cat([start, start])
    try:
        with torch.no_grad():
            for i in range(steps):
                check_stop(stop)
                t = ddim.timesteps[i]
                text = torch.cat([nulls[i], nulls[i], conds_src[i], conds_tgt[i]])
                out = denoise(pipe, torch.cat([latents, latents]), t, text)
                uncond, cond = out.chunk(2)
                latents = ddim.step(uncond + guidance * (cond - uncond), t, latents)
                latents = run.end_step(latents)
                progress("edit", i + 1)
    finally:
        run.uninstall()
    report = run.finish()
    return latents, report["p2p"]


# ------------------------------------------------------------------------------------------ prompt_to_prompt


def prompt_to_prompt(pipe, source_prompt: str, target_prompt: str, edit: str | P2P | P2PConfig = "replace",
                     seed: int | None = None, on_step: Callable[[StepInfo], None] | None = None,
                     settings: str | None = None, **kwargs):
    """Generate ``source_prompt`` and its Prompt-to-Prompt edit ``target_prompt`` from the same noise.

    Args:
        pipe: an SD 1.x/2.x or SDXL pipeline.
        edit: ``"replace"``, ``"refine"``, ``"reweight"``, or a configured ``P2P``.
        seed: makes the run reproducible (both images start from the same noise whatever the seed).
        settings: ``"paper"``: the options and the call's steps and guidance not given at the paper's (0.8/0.4
            injection, 50 steps, CFG 7.5).
        **kwargs: Prompt-to-Prompt options (``cross_replace``, ``blend_words``...) and pipeline arguments
            (``num_inference_steps``, ``guidance_scale``, ``height``...).

    Returns:
        :class:`~attnkit.Result` whose ``images`` are ``[source image, edited image]``.
    """
    from diffusers.utils.torch_utils import randn_tensor

    from ..runtime import Result, attach, check_call

    method = _p2p_method(edit, {k: kwargs.pop(k) for k in list(kwargs) if k in _P2P_FIELDS}, settings)
    _paper_call(settings, kwargs)
    for name in ("prompt", "num_images_per_prompt", "latents"):
        if name in kwargs and not (name == "num_images_per_prompt" and kwargs[name] == 1):
            raise AttnKitError(f"prompt_to_prompt sets {name} itself; remove it from the arguments")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise AttnKitError("seed must be an integer from 0 to 2**64 - 1")
    check_call(kwargs)
    for name in ("negative_prompt", "negative_prompt_2"):  # one negative for both images of the pair
        value = kwargs.get(name)
        if isinstance(value, str):
            kwargs[name] = [value, value]
        elif value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2
                                    or not all(isinstance(v, str) for v in value)):
            raise AttnKitError(f"{name} is one text (used for both images) or a list of two texts")
    generator = kwargs.pop("generator", None)
    if generator is None and seed is not None:
        generator = torch.Generator("cpu").manual_seed(seed)
    family = family_of(pipe)
    if family == "flux":
        raise UnsupportedModelError("p2p supports SD 1.x/2.x and SDXL pipelines, not Flux")
    factor = getattr(pipe, "vae_scale_factor", 8)
    h = kwargs.get("height") or pipe.unet.config.sample_size * factor
    w = kwargs.get("width") or pipe.unet.config.sample_size * factor
    shape = (1, pipe.unet.config.in_channels, int(h) // factor, int(w) // factor)
    where = generator.device if isinstance(generator, torch.Generator) else torch.device("cpu")
    noise = randn_tensor(shape, generator=generator, device=where, dtype=torch.float32)
    noise = noise.to(pipe._execution_device, pipe.unet.dtype).repeat(2, 1, 1, 1)
    user_callback = kwargs.pop("callback_on_step_end", None)
    user_inputs = kwargs.pop("callback_on_step_end_tensor_inputs", None)
    with attach(pipe, [method], prompt=source_prompt, on_step=on_step, target_prompt=target_prompt) as run:
        wiring = run.call_kwargs(user_callback)
        if user_inputs:
            wiring["callback_on_step_end_tensor_inputs"] = sorted(
                set(user_inputs) | set(wiring.get("callback_on_step_end_tensor_inputs", []))
            )
        output = pipe(prompt=[source_prompt, target_prompt], latents=noise, **wiring, **kwargs)
    return Result(images=list(output.images), report=run.report, prompt=target_prompt, seed=seed)
