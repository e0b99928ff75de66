"""Gradient passes: a conditional denoiser call whose layers hand the pass's method their per-head probabilities,
with their graph, and that ends after the last layer read. One driver for the library's run and the hosts'."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.engine import GradPass, StopForward
from ..errors import AttnKitError


def gradient_pass(owner, grad: GradPass, forward: Callable[[], Any]) -> dict[int, torch.Tensor]:
    """Run ``forward`` (a denoiser call) as the gradient pass ``grad`` of ``owner`` (a run whose layers feed
    ``owner._grad``): the forward ends early after the last layer read; returns ``{layer index: probabilities}``."""
    owner._grad = grad
    try:
        forward()
    except StopForward:
        pass
    finally:
        owner._grad = None
    if grad.remaining:
        raise AttnKitError(f"the gradient pass never reached {len(grad.remaining)} of the layers it reads")
    return grad.maps
