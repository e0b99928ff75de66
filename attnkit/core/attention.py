"""Explicit attention probabilities, computed only where a method reads them.

The layer's own processor still computes the layer output (on its fast path: SDPA, xformers, a custom processor);
these functions recompute the query and key projections of the selected rows and return the softmax probabilities of
image queries over text keys. On the UNet's cross-attention layers that is ``softmax(q k^T * scale)`` over the text
tokens; on Flux's joint attention it is the image-query x text-key block of the softmax over all [text; image] keys.

Probabilities are returned averaged over heads, in float32: ``(B, N_query, N_text)``.
"""

from __future__ import annotations

import torch

from .engine import probabilities


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
    mask = None
    if attention_mask is not None:
        batch = hidden_states.shape[0]
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
    probs = probabilities(q, k, attn.scale, mask)
    return probs.mean(dim=1) if mean_heads else probs


def flux_qkv(attn, hidden_states, encoder_hidden_states=None, values: bool = True):
    """Queries, keys (and values) of a Flux attention layer as its processor builds them, ``(B, L, H, D)`` each,
    text first when ``encoder_hidden_states`` is given, before RoPE. ``values=False`` skips the value projections
    (``None`` in their place)."""
    fused = getattr(attn, "fused_projections", False)

    def stream(x, fused_name, names, norms):
        """One stream's q, k(, v) ``(B, L, H, D)``: the image stream's projections, or the text stream's."""
        if fused and hasattr(attn, fused_name):
            parts = list(getattr(attn, fused_name)(x).chunk(3, dim=-1))
        else:
            parts = [getattr(attn, n)(x) if (i < 2 or values) else None for i, n in enumerate(names)]
        parts = [p.unflatten(-1, (-1, attn.head_dim)) if p is not None else None for p in parts]
        return getattr(attn, norms[0])(parts[0]), getattr(attn, norms[1])(parts[1]), parts[2] if values else None

    q, k, v = stream(hidden_states, "to_qkv", ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"))
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        eq, ek, ev = stream(encoder_hidden_states, "to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj"),
                            ("norm_added_q", "norm_added_k"))
        q, k = torch.cat([eq, q], dim=1), torch.cat([ek, k], dim=1)
        if values:
            v = torch.cat([ev, v], dim=1)
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
