"""Real-image editing on the tiny SD 1.5 pipeline: DDIM, null-text inversion, DPL, Prompt-to-Prompt, lifecycle.

The tiny pipeline has random weights, so its VAE cannot reproduce a picture and its decoded pixels say little about
an inversion; reconstruction quality is measured on the latents (the VAE's input), as a PSNR with the peak of
``|z*_0|`` as the signal.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import attnkit
from attnkit import AttnKitError, Interrupted, UnsupportedModelError, editing
from attnkit.core.processor import computed_attention
from attnkit.editing.inversion import DDIM, NullTextConfig, cfg_step, ddim_invert, denoise, null_text_step
from attnkit.core.processor import LayerProcessor

SOURCE, TARGET = "a cat and a dog", "a cat and a fox"


@pytest.fixture(scope="module")
def photo():
    """A smooth 128 px picture (gradients and waves)."""
    y, x = np.mgrid[0:128, 0:128] / 127.0
    array = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x) * np.cos(5 * y)], -1)
    return Image.fromarray((array * 255).astype(np.uint8))


def latent_psnr(z, reference) -> float:
    mse = float(((z - reference) ** 2).mean())
    return 10 * math.log10(float(reference.abs().max()) ** 2 / mse)


def processors(pipe):
    return dict(pipe.unet.attn_processors)


def test_ddim_step_is_the_schedulers(sd15):
    ddim = DDIM(sd15, 10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t in ddim.timesteps[[0, 5, 9]]:
        expected = ddim.scheduler.step(out, t, x).prev_sample
        torch.testing.assert_close(ddim.step(out, t, x), expected, rtol=1e-5, atol=1e-6)
    # invert_step undoes step when the model output is the same at both ends
    t = ddim.timesteps[3]
    torch.testing.assert_close(ddim.invert_step(out, t, ddim.step(out, t, x)), x, rtol=1e-4, atol=1e-5)


def test_explicit_attention_equals_the_sdpa_processor(sd15):
    """The adapter's own computation, on its fast path and with the probabilities made explicit for an editor (that
    leaves them as they are), equals diffusers' SDPA processor on self- and cross-attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from attnkit.core.engine import Event
    from attnkit.core.layers import LayerInfo
    from attnkit.methods import Observe
    from attnkit.methods.base import Controller

    class Same(Controller):
        def edit_probs(self, layer, step, probs):
            self.seen = probs.shape
            return probs

    same = Same(Observe(), None)
    for attn in (sd15.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1,
                 sd15.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2):
        g = torch.Generator().manual_seed(1)
        hidden = torch.randn(2, 64, attn.to_q.in_features, generator=g)
        text = torch.randn(2, 77, 32, generator=g) if attn.is_cross_attention else None
        expected = AttnProcessor2_0()(attn, hidden, text)
        layer = LayerInfo(0, "x", "x", "cross" if text is not None else "self", "down", 0, attn.heads, 1, 1, (8, 8))
        torch.testing.assert_close(computed_attention(attn, hidden, text), expected, rtol=1e-4, atol=1e-5)
        explicit = computed_attention(attn, hidden, text, event=Event(editors=(same,)), layer=layer, rows=slice(1, 2))
        torch.testing.assert_close(explicit, expected, rtol=1e-4, atol=1e-5)
        assert same.seen == (1, attn.heads, 64, 77 if text is not None else 64)


