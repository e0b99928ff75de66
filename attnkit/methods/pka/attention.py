"""PKA's attention pattern over token groups, computed without materialising dense attention.

Token groups of one joint-attention call: text ``T`` and image ``X`` (``N`` tokens on an ``h x w`` grid), spatial
conditions ``S_1..S_a`` (``N`` tokens each, on the image's grid) and subject conditions ``R_1..R_b``.
Who attends to whom:

- text queries: ``T u X`` (Flux unchanged);
- image queries: ``T u X``, plus, in **one joint softmax** (the default reading),
  - position-aligned attention: for each spatial condition the keys at the query's own position (a
    ``window x window`` neighbourhood, clipped at the borders; ``window=1``: the one aligned key);
  - keyword-scoped attention: every token of subject condition ``r`` when the query lies inside ``r``'s keyword
    mask (all queries when there is no mask yet);
- condition queries: their own group only (so their keys and values do not depend on the image and can be cached).

The residual reading of position-aligned attention (``residual=True``) leaves the spatial keys out of the softmax and
adds, per spatial condition, a softmax over the window's own keys times their values (``v`` of the aligned token
when ``window=1``: the paper's Eq. 2, whose softmax over one key is identically 1).

How it is computed: per-query keys cannot go into one SDPA call as they are, so each extra key ``e`` of query
``i`` becomes one more key dimension. The query gets ``q'_ie = q_i . k_e(i)`` (the raw dot product), the extra key is
the unit vector of that dimension (its score is then exactly ``scale * q_i . k_e(i)``), every ordinary key is 0
there; the extra key's value is the unit vector of one more value dimension, so the attention output carries the
extra key's probability ``p_ie`` there, and ``p_ie v_e(i)`` is added afterwards. Subject keys are ordinary keys for
the queries inside the mask: queries are gathered by which subjects they attend to, one SDPA call per such set,
and scattered back. So masked-out pairs cost nothing and no ``N x N`` score matrix exists outside SDPA's own
(memory-efficient or flash) kernels. Keyword masses (the image queries' probability on a subject's keyword tokens)
come out of the same call as further value dimensions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, mask=None) -> torch.Tensor:
    """``(B, L, H, D)`` attention as diffusers' native backend computes it (heads moved to dim 1 and back)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                         scale=scale)
    return out.transpose(1, 2)


def window_offsets(window: int) -> list[tuple[int, int]]:
    """``(dy, dx)`` of a ``window x window`` neighbourhood, the aligned position first."""
    r = window // 2
    rest = [(dy, dx) for dy in range(-r, window - r) for dx in range(-r, window - r) if (dy, dx) != (0, 0)]
    return [(0, 0)] + rest


