"""Prompt-to-Prompt: token mappings, alignment, the cross/self rules, the local-blend mask, settings."""

from __future__ import annotations

import pytest
import torch

from attnkit import AttnKitError
from attnkit.methods.p2p import P2PConfig, P2PEdit, Keys, global_alignment, refine_mapper, replace_mapper
from attnkit.models import clip_tokenizer
from attnkit.core.steps import StepInfo
from attnkit.core.tokens import TokenMap


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def keys(tok, prompt, collapse=None):
    return Keys(TokenMap(prompt, tok), collapse)


def test_keys_collapse_a_multi_piece_word_into_one_key(tok):
    tmap = TokenMap("a porcupine and a cat", tok)  # porcupine: por cup ine
    plain = Keys(tmap)
    assert plain.find("cat") == (7,) and plain.eos == 8
    collapsed = Keys(tmap, {-1: [tmap.find("porcupine").positions]})
    assert collapsed.find("porcupine") == (2,) and collapsed.find("cat") == (5,)
    assert collapsed.slots == {-1: [2]} and collapsed.eos == 6
    assert collapsed.content_ids[1] == -1 and len(collapsed.content_ids) == 5


def test_replace_mapper_swaps_words_in_place(tok):
    src, tgt = keys(tok, "a cat riding a bike"), keys(tok, "a dog riding a bike")
    mapper = replace_mapper(src, tgt)
    assert torch.equal(mapper, torch.eye(77))  # same token counts: every key reads the same position
    maps = torch.rand(5, 77).softmax(-1)
    assert torch.allclose(maps @ mapper, maps)


def test_replace_mapper_spreads_a_word_of_another_length_and_shifts_the_tail(tok):
    src, tgt = keys(tok, "a cat on grass"), keys(tok, "a porcupine on grass")  # 1 piece -> 3 pieces
    mapper = replace_mapper(src, tgt)
    assert mapper[2, 2:5].tolist() == pytest.approx([1 / 3] * 3)
    assert mapper[3, 5] == 1 and mapper[4, 6] == 1  # "on grass" shifted by two
    assert mapper[5, 7] == 1  # EOS follows EOS
    columns = mapper.sum(0)
    assert torch.allclose(columns[2:5], torch.full((3,), 1 / 3))  # the swapped word's attention is spread, 1/len
    assert torch.equal(columns[[0, 1, *range(5, 77)]], torch.ones(74))  # every other key reads one source key
    with pytest.raises(AttnKitError, match="same|words one for one"):
        replace_mapper(src, keys(tok, "a cat sitting on grass"))


def test_global_alignment_prefers_gaps_and_matches_tokens():
    assert global_alignment([1, 2, 3], [1, 2, 3]) == [0, 1, 2]
    assert global_alignment([1, 3], [1, 2, 3]) == [0, -1, 1]
    assert global_alignment([1, 2, 3], [1, 9, 3]) == [0, -1, 2]  # a mismatch is two gaps (0 > -1)


def test_refine_mapper_keeps_new_words_own_attention(tok):
    src, tgt = keys(tok, "a cat on grass"), keys(tok, "a black cat on grass")
    pi, alpha = refine_mapper(src, tgt)
    assert alpha[2] == 0  # "black" is new
    assert pi[3] == 2 and pi[4] == 3 and pi[5] == 4 and alpha[3:6].tolist() == [1, 1, 1]
    assert pi[6] == 5  # EOS -> EOS


def test_cross_rule_inside_and_outside_the_window(tok):
    src_keys, tgt_keys = keys(tok, "a cat on grass"), keys(tok, "a dog on grass")
    edit = P2PEdit(P2PConfig(edit="replace", cross_replace=(0.0, 0.5)), src_keys, tgt_keys)
    src, tgt = torch.rand(2, 4, 77).softmax(-1), torch.rand(2, 4, 77).softmax(-1)
    assert torch.allclose(edit.cross(src, tgt, StepInfo(1, 10, 0.0)), src)
    assert torch.equal(edit.cross(src, tgt, StepInfo(5, 10, 0.0)), tgt)


def test_reweight_scales_the_words_columns_inside_the_window(tok):
    k = keys(tok, "a red car")
    edit = P2PEdit(P2PConfig(edit="reweight", reweight={"red": 3.0}), k, k)
    src, tgt = torch.rand(1, 4, 77).softmax(-1), torch.rand(1, 4, 77).softmax(-1)
    out = edit.cross(src, tgt, StepInfo(0, 10, 0.0))
    expected = src.clone()
    expected[..., 2] *= 3
    assert torch.allclose(out, expected)
    assert torch.equal(edit.cross(src, tgt, StepInfo(9, 10, 0.0)), tgt)  # outside: untouched, as in the paper


