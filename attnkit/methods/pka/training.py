"""Training what PKA needs: the condition-sensitivity-aware timestep sampler and LoRA adapters for condition branches.

- :func:`csas_timesteps`: training timesteps from a shifted logit-normal, ``t = sigmoid(mu + sigma * n)``,
  ``n ~ N(0, 1)``, with ``mu = 0.5`` and ``sigma = 1.5`` by default (PKA's best setting; OminiControl uses 0 and 1).
  ``mu > 0`` puts more samples at high noise (``t`` near 1 is noise in Flux's rectified flow), where the paper finds
  conditions matter most.
- :func:`train_condition_lora`: a LoRA adapter (peft) for the condition branch of a Flux transformer, trained under
  the PKA attention pattern with the rectified-flow objective: ``x_t = (1 - t) x_0 + t eps``, the transformer
  predicts ``eps - x_0``. The adapter acts only on condition tokens (text and image tokens see the base weights), as
  it will when loaded back with ``Condition(lora=...)``. With subject conditions each step first runs a forward
  without gradients for the keyword masks, then the training forward under them. AdamW [ours: the paper's optimiser
  is unreported; OminiControl uses Prodigy].
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ...errors import AttnKitError
from .branches import Condition, ConditionAdapters

logger = logging.getLogger("attnkit")

ADAPTER = "attnkit_train"
#: module names (suffixes inside each block) the adapter targets: OminiControl's choice of the image branch's linears
BLOCK_TARGETS = ("norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj",
                 "ff.net.2", "norm.linear", "proj_mlp", "proj_out")


def csas_timesteps(count: int, mu: float = 0.5, sigma: float = 1.5, generator: torch.Generator | None = None,
                   ) -> torch.Tensor:
    """``count`` training timesteps in (0, 1) from ``sigmoid(N(mu, sigma^2))``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AttnKitError(f"count={count!r} must be a positive integer")
    if not sigma > 0:
        raise AttnKitError(f"sigma={sigma!r} must be positive")
    return torch.sigmoid(mu + sigma * torch.randn(count, generator=generator))


@dataclass
class Example:
    """One training example: the target image, its conditions, its caption."""

    image: Any
    conditions: list[Condition]
    prompt: str


@dataclass
class TrainingResult:
    """What :func:`train_condition_lora` returns: per-step losses, the saved adapter's path, seconds."""

    losses: list[float] = field(default_factory=list)
    path: str | None = None
    seconds: float = 0.0


def _targets(transformer) -> list[str]:
    names = ["x_embedder"]
    for name, module in transformer.named_modules():
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and isinstance(module, torch.nn.Linear):
            if any(name.endswith("." + t) for t in BLOCK_TARGETS):
                names.append(name)
    return names


def _latents(pipe, image, size: tuple[int, int]) -> torch.Tensor:
    from .branches import encode_condition

    factor = getattr(pipe, "vae_scale_factor", 8) * 2
    return encode_condition(pipe, image, (size[0] // factor, size[1] // factor))


def train_condition_lora(pipe, examples: list[Example], steps: int = 100, rank: int = 4, lr: float = 1e-4,
                         mu: float = 0.5, sigma: float = 1.5, seed: int = 0, size: tuple[int, int] = (512, 512),
                         mode: str = "pka", max_sequence_length: int = 512, out: str | Path | None = None,
                         on_step: Callable[[int, float], None] | None = None,
                         evaluate: list[tuple[float, int]] | None = None) -> TrainingResult:
    """Train a LoRA adapter for the condition branch of ``pipe``'s Flux transformer.

    Args:
        examples: :class:`Example` s (cycled through).
        steps, rank, lr: optimiser steps, LoRA rank (alpha = rank), AdamW learning rate.
        mu, sigma: the timestep sampler's parameters (:func:`csas_timesteps`).
        size: training resolution ``(h, w)`` in pixels.
        mode: the attention pattern trained under, ``"pka"`` or ``"full"``.
        out: where to save the adapter (``.safetensors``); ``None`` keeps nothing.
        on_step: called as ``on_step(step, loss)``.
        evaluate: ``[(t, noise seed), ...]``: instead of training losses, record at each step the mean loss of the
            first example at these fixed timesteps and noises (a curve that does not jump with the sampled ``t``).

    Returns:
        :class:`TrainingResult`. The transformer is left as it was (the adapter is removed, gradient flags restored).
    """
    from ...models import family_of
    from ...runtime import Run
    from . import PKA

    if family_of(pipe) != "flux":
        raise AttnKitError("condition LoRAs are for Flux pipelines")
    try:
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict
    except ImportError:
        raise AttnKitError("training a condition LoRA needs the peft package: pip install peft") from None
    if not examples:
        raise AttnKitError("give at least one training example")
    kinds = [[c.kind for c in e.conditions] for e in examples]
    if any(k != kinds[0] for k in kinds) or not kinds[0]:
        raise AttnKitError("every example needs the same kinds of conditions, in the same order (and at least one)")
    transformer = pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    generator = torch.Generator().manual_seed(seed)
    flags = {name: p.requires_grad for name, p in transformer.named_parameters()}
    before = ConditionAdapters(transformer)
    before.snapshot()
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=_targets(transformer)),
                            adapter_name=ADAPTER)
    result = TrainingResult()
    t0 = time.perf_counter()
    try:
        params = [p for name, p in transformer.named_parameters() if ADAPTER in name]
        for name, p in transformer.named_parameters():
            p.requires_grad_(ADAPTER in name)
        optimiser = torch.optim.AdamW(params, lr=lr)
        prepared = [_prepare(pipe, e, size, max_sequence_length) for e in examples]
        for p in prepared:
            p["before"] = before._before
        fixed = None
        if evaluate:
            fixed = [(float(t), torch.randn(prepared[0]["x0"].shape, generator=torch.Generator().manual_seed(s)))
                     for t, s in evaluate]
        with torch.inference_mode(False), torch.enable_grad():
            for step in range(steps):
                ex = prepared[step % len(prepared)]
                t = float(csas_timesteps(1, mu, sigma, generator)[0])
                noise = torch.randn(ex["x0"].shape, generator=generator)
                loss = _loss(pipe, ex, t, noise, mode, Run, PKA, device, dtype)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                value = float(loss.detach())
                if fixed is not None:
                    with torch.no_grad():
                        value = sum(float(_loss(pipe, prepared[0], ft, fn, mode, Run, PKA, device, dtype))
                                    for ft, fn in fixed) / len(fixed)
                if not math.isfinite(value):
                    raise AttnKitError(f"the training loss became {value} at step {step}; lower lr (now {lr})")
                result.losses.append(value)
                if on_step is not None:
                    on_step(step, value)
        if out is not None:
            from safetensors.torch import save_file

            state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
            path = Path(out).expanduser()
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
            result.path = str(path)
    finally:
        transformer.delete_adapters([ADAPTER])
        before.adopt(switch=False)
        before.remove()  # the user's own adapters as they were; layers made for ours back to peft's default
        for name, p in transformer.named_parameters():
            if name in flags:
                p.requires_grad_(flags[name])
    result.seconds = time.perf_counter() - t0
    return result


