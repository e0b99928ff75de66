"""The host attention-patch kernel: prompt text, steps, batch halves, block keys."""

from __future__ import annotations

import pytest
import torch

from attnkit.hosts import kernel as hostkernel
from attnkit.errors import UnsupportedModelError
from attnkit.methods import AStar, Observe


@pytest.mark.parametrize("prompt, text", [
    ("a (red car:1.2) and a [white] sheep", "a red car and a white sheep"),
    ("((masterpiece)), a cat", "masterpiece, a cat"),
    (r"a \(literal\) bracket", "a (literal) bracket"),
    ("a cat BREAK a dog in the rain", "a cat"),
    ("a ratio 16:9 photo", "a ratio 16:9 photo"),
    ("(a dog:.5)", "a dog"),
])
def test_strip_weights(prompt, text):
    assert hostkernel.strip_weights(prompt) == text


def test_step_clock_by_schedule_and_by_change():
    clock = hostkernel.StepClock(3, schedule=[14.6, 3.0, 0.9, 0.0])
    assert [clock.at(s) for s in (14.6, 14.6, 3.0, 3.0, 0.9)] == [0, 0, 1, 1, 2]
    clock = hostkernel.StepClock(3)
    assert [clock.at(s) for s in (14.6, 14.6, 3.0, 0.9, 0.9)] == [0, 0, 1, 2, 2]


def test_cond_rows_follow_cond_or_uncond_chunks():
    rows = hostkernel.HostRun.cond_rows
    assert rows(4, {"cond_or_uncond": [1, 0]}).tolist() == [2, 3]
    assert rows(4, {"cond_or_uncond": [0, 1]}).tolist() == [0, 1]
    assert rows(2, {"cond_or_uncond": [1]}).tolist() == []
    assert rows(3, {}).tolist() == [0, 1, 2]


def test_block_keys_and_grid_factors_follow_the_ldm_layout(sd15):
    from ..hosts.hostsim import LdmUNet

    ldm = LdmUNet(sd15.unet)
    blocks = hostkernel.unet_blocks(ldm)
    assert [k for k, _ in blocks] == sorted(ldm.keys.values(), key=list(ldm.keys.values()).index)
    # tiny SD 1.5: two down blocks (the first downsamples), so grids are the latent and half of it
    assert dict(blocks)[("input", 1, 0)] == 1 and dict(blocks)[("middle", 0, 0)] == 2
    assert dict(blocks)[("output", 0, 0)] == 2 and dict(blocks)[("output", 3, 0)] == 1
    assert hostkernel.unet_factors(ldm) == (1, 2)


def test_latent_methods_and_flux_are_refused_with_a_reason(sd15):
    with pytest.raises(UnsupportedModelError, match="a_star cannot run through Forge's attention patches"):
        hostkernel.HostRun([AStar(words=["car"])], "a car", sd15.tokenizer, family="sd", steps=3, host="Forge")
    with pytest.raises(UnsupportedModelError, match="flux"):
        hostkernel.HostRun([Observe()], "a car", sd15.tokenizer, family="flux", steps=3)


def test_replace_wraps_a_previous_replace_and_reads_maps(sd15):
    run = hostkernel.HostRun([Observe(words=["car"])], "a red car", sd15.tokenizer, family="sd", steps=1,
                             blocks=[(("input", 1, 0), 1)])
    seen = []

    def previous(q, k, v, extra):
        seen.append(q.shape)
        return torch.zeros_like(q)

    replace = run.replace(previous)
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 77, 8), torch.randn(2, 77, 8)
    extra = {"n_heads": 2, "dim_head": 4, "block": ("input", 1), "block_index": 0, "transformer_index": 3, "original_shape": [2, 4, 4, 4], "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0, 1.0])}
    out = replace(q, k, v, extra)
    assert seen == [(2, 16, 8)] and torch.equal(out, torch.zeros_like(q))
    report = run.finish()
    # the map of 'car' is the cond row's attention mass on its token, head-averaged, normalised to sum to 1
    d = 4
    qh = q[1:].reshape(1, 16, 2, d).transpose(1, 2)
    kh = k[1:].reshape(1, 77, 2, d).transpose(1, 2)
    probs = (qh @ kh.transpose(-1, -2) * d**-0.5).softmax(-1).mean(1)
    position = run.tokens.find("car").positions[0]
    raw = probs[..., position].reshape(1, 4, 4)
    torch.testing.assert_close(report["observe"].data["raw"]["car"], raw)
    assert torch.isclose(report["observe"].maps["car"].sum(), torch.tensor(1.0))


def test_a_new_reading_method_reaches_the_host_patches_by_its_declaration(sd15):
    """A method that declares it reads probabilities gets them from the host patches through the controller hook
    (on_probs), with no change to the kernel: the kernel chooses controllers by what methods declare."""
    from dataclasses import dataclass

    from attnkit.methods.base import Controller, Method

    @dataclass
    class PeakConfig:
        pass

    class PeakController(Controller):
        def bind(self, layers, latent_hw):
            self.prob_layers = frozenset(layer.index for layer in layers)

        def on_probs(self, layer, step, probs):
            self.report.data.setdefault("peaks", []).append(float(probs.max()))

    class Peak(Method):
        id = "peak"
        config_class = PeakConfig
        controller_class = PeakController
        attention = frozenset({"read"})

    run = hostkernel.HostRun([Peak()], "a red car", sd15.tokenizer, family="sd", steps=1,
                             blocks=[(("input", 1, 0), 1)])
    q, k, v = torch.randn(2, 16, 8), torch.randn(2, 77, 8), torch.randn(2, 77, 8)
    extra = {"n_heads": 2, "dim_head": 4, "block": ("input", 1), "block_index": 0, "transformer_index": 3,
             "original_shape": [2, 4, 4, 4], "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0, 1.0])}
    run.replace()(q, k, v, extra)
    peaks = run.finish()["peak"].data["peaks"]
    assert len(peaks) == 1 and 0 < peaks[0] <= 1
