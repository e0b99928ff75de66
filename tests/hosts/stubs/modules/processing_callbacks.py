"""SD.Next ``modules/processing_callbacks.py``: its step callback (progress, interrupt; the NaN check reads the
latents), which it passes as ``callback_on_step_end`` to every diffusers pipeline call."""

import torch

from modules import shared

calls = []
fail_at_step = None  # tests: raise at this step, as SD.Next's NaN check does


def diffusers_callback(pipe, step: int = 0, timestep: int = 0, kwargs: dict = None):
    kwargs = kwargs or {}
    latents = kwargs.get("latents")
    if latents is not None and torch.isnan(latents).any():
        raise RuntimeError("NaN in latents")
    if fail_at_step is not None and step == fail_at_step:
        raise RuntimeError("injected failure in SD.Next's step callback")
    calls.append(step)
    if shared.state.interrupted:
        pipe._interrupt = True
    return kwargs
