"""DDIM inversion and null-text inversion of real images (what Prompt-to-Prompt editing of a photo starts from).

- :class:`DDIM`: the deterministic DDIM update (eta 0) on a pipeline's noise schedule, and its inverse; stateless and
  differentiable, for ``epsilon`` and ``v_prediction`` models.
- :func:`ddim_invert`: encode the image's latent ``z*_0`` forward to ``z*_T`` with the source caption at guidance 1,
  keeping every latent (Mokady et al.'s ``ddim_loop``: the denoiser is asked at the destination timestep).
- :class:`NullText`: null-text inversion (Mokady et al., "Null-text Inversion for Editing Real Images using Guided
  Diffusion Models", CVPR 2023, https://arxiv.org/abs/2211.09794): at each step ``i`` the unconditional embedding
  ``null_i`` takes Adam steps (lr ``1e-2 (1 - i/100)`` at 50 steps, ``1e-2 (1 - i/(2 steps))`` in general [ours], a
  fresh optimiser, started from ``null_{i-1}``) on
  ``|DDIM_step(z_t, eps_cfg(null_i, C), t) - z*_{t-1}|^2`` at the editing guidance; by default at most 10 iterations
  with the original early stop ``loss < 1e-5 + 2e-5 i``; DPL's setting is 51 fixed iterations.

The conditional prediction does not depend on ``null_i``: it is computed once per step, and each iteration runs
the unconditional branch only (the official DPL code runs both halves every iteration; same result, half the work).
Gradients are taken with respect to the embedding only (``torch.autograd.grad``), never into the model's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import AttnKitError, check_stop
from ..methods.base import Controller, Method
from ..methods.dpl import DPLConfig, map_grid

MAX_NULL_ITERATIONS = 200  # [ours] a cap for shared presets


class DDIM:
    """Deterministic DDIM on ``pipe``'s noise schedule with ``steps`` steps (the pipeline's scheduler is untouched).

    Attributes:
        timesteps: descending timesteps, as the pipeline's DDIM scheduler sets them.
    """

    def __init__(self, pipe, steps: int):
        from diffusers import DDIMScheduler

        if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= 1000:
            raise AttnKitError(f"num_inference_steps={steps!r} must be an integer in 2..1000")
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        scheduler.set_timesteps(steps)
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps.clone()
        self.steps = steps
        self.ratio = scheduler.config.num_train_timesteps // steps
        self.prediction = scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise AttnKitError(f"editing supports epsilon and v_prediction models, not {self.prediction!r}")
        self.alphas = scheduler.alphas_cumprod.float()
        self.final = float(scheduler.final_alpha_cumprod)

    def alpha(self, t: int) -> float:
        t = int(t)
        return float(self.alphas[t]) if t >= 0 else self.final

    def _eps_x0(self, out, alpha_out: float, x, alpha_x: float):
        if self.prediction == "epsilon":
            eps = out
        else:  # v-prediction: eps from v at the noise level the model was asked about
            eps = alpha_out ** 0.5 * out + (1 - alpha_out) ** 0.5 * x
        x0 = (x - (1 - alpha_x) ** 0.5 * eps) / alpha_x ** 0.5
        return eps, x0

    def step(self, out: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """``z_{t-1}`` from ``z_t`` and the model output at ``t`` (equal to ``DDIMScheduler.step`` with eta 0)."""
        a_t, a_prev = self.alpha(t), self.alpha(int(t) - self.ratio)
        eps, x0 = self._eps_x0(out, a_t, x, a_t)
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps

    def invert_step(self, out: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """``z_t`` from ``z_{t-1}`` (``x``) and the model output at ``t``: the DDIM update run backwards."""
        a_t, a_cur = self.alpha(t), self.alpha(min(int(t) - self.ratio, 999))
        eps, x0 = self._eps_x0(out, a_t, x, a_cur)
        return a_t ** 0.5 * x0 + (1 - a_t) ** 0.5 * eps


def denoise(pipe, latents: torch.Tensor, t, text: torch.Tensor) -> torch.Tensor:
    """The UNet's output for ``latents`` at ``t`` with prompt embeddings ``text`` (batches matched)."""
    unet = pipe.unet
    return unet(latents.to(unet.dtype), t, encoder_hidden_states=text.to(unet.dtype), return_dict=False)[0].float()


# ------------------------------------------------------------------------------------------ inversion maps


