"""What the run knows about each denoiser call: which batch rows are the conditional branch (CFG layouts of the
UNet pipelines and Flux's separate true-CFG calls) and how long the text is."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class Captured(Exception):
    """Ends the dry pipeline call of :func:`~attnkit.runtime.generate` at its first denoiser call (inputs captured)."""


@dataclass
class Call:
    """What the run knows about the denoiser call in progress."""

    cond_rows: slice | None  # batch rows of the conditional branch; None when the call is unconditional only
    text_len: int




def describe_call(family: str, cfg: bool, sample: torch.Tensor, text, cond_key: list) -> Call:
    """The :class:`Call` of a denoiser call on ``sample`` with text ``text``. ``cfg``: the batch is
    ``[unconditional; conditional]``. ``cond_key`` (a one-item list, kept by the run) remembers Flux's conditional
    text: Flux runs true CFG as separate calls, the conditional one first in a step with the prompt embeddings the
    pipeline reuses every step; a call with other embeddings is the negative branch."""
    if isinstance(text, (tuple, list)):
        text = text[0]
    text_len = int(text.shape[1]) if torch.is_tensor(text) else 0
    batch = int(sample.shape[0])
    if family == "flux":
        key = (text.data_ptr(), tuple(text.shape)) if torch.is_tensor(text) else None
        if cond_key[0] is None:
            cond_key[0] = key
        return Call(slice(0, batch) if key == cond_key[0] else None, text_len)
    if cfg and batch % 2 == 0:
        return Call(slice(batch // 2, batch), text_len)
    return Call(slice(0, batch), text_len)
