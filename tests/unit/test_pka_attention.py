"""PKA's attention pattern against a dense attention with the equivalent explicit mask, for every group pattern."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnkit.methods.pka import attention as pa
from attnkit.methods.pka.attention import Pattern, dense_mask, pka_attention, sdpa

B, T, GRID, H, D = 2, 5, (4, 4), 2, 16
N = GRID[0] * GRID[1]
SUBJECT_LEN = 9


def groups(kinds, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T + N, H, D, generator=g) for _ in range(3))
    conds = [tuple(torch.randn(B, N if kind == "spatial" else SUBJECT_LEN, H, D, generator=g) for _ in range(2))
             for kind in kinds]
    return q, k, v, conds


def reference(q, k, v, conds, kinds, window, masks, row):
    """Dense SDPA over [T; X; C...] with the explicit PKA mask (conditions' queries zero: only T and X are read)."""
    mask = dense_mask(T, GRID, kinds, [c[0].shape[1] for c in conds], window, masks, row)
    keys = torch.cat([k[row:row + 1]] + [c[0][row:row + 1] for c in conds], 1)
    values = torch.cat([v[row:row + 1]] + [c[1][row:row + 1] for c in conds], 1)
    queries = torch.cat([q[row:row + 1]] + [torch.zeros_like(c[0][row:row + 1]) for c in conds], 1)
    return sdpa(queries, keys, values, mask=mask)[0, : T + N], mask


PATTERNS = [["spatial"], ["subject"], ["spatial", "subject"], ["subject", "spatial", "subject", "spatial"],
            ["spatial", "spatial", "spatial"]]


@pytest.mark.parametrize("kinds, window, masked", list(itertools.product(PATTERNS, (1, 3), (False, True))))
def test_pka_equals_dense_attention_with_the_explicit_mask(kinds, window, masked):
    q, k, v, conds = groups(kinds)
    subjects = [c for c, kind in zip(conds, kinds) if kind == "subject"]
    spatial = [c for c, kind in zip(conds, kinds) if kind == "spatial"]
    g = torch.Generator().manual_seed(5)
    masks = [torch.rand(B, N, generator=g) > 0.5 for _ in subjects] if masked else None
    out, _ = pka_attention(q, k, v, T, spatial, subjects, Pattern(GRID, window, False, masks))
    for row in range(B):
        expected, _ = reference(q, k, v, conds, kinds, window, masks, row)
        torch.testing.assert_close(out[row], expected, rtol=1e-5, atol=1e-5)


def test_no_conditions_is_flux_attention_exactly():
    q, k, v, _ = groups([])
    out, mass = pka_attention(q, k, v, T, [], [], Pattern(GRID))
    assert torch.equal(out, sdpa(q, k, v)) and mass is None


def test_keyword_mass_is_the_image_queries_probability_on_the_keyword_tokens():
    kinds = ["spatial", "subject"]
    q, k, v, conds = groups(kinds, seed=1)
    keywords = [[1, 3]]
    _, mass = pka_attention(q, k, v, T, [conds[0]], [conds[1]], Pattern(GRID, keyword_keys=keywords))
    for row in range(B):
        _, mask = reference(q, k, v, conds, kinds, 1, None, row)
        keys = torch.cat([k[row]] + [c[0][row] for c in conds], 0)  # (L, H, D)
        scores = torch.einsum("nhd,lhd->hnl", q[row, T:], keys) * D ** -0.5
        probs = scores.masked_fill(~mask[T:T + N][None], float("-inf")).softmax(-1)
        torch.testing.assert_close(mass[row, :, 0], probs[..., keywords[0]].sum(-1).mean(0), rtol=1e-5, atol=1e-6)


def test_residual_reading_adds_the_aligned_values():
    kinds = ["spatial", "spatial"]
    q, k, v, conds = groups(kinds, seed=2)
    out, _ = pka_attention(q, k, v, T, conds, [], Pattern(GRID, residual=True))
    dense = sdpa(q, k, v)
    expected = dense[:, T:] + conds[0][1] + conds[1][1]  # softmax over one aligned key is 1: out_i += v_s,i
    torch.testing.assert_close(out[:, T:], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :T], dense[:, :T])


def test_masked_out_pairs_cost_nothing(monkeypatch):
    """A subject's tokens meet only the queries inside its mask (gathered); the one SDPA call has no (L, L) mask."""
    kinds = ["subject"]
    q, k, v, conds = groups(kinds, seed=3)
    masks = [torch.zeros(B, N, dtype=torch.bool)]
    masks[0][:, :5] = True
    summaries, calls = [], []
    real_summary, real_sdpa = pa.subject_summary, pa.sdpa

    def summary(q_, k_, v_, scale, chunk=1024):
        summaries.append((q_.shape[0], k_.shape[0]))
        return real_summary(q_, k_, v_, scale, chunk)

    def recording(q_, k_, v_, scale=None, mask=None):
        calls.append((q_.shape[1], k_.shape[1], mask))
        return real_sdpa(q_, k_, v_, scale=scale, mask=mask)

    monkeypatch.setattr(pa, "subject_summary", summary)
    monkeypatch.setattr(pa, "sdpa", recording)
    pka_attention(q, k, v, T, [], conds, Pattern(GRID, subject_masks=masks))
    assert summaries == [(5, SUBJECT_LEN)] * B  # only the 5 masked-in queries of each row see the subject's tokens
    assert all(mask is None for _, _, mask in calls)  # no (L, L) mask is ever built
    assert all(lk <= T + N + len(kinds) for _, lk, _ in calls)  # the subject is one key per query in the SDPA call


def test_window_offsets_start_with_the_aligned_token():
    assert pa.window_offsets(1) == [(0, 0)]
    offsets = pa.window_offsets(3)
    assert offsets[0] == (0, 0) and len(offsets) == 9 and len(set(offsets)) == 9


def test_head_chunks_give_the_same_result():
    kinds = ["spatial", "subject"]
    q, k, v, conds = groups(kinds, seed=4)
    masks = [torch.rand(B, N, generator=torch.Generator().manual_seed(1)) > 0.5]
    pattern = Pattern(GRID, 3, False, masks, [[2]])
    whole, mass = pka_attention(q, k, v, T, [conds[0]], [conds[1]], pattern, head_chunk=H)
    split, mass1 = pka_attention(q, k, v, T, [conds[0]], [conds[1]], pattern, head_chunk=1)
    torch.testing.assert_close(split, whole)
    torch.testing.assert_close(mass1, mass)