class InversionMapsController(Controller):
    """Records, during DDIM inversion, the averages DPL reads later: the cross-attention at the maps' grid (every
    step, every layer at that grid, heads averaged) and, when ``with_self``, the self-attention one grid finer."""

    with_self = True

    def bind(self, layers, latent_hw):
        config: DPLConfig = self.config
        self.cross_grid = map_grid(layers, latent_hw, config.attn_res)
        self_grids = sorted({layer.grid for layer in layers if layer.kind == "self"}, key=lambda g: g[0] * g[1])
        want = config.self_res or (self.cross_grid[0] * 2, self.cross_grid[1] * 2)
        if want not in self_grids:
            if config.self_res is not None:
                have = ", ".join(f"{h}x{w}" for h, w in self_grids)
                raise AttnKitError(f"dpl: self_res {want[0]}x{want[1]} has no self-attention layer; choose one of: {have}")
            want = self.cross_grid if self.cross_grid in self_grids else self_grids[-1]
        self.self_grid = want
        cross = {layer.index for layer in layers if layer.kind == "cross" and layer.grid == self.cross_grid}
        selfs = {layer.index for layer in layers if layer.kind == "self" and layer.grid == self.self_grid}
        self.cross_layers = frozenset(cross)
        self.prob_layers = frozenset(cross | (selfs if self.with_self else set()))
        self.cross_sum = self.self_sum = None
        self.cross_count = self.self_count = 0

    def on_probs(self, layer, step, probs):
        p = probs[0].detach().float()
        if layer.index in self.cross_layers:
            self.cross_sum = p if self.cross_sum is None else self.cross_sum + p
            self.cross_count += 1
        else:
            self.self_sum = p if self.self_sum is None else self.self_sum + p
            self.self_count += 1

    @property
    def cross_average(self) -> torch.Tensor:
        """``(h, w, T)`` mean cross-attention over steps and layers."""
        h, w = self.cross_grid
        return (self.cross_sum / max(self.cross_count, 1)).view(h, w, -1)

    @property
    def self_average(self) -> torch.Tensor | None:
        """``(N, N)`` mean self-attention over steps and layers (``None`` when not recorded)."""
        return None if self.self_sum is None else self.self_sum / max(self.self_count, 1)


class InversionMaps(Method):
    """Attention recorded during DDIM inversion (internal to :func:`attnkit.edit`)."""

    id = "inversion_maps"
    config_class = DPLConfig
    controller_class = InversionMapsController
    families = ("sd",)


@dataclass
class Inversion:
    """What DDIM inversion gives: ``latents[k]`` is the latent after ``k`` inversion steps (``latents[0] = z*_0``,
    ``latents[-1] = z*_T``); ``maps`` the recorder (``None`` when nothing was recorded)."""

    latents: list[torch.Tensor]
    maps: InversionMapsController | None = None


def ddim_invert(pipe, ddim: DDIM, z0: torch.Tensor, cond: torch.Tensor, record: DPLConfig | None = None,
                with_self: bool = True, on_step: Callable[[int], None] | None = None, stop=None) -> Inversion:
    """DDIM inversion at guidance 1 of ``z0`` (``(1, C, h, w)``) with prompt embeddings ``cond`` (``(1, T, C)``).

    With ``record``, attnkit is attached meanwhile and records the averaged maps of :class:`InversionMaps`.
    """
    from ..runtime import Run

    run = None
    if record is not None:
        run = Run(pipe, [InversionMaps(record)], cfg=False, num_steps=ddim.steps)
        run.controllers[0].with_self = with_self
        run.install()
    latents = [z0.detach().float()]
    latent = latents[0]
    try:
        with torch.no_grad():
            for i in range(ddim.steps):
                check_stop(stop)
                t = ddim.timesteps[ddim.steps - 1 - i]
                out = denoise(pipe, latent, t, cond)
                latent = ddim.invert_step(out, t, latent)
                latents.append(latent)
                if run is not None:
                    run.end_step()
                if on_step is not None:
                    on_step(i)
    finally:
        if run is not None:
            run.uninstall()
    return Inversion(latents, run.controllers[0] if run is not None else None)


# --------------------------------------------------------------------------------------------- null text


