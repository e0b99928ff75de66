"""``a_star``: A-STAR, attention segregation and retention.

Agarwal et al., "A-STAR: Test-time Attention Segregation and Retention for Text-to-image Synthesis", ICCV 2023,
https://arxiv.org/abs/2306.14544.

With ``A^m`` the map of concept ``m`` at the current step (Attend-and-Excite's preprocessing, then scaled to [0, 1]
by its max [ours]):

- segregation: ``L_seg = sum over pairs m < n of sum_ij min(A^m, A^n) / sum_ij (A^m + A^n)``, in [0, 0.5] per
  pair, so two concepts stop sharing the same pixels;
- retention: ``L_ret = sum_m 1 - sum_ij min(A^m, B^m) / sum_ij (A^m + B^m)``, where ``B^m`` is the binarised map of
  the previous optimised step (threshold ``tau`` on the max-scaled, detached map [ours]), so attention does not fade
  or wander as denoising goes on. At the first optimised step there is no previous mask: ``L_seg`` only. User
  layout masks (one per concept) replace ``B^m`` at every step (layout-constrained generation).

``L = L_seg + L_ret``; the latent takes ``iterations`` (default 1, the paper's) steps ``z <- z - alpha_t grad L``
per optimised step, with ``alpha_t`` from Attend-and-Excite's schedule [ours: the paper does not give it]. The paper
optimises across all denoising steps (default). The masks ``B`` come from the same gradient pass, detached, before
the update [ours].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.steps import check_window
from ..errors import AttnKitError
from .attend_excite import _check_common, _whole
from .base import check_ranges
from .fields import Field
from .latent import LatentController, LatentMethod, input_row, target_rows


def segregation_loss(maps: torch.Tensor) -> torch.Tensor:
    """``sum_{m<n} sum min(A^m, A^n) / sum (A^m + A^n)`` over ``(K, h, w)`` maps (0 for fewer than two)."""
    total = maps.new_zeros(())
    for m in range(maps.shape[0]):
        for n in range(m + 1, maps.shape[0]):
            total = total + torch.minimum(maps[m], maps[n]).sum() / (maps[m] + maps[n]).sum().clamp_min(1e-12)
    return total


def retention_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``sum_m 1 - sum min(A^m, B^m) / sum (A^m + B^m)`` for ``(K, h, w)`` maps and binary masks."""
    overlap = torch.minimum(maps, masks).sum(dim=(-2, -1))
    return (1 - overlap / (maps + masks).sum(dim=(-2, -1)).clamp_min(1e-12)).sum()


def binarise(maps: torch.Tensor, tau: float) -> torch.Tensor:
    """Detached ``(K, h, w)`` masks of the pixels at or above ``tau`` times each map's max."""
    maps = maps.detach()
    return (maps >= tau * maps.amax(dim=(-2, -1), keepdim=True)).to(maps.dtype)


@dataclass
class AStarConfig:
    """Settings of ``a_star``.

    Attributes:
        words: the concepts, words of the prompt (``["cat", "dog"]``); or give ``token_indices``.
        token_indices: token positions instead of words (BOS is 0).
        tau: binarisation threshold of the retention masks, a fraction of each map's max [ours].
        scale_factor: step size scale, ``alpha_i = scale_factor * sqrt(linspace(1, 0.5, steps)[i])`` [ours].
        steps: progress window ``(start, stop)`` of the optimised steps; the paper uses all (default).
        iterations: gradient steps per optimised step (the paper: 1).
        attn_res: grid of the maps, ``(h, w)``; ``None`` picks it from the image size.
        smoothing: ``"diffusers"``, ``"gaussian"`` or ``"none"`` (see :mod:`attnkit.methods.latent`).
        masks: optional layout masks, ``{word: 2-D array of 0/1}`` (any size; resized to the map grid), used in
            place of the retention masks. Every concept needs one.
        measure_after_update: also compute the loss after each update (one more forward per step), reported as
            ``loss_after``.
        scale_input: the gradient pass sees the latent as the step's denoiser call sees it (default [ours]);
            ``False``: the raw latent, as the Attend-and-Excite code A-STAR builds on (see
            :class:`~attnkit.methods.AttendExciteConfig`).
    """

    words: list[str] | None = None
    token_indices: list[int] | None = None
    tau: float = 0.5
    scale_factor: float = 20.0
    steps: tuple[float, float] = (0.0, 1.0)
    iterations: int = 1
    attn_res: tuple[int, int] | None = None
    smoothing: str = "diffusers"
    masks: dict[str, object] | None = None
    measure_after_update: bool = False
    scale_input: bool = True

    def __post_init__(self):
        _check_common(self, "a_star")
        self.steps = check_window(self.steps, "a_star: steps")
        self.iterations = _whole(self.iterations, "a_star: iterations")
        check_ranges("a_star", self)  # tau, scale_factor, iterations: the field table's ranges, the only ones
        if self.masks is not None:
            masks = {}
            for word, mask in dict(self.masks).items():
                t = torch.as_tensor(mask, dtype=torch.float32)
                if t.ndim != 2 or t.numel() > 4096 * 4096 or not bool(((t == 0) | (t == 1)).all()):
                    raise AttnKitError(f"a_star: the mask of {word!r} must be a 2-D array of 0 and 1")
                if not bool(t.any()):
                    raise AttnKitError(f"a_star: the mask of {word!r} is empty")
                masks[word] = t
            self.masks = masks
            if self.words is not None and set(masks) != set(self.words):
                raise AttnKitError(f"a_star: give one mask per word; words {self.words}, masks for {sorted(masks)}")


