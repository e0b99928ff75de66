"""attnkit in ComfyUI, host-free: targets from ComfyUI's CLIP, patching a cloned MODEL, the sampler wrapper.

ComfyUI objects come in as arguments (the MODEL's ``ModelPatcher``, the ``CLIP``, ``calc_cond_batch``, the
``SAMPLER_SAMPLE`` wrapper type); only ``nodes/`` imports ``comfy``.

- :func:`targets` finds the picked words in the prompt with the CLIP tokenizer ComfyUI encodes with, and checks the
  positions against ComfyUI's own tokenisation of the first 77-token chunk.
- :func:`apply` clones the MODEL and installs, on the clone only: ``attn2_patch``/``attn2_replace`` on every
  transformer block (a replace another pack put there is wrapped and still computes that block's output), and a
  ``SAMPLER_SAMPLE`` wrapper that gives every sampling run a fresh :class:`~attnkit.hostkernel.HostRun`.
- Latent-optimising methods (``attend_excite``, ``a_star``): the wrapper hands the sampler a proxy of its model
  function that, at the first model call of each step, leaves inference mode, runs the methods' gradient passes
  through ComfyUI's own conditional forward, and writes the updated latent into the sampler's latent in place, so
  the step proceeds from it (the paper's ``z_t <- z_t - a_t grad L``). The loss is taken with respect to the
  DDPM-scaled latent ``z = x / sqrt(1 + sigma^2)``, so step sizes mean what they mean in the paper and in diffusers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import AttnKitError, UnsupportedModelError
from .hostkernel import PATCH_METHODS, HostRun, install_patches, sdpa_heads, strip_weights, unet_blocks
from .tokens import TokenMap

logger = logging.getLogger(__name__)

#: ComfyUI model classes (``comfy.model_base``) by family
FAMILIES = {"BaseModel": "sd", "SD21UNCLIP": "sd", "SDXL": "sdxl", "SDXLRefiner": "sdxl"}


@dataclass
class Targets:
    """What the AttnKit Words node passes on: the prompt as ComfyUI tokenises it, and the picked words.

    Attributes:
        prompt: the prompt text the positions refer to (weights and ``BREAK`` stripped).
        words: the picked words (``"car"``, ``"red car"``, ``"dog#2"``).
        tokenizer: the CLIP tokenizer (``transformers``).
        encode: ``text -> (1, T, C)`` conditioning by ComfyUI's CLIP (for ``structured``).
        positions: ``{word: token positions}`` in the first 77-token chunk.
    """

    prompt: str
    words: list[str]
    tokenizer: Any
    encode: Callable[[str], torch.Tensor]
    positions: dict[str, tuple[int, ...]] = field(default_factory=dict)


def clip_tokenizer(clip):
    """The ``transformers`` CLIP tokenizer of a ComfyUI ``CLIP`` (SD 1.x: ``clip_l``; SDXL: ``clip_l`` too, whose
    positions ``clip_g`` shares)."""
    tok = getattr(clip, "tokenizer", None)
    for name in ("clip_l", "clip_g"):
        inner = getattr(getattr(tok, name, None), "tokenizer", None)
        if inner is not None:
            return inner
    raise UnsupportedModelError("AttnKit Words needs a CLIP text encoder (SD 1.x/2.x or SDXL); this CLIP has none")


def targets(clip, text: str, words: str | list[str]) -> Targets:
    """Resolve ``words`` in ``text`` for ComfyUI's CLIP; raises a one-line error for a word not in the prompt."""
    picked = [w.strip() for w in (words.split(",") if isinstance(words, str) else words) if w and w.strip()]
    prompt = strip_weights(text)
    tokenizer = clip_tokenizer(clip)
    tmap = TokenMap(prompt, tokenizer, 77)
    positions = {w: tmap.find(w).positions for w in picked}
    ours = tmap.ids[:77]
    theirs = _comfy_ids(clip.tokenize(text))
    if theirs is not None:
        for word, where in positions.items():
            if any(p >= len(theirs) or p >= len(ours) or theirs[p] != ours[p] for p in where):
                raise AttnKitError(
                    f"{word!r} sits at other token positions in ComfyUI's encoding of this prompt (embeddings or "
                    "custom tokens before it?); AttnKit cannot target it there"
                )

    def encode(t: str) -> torch.Tensor:
        with torch.no_grad():
            return clip.encode_from_tokens(clip.tokenize(t))

    return Targets(prompt, picked, tokenizer, encode, positions)


def _comfy_ids(tokens) -> list[int] | None:
    """Token ids of the first chunk of ``clip.tokenize(...)`` (``{"l": [[(id, weight), ...], ...]}``)."""
    try:
        chunk = tokens["l"][0] if isinstance(tokens, dict) else tokens[0]
        return [int(t[0]) for t in chunk]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def family_of_model(model) -> str:
    """``"sd"`` or ``"sdxl"`` for a ComfyUI MODEL; a clear error for other model types."""
    name = type(getattr(model, "model", None)).__name__
    family = FAMILIES.get(name)
    if family is None:
        raise UnsupportedModelError(
            f"AttnKit patches the cross-attention of SD 1.x/2.x and SDXL UNets; this MODEL is a {name} "
            "(Flux, SD3 and video models have no such layers)"
        )
    return family