@dataclass
class NullTextConfig:
    """Null-text inversion settings.

    Attributes:
        null_iterations: the most Adam steps on the unconditional embedding per denoising step (10 in null-text
            inversion; DPL's official setting is 51).
        null_early_stop: stop a step's iterations once ``loss < null_epsilon + 2e-5 * step`` (null-text inversion);
            ``False`` runs every iteration (DPL's setting).
        null_epsilon: the early-stop base threshold.
        null_lr: Adam's learning rate at step 0 (it decays as ``1 - step/(2 steps)``: ``1 - step/100`` at 50 steps).
        null_start: where each step's optimisation starts: ``"previous"`` (the previous step's result, null-text
            inversion's notebook) or ``"empty"`` (a fresh encoding of ``""`` at every step, DPL's official code).
            ``None``: ``"empty"`` with DPL's dynamic words, ``"previous"`` without.

    :func:`attnkit.edit` fills what is not given by the method it runs: with DPL words 51 iterations without early
    stop, each step from ``""`` (the official DPL script); without, null-text inversion's 10 with early stop.
    """

    null_iterations: int = 10
    null_early_stop: bool = True
    null_epsilon: float = 1e-5
    null_lr: float = 1e-2
    null_start: str | None = None

    def __post_init__(self):
        if isinstance(self.null_iterations, bool) or not isinstance(self.null_iterations, int) or \
                not 0 <= self.null_iterations <= MAX_NULL_ITERATIONS:
            raise AttnKitError(f"null_iterations={self.null_iterations!r} must be in 0..{MAX_NULL_ITERATIONS}")
        if not isinstance(self.null_early_stop, bool):
            raise AttnKitError(f"null_early_stop must be true or false, got {self.null_early_stop!r}")
        if self.null_start not in (None, "previous", "empty"):
            raise AttnKitError(f"null_start={self.null_start!r}; use 'previous' or 'empty'")
        for name in ("null_epsilon", "null_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise AttnKitError(f"{name}={v!r} must be a number between 0 and 1")


def null_text_step(pipe, ddim: DDIM, config: NullTextConfig, step: int, latent: torch.Tensor, cond: torch.Tensor,
                   null: torch.Tensor, target: torch.Tensor, guidance: float, stop=None):
    """Optimise the unconditional embedding for one step; returns ``(null_i, record, eps_cond)``.

    Args:
        step: the step index ``i`` (timestep ``ddim.timesteps[i]``).
        latent: ``z_t`` of the reconstruction; ``target``: ``z*_{t-1}`` of the inversion.
        cond: ``(1, T, C)`` conditional embeddings (fixed during the optimisation).
        null: ``(1, T, C)`` the starting unconditional embedding (``null_{i-1}``).
    """
    t = ddim.timesteps[step]
    # clones: tensors made under a caller's inference mode cannot take part in autograd
    latent, cond, target = latent.detach().clone(), cond.detach().clone(), target.detach().clone()
    with torch.no_grad():
        eps_cond = denoise(pipe, latent, t, cond)
    param = null.detach().float().clone().requires_grad_(True)
    # 1 - i/100 over 50 steps as in null-text inversion; other step counts decay over the same half [ours]
    optimiser = torch.optim.Adam([param], lr=config.null_lr * (1.0 - step / (2.0 * ddim.steps)))
    threshold = config.null_epsilon + step * 2e-5
    losses = []
    for _ in range(config.null_iterations):
        check_stop(stop)
        eps_uncond = denoise(pipe, latent, t, param)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        loss = F.mse_loss(ddim.step(eps, t, latent), target)
        (grad,) = torch.autograd.grad(loss, [param])
        param.grad = grad
        optimiser.step()
        losses.append(float(loss.detach()))
        if config.null_early_stop and losses[-1] < threshold:
            break
    record = {"step": step, "iterations": len(losses), "loss_first": losses[0] if losses else None,
              "loss_last": losses[-1] if losses else None}
    return param.detach(), record, eps_cond


def cfg_step(pipe, ddim: DDIM, step: int, latent: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
             guidance: float, eps_cond: torch.Tensor | None = None) -> torch.Tensor:
    """The guided DDIM step ``z_{t-1}`` with unconditional embedding ``null`` (``eps_cond`` reused if given)."""
    t = ddim.timesteps[step]
    with torch.no_grad():
        if eps_cond is None:
            eps_cond = denoise(pipe, latent, t, cond)
        eps_uncond = denoise(pipe, latent, t, null)
        return ddim.step(eps_uncond + guidance * (eps_cond - eps_uncond), t, latent)
