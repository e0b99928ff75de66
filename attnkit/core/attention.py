"""Explicit attention probabilities, computed only where a method reads them.

The layer's own processor still computes the layer output (on its fast path: SDPA, xformers, a custom processor);
these functions recompute the query and key projections of the selected rows and return the softmax probabilities of
image queries over text keys. On the UNet's cross-attention layers that is ``softmax(q k^T * scale)`` over the text
tokens; on Flux's joint attention it is the image-query x text-key block of the softmax over all [text; image] keys.

Probabilities are returned averaged over heads, in float32: ``(B, N_query, N_text)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def unet_cross_attention_probs(
    attn, hidden_states, encoder_hidden_states, attention_mask=None, mean_heads: bool = True
) -> torch.Tensor:
    """Head-averaged attention probabilities of a diffusers ``Attention`` layer (cross- or self-attention).

    Args:
        attn: the ``Attention`` module (an ``attn2``, or an ``attn1`` with ``encoder_hidden_states=None``).
        hidden_states: ``(B, N, C)`` or ``(B, C, H, W)`` queries' input, as given to the processor.
        encoder_hidden_states: ``(B, T, C_text)`` text states (or an IP-Adapter ``(text, image)`` tuple); ``None``
            for self-attention (keys from the queries' input, ``T = N``).
        attention_mask: the mask given to the processor, if any.

        mean_heads: ``False`` keeps the heads: ``(B, heads, N, T)``.

    Returns:
        ``(B, N, T)`` float32 probabilities; each row sums to 1 over the ``T`` keys.
    """
    if isinstance(encoder_hidden_states, (tuple, list)):
        encoder_hidden_states = encoder_hidden_states[0]
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = encoder_hidden_states
    if context is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    q = _heads(attn.to_q(hidden_states), attn.heads)
    k = _heads(attn.to_k(context), attn.heads)
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        batch = hidden_states.shape[0]
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], batch)
        scores = scores + mask.view(batch, attn.heads, -1, mask.shape[-1]).float()
    probs = scores.softmax(dim=-1)
    return probs.mean(dim=1) if mean_heads else probs


def flux_qkv(attn, hidden_states, encoder_hidden_states=None, values: bool = True):
    """Queries, keys (and values) of a Flux attention layer as its processor builds them, ``(B, L, H, D)`` each,
    text first when ``encoder_hidden_states`` is given, before RoPE. ``values=False`` skips the value projections
    (``None`` in their place)."""
    fused = getattr(attn, "fused_projections", False)
    if fused:
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        q, k = attn.to_q(hidden_states), attn.to_k(hidden_states)
        v = attn.to_v(hidden_states) if values else None
    q = attn.norm_q(q.unflatten(-1, (-1, attn.head_dim)))
    k = attn.norm_k(k.unflatten(-1, (-1, attn.head_dim)))
    v = v.unflatten(-1, (-1, attn.head_dim)) if values else None
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        if fused and hasattr(attn, "to_added_qkv"):
            eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        else:
            eq, ek = attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states)
            ev = attn.add_v_proj(encoder_hidden_states) if values else None
        eq = attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim)))
        ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
        q, k = torch.cat([eq, q], dim=1), torch.cat([ek, k], dim=1)
        if values:
            v = torch.cat([ev.unflatten(-1, (-1, attn.head_dim)), v], dim=1)
    return q, k, v


def rope(x: torch.Tensor, emb) -> torch.Tensor:
    """``x`` ``(B, L, H, D)`` with Flux's rotary embedding ``emb`` applied (unchanged when ``emb`` is ``None``)."""
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(x, emb, sequence_dim=1) if emb is not None else x


def _flux_qk(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    """Queries and keys of a Flux attention layer, as its processor builds them: (B, N, heads, d) each."""
    q, k, _ = flux_qkv(attn, hidden_states, encoder_hidden_states, values=False)
    return rope(q, image_rotary_emb), rope(k, image_rotary_emb)


def flux_text_attention_probs(
    attn, hidden_states, encoder_hidden_states, image_rotary_emb, text_len: int, attention_mask=None
) -> torch.Tensor:
    """Head-averaged image-query x text-key probabilities of a Flux joint-attention layer.

    Args:
        attn: a ``FluxAttention`` of a double-stream (``encoder_hidden_states`` given) or single-stream block
            (``hidden_states`` already ``[text; image]``).
        text_len: number of text tokens ``T`` at the front of the joint sequence.
        attention_mask: additive or boolean mask over the joint keys, if the pipeline passes one.

    Returns:
        ``(B, N_image, T)`` float32: for each image query, the probability mass on each text key (the row's softmax
        runs over all text and image keys, so rows sum to at most 1).

    Computed one head at a time, so memory stays at one ``(N_image, T + N_image)`` score block per batch element.
    """
    q, k = _flux_qk(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
    q_img = q[:, text_len:]
    scale = attn.head_dim ** -0.5
    total = None
    for h in range(q.shape[2]):
        scores = torch.matmul(q_img[:, :, h].float(), k[:, :, h].float().transpose(-1, -2)) * scale
        if attention_mask is not None:
            m = attention_mask
            if m.dtype == torch.bool:
                scores = scores.masked_fill(~m.reshape(m.shape[0], -1, m.shape[-1])[:, -scores.shape[1]:], float("-inf"))
            else:
                scores = scores + m.reshape(m.shape[0], -1, m.shape[-1])[:, -scores.shape[1]:].float()
        part = (scores[..., :text_len] - scores.logsumexp(dim=-1, keepdim=True)).exp()
        total = part if total is None else total + part
    return total / q.shape[2]


#: processors whose computation :func:`attention_output` reproduces; a method that replaces a layer's attention
#: refuses layers with any other processor (IP-Adapter, custom ones) rather than silently dropping what they do.
PLAIN_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "AttnProcessorNPU")


def _prologue(attn, hidden_states, temb):
    """What diffusers' processors do before the projections: ``(tokens (B, N, C), undo)`` with ``undo(out)`` the
    steps after the output projection (back to the input's shape, residual, rescale)."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = hidden_states.shape
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.view(shape[0], shape[1], shape[2] * shape[3]).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    def undo(out):
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    return hidden_states, undo


def _project(attn, hidden_states, key_states, value_states):
    """``(B, heads, N, d)`` queries, keys and values as diffusers' processors make them (keys and values from
    ``key_states``/``value_states``, or from ``hidden_states`` for self-attention when those are ``None``)."""
    if key_states is None:
        key_states = value_states = hidden_states
    elif attn.norm_cross:
        key_states = attn.norm_encoder_hidden_states(key_states)
        value_states = attn.norm_encoder_hidden_states(value_states)
    q = _heads(attn.to_q(hidden_states), attn.heads)
    k = _heads(attn.to_k(key_states), attn.heads)
    v = _heads(attn.to_v(value_states), attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def attention_output(attn, hidden_states, key_states, value_states, attention_mask=None, temb=None, groups: int = 1):
    """The computation of diffusers' ``AttnProcessor2_0`` on an ``Attention`` layer, with keys and values taken from
    different text sequences, on PyTorch SDPA.

    Args:
        attn: the ``Attention`` module.
        hidden_states: ``(B, N, C)`` or ``(B, C, H, W)`` query input.
        key_states: ``(groups * B, T, C_text)``: ``groups`` key sequences per row, group-major
            (all rows of group 0, then group 1...).
        value_states: ``(B, T, C_text)``.
        attention_mask, temb: as given to the processor.
        groups: with ``groups > 1`` each row attends once per key sequence (same queries and values) and the
            outputs are averaged, before the output projection (which is affine, so this equals averaging after).

    Returns:
        The layer output, shaped like ``hidden_states``.
    """
    hidden_states, undo = _prologue(attn, hidden_states, temb)
    batch = hidden_states.shape[0]
    q, k, v = _project(attn, hidden_states, key_states, value_states)
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
    if groups > 1:
        q, v = q.repeat(groups, 1, 1, 1), v.repeat(groups, 1, 1, 1)
        mask = mask.repeat(groups, 1, 1, 1) if mask is not None else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if groups > 1:
        out = out.view(groups, batch, *out.shape[1:]).mean(dim=0)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(q.dtype)
    return undo(attn.to_out[1](attn.to_out[0](out)))


def attention_with_probs(attn, hidden_states, encoder_hidden_states=None, edit=None, attention_mask=None, temb=None):
    """The computation of diffusers' ``AttnProcessor`` on an ``Attention`` layer with the probabilities explicit, so
    that ``edit`` can change them before they weigh the values.

    Args:
        attn: the ``Attention`` module.
        hidden_states: ``(B, N, C)`` or ``(B, C, H, W)`` query input.
        encoder_hidden_states: ``(B, T, C_text)`` (cross-attention) or ``None`` (self-attention).
        edit: ``edit(probs) -> probs`` on the float32 ``(B, heads, N, T)`` probabilities; ``None`` leaves them.
        attention_mask, temb: as given to the processor.

    Returns:
        The layer output, shaped like ``hidden_states`` (equal to ``AttnProcessor2_0``'s up to float rounding when
        ``edit`` is ``None``).
    """
    hidden_states, undo = _prologue(attn, hidden_states, temb)
    batch = hidden_states.shape[0]
    q, k, v = _project(attn, hidden_states, encoder_hidden_states, encoder_hidden_states)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], batch)
        scores = scores + mask.view(batch, attn.heads, -1, mask.shape[-1]).float()
    probs = scores.softmax(dim=-1)
    if edit is not None:
        probs = edit(probs)
    out = torch.matmul(probs.to(v.dtype), v)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(q.dtype)
    return undo(attn.to_out[1](attn.to_out[0](out)))
