"""What the latent-optimising methods (Attend-and-Excite, A-STAR) share.

Both read the conditional branch's cross-attention maps at one resolution **with gradients** with respect to the
latent, compute a loss on them, and step the latent against its gradient before the step's denoising (the
"generative semantic nursing" loop of Chefer et al.). Only the layers the loss reads materialise probabilities; every
other layer keeps its fast path, and the gradient forward stops after the last layer read.

Map preprocessing (as diffusers' Attend-and-Excite pipeline does it):

1. mean over every head of every layer at the chosen grid: ``A`` of shape ``(h, w, T)``;
2. drop the first (BOS) and the last of the ``T`` text positions, multiply by 100 and softmax over the rest;
3. a word's map is its token's map (summed over the tokens of a multi-piece word or phrase, [ours]);
4. 3x3 smoothing after reflect padding: ``smoothing="diffusers"`` reproduces diffusers' kernel exactly
   (built as ``exp(-((x - mu) / (2 sigma))^2)`` with sigma 0.5, effectively sigma ~0.71), ``"gaussian"`` is a true
   sigma-0.5 Gaussian, ``"none"`` skips it.

Step size at step ``i`` of ``T``: ``alpha_i = scale_factor * sqrt(linspace(1, 0.5, T)[i])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.layers import choose_grid
from ..core.steps import StepInfo
from ..errors import AttnKitError
from .base import Controller, Method

SMOOTHING = ("diffusers", "gaussian", "none")
_BLOCK_ORDER = {"up": 0, "down": 1, "mid": 2}  # diffusers' store concatenates up, down, mid


def smoothing_kernel(kind: str, size: int = 3, sigma: float = 0.5) -> torch.Tensor | None:
    """The ``(1, 1, size, size)`` smoothing kernel, normalised to sum 1; ``None`` for ``"none"``."""
    if kind == "none":
        return None
    x = torch.arange(size, dtype=torch.float32)
    mean = (size - 1) / 2
    if kind == "diffusers":
        taps = torch.exp(-(((x - mean) / (2 * sigma)) ** 2)) / (sigma * math.sqrt(2 * math.pi))
    elif kind == "gaussian":
        taps = torch.exp(-((x - mean) ** 2) / (2 * sigma**2))
    else:
        raise AttnKitError(f"smoothing={kind!r}; use one of {', '.join(SMOOTHING)}")
    kernel = taps[:, None] * taps[None, :]
    return (kernel / kernel.sum()).view(1, 1, size, size)


def smooth(maps: torch.Tensor, kernel: torch.Tensor | None) -> torch.Tensor:
    """Smooth ``(K, h, w)`` maps with reflect padding (each map on its own)."""
    if kernel is None:
        return maps
    pad = kernel.shape[-1] // 2
    padded = F.pad(maps.unsqueeze(1), (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, kernel.to(maps.device, maps.dtype)).squeeze(1)


def step_sizes(count: int, scale_factor: float) -> np.ndarray:
    """``scale_factor * sqrt(linspace(1, 0.5, count))``, one step size per step."""
    return scale_factor * np.sqrt(np.linspace(1.0, 0.5, count))


def aggregate(maps: dict[int, torch.Tensor], layers, grid: tuple[int, int]) -> torch.Tensor:
    """Mean over every head of every layer: ``{index: (1, heads, N, T)}`` -> ``(h, w, T)``."""
    ordered = sorted(maps, key=lambda i: (_BLOCK_ORDER.get(layers[i].block, 3), list(maps).index(i)))
    stacked = torch.cat([maps[i].reshape(-1, grid[0], grid[1], maps[i].shape[-1]) for i in ordered], dim=0)
    return stacked.sum(0) / stacked.shape[0]


def token_maps(attention: torch.Tensor, concepts: list[list[int]], kernel) -> torch.Tensor:
    """``(K, h, w)`` smoothed maps of each concept after the x100 token softmax (BOS and the last position dropped).

    Args:
        attention: ``(h, w, T)`` aggregated probabilities.
        concepts: token positions (in the full sequence) of each concept.
    """
    text = torch.softmax(attention[:, :, 1:-1] * 100, dim=-1)
    per_concept = []
    for positions in concepts:
        m = text[:, :, positions[0] - 1]
        for p in positions[1:]:
            m = m + text[:, :, p - 1]
        per_concept.append(m)
    return smooth(torch.stack(per_concept), kernel)


@dataclass
class Concept:
    """A word (or phrase) whose attention a method steers, with its token positions."""

    word: str
    positions: tuple[int, ...]


class LatentMethod(Method):
    """What the latent-optimising methods declare alike: SD/SDXL UNets, maps read with gradient passes, words."""

    families = ("sd", "sdxl")
    attention = frozenset({"read"})
    needs_gradient = True
    needs_words = True


def input_row(method_id: str):
    """The field row of ``scale_input`` (how the gradient pass feeds the latent to the denoiser)."""
    from .fields import Field

    return Field(method_id, "scale_input", "Scale the model input", "bool", True,
                 "the gradient pass sees the latent as the step itself does (on Euler-type samplers); off: the raw "
                 "latent, as the reference pipeline", advanced=True, host_model=False)


def target_rows(method_id: str, label: str, help: str, noun: str) -> tuple:
    """The field rows of a latent method's targets: its words, or token positions instead."""
    from .fields import Field

    return (
        Field(method_id, "words", label, "words", None, help),
        Field(method_id, "token_indices", "Token positions", "indices", None,
              f"positions of the {noun} tokens instead of words, e.g. 2, 5 (the start token is 0, the first word 1)",
              advanced=True, limit=16),
    )