def _prepare(pipe, example: Example, size, max_sequence_length) -> dict:
    factor = getattr(pipe, "vae_scale_factor", 8) * 2
    grid = (size[0] // factor, size[1] // factor)
    with torch.no_grad():
        x0 = _latents(pipe, example.image, size)
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=example.prompt, prompt_2=None, device=pipe._execution_device, max_sequence_length=max_sequence_length
        )
    img_ids = pipe._prepare_latent_image_ids(1, grid[0], grid[1], pipe._execution_device, prompt_embeds.dtype)
    return {"x0": x0, "embeds": prompt_embeds, "pooled": pooled, "text_ids": text_ids, "img_ids": img_ids,
            "example": example, "max_sequence_length": max_sequence_length}


def _loss(pipe, ex: dict, t: float, noise: torch.Tensor, mode: str, Run, PKA, device, dtype) -> torch.Tensor:
    """The rectified-flow loss of one example at ``t`` with ``noise``, through the condition branch's adapter."""
    transformer = pipe.transformer
    x0 = ex["x0"].to(device, dtype)
    noise = noise.to(device, dtype)
    xt = (1 - t) * x0 + t * noise
    target = noise - x0
    example = ex["example"]
    method = PKA(conditions=example.conditions, mode=mode, cache=False)
    run = Run(pipe, [method], prompt=example.prompt, max_sequence_length=ex["max_sequence_length"], num_steps=2)
    run.install()
    try:
        grid = (int(ex["img_ids"][:, 1].max()) + 1, int(ex["img_ids"][:, 2].max()) + 1)
        run.bind(grid)
        controller = run.controllers[0]
        adapters = controller.adapters
        adapters.names = {i: ADAPTER for i in range(len(example.conditions))}
        adapters.trainable = True
        adapters._before = ex["before"]
        adapters.adopt()
        timestep = torch.tensor([t], device=device, dtype=dtype)
        guidance = torch.full([1], 3.5, device=device) if transformer.config.guidance_embeds else None
        kwargs = dict(timestep=timestep, guidance=guidance, pooled_projections=ex["pooled"],
                      encoder_hidden_states=ex["embeds"], txt_ids=ex["text_ids"], img_ids=ex["img_ids"],
                      return_dict=False)
        if controller.subject_index and mode == "pka":  # the keyword masks of this step, from a forward before it
            with torch.no_grad():
                transformer(hidden_states=xt, **kwargs)
            run.end_step()
        pred = transformer(hidden_states=xt, **kwargs)[0]
        run.end_step()
    finally:
        adapters = run.controllers[0].adapters
        if adapters is not None:  # the training adapter stays (train_condition_lora removes it), trainable
            adapters.switch(None)
            adapters.names, adapters._layers = {}, []
        run.uninstall()
    return F.mse_loss(pred.float(), target.float())