@functools.lru_cache(maxsize=256)
def _neighbours(grid: tuple[int, int], offset: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image position, the index of its neighbour at ``offset`` and whether it is inside the grid (made
    once per grid, offset and device: every layer of every step asks)."""
    h, w = grid
    ys = torch.arange(h, device=device)[:, None].expand(h, w)
    xs = torch.arange(w, device=device)[None, :].expand(h, w)
    ny, nx = ys + offset[0], xs + offset[1]
    valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    index = (ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1)).flatten()
    return index, valid.flatten()


@dataclass
class Pattern:
    """The PKA pattern of one call.

    Attributes:
        grid: the image token grid ``(h, w)``.
        window: side of the position-aligned neighbourhood.
        residual: the residual reading of position-aligned attention.
        subject_masks: per subject condition, ``(B, N)`` bool masks of the image queries that attend to it, or
            ``None`` (every query attends to every subject: the first step).
        keyword_keys: per subject condition, the key positions (in ``T u X``) of its keyword tokens, for the keyword
            masses; ``None`` to skip them.
    """

    grid: tuple[int, int]
    window: int = 1
    residual: bool = False
    subject_masks: list[torch.Tensor] | None = None
    keyword_keys: list[list[int]] | None = None


def pka_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_len: int,
                  spatial: list[tuple[torch.Tensor, torch.Tensor]], subjects: list[tuple[torch.Tensor, torch.Tensor]],
                  pattern: Pattern, head_chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Outputs of the text and image queries under the PKA pattern.

    Args:
        q, k, v: ``(B, T + N, H, D)`` text then image tokens (after norms and RoPE).
        spatial, subjects: ``(k, v)`` of each spatial / subject condition, ``(B, N_c, H, D)``.
        pattern: the :class:`Pattern`.
        head_chunk: heads computed at once for the image queries (memory: the augmented copies of the keys and
            values exist for this many heads at a time).

    Returns:
        ``(out, keyword_mass)``: ``out`` ``(B, T + N, H, D)``; ``keyword_mass`` ``(B, N, n_subjects)`` (heads
        averaged) when ``pattern.keyword_keys`` is given, else ``None``.
    """
    b, length, heads, d = q.shape
    n = length - text_len
    scale = d ** -0.5
    if not spatial and not subjects and not pattern.keyword_keys:
        return sdpa(q, k, v), None
    text_out = sdpa(q[:, :text_len], k, v) if text_len else q.new_zeros(b, 0, heads, d)
    qx = q[:, text_len:]
    offsets = window_offsets(pattern.window) if spatial else []
    neighbours = [_neighbours(pattern.grid, o, q.device) for o in offsets]
    if len(neighbours) and neighbours[0][0].numel() != n:
        raise ValueError(f"the image has {n} tokens but the grid {pattern.grid} has {neighbours[0][0].numel()}")
    keywords = pattern.keyword_keys or []
    out_x = torch.empty_like(qx)
    mass = qx.new_zeros(b, n, len(keywords), dtype=torch.float32) if keywords else None
    chunk = max(1, min(heads, head_chunk))
    for h0 in range(0, heads, chunk):  # a few heads at a time: the augmented copies stay small
        hs = slice(h0, min(heads, h0 + chunk))
        o, m = _image_queries(qx[:, :, hs], k[:, :, hs], v[:, :, hs], text_len,
                              [(ks[:, :, hs], vs[:, :, hs]) for ks, vs in spatial],
                              [(ks[:, :, hs], vs[:, :, hs]) for ks, vs in subjects],
                              offsets, neighbours, keywords, pattern, scale)
        out_x[:, :, hs] = o
        if mass is not None:
            mass += m.float().sum(dim=2)
    if mass is not None:
        mass /= heads
    return torch.cat([text_out, out_x], dim=1), mass


def subject_summary(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, chunk: int = 1024):
    """For queries ``(M, h, D)`` against one subject's keys and values ``(N_r, h, D)``: the log of each query's
    softmax normaliser over those keys, ``(M, h)``, and its attention output over them, ``(M, h, D)``. Only the
    queries inside the subject's mask come here; scores exist for ``chunk`` of them at a time."""
    lse, out = [], []
    for start in range(0, q.shape[0], chunk):
        scores = torch.einsum("mhd,nhd->hmn", q[start:start + chunk].float(), k.float()) * scale
        lse.append(scores.logsumexp(-1).transpose(0, 1))
        out.append(torch.einsum("hmn,nhd->mhd", scores.softmax(-1), v.float()))
    if not lse:
        return q.new_zeros(0, q.shape[1], dtype=torch.float32), q.new_zeros(0, *q.shape[1:], dtype=torch.float32)
    return torch.cat(lse), torch.cat(out)


def _image_queries(qx, k, v, text_len, spatial, subjects, offsets, neighbours, keywords, pattern: Pattern, scale):
    """Image queries' outputs ``(B, N, h, D)`` and keyword masses ``(B, N, h, n_keywords)`` for a slice of heads.

    One SDPA call over ``T u X`` plus one extra key dimension per position-aligned key and one per subject: a
    subject's key has the query's log-normaliser over the subject's tokens as its score (so its probability is the
    subject's share of the joint softmax) and brings the query's attention output over the subject; queries outside
    the subject's mask give it no score at all.
    """
    b, n, heads, d = qx.shape
    length = k.shape[1]
    extra_k, extra_v, extra_valid = [], [], []  # per extra key: (B, N, h, D) keys/values, (N,) validity
    for ks, vs in spatial:
        for offset, (index, valid) in zip(offsets, neighbours):
            if offset == (0, 0):  # the aligned token: the condition's own keys and values, no copy
                extra_k.append(ks)
                extra_v.append(vs)
            else:
                extra_k.append(ks[:, index])
                extra_v.append(vs[:, index])
            extra_valid.append(valid)
    residual_out = None
    if pattern.residual and extra_k:
        residual_out = _residual(qx, extra_k, extra_v, extra_valid, len(spatial), len(offsets), scale)
        extra_k, extra_v, extra_valid = [], [], []
    e, r, kw = len(extra_k), len(subjects), len(keywords)
    dim = d + e + r + kw
    dim += (-dim) % 8  # SDPA's fast kernels want head dims in multiples of 8
    neg = max(torch.finfo(qx.dtype).min, torch.finfo(torch.float32).min) / 4  # exp() of it is 0; no -inf * 0
    qa = qx.new_zeros(b, n, heads, dim)
    qa[..., :d] = qx
    for j, (ke, valid) in enumerate(zip(extra_k, extra_valid)):
        dots = (qx.float() * ke.float()).sum(-1)  # (B, N, h): the raw score of the extra key
        qa[..., d + j] = torch.where(valid[None, :, None], dots, torch.full_like(dots, neg)).to(qx.dtype)
    subject_out = []
    for j, (ks, vs) in enumerate(subjects):
        slot = qa[..., d + e + j]
        slot.fill_(neg)
        outs = qx.new_zeros(b, n, heads, d, dtype=torch.float32)
        for row in range(b):
            if pattern.subject_masks is None:
                inside = torch.arange(n, device=qx.device)
            else:
                inside = torch.nonzero(pattern.subject_masks[j][row].bool()).flatten()
            lse, out = subject_summary(qx[row, inside], ks[row], vs[row], scale)
            slot[row, inside] = (lse / scale).to(qx.dtype)
            outs[row, inside] = out
        subject_out.append(outs)
    ka = k.new_zeros(b, length + e + r, heads, dim)
    ka[:, :length, :, :d] = k
    va = v.new_zeros(b, length + e + r, heads, dim)
    va[:, :length, :, :d] = v
    for j in range(e + r):
        ka[:, length + j, :, d + j] = 1
        va[:, length + j, :, d + j] = 1
    for j, positions in enumerate(keywords):
        va[:, positions, :, d + e + r + j] = 1
    image_out = sdpa(qa, ka, va, scale=scale)
    out = image_out[..., :d].float()  # out-of-place from here: the output may be part of a training graph
    for j in range(e):
        out = out + image_out[..., d + j : d + j + 1].float() * extra_v[j].float()
    for j in range(r):
        out = out + image_out[..., d + e + j : d + e + j + 1].float() * subject_out[j]
    if residual_out is not None:
        out = out + residual_out.float()
    return out.to(qx.dtype), image_out[..., d + e + r : d + e + r + kw]


def _residual(qx, keys, values, valid, conditions: int, per: int, scale: float) -> torch.Tensor:
    """Residual reading: per spatial condition, a softmax over its window's keys times their values, summed."""
    out = torch.zeros_like(qx, dtype=torch.float32)
    for c in range(conditions):
        ks, vs, ok = keys[c * per:(c + 1) * per], values[c * per:(c + 1) * per], valid[c * per:(c + 1) * per]
        scores = torch.stack([(qx.float() * kk.float()).sum(-1) * scale for kk in ks], dim=-1)  # (B, N, H, per)
        scores = scores.masked_fill(~torch.stack(ok, -1)[None, :, None, :], float("-inf"))
        p = scores.softmax(-1)
        out = out + sum(p[..., j:j + 1] * vs[j].float() for j in range(per))
    return out.to(qx.dtype)


# ------------------------------------------------------------------------------------- the reference pattern


def dense_mask(text_len: int, grid: tuple[int, int], kinds: list[str], condition_lens: list[int], window: int = 1,
               subject_masks: list[torch.Tensor] | None = None, row: int = 0) -> torch.Tensor:
    """The PKA pattern as one explicit ``(L, L)`` boolean mask over ``[T; X; C_1; ...]`` (reference and tests;
    ``True`` = may attend). ``kinds[i]`` is ``"spatial"`` or ``"subject"``."""
    h, w = grid
    n = h * w
    length = text_len + n + sum(condition_lens)
    mask = torch.zeros(length, length, dtype=torch.bool)
    mask[: text_len + n, : text_len + n] = True
    start = text_len + n
    for c, (kind, size) in enumerate(zip(kinds, condition_lens)):
        block = slice(start, start + size)
        mask[block, block] = True
        if kind == "spatial":
            for offset in window_offsets(window):
                index, valid = _neighbours(grid, offset, torch.device("cpu"))
                rows = torch.arange(n)[valid] + text_len
                mask[rows, start + index[valid]] = True
        else:
            s = sum(1 for kk in kinds[:c] if kk == "subject")
            inside = torch.ones(n, dtype=torch.bool) if subject_masks is None else subject_masks[s][row].bool().cpu()
            mask[text_len + torch.nonzero(inside).flatten(), block] = True
        start += size
    return mask