class Session:
    """The methods one Apply node put on one cloned MODEL; a fresh :class:`HostRun` per sampling run.

    Attributes:
        last_report: the report of the latest finished sampling run (the Attention Maps node reads it).
    """

    def __init__(self, methods, targets: Targets, family: str, blocks, calc_cond_batch: Callable | None = None,
                 fallback: Callable | None = None):
        self.methods = list(methods)
        self.targets = targets
        self.family = family
        self.blocks = blocks
        self.calc_cond_batch = calc_cond_batch
        self.fallback = fallback or sdpa_heads
        self.run: HostRun | None = None
        self.last_report = None
        self.latent = any(m.id not in PATCH_METHODS for m in self.methods)
        if self.latent and calc_cond_batch is None:
            raise UnsupportedModelError("this ComfyUI has no conditional forward for gradient passes")
        # a run made now checks the words and options before any sampling (errors show on the Apply node)
        self._make_run(steps=1, schedule=None)

    def _make_run(self, steps, schedule, gradient=None) -> HostRun:
        placeholder = (lambda *a: None) if self.latent and gradient is None else gradient
        return HostRun(self.methods, self.targets.prompt, self.targets.tokenizer, family=self.family, steps=steps,
                       encode=self.targets.encode, schedule=schedule, host="ComfyUI", fallback=self.fallback,
                       blocks=self.blocks, gradient=placeholder)

    # --- what install_patches needs
    @property
    def needs_patch(self) -> bool:
        return any(m.id == "structured" for m in self.methods)

    @property
    def needs_replace(self) -> bool:
        return True

    def attn2_patch(self, n, context, value, extra_options):
        run = self.run
        if run is None:  # sampled without our wrapper (an old ComfyUI): nothing to do
            return n, context, value
        return run.attn2_patch(n, context, value, extra_options)

    def replace(self, previous=None):
        def attn2_replace(q, k, v, extra_options):
            run = self.run
            if run is None:
                return previous(q, k, v, extra_options) if previous else self.fallback(q, k, v, extra_options["n_heads"])
            return run.attn2_replace(q, k, v, extra_options, previous)

        attn2_replace.attnkit_previous = previous
        return attn2_replace

    # --- the sampler wrapper
    def sampler_sample(self, executor, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                       denoise_mask=None, disable_pbar=False):
        """``WrappersMP.SAMPLER_SAMPLE`` wrapper: one :class:`HostRun` per sampling run."""
        schedule = [float(s) for s in sigmas.flatten()]
        model_options = (extra_args or {}).get("model_options", {})

        def gradient(z, step, image):
            sigma = torch.full((1,), float(step.timestep), device=z.device, dtype=z.dtype)
            x = z * (1 + sigma**2).sqrt()
            self.calc_cond_batch(model_wrap.inner_model, [model_wrap.conds["positive"]], x, sigma, model_options)

        run = self._make_run(len(schedule) - 1, schedule, gradient if self.latent else None)
        if self.latent:
            model_wrap = _Optimising(model_wrap, run)
        self.run = run
        try:
            return executor(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        finally:
            self.run = None
            self.last_report = run.finish()
            for w in self.last_report.warnings:
                logger.warning("AttnKit: %s", w)


class _Optimising:
    """The sampler's model function, with the latent-optimising methods' update before each step's first call."""

    def __init__(self, inner, run: HostRun):
        self.inner = inner
        self.run = run
        self.done: set[int] = set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, sigma, *args, **kwargs):
        sigma_value = float(torch.as_tensor(sigma).flatten()[0])
        step = self.run.step_at(sigma_value)
        if step.index not in self.done and step.index < step.count:
            self.done.add(step.index)
            scale = (1.0 + sigma_value**2) ** 0.5
            with torch.inference_mode(False), torch.enable_grad():
                z = x.detach().clone() / scale
                updated = self.run.update_latents(z, step) * scale
            with torch.inference_mode(x.is_inference()), torch.no_grad():
                x.copy_(updated)  # the sampler's own latent: the step proceeds from the updated one
        return self.inner(x, sigma, *args, **kwargs)


def apply(model, targets: Targets, methods, *, sampler_wrapper_type=None, calc_cond_batch=None) -> tuple[Any, Session]:
    """A patched clone of ``model`` (a ComfyUI ``ModelPatcher``) running ``methods``; ``model`` is untouched.

    Args:
        sampler_wrapper_type: ``comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE``.
        calc_cond_batch: ``comfy.samplers.calc_cond_batch`` (gradient passes of latent-optimising methods).
    """
    if not methods:
        raise AttnKitError("no method to apply")
    family = family_of_model(model)
    blocks = unet_blocks(model.model.diffusion_model)
    session = Session(methods, targets, family, blocks, calc_cond_batch=calc_cond_batch)
    clone = model.clone()
    install_patches(session, clone, [key for key, _ in blocks])
    if sampler_wrapper_type is None:
        raise UnsupportedModelError("AttnKit needs a ComfyUI with sampler wrappers (comfy.patcher_extension)")
    clone.add_wrapper_with_key(sampler_wrapper_type, "attnkit", session.sampler_sample)
    return clone, session
