"""observe: per-word maps on the tiny pipelines."""

import numpy as np
import pytest
import torch

import attnkit
from attnkit.methods import Observe

from ..conftest import FAST, with_attnkit

PROMPT = "a red car and a blue bird"


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_maps_are_finite_normalised_and_distinct(pipes, family):
    _, result = with_attnkit(pipes[family], PROMPT, [Observe(words=["car", "blue bird", "red"])])
    report = result.report["observe"]
    assert list(report.maps) == ["car", "blue bird", "red"]
    for word, m in report.maps.items():
        assert m.shape == (1, 4, 4) and m.dtype == torch.float32
        assert bool(torch.isfinite(m).all()) and bool((m >= 0).all())
        torch.testing.assert_close(m.sum(dim=(-2, -1)), torch.ones(1))
        raw = report.data["raw"][word]
        assert 0 < float(raw.max()) <= 1
    assert not torch.allclose(report.maps["car"], report.maps["blue bird"])
    assert report.data["positions"]["blue bird"] == ([6, 7] if family != "flux" else [5, 6])
    assert report.data["layers"], "the layers it read are reported"
    assert report.timings["attention_s"] > 0


def test_default_words_are_every_word(sd15):
    _, result = with_attnkit(sd15, PROMPT, [Observe()])
    maps = result.report["observe"].maps
    assert list(maps) == ["a#1", "red", "car", "and", "a#2", "blue", "bird"]
    assert not torch.allclose(maps["a#1"], maps["a#2"])


def test_resolution_choice_and_batch(sd15):
    _, result = with_attnkit(sd15, PROMPT, [Observe(words=["car"], resolution=8)], num_images_per_prompt=2)
    m = result.report["observe"].maps["car"]
    assert m.shape == (2, 8, 8)
    torch.testing.assert_close(m.sum(dim=(-2, -1)), torch.ones(2))
    assert not torch.allclose(m[0], m[1]), "two images, two different latents, two maps"
    with pytest.raises(attnkit.AttnKitError, match="choose one of: 8x8, 4x4"):
        with_attnkit(sd15, PROMPT, [Observe(words=["car"], resolution=2)])


def test_running_mean_over_windows(sd15):
    # PNDM runs 4 timesteps for 3 inference steps: steps 0-1 fall in (0, .5), steps 2-3 in (.5, 1).
    windows = [(0.0, 1.0), (0.0, 0.5), (0.5, 1.0)]
    _, result = with_attnkit(sd15, PROMPT, [Observe(words=["car", "bird"], steps=windows)])
    assert result.report.steps == 4
    by_window = result.report["observe"].data["windows"]
    assert [w["window"] for w in by_window] == windows
    for word in ("car", "bird"):
        full, first, second = (w["raw"][word] for w in by_window)
        torch.testing.assert_close(full, (first + second) / 2)
        assert not torch.allclose(first, second), "attention moves over the steps (test is live)"


def test_memory_does_not_grow_with_steps(sd15):
    shapes = []
    for steps in (2, 6):
        with attnkit.attach(sd15, [Observe(words=["car"])], prompt=PROMPT) as run:
            sd15(PROMPT, callback_on_step_end=run.callback, **{**FAST, "num_inference_steps": steps})
        controller = run.controllers[0]
        shapes.append([tuple(s.shape) for s in controller.sums])
    assert shapes[0] == shapes[1] == [(1, 16, 1)]


def test_empty_window_warns(sd15):
    _, result = with_attnkit(sd15, PROMPT, [Observe(words=["car"], steps=[(0.9, 1.0), (0.0, 1.0)])],
                             num_inference_steps=2)
    report = result.report["observe"]
    assert report.maps == {} and report.data["windows"][1]["maps"]["car"].shape == (1, 4, 4)
    assert any("no step fell in the window 0.9-1" in w for w in result.report.warnings)


def _first_step_maps(pipe, **kwargs):
    _, result = with_attnkit(pipe, PROMPT, [Observe(words=["car", "bird"], steps=[(0.0, 0.01)])], **kwargs)
    return result.report["observe"].maps


def test_cfg_halves_are_told_apart(sd15):
    # Step 0 sees the same latent with or without CFG, so the conditional branch's maps must agree; the negative
    # prompt only feeds the unconditional half, so it must not change them (while it does change the image).
    with_cfg = _first_step_maps(sd15, guidance_scale=7.5)
    without = _first_step_maps(sd15, guidance_scale=1.0)
    negative = _first_step_maps(sd15, guidance_scale=7.5, negative_prompt="a car")
    for word in ("car", "bird"):
        torch.testing.assert_close(with_cfg[word], without[word], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(with_cfg[word], negative[word], rtol=1e-4, atol=1e-6)
    a, _ = with_attnkit(sd15, PROMPT, guidance_scale=7.5)
    b, _ = with_attnkit(sd15, PROMPT, guidance_scale=7.5, negative_prompt="a car")
    assert not np.array_equal(a, b)


def test_flux_true_cfg_reads_the_conditional_call(flux):
    plain_maps = _first_step_maps(flux)
    true_cfg = _first_step_maps(flux, negative_prompt="a green tree", true_cfg_scale=4.0)
    for word in ("car", "bird"):
        torch.testing.assert_close(plain_maps[word], true_cfg[word], rtol=1e-4, atol=1e-6)


def test_heatmap_grid(sd15):
    _, result = with_attnkit(sd15, PROMPT, [Observe(words=["car", "bird"])])
    from PIL import Image

    image = Image.fromarray((result.images[0] * 255).astype("uint8"))
    result.images = [image]
    grid = result.heatmaps()
    assert grid.size == (3 * 256, 256 + 25)
    pixels = np.asarray(grid).astype(int)
    base, car, bird = (pixels[:256, i * 256 : (i + 1) * 256] for i in range(3))
    assert np.abs(car - base).mean() > 5 and np.abs(car - bird).mean() > 1
    assert pixels[256:, 256:512].min() < 100, "a dark label is drawn under the tile"


def test_sdxl_prompt_2_must_match_when_words_are_targeted(sdxl):
    with pytest.raises(attnkit.AttnKitError, match="prompt_2 differs from prompt"):
        with_attnkit(sdxl, PROMPT, [Observe(words=["car"])], prompt_2="a photo of a dog")
    _, result = with_attnkit(sdxl, PROMPT, [Observe(words=["car"])], prompt_2=PROMPT)
    assert result.report["observe"].maps["car"].shape == (1, 4, 4)