def test_null_text_fast_path_equals_the_batch_of_two(sd15):
    """One iteration with the conditional prediction computed once gives the same loss and gradient as the official
    batch-of-two forward ([null; cond]) with gradients to the null embedding."""
    ddim = DDIM(sd15, 10)
    g = torch.Generator().manual_seed(2)
    latent, target = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    cond, null = editing._embed(sd15, SOURCE), editing._embed(sd15, "")
    t = ddim.timesteps[0]
    param = null.clone().requires_grad_(True)
    out = denoise(sd15, torch.cat([latent, latent]), t, torch.cat([param, cond]))
    eps = out[:1] + 7.5 * (out[1:] - out[:1])
    loss = torch.nn.functional.mse_loss(ddim.step(eps, t, latent), target)
    (expected,) = torch.autograd.grad(loss, [param])
    config = NullTextConfig(null_iterations=1, null_lr=0.01)
    new, record, _ = null_text_step(sd15, ddim, config, 0, latent, cond, null, target, 7.5)
    assert record["loss_first"] == pytest.approx(float(loss.detach()), rel=1e-5)
    # Adam's first step moves each element by lr * sign(grad): the same direction as the reference gradient
    moved = (null - new).sign()
    agree = (moved == expected.sign()) | (expected.abs() < 1e-12)
    assert bool(agree.all())


def test_null_text_inversion_reconstructs_far_better_than_ddim_inversion(sd15, photo):
    steps, guidance = 10, 7.5
    ddim = DDIM(sd15, steps)
    z0 = editing._encode_image(sd15, photo)
    cond, null0 = editing._embed(sd15, SOURCE), editing._embed(sd15, "")
    inversion = ddim_invert(sd15, ddim, z0, cond)
    plain = inversion.latents[-1]
    for i in range(steps):
        plain = cfg_step(sd15, ddim, i, plain, cond, null0, guidance)
    nti, null = inversion.latents[-1], null0
    for i in range(steps):
        null, record, eps = null_text_step(sd15, ddim, NullTextConfig(), i, nti, cond, null,
                                           inversion.latents[steps - i - 1], guidance)
        nti = cfg_step(sd15, ddim, i, nti, cond, null, guidance, eps)
    ddim_psnr, nti_psnr = latent_psnr(plain, z0), latent_psnr(nti, z0)
    # measured: DDIM inversion -23.2 dB, null-text inversion -17.6 dB (10 steps, guidance 7.5, at most 10
    # iterations per step; negative because the random VAE's latents are small next to what a random UNet gets wrong)
    assert nti_psnr > ddim_psnr + 4.0, (ddim_psnr, nti_psnr)


@pytest.fixture(scope="module")
def dpl_edit(sd15, photo):
    """A DPL edit with a local blend: 8 steps, 4 token iterations per step."""
    before = processors(sd15)
    result = attnkit.edit(sd15, photo, SOURCE, TARGET, words=["cat", "dog"], num_inference_steps=8,
                          token_iterations=4, blend_words=["dog", "fox"], start_blend=0.0)
    assert processors(sd15) == before
    return result


def test_edit_returns_images_reconstruction_and_a_report(dpl_edit):
    r = dpl_edit
    assert len(r.images) == 1 and r.images[0].size == (128, 128) and r.reconstruction.size == (128, 128)
    report = r.report
    assert len(report.null_text) == 8 and len(report.token_iterations) == 8
    assert {"encode", "invert", "optimise", "edit", "total"} <= set(report.timings)
    assert set(report.maps) == {"cat", "dog"}
    for m in report.maps.values():
        assert m.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert report.clusters.shape == (16, 16) and len(report.owners) == 5
    assert report.blend is not None and report.blend.shape == (16, 16)
    assert r.before_after().size[0] == 3 * 256 and r.maps_image().size[0] > 256


def test_dynamic_token_loss_falls_over_the_inner_iterations(dpl_edit):
    config = attnkit.methods.DPLConfig()
    falls = 0
    steps = sorted({r["step"] for r in dpl_edit.report.dpl_losses})
    for step in steps:
        rows = [r for r in dpl_edit.report.dpl_losses if r["step"] == step]

        def total(r):
            bg = r["bg"] or 0.0
            return config.lambda_at * r["at"] + config.lambda_dj * r["dj"] + config.lambda_bg * bg

        falls += total(rows[-1]) < total(rows[0])
    assert falls >= len(steps) - 1, falls