def test_word_windows_override_the_default(tok):
    src_keys, tgt_keys = keys(tok, "a cat on grass"), keys(tok, "a dog on grass")
    config = P2PConfig(cross_replace=(0.0, 0.8), cross_replace_words={"dog": (0.0, 0.2)})
    edit = P2PEdit(config, src_keys, tgt_keys)
    w = edit.token_weights(StepInfo(5, 10, 0.0))
    assert w[2] == 0 and w[1] == 1 and w[3] == 1


def test_blend_mask_is_the_union_of_both_prompts_words(tok):
    src_keys, tgt_keys = keys(tok, "a cat on grass"), keys(tok, "a dog on grass")
    edit = P2PEdit(P2PConfig(blend_words=["cat", "dog"]), src_keys, tgt_keys)
    assert edit.blend == ([2], [2])
    maps = torch.zeros(2, 4, 4, 77)
    maps[0, 0, 0, 2] = 1.0  # cat, top-left
    maps[1, 3, 3, 2] = 1.0  # dog, bottom-right
    mask = edit.blend_mask(maps, (8, 8))
    assert mask.shape == (1, 1, 8, 8)
    # 3x3 max-pool grows each hit to 2x2 cells at the corner; nearest upsampling x2 makes it 4x4 pixels
    assert mask[0, 0, :4, :4].all() and mask[0, 0, 4:, 4:].all()
    assert not mask[0, 0, :4, 4:].any() and not mask[0, 0, 4:, :4].any()
    with pytest.raises(AttnKitError, match="neither prompt"):
        P2PEdit(P2PConfig(blend_words=["horse"]), src_keys, tgt_keys)


@pytest.mark.parametrize("kwargs, message", [
    (dict(edit="swap"), "edit='swap'"),
    (dict(cross_replace=(0.5, 0.2)), "start < stop"),
    (dict(edit="reweight"), "needs reweight"),
    (dict(reweight={"red": 50}), r"\[-10, 10\]"),
    (dict(blend_threshold=1.5), "between 0 and 1"),
    (dict(self_replace_res=0), "grid side"),
])
def test_bad_settings_are_refused_with_the_value(kwargs, message):
    with pytest.raises(AttnKitError, match=message):
        P2PConfig(**kwargs)


def test_a_stop_fraction_is_a_window():
    assert P2PConfig(cross_replace=0.6, self_replace=0).cross_replace == (0.0, 0.6)
    assert P2PConfig(self_replace=0).self_replace == (0.0, 0.0)


def _official_steps(window, slots, count):
    """The official code's steps for a window: ``alpha[int(start * slots):int(stop * slots)] = 1`` over ``slots``
    entries (cross-attention: ``N + 1``; self-attention: ``N``), read at steps ``0..N-1``."""
    start, stop = window
    return [i for i in range(count) if int(start * slots) <= i < int(stop * slots)]


@pytest.mark.parametrize("count, cross, self_, blend", [
    (10, (0.0, 0.35), (0.0, 0.35), 0.35),  # the case where the roundings part
    (50, (0.0, 0.8), (0.0, 0.4), 0.2),  # the official defaults
    (7, (0.1, 0.9), (0.2, 0.6), 0.3),
    (25, (0.0, 0.4), (0.0, 0.2), 0.25),
])
def test_step_windows_round_as_the_official_code(tok, count, cross, self_, blend):
    src, tgt = keys(tok, "a cat riding a bike"), keys(tok, "a dog riding a bike")
    official = P2PEdit(P2PConfig(cross_replace=cross, self_replace=self_, start_blend=blend), src, tgt)
    progress = P2PEdit(P2PConfig(cross_replace=cross, self_replace=self_, start_blend=blend,
                                 step_rounding="progress"), src, tgt)
    steps = [StepInfo(i, count, 0.0) for i in range(count)]
    assert [s.index for s in steps if official.cross_active(s)] == _official_steps(cross, count + 1, count)
    assert [s.index for s in steps if official.self_active(s)] == _official_steps(self_, count, count)
    # LocalBlend's counter is 1 after the first step and blends once it exceeds int(start_blend * N)
    assert [s.index for s in steps if official.blends_at(s)] == [i for i in range(count) if i + 1 > int(blend * count)]
    assert [s.index for s in steps if progress.cross_active(s)] == [i for i in range(count) if cross[0] <= i / count < cross[1]]
    if count == 10:  # 0.35 of 10 steps: the official code replaces cross-attention at 3 steps, progress at 4
        assert len(_official_steps(cross, 11, 10)) == 3 and sum(progress.cross_active(s) for s in steps) == 4
