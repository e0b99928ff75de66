"""Dynamic Prompt Learning: the three losses on hand-computed maps, the thresholds, the k-means background mask on
planted clusters, and dynamic tokens at their true BPE positions."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit import AttnKitError
from attnkit.methods.dpl import (
    DPLConfig,
    DynamicPrompt,
    attention_balance_loss,
    background_loss,
    background_mask,
    disjoint_loss,
    dynamic_words,
    normalise_map,
    target_words,
)
from attnkit.core.tokens import TokenMap


def test_attention_balance_is_the_worst_words_missing_peak():
    maps = torch.zeros(2, 2, 2)
    maps[0, 0, 0], maps[0, 1, 1] = 0.7, 0.2
    maps[1, 1, 0] = 0.4
    assert attention_balance_loss(maps).item() == pytest.approx(0.6)  # max(1 - 0.7, 1 - 0.4)


def test_disjoint_loss_is_the_mean_pairwise_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    c = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert disjoint_loss(torch.stack([a, b])).item() == pytest.approx(0.0)
    assert disjoint_loss(torch.stack([a, c])).item() == pytest.approx(1 / math.sqrt(2))
    # pairs (a, b) = 0, (a, c) = 1/sqrt2, (b, c) = 1/sqrt2
    assert disjoint_loss(torch.stack([a, b, c])).item() == pytest.approx(2 / math.sqrt(2) / 3)
    assert disjoint_loss(a[None]).item() == 0.0


def test_background_loss_is_the_mean_cosine_with_the_mask():
    maps = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    background = torch.tensor([[False, True], [True, False]])
    # cos([1,1,0,0], [0,1,1,0]) = 1/2; cos([0,0,0,1], [0,1,1,0]) = 0
    assert background_loss(maps, background).item() == pytest.approx(0.25)


def test_thresholds_follow_the_official_schedule():
    config = DPLConfig()
    expected = {0: (0.30, 0.90, 0.70), 10: (0.201, 0.603, 0.573), 25: (0.110, 0.331, 0.425), 49: (0.0423, 0.127, 0.263)}
    for step, (at, dj, bg) in expected.items():
        got = config.thresholds(step)
        assert (got["at"], got["dj"], got["bg"]) == pytest.approx((at, dj, bg), abs=1e-3)


def test_normalise_map_is_the_official_formula():
    a = torch.tensor([0.1, 0.3, 0.5])
    assert torch.allclose(normalise_map(a), (a - 0.1) / 0.5)


def _planted():
    """8x8 self-attention with three planted regions (cat top-left, dog top-right, background bottom half) and
    4x4 cross maps of cat and dog on their regions."""
    region = torch.zeros(8, 8, dtype=torch.long)
    region[:4, 4:] = 1
    region[4:, :] = 2
    flat = region.flatten()
    g = torch.Generator().manual_seed(0)
    attention = (flat[:, None] == flat[None, :]).float() + 0.05 * torch.rand(64, 64, generator=g)
    attention = attention / attention.sum(-1, keepdim=True)
    cat, dog = torch.zeros(4, 4), torch.zeros(4, 4)
    cat[:2, :2], dog[:2, 2:] = 1.0, 1.0
    return region, attention, {"cat": cat + 0.01, "dog": dog + 0.01}


def test_kmeans_background_finds_the_planted_clusters():
    region, attention, nouns = _planted()
    found = background_mask(attention, nouns, (4, 4), (8, 8), clusters=3, threshold=0.2, seed=1, resize="area")
    # the clusters are the planted regions, whatever their numbering
    pairs = {(int(r), int(c)) for r, c in zip(region.flatten(), found.labels.flatten())}
    assert len(pairs) == 3 and len({r for r, _ in pairs}) == 3 and len({c for _, c in pairs}) == 3
    owner_of = {r: found.owners[c] for r, c in pairs}
    assert owner_of == {0: "cat", 1: "dog", 2: "BG"}
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[2:] = True
    assert torch.equal(found.mask, expected)
    # the official shrink (bicubic, any non-zero pixel) also keeps the row the bicubic kernel reaches
    official = background_mask(attention, nouns, (4, 4), (8, 8), clusters=3, threshold=0.2, seed=1).mask
    expected[1] = True
    assert torch.equal(official, expected)


def test_with_the_default_five_clusters_the_background_is_still_the_bottom_half():
    region, attention, nouns = _planted()
    found = background_mask(attention, nouns, (4, 4), (8, 8), clusters=5, seed=1, resize="area")
    assert found.mask is not None and found.mask[2:].all() and not found.mask[:2].any()


def test_no_background_cluster_gives_no_mask():
    region, attention, nouns = _planted()
    nouns["cat"][2:] = 1.0  # the cat's attention now also covers the bottom half: no cluster is left over
    found = background_mask(attention, nouns, (4, 4), (8, 8), clusters=3)
    assert found.mask is None and "BG" not in found.owners


# ------------------------------------------------------------------------------------------- dynamic tokens


def test_dynamic_token_sits_at_its_true_bpe_position_not_the_word_position(sd15):
    # "armadillo" is two BPE pieces, so every later word sits one token further than its word index says
    prompt = "an armadillo and a cat"
    tmap = TokenMap(prompt, sd15.tokenizer)
    words = dynamic_words(sd15, tmap, ["cat"])
    dyn = DynamicPrompt(sd15, tmap, words)
    official = prompt.split(" ").index("cat") + 1  # the official code's rule: word position + 1
    (slot,) = dyn.slots[words["cat"].pid]
    assert sd15.tokenizer.convert_ids_to_tokens(int(dyn.input_ids[0, slot])) == "cat</w>"
    assert slot == 6 and official == 5
    assert sd15.tokenizer.convert_ids_to_tokens(int(dyn.input_ids[0, official])) == "a</w>"


def test_a_multi_piece_noun_becomes_one_token_and_later_words_move_up(sd15):
    tmap = TokenMap("a porcupine on grass", sd15.tokenizer)  # por cup ine
    words = dynamic_words(sd15, tmap, ["porcupine"])
    dyn = DynamicPrompt(sd15, tmap, words)
    assert dyn.slots == {words["porcupine"].pid: [2]}
    assert dyn.keys.find("grass") == (4,) and tmap.find("grass").positions == (6,)
    table = sd15.text_encoder.get_input_embeddings().weight
    pieces = [tmap.ids[p] for p in (2, 3, 4)]
    assert torch.allclose(words["porcupine"].init, table[pieces].detach().mean(0))


def test_initial_tokens_reproduce_the_pipelines_own_encoding(sd15):
    prompt = "a cat and a dog"
    tmap = TokenMap(prompt, sd15.tokenizer)
    words = dynamic_words(sd15, tmap, ["cat", "dog"])
    dyn = DynamicPrompt(sd15, tmap, words)
    with torch.no_grad():
        ours = dyn.encode({w.pid: w.init for w in words.values()})
        theirs = sd15.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    assert torch.equal(ours, theirs)


def test_encoding_with_learnt_tokens_leaves_the_encoder_as_it_was(sd15):
    encoder = sd15.text_encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    vocab = len(sd15.tokenizer)
    tmap = TokenMap("a cat and a dog", sd15.tokenizer)
    words = dynamic_words(sd15, tmap, ["dog"])
    dyn = DynamicPrompt(sd15, tmap, words)
    vector = torch.randn_like(words["dog"].init, requires_grad=True)
    out = dyn.encode({words["dog"].pid: vector})
    (grad,) = torch.autograd.grad(out.sum(), [vector])
    assert grad.abs().sum() > 0  # the token is learnable through the frozen encoder
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert len(sd15.tokenizer) == vocab and not encoder.get_input_embeddings()._forward_hooks


def test_target_keeps_the_dynamic_tokens_of_nouns_it_still_has(sd15):
    src = TokenMap("a cat and a dog", sd15.tokenizer)
    words = dynamic_words(sd15, src, ["cat", "dog"])
    kept = target_words(TokenMap("a cat and a fox", sd15.tokenizer), words)
    assert set(kept) == {"cat"} and kept["cat"].pid == words["cat"].pid


def test_word_errors_name_the_word(sd15):
    tmap = TokenMap("a cat and a dog", sd15.tokenizer)
    with pytest.raises(AttnKitError, match="'horse'"):
        dynamic_words(sd15, tmap, ["horse"])
    with pytest.raises(AttnKitError, match="nouns to make dynamic"):
        dynamic_words(sd15, tmap, [])
    with pytest.raises(AttnKitError, match="token_iterations"):
        DPLConfig(token_iterations=10_000)


def test_target_keeps_the_same_occurrence_of_a_repeated_noun(sd15):
    src = TokenMap("a dog and a dog", sd15.tokenizer)
    words = dynamic_words(sd15, src, ["dog#1", "dog#2"])
    kept = target_words(TokenMap("a dog and a dog", sd15.tokenizer), words)
    assert {w: d.occurrences for w, d in kept.items()} == {w: d.occurrences for w, d in words.items()}
    src_keys = DynamicPrompt(sd15, src, words).keys
    tgt_keys = DynamicPrompt(sd15, TokenMap("a dog and a dog", sd15.tokenizer), kept).keys
    assert src_keys.content_ids == tgt_keys.content_ids  # each dog keeps its own token in the target
    only_second = target_words(TokenMap("a dog and a cat", sd15.tokenizer), dynamic_words(sd15, src, ["dog#2"]))
    assert only_second == {}  # the target has no second dog


# ------------------------------------------------------------------------------- official mask and cluster nouns


def _official_shrink(background: torch.Tensor, side: int) -> torch.Tensor:
    """The official code's mask, from its description: the background saved as a 512 px image (each cell a block of
    pixels), shrunk with PIL's default bicubic resize, every pixel above 0 kept."""
    import numpy as np
    from PIL import Image

    cells = background.numpy().astype(np.uint8) * 255
    block = 512 // cells.shape[0]
    image = Image.fromarray(np.kron(cells, np.ones((block, block), dtype=np.uint8)))
    return torch.from_numpy(np.asarray(image.resize((side, side), Image.BICUBIC)) > 0)