def test_local_blend_keeps_the_reconstruction_outside_the_mask(sd15, photo, monkeypatch):
    """Outside the blend mask the target latent is the source latent after every step from start_blend on, so its
    pixels stay near the reconstruction; inside they change.

    The tiny model's random attention is nearly uniform, so its own mask covers everything; the mask is planted
    (the left half of the latent) to test what the blend does with it.
    """
    from attnkit.methods.p2p import P2PEdit

    def left_half(self, maps, latent_hw):
        mask = torch.zeros(1, 1, *latent_hw)
        mask[..., : latent_hw[1] // 2] = 1
        return mask

    monkeypatch.setattr(P2PEdit, "blend_mask", left_half)
    result = attnkit.edit(sd15, photo, SOURCE, TARGET, num_inference_steps=8, blend_words=["dog", "fox"],
                          start_blend=0.0, null_iterations=3)
    assert torch.equal(result.report.blend, left_half(None, None, (16, 16))[0, 0])
    edited = np.asarray(result.images[0], dtype=np.float32) / 255
    recon = np.asarray(result.reconstruction, dtype=np.float32) / 255
    diff = np.abs(edited - recon).max(-1)
    inside, outside = diff[:, :56].mean(), diff[:, 72:]  # 8 px margins at the edge: the decoder mixes neighbours
    # measured: outside mean 1.0% of the range (the VAE decoder's mid-block attention spreads a little of the edit
    # over the whole picture), inside 7.4%
    assert outside.mean() < 0.02, outside.mean()
    assert inside > 4 * outside.mean(), (inside, outside.mean())


def test_local_blend_keeps_the_source_latent_exactly_outside_the_mask(sd15):
    """The blend itself, on the step callback: ``z_tgt <- z_src + mask (z_tgt - z_src)``, exact where mask is 0."""
    from attnkit.methods.p2p import P2P
    from attnkit.runtime import Run
    from attnkit.core.steps import StepInfo

    run = Run(sd15, [P2P(blend_words=["dog"], start_blend=0.5)], prompt="a dog", target_prompt="a dog")
    controller = run.controllers[0]
    run.install()
    try:
        run.bind((16, 16))
    finally:
        run.uninstall()
    controller.store = torch.zeros(2, *controller.blend_grid, 77)
    controller.store[:, 0, 0, 2] = 1.0  # "dog" attends the top-left cell
    latents = torch.randn(2, 4, 16, 16)
    assert torch.equal(controller.step_latents(latents, StepInfo(1, 4, 0.0)), latents)  # before start_blend
    out = controller.step_latents(latents, StepInfo(2, 4, 0.0))
    mask = controller.mask[0, 0].bool()
    assert mask.any() and not mask.all()
    assert torch.equal(out[0], latents[0])
    assert torch.equal(out[1][:, ~mask], latents[0][:, ~mask])
    torch.testing.assert_close(out[1][:, mask], latents[1][:, mask])


def test_editing_the_caption_into_itself_reproduces_the_reconstruction(sd15, photo):
    result = attnkit.edit(sd15, photo, SOURCE, SOURCE, words=["dog"], num_inference_steps=6, token_iterations=2,
                          null_iterations=2)
    edited = np.asarray(result.images[0], dtype=np.float32)
    recon = np.asarray(result.reconstruction, dtype=np.float32)
    assert np.abs(edited - recon).max() <= 2.0  # at most 2 of 255 (float rounding of explicit vs SDPA attention)


def test_refine_and_reweight_edits_run(sd15, photo):
    refined = attnkit.edit(sd15, photo, "a cat", "a black cat", edit="refine", num_inference_steps=4,
                           null_iterations=1)
    reweighted = attnkit.edit(sd15, photo, "a red car", "a red car", edit="reweight", reweight={"red": 4.0},
                              num_inference_steps=4, null_iterations=1)
    assert refined.images[0].size == reweighted.images[0].size == (128, 128)
    a = np.asarray(reweighted.images[0], dtype=np.float32)
    b = np.asarray(reweighted.reconstruction, dtype=np.float32)
    assert np.abs(a - b).mean() > 0.01  # the reweighting acted


def test_user_encoder_tokenizer_and_processors_are_unchanged_after_an_edit(sd15, photo):
    state = {k: v.clone() for k, v in sd15.text_encoder.state_dict().items()}
    vocab = len(sd15.tokenizer)
    before = processors(sd15)
    attnkit.edit(sd15, photo, SOURCE, TARGET, words=["dog"], num_inference_steps=3, token_iterations=2,
                 null_iterations=1)
    assert all(torch.equal(state[k], v) for k, v in sd15.text_encoder.state_dict().items())
    assert len(sd15.tokenizer) == vocab and processors(sd15) == before
    assert not sd15.text_encoder.get_input_embeddings()._forward_hooks and not sd15.unet._forward_pre_hooks


def test_a_stopped_edit_leaves_the_pipeline_as_it_was(sd15, photo):
    before = processors(sd15)
    stop = threading.Event()
    seen = []

    def on_progress(phase, done, total):
        seen.append(phase)
        if phase == "optimise" and done == 2:
            stop.set()

    with pytest.raises(Interrupted):
        attnkit.edit(sd15, photo, SOURCE, TARGET, words=["dog"], num_inference_steps=5, token_iterations=2,
                     null_iterations=1, on_progress=on_progress, stop=stop)
    assert processors(sd15) == before and not any(isinstance(p, LayerProcessor) for p in before.values())
    assert seen.count("invert") == 5 and "edit" not in seen


def test_bad_input_is_refused_before_any_work(sd15, sdxl, photo):
    with pytest.raises(AttnKitError, match="'horse'"):
        attnkit.edit(sd15, photo, SOURCE, TARGET, words=["horse"])
    with pytest.raises(AttnKitError, match="words one for one"):
        attnkit.edit(sd15, photo, SOURCE, "a cat and a red fox", edit="replace")
    with pytest.raises(AttnKitError, match="no option 'strength'"):
        attnkit.edit(sd15, photo, SOURCE, TARGET, strength=0.5)
    with pytest.raises(UnsupportedModelError, match="SD 1.x/2.x"):
        attnkit.edit(sdxl, photo, SOURCE, TARGET)
    with pytest.raises(AttnKitError, match="cannot read the image"):
        attnkit.edit(sd15, "/no/such/photo.png", SOURCE, TARGET)


# --------------------------------------------------------------------------------------- prompt_to_prompt


def test_prompt_to_prompt_into_itself_gives_twice_the_same_image(sd15):
    result = attnkit.prompt_to_prompt(sd15, "a cat riding a bike", "a cat riding a bike", seed=3,
                                      num_inference_steps=4, output_type="np")
    a, b = result.images
    assert np.abs(a - b).max() < 1e-4


def test_prompt_to_prompt_leaves_the_source_image_alone_and_changes_the_target(sd15):
    kwargs = dict(num_inference_steps=4, output_type="np")
    result = attnkit.prompt_to_prompt(sd15, "a cat riding a bike", "a dog riding a bike", seed=3, **kwargs)
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor((1, 4, 16, 16), generator=torch.Generator("cpu").manual_seed(3))
    alone = sd15("a cat riding a bike", latents=noise, **kwargs).images[0]
    assert np.abs(result.images[0] - alone).max() < 1e-4
    plain_target = sd15("a dog riding a bike", latents=noise, **kwargs).images[0]
    assert np.abs(result.images[1] - plain_target).mean() > 1e-4  # the edit is not the plain target prompt
    assert result.report["p2p"].data["edit"] == "replace"


def test_p2p_without_a_target_prompt_is_refused(sd15):
    with pytest.raises(AttnKitError, match="one prompt into another"):
        attnkit.generate(sd15, "a cat", [attnkit.methods.P2P()], num_inference_steps=2)


def test_prompt_to_prompt_runs_on_sdxl(sdxl):
    result = attnkit.prompt_to_prompt(sdxl, "a cat riding a bike", "a cat riding a bike", seed=1,
                                      num_inference_steps=3, height=64, width=64, output_type="np")
    a, b = result.images
    assert a.shape == (64, 64, 3) and np.abs(a - b).max() < 1e-4
    edited = attnkit.prompt_to_prompt(sdxl, "a cat riding a bike", "a dog riding a bike", seed=1,
                                      num_inference_steps=3, height=64, width=64, output_type="np")
    assert np.abs(edited.images[0] - a).max() < 1e-4  # the source image is the same whatever the target


def test_dpl_edit_runs_inside_inference_mode(sd15, photo):
    with torch.inference_mode():
        result = attnkit.edit(sd15, photo, SOURCE, TARGET, words=["cat", "dog"], num_inference_steps=3,
                              token_iterations=2, null_iterations=1)
    assert len(result.report.dpl_losses) >= 3


def test_null_text_learning_rate_stays_positive_for_long_schedules(sd15):
    ddim = DDIM(sd15, 150)
    g = torch.Generator().manual_seed(0)
    latent, target = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    null = editing._embed(sd15, "")
    moved, record, _ = null_text_step(sd15, ddim, NullTextConfig(null_iterations=1), 149, latent,
                                      editing._embed(sd15, SOURCE), null, target, 7.5)
    assert record["iterations"] == 1 and not torch.equal(moved, null)  # the last step still learns


@pytest.mark.parametrize("words, given, expected_start, expected", [
    (["dog"], {}, "empty", (51, False)),  # DPL's official script: 51 fixed iterations, each step from ""
    (["dog"], {"null_start": "previous", "null_iterations": 3}, "previous", (3, False)),
    ([], {}, "previous", (10, True)),  # null-text inversion: 10 with early stop, from the previous step's
])
def test_null_text_follows_the_method_it_serves(sd15, photo, monkeypatch, words, given, expected_start, expected):
    """Where each step's null-text optimisation starts and how long it runs: DPL's official code re-encodes "" at
    every step (its pipeline gets no negative embeddings); null-text inversion carries the previous step's."""
    starts, configs = [], []
    empty = editing._embed(sd15, "")

    def recording(pipe, ddim, config, step, latent, cond, null, target, guidance, stop=None):
        starts.append(null.clone())
        configs.append(config)
        out = null + 0.01 * (step + 1)  # a different "optimised" embedding at each step
        return out, {"step": step, "iterations": 0, "loss_first": None, "loss_last": None}, None

    monkeypatch.setattr(editing, "null_text_step", recording)
    result = attnkit.edit(sd15, photo, SOURCE, TARGET, words=words, num_inference_steps=3, token_iterations=1,
                          **given)
    config = configs[0]
    assert (config.null_iterations, config.null_early_stop) == expected
    assert result.report.settings["null_text"]["null_start"] == expected_start
    for i, start in enumerate(starts):
        if expected_start == "empty" or i == 0:
            torch.testing.assert_close(start, empty)
        else:
            torch.testing.assert_close(start, starts[i - 1] + 0.01 * i)


def test_dpl_maps_default_to_the_official_16x16_grid(sd15, photo, monkeypatch):
    monkeypatch.setattr(editing, "null_text_step", lambda pipe, ddim, config, step, latent, cond, null, *a, **k:
                        (null, {"step": step, "iterations": 0, "loss_first": None, "loss_last": None}, None))
    result = attnkit.edit(sd15, photo, SOURCE, TARGET, words=["dog"], num_inference_steps=2, token_iterations=1)
    # the tiny model at 128 px has 16x16 and 8x8 maps: a quarter of the latent side would be 8x8; the official 16x16
    # exists, so it is used; its self-attention is 16x16 too (no 32x32 here)
    assert tuple(result.report.maps["dog"].shape) == (16, 16)
    assert tuple(result.report.clusters.shape) == (16, 16)
