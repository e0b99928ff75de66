"""attend_excite and a_star on the tiny pipelines: equivalence with diffusers' pipeline, schedules, safety."""

import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionAttendAndExcitePipeline

import attnkit
from attnkit.methods import AStar, AttendExcite, Observe, StructuredGuidance
from attnkit.methods.a_star import AStarController

from ..conftest import FAST, plain, with_attnkit

PROMPT = "a cat and a frog"


def peer_pipeline(pipe):
    components = {k: v for k, v in pipe.components.items() if k != "image_encoder"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = StableDiffusionAttendAndExcitePipeline(**components, requires_safety_checker=False)
    peer.set_progress_bar_config(disable=True)
    return peer


@pytest.mark.parametrize(
    "settings",
    [
        dict(num_inference_steps=5),  # diffusers' defaults: refinement at step 0, updates at every step
        dict(num_inference_steps=6, num_images_per_prompt=2, max_iter_to_alter=3, thresholds={0: 0.05, 2: 0.5, 4: 0.9},
             scale_factor=30),
    ],
)
def test_attend_excite_reproduces_the_diffusers_pipeline(sd15, settings):
    settings = dict(settings)
    method_keys = ("max_iter_to_alter", "thresholds", "scale_factor")
    method = {k: settings.pop(k) for k in method_keys if k in settings}
    common = dict(height=64, width=64, **settings)
    expected = peer_pipeline(sd15)(PROMPT, token_indices=[2, 5], attn_res=(4, 4), output_type="np",
                                  generator=torch.Generator().manual_seed(0), **method, **common).images
    ours, result = with_attnkit(sd15, PROMPT, [AttendExcite(words=["cat", "frog"], **method)], **common)
    assert np.abs(ours - expected).max() <= 1e-4
    assert np.abs(plain(sd15, PROMPT, **common) - expected).max() > 1e-3, "the method changes the image (live)"
    report = result.report["attend_excite"]
    assert report.data["attn_res"] == (4, 4) and report.data["concepts"] == {"cat": [2], "frog": [5]}
    assert report.losses[0]["refinement_tries"] == 20  # random weights never reach the threshold


def test_early_stop_gives_the_full_forward_gradient(sd15):
    method = AStar(words=["cat", "frog"])
    grads, calls = [], []
    hook = sd15.unet.up_blocks[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        with attnkit.attach(sd15, [method], prompt=PROMPT) as run:
            sd15(PROMPT, **run.call_kwargs(), **{**FAST, "num_inference_steps": 1})
            controller = run.controllers[0]
            step = attnkit.StepInfo(0, 1, 999.0)
            latent0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
            for early in (True, False):
                calls.clear()
                with torch.enable_grad():
                    latent = latent0.clone().requires_grad_(True)
                    maps = run.gradient_maps(controller, latent, step, early_stop=early)
                    loss = sum(m.pow(2).sum() for m in maps.values())
                    grads.append(torch.autograd.grad(loss, latent)[0])
                assert (len(calls) == 0) == early, "the early-stopped forward never reaches the last up block"
    finally:
        hook.remove()
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def _latents_per_step(pipe, methods, steps=8):
    seen = []

    def keep(pipeline, i, t, kwargs):
        seen.append(kwargs["latents"].clone())
        return {}

    _, result = with_attnkit(pipe, "a cat and a dog", methods, num_inference_steps=steps,
                             callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
    return seen, result


def test_latent_changes_only_on_optimised_steps(sd15):
    base, _ = _latents_per_step(sd15, [])
    seen, result = _latents_per_step(sd15, [AStar(words=["cat", "dog"], steps=(0.5, 1.0))])
    count = len(base)
    first = next(i for i in range(count) if i / count >= 0.5)
    assert [r["step"] for r in result.report["a_star"].losses] == list(range(first, count))
    for i in range(count):  # the latent after step i depends on updates before steps <= i
        same = torch.equal(seen[i], base[i])
        assert same == (i < first), f"step {i}"


def test_a_star_loss_falls_after_updates(sd15):
    _, result = with_attnkit(sd15, "a cat and a dog", [AStar(words=["cat", "dog"], measure_after_update=True)],
                             num_inference_steps=8)
    losses = result.report["a_star"].losses
    assert len(losses) == 9 and losses[0]["retention"] == 0.0 and losses[1]["retention"] > 0
    lower = sum(r["loss_after"] < r["loss"] for r in losses)
    assert lower / len(losses) >= 0.8, losses


def test_layout_masks_drive_retention_from_the_first_step(sd15):
    left = [[1, 1, 0, 0]] * 4
    right = [[0, 0, 1, 1]] * 4
    _, result = with_attnkit(sd15, "a cat and a dog", [AStar(words=["cat", "dog"], masks={"cat": left, "dog": right})])
    first = result.report["a_star"].losses[0]
    assert first["retention"] > 0


@pytest.mark.parametrize("method", [AStar(words=["cat", "frog"]), AttendExcite(words=["cat", "frog"], thresholds={})])
def test_works_under_inference_mode(sd15, method):
    expected, _ = with_attnkit(sd15, PROMPT, [method])
    with torch.inference_mode():
        images, result = with_attnkit(sd15, PROMPT, [method])
    np.testing.assert_allclose(images, expected, atol=1e-6)
    assert result.report[method.id].losses


class Failing(AStar):
    class controller_class(AStarController):
        def optimise(self, latent, step, image):
            if step.index == 2:
                self.concept_maps(latent.clone().requires_grad_(True), step, image)
                raise RuntimeError("boom in the middle of an optimisation")
            return super().optimise(latent, step, image)


def test_processors_restored_after_failure_mid_optimisation(sd15):
    before = dict(sd15.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with_attnkit(sd15, PROMPT, [Failing(words=["cat", "frog"])])
    after = dict(sd15.unet.attn_processors)
    assert all(before[k] is after[k] for k in before)
    np.testing.assert_array_equal(with_attnkit(sd15, PROMPT)[0], plain(sd15, PROMPT))


def test_resolution_without_cross_attention_is_a_clear_error(sd15):
    with pytest.raises(attnkit.AttnKitError, match="resolution 16x16 has no cross-attention layer .* 8x8, 4x4"):
        with_attnkit(sd15, PROMPT, [AttendExcite(words=["cat"], attn_res=(16, 16))])


def test_sdxl_end_to_end(sdxl):
    images, result = with_attnkit(sdxl, PROMPT, [AttendExcite(words=["cat", "frog"])])
    assert np.abs(images - plain(sdxl, PROMPT)).max() > 1e-4
    assert result.report["attend_excite"].losses
    _, result = with_attnkit(sdxl, PROMPT, [AStar(words=["cat", "frog"])])
    assert len(result.report["a_star"].losses) == len(sdxl.scheduler.timesteps)


def test_flux_is_refused(flux):
    for method in (AStar(words=["cat"]), AttendExcite(words=["cat"])):
        with pytest.raises(attnkit.UnsupportedModelError, match="does not support Flux pipelines"):
            with_attnkit(flux, PROMPT, [method])


def test_composes_with_structured_and_observe(sd15):
    methods = [AStar(words=["cat", "frog"]), StructuredGuidance(), Observe(words=["cat"])]
    images, result = with_attnkit(sd15, PROMPT, methods)
    assert set(result.report.methods) == {"a_star", "structured", "observe"}
    alone, _ = with_attnkit(sd15, PROMPT, methods[:1])
    assert not np.array_equal(images, alone), "structured changes the run"
    assert result.report["observe"].maps["cat"].shape == (1, 4, 4)


def test_words_not_in_prompt(sd15):
    with pytest.raises(attnkit.WordNotFoundError, match="'dog' is not in the prompt"):
        with_attnkit(sd15, PROMPT, [AStar(words=["cat", "dog"])])


def test_attach_with_call_kwargs_optimises_from_step_1(sd15):
    with attnkit.attach(sd15, [AStar(words=["cat", "frog"])], prompt=PROMPT) as run:
        sd15(PROMPT, **run.call_kwargs(), **FAST)
    losses = run.report["a_star"].losses
    assert [r["step"] for r in losses] == list(range(1, len(sd15.scheduler.timesteps)))
    assert any("step 0 was not optimised" in w for w in run.report.warnings)
    with pytest.raises(attnkit.StepCallbackError, match="needs the latents at each step end"):
        with attnkit.attach(sd15, [AStar(words=["cat", "frog"])], prompt=PROMPT) as run:
            sd15(PROMPT, callback_on_step_end=run.callback, callback_on_step_end_tensor_inputs=["prompt_embeds"],
                 **FAST)


def test_inner_passes_are_reported_and_stop_acts_within_one(sd15):
    """Refinement tries and A-STAR iterations are reported before each pass; a Stop pressed during a refinement acts
    at the next try (not after the step), and the pipeline is left as it was."""
    from attnkit.errors import Interrupted

    seen = []
    # thresholds out of reach: step 0 refines for all its tries
    method = AttendExcite(words=["cat", "frog"], thresholds={0: 1.0}, max_refinement_steps=6, max_iter_to_alter=2)
    attnkit.generate(sd15, PROMPT, [method], seed=0, num_inference_steps=3,
                     on_work=lambda step, what, done, total: seen.append((step.index, what, done, total)))
    assert [s for s in seen if s[0] == 0] == [(0, "optimising", 0, 1)] + [(0, "refining", i, 6) for i in range(6)]
    assert [s for s in seen if s[0] > 0] == [(1, "optimising", 0, 1)]

    seen = []
    attnkit.generate(sd15, PROMPT, [AStar(words=["cat", "frog"], iterations=3)], seed=0, num_inference_steps=2,
                     on_work=lambda step, what, done, total: seen.append((step.index, what, done, total)))
    # the tiny pipelines sample with PNDM: 3 denoiser steps for 2
    assert seen == [(i, "optimising", d, 3) for i in range(3) for d in range(3)]

    before = dict(sd15.unet.attn_processors)
    stop, passes = __import__("threading").Event(), []

    def press_stop(step, what, done, total):
        passes.append(done)
        if what == "refining" and done == 2:
            stop.set()

    with pytest.raises(Interrupted, match="stopped by the user"):
        attnkit.generate(sd15, PROMPT, [method], seed=0, num_inference_steps=3, on_work=press_stop, stop=stop)
    assert passes == [0, 0, 1, 2], "the try after the Stop never ran"
    assert all(before[k] is v for k, v in sd15.unet.attn_processors.items())
    np.testing.assert_array_equal(with_attnkit(sd15, PROMPT)[0], plain(sd15, PROMPT))


def test_stop_between_steps_raises_and_restores(sd15):
    from attnkit.errors import Interrupted

    stop, steps = __import__("threading").Event(), []

    def on_step(step):
        steps.append(step.index)
        if step.index == 1:
            stop.set()

    before = dict(sd15.unet.attn_processors)
    with pytest.raises(Interrupted):
        attnkit.generate(sd15, PROMPT, [Observe(words=["cat"])], seed=0, num_inference_steps=5, on_step=on_step,
                         stop=stop)
    assert steps == [0, 1]
    assert all(before[k] is v for k, v in sd15.unet.attn_processors.items())


def _with_scheduler(pipe, scheduler_class):
    import copy

    other = copy.copy(pipe)
    other.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    return other


def test_scale_input_off_reproduces_the_pipeline_on_euler(sd15):
    """On a scheduler that scales the model input (Euler), diffusers' pipeline feeds the gradient pass the raw latent:
    ``scale_input=False`` reproduces it; the default (the latent as the step's own call sees it) is another result;
    on a scheduler that does not scale (the tiny pipeline's own), both settings are the same."""
    from diffusers import EulerDiscreteScheduler

    from attnkit.core.steps import StepInfo

    euler = _with_scheduler(sd15, EulerDiscreteScheduler)
    common = dict(height=64, width=64, num_inference_steps=5)
    expected = peer_pipeline(euler)(PROMPT, token_indices=[2, 5], attn_res=(4, 4), output_type="np",
                                   generator=torch.Generator().manual_seed(0), **common).images
    reference, _ = with_attnkit(euler, PROMPT, [AttendExcite(words=["cat", "frog"], scale_input=False)], **common)
    ours, _ = with_attnkit(euler, PROMPT, [AttendExcite(words=["cat", "frog"])], **common)
    untouched = plain(euler, PROMPT, **common)
    assert np.abs(reference - expected).max() <= 1e-5
    assert np.abs(ours - expected).max() > 5e-5  # as large as the method's whole effect here (9e-5)
    print(f"\nEuler, max abs: scale_input on vs the pipeline {np.abs(ours - expected).max():.2e}; the method's own effect "
          f"{np.abs(expected - untouched).max():.2e}")
    same = [with_attnkit(sd15, PROMPT, [AttendExcite(words=["cat", "frog"], scale_input=s)], **common)[0]
            for s in (True, False)]
    np.testing.assert_array_equal(same[0], same[1])
    # why the default: its gradient pass reads the attention of exactly the input the step's denoiser call gets
    with attnkit.attach(euler, [AttendExcite(words=["cat", "frog"])], prompt=PROMPT) as run:
        euler(PROMPT, **run.call_kwargs(), **{**common, "num_inference_steps": 1})
        c = run.controllers[0]
        euler.scheduler.set_timesteps(5)  # a fresh schedule: scale_model_input follows the scheduler's own step
        latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * euler.scheduler.init_noise_sigma
        t = euler.scheduler.timesteps[0]
        step = StepInfo(0, 1, float(t))
        with torch.no_grad():
            scaled = run.gradient_maps(c, latent, step, scale_input=True, timestep=t)
            seen = run.gradient_maps(c, euler.scheduler.scale_model_input(latent, t), step, scale_input=False,
                                     timestep=t)
            raw = run.gradient_maps(c, latent, step, scale_input=False, timestep=t)
    for index in scaled:
        torch.testing.assert_close(scaled[index], seen[index])
        assert (raw[index] - seen[index]).abs().max() > 1e-3


def test_scale_input_off_is_refused_in_hosts(sd15):
    from attnkit.errors import UnsupportedModelError
    from attnkit.hosts.kernel import HostRun

    with pytest.raises(UnsupportedModelError, match="scale_input off .* ComfyUI's model always scales its input"):
        HostRun([AttendExcite(words=["cat"], scale_input=False)], "a cat", sd15.tokenizer, family="sd", steps=2,
                host="ComfyUI", gradient=lambda *a: None)