class AStarController(LatentController):
    min_concepts = 1

    def __init__(self, method, run):
        super().__init__(method, run)
        self.previous: dict[int, torch.Tensor] = {}  # image -> retention masks from the last optimised step

    def acts_at(self, step):
        return step.within(self.config.steps)

    def _layout(self, like: torch.Tensor) -> torch.Tensor | None:
        if self.config.masks is None:
            return None
        masks = [self.config.masks[c.word] for c in self.concepts]
        resized = [F.interpolate(m[None, None], size=self.grid, mode="nearest")[0, 0] for m in masks]
        return (torch.stack(resized) > 0.5).to(like.device, like.dtype)

    def losses(self, latent, step, image):
        maps = self.concept_maps(latent, step, image)
        maps = maps / maps.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        seg = segregation_loss(maps)
        masks = self._layout(maps)
        if masks is None:
            masks = self.previous.get(image)
        ret = retention_loss(maps, masks) if masks is not None else maps.new_zeros(())
        return seg + ret, seg, ret, maps

    def optimise(self, latent, step, image):
        size = self.step_size(step)
        record = {"step": step.index, "image": image}
        for iteration in range(self.config.iterations):
            self.run.work(step, "optimising", iteration, self.config.iterations)
            latent = latent.detach().clone().requires_grad_(True)
            loss, seg, ret, maps = self.losses(latent, step, image)
            if iteration == 0:
                record.update(loss=float(loss.detach()), segregation=float(seg.detach()), retention=float(ret.detach()))
                next_masks = binarise(maps, self.config.tau)
            if loss.requires_grad and float(loss.detach()) != 0:
                latent = self.descend(loss, latent, size)
        if self.config.measure_after_update:  # with the same masks as the loss before the update
            with torch.no_grad():
                record["loss_after"] = float(self.losses(latent.detach(), step, image)[0])
        self.previous[image] = next_masks
        self.report.losses.append(record)
        return latent

    def finish(self):
        super().finish()
        losses = self.report.losses
        if losses:
            self.report.data["mean_loss"] = sum(r["loss"] for r in losses) / len(losses)


class AStar(LatentMethod):
    """A-STAR: keep concepts apart and their attention alive across steps. See :class:`AStarConfig`.

    Example::

        attnkit.generate(pipe, "a cat and a dog", [AStar(words=["cat", "dog"])], seed=0)
    """

    id = "a_star"
    title = "A-STAR"
    paper = {"steps": (0.0, 1.0), "iterations": 1, "tau": 0.5, "scale_factor": 20.0, "smoothing": "diffusers",
             "scale_input": False}
    paper_run = {"steps": 50, "guidance_scale": 7.5}
    paper_source = ("Agarwal et al. 2023: every step, one gradient step each, 16x16 maps; the paper gives no tau or "
                    "step sizes, so these are Attend-and-Excite's, whose code it builds on; 50 steps, CFG 7.5")
    config_class = AStarConfig
    controller_class = AStarController
    #: the options users see: labels, kinds, ranges (this method's rows of the field table)
    fields = (
        *target_rows("a_star", "Concept words", "the concepts to keep apart and alive", "concept"),
        Field("a_star", "tau", "Retention threshold", "float", 0.5,
              "fraction of a map's max that counts as the concept's area", minimum=0.05, maximum=0.95, step=0.05),
        Field("a_star", "scale_factor", "Step size", "float", 20.0, "scale of the latent update",
              minimum=0.5, maximum=100.0, step=0.5),
        Field("a_star", "steps", "Optimised steps", "window", (0.0, 1.0),
              "the part of the run that is optimised, as from-to fractions: 0-1 the whole run, 0-0.5 the first half"),
        Field("a_star", "iterations", "Iterations per step", "int", 1, "gradient steps per optimised step",
              minimum=1, maximum=20, step=1, advanced=True),
        Field("a_star", "attn_res", "Map resolution", "grid", None,
              "the grid of the maps the losses read; auto: the image's size / 32", advanced=True),
        Field("a_star", "smoothing", "Smoothing", "choice", "diffusers",
              "how the maps are blurred: diffusers' kernel (the reference), a true Gaussian, or none",
              choices=("diffusers", "gaussian", "none"), advanced=True),
        Field("a_star", "masks", "Layout masks", "masks", None, "one 0/1 grid per word, in place of retention masks",
              panel=False, limit=16),
        Field("a_star", "measure_after_update", "Measure loss after update", "bool", False,
              "one more forward per step, to report the loss after each update", advanced=True),
        input_row("a_star"),
    )