class LatentController(Controller):
    """Shared per-run machinery: concepts from words, the map layers, the step sizes, and a per-image update loop.

    Subclasses set :attr:`min_concepts` and implement :meth:`optimise`.
    """

    updates_latents = True
    min_concepts = 1

    def __init__(self, method, run):
        super().__init__(method, run)
        config = self.config
        if getattr(config, "token_indices", None) is not None:
            length = run.tokens.attention.last_kept
            for index in config.token_indices:
                if not 1 <= index <= length:
                    raise AttnKitError(f"{method.id}: token index {index} is outside the prompt's tokens 1..{length}")
            self.concepts = [Concept(f"#{i}", (i,)) for i in config.token_indices]
        else:
            self.concepts = [Concept(w, run.tokens.find(w).positions) for w in config.words]
        if len(self.concepts) < self.min_concepts:
            raise AttnKitError(f"{method.id} needs at least {self.min_concepts} words, got {len(self.concepts)}")
        self.grid: tuple[int, int] | None = None
        self.report.data["concepts"] = {c.word: list(c.positions) for c in self.concepts}

    def bind(self, layers, latent_hw):
        self.grid = choose_grid(layers, latent_hw, self.config.attn_res)
        if min(self.grid) < 2 and self.config.smoothing != "none":  # the 3x3 kernel reflect-pads by 1
            raise AttnKitError(
                f"{self.method.id}: its maps are {self.grid[0]}x{self.grid[1]} at this image size, too small to "
                f"smooth (2x2 at least); make the image larger, pick a finer map resolution (attn_res) or set "
                "smoothing to none"
            )
        self.prob_layers = frozenset(i.index for i in layers if i.is_text_attention and i.grid == self.grid)
        self.layers = layers
        self.report.data["attn_res"] = self.grid
        self.report.data["layers"] = [layers[i].name for i in sorted(self.prob_layers)]

    def concept_maps(self, latent: torch.Tensor, step, image: int) -> torch.Tensor:
        """``(K, h, w)`` smoothed concept maps as a function of ``latent`` (one gradient forward)."""
        maps = self.run.gradient_maps(self, latent, step, image, scale_input=self.config.scale_input)
        attention = aggregate(maps, self.layers, self.grid)
        # the kernel is made here, not kept: a tensor made while the caller was in inference mode cannot join autograd
        kernel = smoothing_kernel(self.config.smoothing)
        return token_maps(attention, [list(c.positions) for c in self.concepts], kernel)

    def step_size(self, step) -> float:
        return float(step_sizes(step.count, self.config.scale_factor)[step.index])

    def update_latents(self, latents, step):
        if not self.acts_at(step):
            return latents
        updated = []
        with torch.inference_mode(False), torch.enable_grad():
            latents = latents.detach().clone()
            for image in range(latents.shape[0]):
                updated.append(self.optimise(latents[image : image + 1], step, image).detach())
        return torch.cat(updated)

    def finish(self):
        steps = {r["step"] for r in self.report.losses}
        count = self.run.report.steps
        if count and 0 not in steps and self.acts_at(StepInfo(0, count, 0.0)):
            self.report.warnings.append(
                "step 0 was not optimised: around your own pipeline call attnkit cannot change the first latents; "
                "attnkit.generate() optimises every step"
            )

    def acts_at(self, step) -> bool:
        """Whether this step gets a gradient pass."""
        raise NotImplementedError

    def optimise(self, latent: torch.Tensor, step, image: int) -> torch.Tensor:
        """The updated ``(1, C, h, w)`` latent of one image at ``step``."""
        raise NotImplementedError

    @staticmethod
    def descend(loss: torch.Tensor, latent: torch.Tensor, size: float) -> torch.Tensor:
        grad = torch.autograd.grad(loss, [latent])[0]
        return latent - size * grad