@pytest.mark.parametrize("seed", range(6))
def test_background_mask_is_shrunk_as_the_official_code(seed):
    from attnkit.methods.dpl import shrink_mask

    g = torch.Generator().manual_seed(seed)
    # a synthetic scene at the 32x32 self-attention grid: background everywhere but one or two blobs
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    background = torch.ones(32, 32)
    for _ in range(1 + seed % 2):
        cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([20.0, 20.0, 6.0]) + torch.tensor([6.0, 6.0, 5.0]))
        background[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 0
    official = shrink_mask(background, (16, 16), "official")
    assert torch.equal(official, _official_shrink(background, 16))
    area = shrink_mask(background, (16, 16), "area")
    assert bool((official | ~area).all()), "the official background contains the area-averaged one"
    assert int(official.sum()) > int(area.sum())


def test_every_noun_of_the_caption_may_own_a_cluster():
    """With a third noun whose attention covers the planted background, its cluster is no longer background (the
    official code's POS tagger lets every noun own clusters); with the dynamic words alone it is."""
    from attnkit.core.phrases import nouns

    assert [n.text for n in nouns("a cat and a dog on the grass")] == ["cat", "dog", "grass"]
    assert [n.text for n in nouns("a photo of a red school bus, highly detailed")] == ["photo", "school", "bus"]
    region, attention, maps = _planted()
    grass = torch.zeros(4, 4)
    grass[2:] = 1.0
    words_only = background_mask(attention, maps, (4, 4), (8, 8), clusters=3, seed=1)
    caption = background_mask(attention, {**maps, "grass": grass + 0.01}, (4, 4), (8, 8), clusters=3, seed=1)
    assert words_only.mask is not None and "BG" in words_only.owners
    assert caption.mask is None and "grass" in caption.owners


def test_dpl_config_names_its_choices():
    from attnkit.methods import DPLConfig

    config = DPLConfig()
    assert (config.mask_resize, config.cluster_nouns) == ("official", "caption")
    with pytest.raises(AttnKitError, match="mask_resize='bilinear'; use one of official, area"):
        DPLConfig(mask_resize="bilinear")
    with pytest.raises(AttnKitError, match="cluster_nouns='all'; use one of caption, words"):
        DPLConfig(cluster_nouns="all")
