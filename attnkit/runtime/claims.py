"""Who holds a pipeline: one run per denoiser at a time, claimed and released atomically."""

from __future__ import annotations

import threading
import weakref

import torch

from ..core.processor import LayerProcessor
from ..errors import AlreadyAttachedError

_claims_lock = threading.Lock()
_claims: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def claim(denoiser, owner) -> None:
    """Mark ``denoiser`` as used by ``owner``, or raise :class:`AlreadyAttachedError` if another run holds it (or its
    processors are attnkit's). Check and mark are one step under a lock, so two threads never both attach."""
    with _claims_lock:
        holder = _claims.get(denoiser)
        if holder is owner:
            return
        if holder is not None or any(isinstance(p, LayerProcessor) for p in denoiser.attn_processors.values()):
            raise AlreadyAttachedError(
                "attnkit is already attached to this pipeline (another `with attnkit.attach(...)` block or another "
                "thread's call is running on it); one run per pipeline at a time: wait for it, or give each thread "
                "its own pipeline"
            )
        _claims[denoiser] = owner


def release(denoiser, owner) -> None:
    """Give up ``owner``'s claim on ``denoiser`` (no-op if it holds none)."""
    with _claims_lock:
        if _claims.get(denoiser) is owner:
            del _claims[denoiser]
