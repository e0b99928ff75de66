"""The diffusers adapter of the attention event: a thin router around each layer's own processor.

A :class:`LayerProcessor` wraps the processor a layer already has (SDPA, xformers, IP-Adapter, a LoRA or custom
processor). On a call that no active method touches it delegates untouched, so an attached-but-idle pipeline gives
bit-identical images. Otherwise the call is one :class:`~attnkit.core.engine.Event`:

- methods that only read get the probabilities computed on the side from the same inputs (only on the layers and
  steps they asked for), and the layer output still comes from the original processor;
- methods that rewrite the text keys/values or the probabilities get the layer computed here, as diffusers'
  ``AttnProcessor2_0`` computes it, with :func:`~attnkit.core.engine.attend` applying their hook points;
- a method that replaces the layer computes it itself (its ``attend``).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from . import engine
from .attention import flux_text_attention_probs, unet_cross_attention_probs

#: processors whose computation :func:`computed_attention` reproduces; a method that changes a layer's text or
#: probabilities refuses layers with any other processor (IP-Adapter, custom ones) rather than silently dropping
#: what they do.
PLAIN_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "AttnProcessorNPU")


class LayerProcessor:
    """Routes one attention layer's calls for one :class:`~attnkit.runtime.Run`.

    Args:
        inner: the layer's original processor; every call is delegated to it.
        layer: the layer's :class:`~attnkit.core.layers.LayerInfo`.
        run: the run whose methods may read this layer.
    """

    def __init__(self, inner, layer, run):
        self.inner = inner
        self.layer = layer
        self.run = run
        # diffusers' Attention.forward keeps only the cross_attention_kwargs that `processor.__call__` names, so
        # expose the wrapped processor's signature; calls still go through the class's __call__ below.
        signature = inspect.signature(inner.__call__)

        def _signature(*args, **kwargs):  # pragma: no cover - only inspected, never called
            return self(*args, **kwargs)

        _signature.__signature__ = signature
        self.__call__ = _signature

    def __call__(self, attn, hidden_states, *args, **kwargs):
        event = self.run.routes[self.layer.index]
        if event is None:
            return self.inner(attn, hidden_states, *args, **kwargs)
        return layer_call(self.run, event, self, attn, hidden_states, args, kwargs)

    def __repr__(self) -> str:
        return f"LayerProcessor({self.layer.name}, inner={type(self.inner).__name__})"


def call_arg(args: tuple, kwargs: dict, name: str, position: int):
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def layer_call(run, event: engine.Event, processor: LayerProcessor, attn, hidden_states, args: tuple, kwargs: dict):
    """One routed layer call of ``run`` (a :class:`~attnkit.runtime.Run`)."""
    layer = processor.layer
    grad = run._grad
    step = grad.step if grad is not None else run.step
    rows = run._call.cond_rows
    text = call_arg(args, kwargs, "encoder_hidden_states", 0)
    mask = call_arg(args, kwargs, "attention_mask", 1)
    if event.computes:
        if isinstance(text, (tuple, list)):
            text = text[0]
        temb = call_arg(args, kwargs, "temb", 2)
        return computed_attention(attn, hidden_states, text, mask, temb, event, layer, step, rows, grad)
    _side_read(run, event, layer, step, attn, hidden_states, text, mask, kwargs, rows, grad)
    if event.replacer is None:
        return processor.inner(attn, hidden_states, *args, **kwargs)
    c = event.replacer
    # the third positional argument is temb for UNet processors, image_rotary_emb for Flux's
    third = "image_rotary_emb" if run.family == "flux" else "temb"
    extra = {k: v for k, v in kwargs.items() if k not in ("encoder_hidden_states", "attention_mask", "temb", third)}
    extra[third] = call_arg(args, kwargs, third, 2)
    temb = extra.pop("temb", None)
    with c.timed("replace_s"):
        return c.attend(layer, step, attn, hidden_states, encoder_hidden_states=text, attention_mask=mask, temb=temb,
                        rows=rows, **extra)


def _side_read(run, event, layer, step, attn, hidden_states, text, mask, kwargs, rows, grad) -> None:
    """Probabilities for the readers (or the gradient pass) from the layer's inputs; the output comes from elsewhere."""
    if isinstance(text, (tuple, list)):
        text = text[0]
    if grad is not None:
        if layer.index in grad.remaining:
            grad.take(layer.index, unet_cross_attention_probs(attn, hidden_states, text, mask, mean_heads=False))
        return
    if not event.readers or rows is None:
        return

    def pick(x):
        return x[rows] if torch.is_tensor(x) and x.shape[0] == hidden_states.shape[0] else x

    with torch.no_grad():
        if run.family == "flux":
            probs = flux_text_attention_probs(attn, pick(hidden_states), pick(text), kwargs.get("image_rotary_emb"),
                                              run._call.text_len, attention_mask=pick(mask))
        else:
            probs = unet_cross_attention_probs(attn, pick(hidden_states), pick(text), attention_mask=pick(mask))
    engine.read(event.readers, layer, step, probs)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)


def computed_attention(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                       event: engine.Event | None = None, layer=None, step=None, rows=None, grad=None):
    """What diffusers' ``AttnProcessor2_0`` computes on an ``Attention`` layer, with the event's hook points applied
    (:func:`attnkit.core.engine.attend`): the text editor's key/value text, the probability editors, the readers.

    ``rows``: the conditional rows (a slice; ``None``: the call has none). Without an event this is the processor's
    computation itself.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = hidden_states.shape
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.view(shape[0], shape[1], shape[2] * shape[3]).transpose(1, 2)
    batch = hidden_states.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    index = engine.cond_index(rows, batch, hidden_states.device)
    if encoder_hidden_states is None:  # self-attention
        key_texts, value_text = [hidden_states], hidden_states
    else:
        key_texts, value_text = engine.edit_text(event, layer, step, encoder_hidden_states, encoder_hidden_states,
                                                 index)
        if attn.norm_cross:
            key_texts = [attn.norm_encoder_hidden_states(t) for t in key_texts]
            value_text = attn.norm_encoder_hidden_states(value_text)
    q = _heads(attn.to_q(hidden_states), attn.heads)
    keys = [_heads(attn.to_k(t), attn.heads) for t in key_texts]
    v = _heads(attn.to_v(value_text), attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        keys = [attn.norm_k(k) for k in keys]
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, keys[0].shape[2], batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
    out = engine.attend(event, layer, step, q, keys, v, scale=attn.scale, rows=index, fast=_sdpa, mask=mask,
                        grad=grad)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(q.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if len(shape) == 4:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor
