"""``attend_excite``: Attend-and-Excite, as diffusers' ``StableDiffusionAttendAndExcitePipeline`` runs it.

Chefer et al., "Attend-and-Excite: Attention-Based Semantic Guidance for Text-to-Image Diffusion Models",
SIGGRAPH 2023, https://arxiv.org/abs/2301.13826.

At each step ``i < max_iter_to_alter``, for each image: a conditional forward with gradients gives the smoothed
maps of the subject words (see :mod:`attnkit.methods.latent`); the loss is ``max_s max(0, 1 - max(map_s))``, the
most neglected subject; the latent takes one step ``z <- z - alpha_i grad L``. At the threshold steps
(``thresholds``, default ``{0: 0.05, 10: 0.5, 20: 0.8}``) it first refines the latent, repeating such steps until
``L <= 1 - threshold`` or ``max_refinement_steps`` tries, then re-evaluates the loss. Defaults are diffusers'.

Differences from the diffusers pipeline that do not change the result: probabilities are materialised only on the
layers the loss reads (the pipeline replaces every processor with an explicit one), the gradient forward stops after
the last of them, steps past ``max_iter_to_alter`` that are not threshold steps skip the forward, and SDXL is
supported (the pipeline is SD 1.x only).

One that does, on schedulers that scale the model input (Euler, LMS, DPM with Karras sigmas; not DDIM/PNDM, where
scaling is the identity): the gradient pass gives the denoiser ``scheduler.scale_model_input(latent)``, the input
the step's own denoiser call gets, so the loss is taken on the attention that step really computes
(``scale_input=True``, default [ours]). The pipeline and the original code give it the raw latent, an input of
``sqrt(1 + sigma^2)`` times the scale the model was trained on; ``scale_input=False`` restores that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import AttnKitError
from .base import check_ranges
from .fields import Field
from .latent import SMOOTHING, LatentController, LatentMethod, input_row, target_rows

MAX_STEPS = 1000  # most threshold steps; the numbers' ranges are the field table's (check_ranges)


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise AttnKitError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _check_common(config, name: str) -> None:
    """Validation shared by the latent-optimising configs (words or indices, attn_res, smoothing, step size)."""
    words, indices = config.words, getattr(config, "token_indices", None)
    if isinstance(words, str):
        config.words = words = [w.strip() for w in words.split(",") if w.strip()]
    if (words is None) == (indices is None):
        raise AttnKitError(f"{name}: give the subject words (words=[...]); or token_indices=[...] instead")
    if words is not None:
        config.words = list(words)
        if not config.words or not all(isinstance(w, str) and w.strip() for w in config.words):
            raise AttnKitError(f"{name}: words must be non-empty strings, got {words!r}")
    if indices is not None:
        config.token_indices = [int(i) for i in indices]
    if config.attn_res is not None:
        res = config.attn_res
        res = (res, res) if isinstance(res, int) else tuple(res)
        if len(res) != 2 or not all(isinstance(x, int) and x > 0 for x in res):
            raise AttnKitError(f"{name}: attn_res={config.attn_res!r} must be (h, w) positive integers, or None")
        config.attn_res = res
    if config.smoothing not in SMOOTHING:
        raise AttnKitError(f"{name}: smoothing={config.smoothing!r}; use one of {', '.join(SMOOTHING)}")
    if not isinstance(getattr(config, "scale_input", True), bool):
        raise AttnKitError(f"{name}: scale_input must be true or false, got {config.scale_input!r}")
    try:
        config.scale_factor = float(config.scale_factor)
    except (TypeError, ValueError):
        raise AttnKitError(f"{name}: scale_factor must be a number, got {config.scale_factor!r}") from None


@dataclass
class AttendExciteConfig:
    """Settings of ``attend_excite`` (defaults: diffusers').

    Attributes:
        words: subject words of the prompt to excite (``["cat", "dog"]``); or give ``token_indices``.
        token_indices: token positions, as diffusers' ``token_indices`` (BOS is 0).
        max_iter_to_alter: steps ``0..max_iter_to_alter-1`` get a gradient step.
        thresholds: ``{step: threshold}``: at these steps, refine until every subject's max attention reaches it.
        scale_factor: step size scale; ``alpha_i = scale_factor * sqrt(linspace(1, 0.5, steps)[i])``.
        attn_res: grid of the maps, ``(h, w)``; ``None`` picks it from the image size (16x16 at 512 px on SD 1.x,
            32x32 at 1024 px on SDXL).
        smoothing: ``"diffusers"`` (the pipeline's kernel), ``"gaussian"`` or ``"none"``.
        max_refinement_steps: tries per refinement.
        scale_input: the gradient pass sees the latent as the step's denoiser call sees it
            (``scheduler.scale_model_input``, default [ours]); ``False``: the raw latent, as diffusers' pipeline and
            the original code (differs only on schedulers that scale the input: Euler, LMS, Karras DPM).
    """

    words: list[str] | None = None
    token_indices: list[int] | None = None
    max_iter_to_alter: int = 25
    thresholds: dict[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
    scale_factor: float = 20.0
    attn_res: tuple[int, int] | None = None
    smoothing: str = "diffusers"
    max_refinement_steps: int = 20
    scale_input: bool = True

    def __post_init__(self):
        _check_common(self, "attend_excite")
        self.max_iter_to_alter = _whole(self.max_iter_to_alter, "attend_excite: max_iter_to_alter")
        self.max_refinement_steps = _whole(self.max_refinement_steps, "attend_excite: max_refinement_steps")
        try:
            self.thresholds = {int(k): float(v) for k, v in dict(self.thresholds).items()}
        except (TypeError, ValueError):
            raise AttnKitError(f"attend_excite: thresholds={self.thresholds!r} must map steps to numbers") from None
        if len(self.thresholds) > MAX_STEPS or not all(0 <= v <= 1 for v in self.thresholds.values()):
            raise AttnKitError("attend_excite: thresholds must be between 0 and 1")
        check_ranges("attend_excite", self)  # the field table's ranges, the only ones


class AttendExciteController(LatentController):
    def acts_at(self, step):
        return step.index < self.config.max_iter_to_alter or step.index in self.config.thresholds

    def loss(self, latent, step, image):
        maxima = self.concept_maps(latent, step, image).amax(dim=(-2, -1))
        return torch.clamp(1.0 - maxima, min=0).max(), maxima

    def optimise(self, latent, step, image):
        config, size = self.config, self.step_size(step)
        self.run.work(step, "optimising", 0, 1)
        latent = latent.clone().requires_grad_(True)
        loss, maxima = self.loss(latent, step, image)
        record = {"step": step.index, "image": image, "loss": float(loss.detach())}
        threshold = config.thresholds.get(step.index)
        if threshold is not None and loss > 1.0 - threshold:
            tries = 0
            while loss > max(0.0, 1.0 - threshold):
                self.run.work(step, "refining", tries, config.max_refinement_steps)
                tries += 1
                latent = latent.clone().detach().requires_grad_(True)
                loss, maxima = self.loss(latent, step, image)
                if loss != 0:
                    latent = self.descend(loss, latent, size)
                if tries >= config.max_refinement_steps:
                    break
            latent = latent.clone().detach().requires_grad_(True)
            loss, maxima = self.loss(latent, step, image)
            record.update(refinement_tries=tries, loss_after_refinement=float(loss.detach()))
        if step.index < config.max_iter_to_alter and loss != 0:
            latent = self.descend(loss, latent, size)
        record["max_attention"] = {c.word: float(m) for c, m in zip(self.concepts, maxima.detach())}
        self.report.losses.append(record)
        return latent


class AttendExcite(LatentMethod):
    """Attend-and-Excite: make every subject word reach a strong attention peak. See :class:`AttendExciteConfig`.

    Example::

        attnkit.generate(pipe, "a cat and a frog", [AttendExcite(words=["cat", "frog"])], seed=0)
    """

    id = "attend_excite"
    title = "Attend-and-Excite"
    paper = {"max_iter_to_alter": 25, "thresholds": {0: 0.05, 10: 0.5, 20: 0.8}, "scale_factor": 20.0,
             "smoothing": "diffusers", "max_refinement_steps": 20, "scale_input": False}
    paper_run = {"steps": 50, "guidance_scale": 7.5}
    paper_source = ("Chefer et al. 2023 and its code as diffusers ships it: 25 optimised steps, thresholds 0.05/0.5/0.8 "
                    "at steps 0/10/20, step size 20, the gradient pass on the raw latent; 50 steps, CFG 7.5")
    config_class = AttendExciteConfig
    controller_class = AttendExciteController
    #: the options users see: labels, kinds, ranges (this method's rows of the field table)
    fields = (
        *target_rows("attend_excite", "Subject words", "the subjects that must appear", "subject"),
        Field("attend_excite", "max_iter_to_alter", "Optimised steps", "int", 25,
              "the first n steps each nudge the latent once", minimum=0, maximum=200, step=1),
        Field("attend_excite", "thresholds", "Refinement thresholds", "thresholds", {0: 0.05, 10: 0.5, 20: 0.8},
              "step: threshold pairs, e.g. 0: 0.05, 10: 0.5; at those steps it retries until every subject's "
              "attention peak reaches the threshold", advanced=True, limit=16),
        Field("attend_excite", "scale_factor", "Step size", "float", 20.0, "scale of the latent update",
              minimum=0.5, maximum=100.0, step=0.5),
        Field("attend_excite", "attn_res", "Map resolution", "grid", None,
              "the grid of the maps the loss reads; auto: the image's size / 32", advanced=True),
        Field("attend_excite", "smoothing", "Smoothing", "choice", "diffusers",
              "how the maps are blurred before their peaks are read: diffusers' kernel (the reference), a true "
              "Gaussian, or none", choices=("diffusers", "gaussian", "none"), advanced=True),
        Field("attend_excite", "max_refinement_steps", "Refinement tries", "int", 20,
              "at most this many retries at each threshold step",
              minimum=0, maximum=50, step=1, advanced=True),
        input_row("attend_excite"),
    )
