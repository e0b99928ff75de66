"""Losses and map preprocessing of the latent-optimising methods, on synthetic maps with hand-computed answers."""

import math

import pytest
import torch
from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite import (  # noqa: E501
    AttentionStore,
    GaussianSmoothing,
    StableDiffusionAttendAndExcitePipeline,
)

from attnkit import AttnKitError
from attnkit.methods.latent import aggregate, smooth, smoothing_kernel, step_sizes, token_maps
from attnkit.core.layers import LayerInfo
from attnkit.methods import AStarConfig, AttendExciteConfig
from attnkit.methods.a_star import binarise, retention_loss, segregation_loss


def maps(*rows):
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, -1)


def test_segregation_loss_hand_computed():
    same = maps([1, 1, 0, 0], [1, 1, 0, 0])
    assert float(segregation_loss(same)) == pytest.approx(0.5)  # identical maps: the maximum, 0.5 per pair
    assert float(segregation_loss(maps([1, 1, 0, 0], [0, 0, 1, 1]))) == 0.0  # disjoint
    assert float(segregation_loss(maps([1, 1, 0, 0], [0, 1, 1, 0]))) == pytest.approx(1 / 4)  # min 1, sum 4
    three = maps([1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1])  # pairs: 0.5 + 0 + 0
    assert float(segregation_loss(three)) == pytest.approx(0.5)
    assert float(segregation_loss(maps([1, 0.5, 0, 0]))) == 0.0  # one concept: no pair


def test_retention_loss_hand_computed():
    a = maps([1, 0.5, 0, 0])
    b = maps([1, 1, 0, 0])
    assert float(retention_loss(a, b)) == pytest.approx(1 - 1.5 / 3.5)
    assert float(retention_loss(b, b)) == pytest.approx(0.5)  # perfect agreement still scores 1 - 2/4
    assert float(retention_loss(maps([0, 0, 1, 1]), b)) == pytest.approx(1.0)  # no overlap


def test_binarise():
    m = maps([0.2, 0.6, 1.0, 0.49])
    assert binarise(m, 0.5).flatten().tolist() == [0, 1, 1, 0]


def test_diffusers_kernel_quirk_and_true_gaussian():
    peer = GaussianSmoothing().weight
    ours = smoothing_kernel("diffusers")
    torch.testing.assert_close(ours, peer, rtol=0, atol=0)
    assert float(ours[0, 0, 1, 1]) == pytest.approx(0.332, abs=1e-3)
    assert float(ours[0, 0, 0, 1]) == pytest.approx(0.122, abs=1e-3)
    gaussian = smoothing_kernel("gaussian")
    centre = 1 / (1 + 2 * math.exp(-2)) ** 2
    assert float(gaussian[0, 0, 1, 1]) == pytest.approx(centre, abs=1e-6)  # ~0.62: much sharper
    assert smoothing_kernel("none") is None
    x = torch.rand(2, 5, 5)
    assert torch.equal(smooth(x, None), x)


def test_step_sizes_match_the_pipeline_schedule():
    sizes = step_sizes(50, 20)
    assert [round(float(sizes[i]), 2) for i in (0, 10, 20, 24)] == [20.0, 18.95, 17.84, 17.38]


def _layers(blocks):
    return [LayerInfo(i, f"{b}.{i}", f"{b}.{i}", "cross", b, 0, 2, 4, 1, (4, 4)) for i, b in enumerate(blocks)]


def test_aggregate_and_token_maps_match_the_pipeline():
    g = torch.Generator().manual_seed(0)
    layers = _layers(["down", "down", "up", "mid"])
    probs = {i: torch.rand(1, 2, 16, 77, generator=g).softmax(-1) for i in range(4)}
    store = AttentionStore((4, 4))
    store.attention_store = {"down": [probs[0][0], probs[1][0]], "up": [probs[2][0]], "mid": [probs[3][0]]}
    expected = store.aggregate_attention(("up", "down", "mid"))
    ours = aggregate(probs, layers, (4, 4))
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    peer_max = StableDiffusionAttendAndExcitePipeline._compute_max_attention_per_index(expected.clone(), [2, 5])
    smoothed = token_maps(ours, [[2], [5]], smoothing_kernel("diffusers"))
    torch.testing.assert_close(smoothed.amax(dim=(-2, -1)), torch.stack(peer_max), rtol=1e-6, atol=1e-8)


def test_config_errors():
    with pytest.raises(AttnKitError, match="give the subject words"):
        AttendExciteConfig()
    with pytest.raises(AttnKitError, match="give the subject words"):
        AttendExciteConfig(words=["cat"], token_indices=[2])
    with pytest.raises(AttnKitError, match="smoothing='box'"):
        AttendExciteConfig(words=["cat"], smoothing="box")
    with pytest.raises(AttnKitError, match="attn_res"):
        AttendExciteConfig(words=["cat"], attn_res=(16, 0))
    # one range per number, the field table's, whether the config or the method is built
    with pytest.raises(AttnKitError, match="max_iter_to_alter must be from 0 to 200, got 1000000000"):
        AttendExciteConfig(words=["cat"], max_iter_to_alter=10**9)
    with pytest.raises(AttnKitError, match="max_iter_to_alter must be from 0 to 200, got 500"):
        AttendExciteConfig(words=["cat"], max_iter_to_alter=500)
    with pytest.raises(AttnKitError, match="max_refinement_steps must be from 0 to 50, got 60"):
        AttendExciteConfig(words=["cat"], max_refinement_steps=60)
    with pytest.raises(AttnKitError, match="scale_factor must be from 0.5 to 100, got 500.0"):
        AStarConfig(words=["cat"], scale_factor=500)
    with pytest.raises(AttnKitError, match="max_iter_to_alter must be a whole number"):
        AttendExciteConfig(words=["cat"], max_iter_to_alter=2.5)
    with pytest.raises(AttnKitError, match="thresholds must be between 0 and 1"):
        AttendExciteConfig(words=["cat"], thresholds={0: 2})
    with pytest.raises(AttnKitError, match="tau must be from 0.05 to 0.95, got 1.5"):
        AStarConfig(words=["cat"], tau=1.5)
    with pytest.raises(AttnKitError, match="one mask per word"):
        AStarConfig(words=["cat", "dog"], masks={"cat": [[1, 0], [0, 0]]})
    with pytest.raises(AttnKitError, match="2-D array of 0 and 1"):
        AStarConfig(words=["cat"], masks={"cat": [[0.5, 0], [0, 0]]})
    assert AttendExciteConfig(words="cat, dog").words == ["cat", "dog"]
    assert AttendExciteConfig(words=["cat"], attn_res=16).attn_res == (16, 16)
