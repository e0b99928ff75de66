"""One attention event per layer call: the hook points methods implement, computed once for every adapter.

A layer call that some method touches is an **event**. What each method does there is declared per step by its
controller (:meth:`~attnkit.methods.base.Controller.layers_at`) and implemented as plain tensor functions:

- ``text``: ``edit_text(layer, step, keys, values, rows) -> ([keys, ...], values)`` rewrites the text the keys and
  values are projected from (``(B, T, C)``); more than one key sequence means one attention per key sequence, with
  the same queries and values, averaged (structured's conjunction mode);
- ``probs``: ``edit_probs(layer, step, probs) -> probs`` rewrites the conditional rows' probabilities
  ``(B_cond, heads, N, T)`` before they weigh the values (Prompt-to-Prompt);
- ``read``: ``on_probs(layer, step, probs)`` receives the conditional rows' head-averaged probabilities
  ``(B_cond, N, T)`` (after any edit);
- ``replace``: ``attend(...)`` computes the layer itself (extra tokens, masks); only the diffusers processor
  offers it.

An adapter (the diffusers processor in :mod:`attnkit.core.processor`, the ComfyUI/Forge patches and the A1111
forward in :mod:`attnkit.hosts.kernel`) turns its host's layer call into projected queries, keys and values and
calls :func:`attend` here. So the probabilities, their edits, what readers see and the gradient passes' maps are
written once; adding a method touches no adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..methods.base import Controller
    from .layers import LayerInfo
    from .steps import StepInfo

NONE: frozenset[int] = frozenset()


class Touch(NamedTuple):
    """The layers a controller touches at one step, by hook point (indices into the run's layers)."""

    read: frozenset[int] = NONE
    text: frozenset[int] = NONE
    probs: frozenset[int] = NONE
    replace: frozenset[int] = NONE


@dataclass(frozen=True)
class Event:
    """What happens at one layer during the current denoiser call (``None`` in a run's routes: untouched).

    Attributes:
        readers: controllers reading the conditional rows' probabilities.
        text: the controller rewriting the text keys/values, if any.
        editors: controllers rewriting the conditional rows' probabilities, in order.
        replacer: the controller computing the layer itself, if any.
    """

    readers: tuple = ()
    text: Any = None
    editors: tuple = ()
    replacer: Any = None

    @property
    def computes(self) -> bool:
        """Whether the adapter computes this layer's attention itself (its text or probabilities change)."""
        return self.text is not None or bool(self.editors)


def events(controllers, touches: list[Touch], count: int, conditional: bool) -> list[Event | None]:
    """Per layer, the event of the current call from each controller's :class:`Touch` (``conditional``: the call
    has conditional rows; without them only replacers that act on every call take part). Two controllers that
    rewrite one layer's text, or compute one layer, cannot run together."""
    readers: list[list] = [[] for _ in range(count)]
    text: list = [None] * count
    editors: list[list] = [[] for _ in range(count)]
    replacer: list = [None] * count
    for c, touch in zip(controllers, touches):
        if not conditional:
            if c.attends_every_call:
                for i in touch.replace:
                    replacer[i] = c
            continue
        for i in touch.read:
            readers[i].append(c)
        for i in touch.text:
            text[i] = c
        for i in touch.probs:
            editors[i].append(c)
        for i in touch.replace:
            replacer[i] = c
    return [
        Event(tuple(r), t, tuple(e), p) if (r or t is not None or e or p is not None) else None
        for r, t, e, p in zip(readers, text, editors, replacer)
    ]


def claim_layers(controllers) -> None:
    """Refuse two controllers that both rewrite the text of, or compute, the same layer (after ``bind``)."""
    from ..errors import AttnKitError

    for what in ("text_layers", "replace_layers"):
        owners: dict[int, Any] = {}
        for c in controllers:
            for index in getattr(c, what):
                if index in owners:
                    raise AttnKitError(
                        f"{owners[index].method.id} and {c.method.id} both change the attention of the same layers; "
                        "they cannot run together"
                    )
                owners[index] = c


class StopForward(Exception):
    """Ends a gradient pass once every layer its loss reads has been read (the rest of the network is not needed)."""


@dataclass
class GradPass:
    """A conditional forward with gradients, run for a latent-optimising method: the per-head probabilities of the
    layers it reads, kept in the graph."""

    controller: "Controller"
    step: "StepInfo"
    remaining: set[int]
    early_stop: bool
    maps: dict[int, torch.Tensor] = field(default_factory=dict)

    def take(self, index: int, probs: torch.Tensor) -> None:
        """Keep layer ``index``'s ``(B, heads, N, T)`` probabilities; end the forward when none is left to read."""
        if index not in self.remaining:
            return
        self.maps[index] = probs
        self.remaining.discard(index)
        if self.early_stop and not self.remaining:
            raise StopForward


def probabilities(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale + mask)`` of ``(B, heads, N, d)`` queries and ``(B, heads, T, d)`` keys, in float32:
    ``(B, heads, N, T)``, each row summing to 1. The one place attention probabilities are made explicit."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


def read(readers, layer: "LayerInfo", step: "StepInfo", probs: torch.Tensor) -> None:
    """Hand the readers ``probs``: ``(B, heads, N, T)`` (averaged over heads here) or already ``(B, N, T)``."""
    if not readers:
        return
    if probs.ndim == 4:
        probs = probs.mean(dim=1)
    for c in readers:
        with c.timed("attention_s"):
            c.on_probs(layer, step, probs)


def cond_index(rows, batch: int, device):
    """The conditional rows as a slice with explicit bounds (kept a slice: cheaper to index) or a long tensor
    (from a list or tensor); ``None`` (no conditional rows) becomes an empty slice."""
    if rows is None:
        return slice(0, 0)
    if isinstance(rows, slice):
        start, stop, step = rows.indices(batch)
        if step == 1:
            return slice(start, max(start, stop))
        rows = list(range(start, stop, step))
    return torch.as_tensor(rows, dtype=torch.long, device=device)


def row_count(rows) -> int:
    """How many rows :func:`cond_index` selects."""
    return rows.stop - rows.start if isinstance(rows, slice) else int(rows.numel())


def edit_text(event: Event | None, layer, step, keys: torch.Tensor, values: torch.Tensor, rows) -> tuple[list, Any]:
    """The key sequences and the value text of a layer call: the text editor's, or the call's own."""
    if event is None or event.text is None or row_count(rows) == 0:
        return [keys], values
    with event.text.timed("text_s"):
        out_keys, out_values = event.text.edit_text(layer, step, keys, values, rows)
    return list(out_keys), out_values


Fast = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def attend(event: Event | None, layer: "LayerInfo", step: "StepInfo", q: torch.Tensor, keys: list[torch.Tensor],
           v: torch.Tensor, *, scale: float, rows: torch.Tensor, fast: Fast, mask: torch.Tensor | None = None,
           grad: GradPass | None = None) -> torch.Tensor:
    """The attention of one layer call with every method's hook points applied.

    Args:
        q: ``(B, heads, N, d)`` queries; ``keys``: one or more ``(B, heads, T, d)`` key sequences (the text
            editor's groups); ``v``: ``(B, heads, T, d_v)`` values.
        rows: the conditional rows (:func:`cond_index`: a slice or a long tensor); methods act on these only.
        fast: ``fast(q, k, v, mask) -> (b, heads, N, d_v)``, the host's own attention, used wherever no method
            changes the probabilities (so those rows come out exactly as without attnkit).
        mask: additive mask broadcastable to ``(B, heads, N, T)``, or ``None``.
        grad: the gradient pass in progress, whose method reads this layer's per-head probabilities (with their
            graph; a :class:`StopForward` may end the forward here).

    Returns:
        ``(B, heads, N, d_v)``.
    """
    readers = event.readers if event is not None and grad is None else ()  # a gradient pass reads for its method only
    editors = event.editors if event is not None else ()
    if grad is not None and layer.index in grad.remaining:
        grad.take(layer.index, probabilities(q, keys[0], scale, mask))
    if row_count(rows) == 0 or not (readers or editors or len(keys) > 1):
        return fast(q, keys[0], v, mask)

    def pick(x, which):
        return x[which] if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == q.shape[0] else x

    if not editors:
        out = fast(q, keys[0], v, mask)
        if readers:
            with torch.no_grad():
                read(readers, layer, step, probabilities(q[rows], keys[0][rows], scale, pick(mask, rows)))
        if len(keys) > 1:
            parts = [fast(q[rows], k[rows], v[rows], pick(mask, rows)) for k in keys]
            out = out.clone()
            out[rows] = torch.stack(parts).mean(dim=0).to(out.dtype)
        return out
    if isinstance(rows, slice):
        other = [i for i in range(q.shape[0]) if not rows.start <= i < rows.stop]
        other = torch.as_tensor(other, dtype=torch.long, device=q.device)
    else:
        mask_rows = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
        mask_rows[rows] = False
        other = mask_rows.nonzero().flatten()
    parts = []
    for g, k in enumerate(keys):
        probs = probabilities(q[rows], k[rows], scale, pick(mask, rows))
        for c in editors:
            with c.timed("edit_s"):
                probs = c.edit_probs(layer, step, probs)
        if g == 0:
            read(readers, layer, step, probs.detach())
        parts.append(torch.matmul(probs.to(v.dtype), v[rows]))
    cond = parts[0] if len(parts) == 1 else torch.stack(parts).mean(dim=0)
    if other.numel() == 0:
        return cond.to(q.dtype)
    rest = fast(q[other], keys[0][other], v[other], pick(mask, other))
    out = rest.new_empty((q.shape[0],) + tuple(rest.shape[1:]))
    out[other] = rest
    out[rows] = cond.to(out.dtype)
    return out
