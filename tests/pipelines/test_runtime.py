"""The processor runtime on real (tiny) diffusers pipelines: idle identity, restore, lifecycle, threads."""

import numpy as np
import pytest
import torch
from diffusers.callbacks import PipelineCallback
from diffusers.models.attention_processor import AttnProcessor2_0

import attnkit
from attnkit import AlreadyAttachedError, StepCallbackError
from attnkit.methods import Observe
from attnkit.models import denoiser_of
from attnkit.core.processor import LayerProcessor

from ..conftest import FAST, in_threads, plain, with_attnkit

PROMPT = "a red car and a blue bird"


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_idle_attach_is_bit_identical(pipes, family):
    pipe = pipes[family]
    expected = plain(pipe, PROMPT, seed=3)
    idle, result = with_attnkit(pipe, PROMPT, seed=3)
    assert np.array_equal(idle, expected)
    observed, _ = with_attnkit(pipe, PROMPT, [Observe(words=["car"])], seed=3)
    assert np.array_equal(observed, expected), "observe only records; the image must not change"
    assert not np.array_equal(plain(pipe, PROMPT, seed=4), expected), "different seeds must differ (test is live)"


def _processors(pipe):
    return dict(denoiser_of(pipe).attn_processors)


def _same_objects(before, after):
    return before.keys() == after.keys() and all(before[k] is after[k] for k in before)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_processors_restored_after_normal_run(pipes, family):
    pipe = pipes[family]
    before = _processors(pipe)
    with attnkit.attach(pipe, [Observe(words=["car"])], prompt=PROMPT) as run:
        during = _processors(pipe)
        assert all(isinstance(p, LayerProcessor) for p in during.values())
        assert all(during[k].inner is before[k] for k in before)
        pipe(PROMPT, callback_on_step_end=run.callback, **FAST)
    assert _same_objects(before, _processors(pipe))
    assert run.report["observe"].maps["car"].shape == (1, 4, 4)


def test_processors_restored_after_exception_inside_run(sd15):
    before = _processors(sd15)

    def boom(pipe, i, t, kwargs):
        raise RuntimeError("user callback failed")

    with pytest.raises(RuntimeError, match="user callback failed"):
        attnkit.generate(sd15, PROMPT, [Observe()], seed=0, callback_on_step_end=boom, **FAST)
    assert _same_objects(before, _processors(sd15))
    assert np.array_equal(with_attnkit(sd15, PROMPT)[0], plain(sd15, PROMPT)), "pipeline still works after"


def test_processors_restored_after_keyboard_interrupt(sd15):
    before = _processors(sd15)

    def ctrl_c(pipe, i, t, kwargs):
        if i == 1:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        attnkit.generate(sd15, PROMPT, [Observe()], seed=0, callback_on_step_end=ctrl_c, **FAST)
    assert _same_objects(before, _processors(sd15))


def test_pipeline_interrupt_flag_stops_cleanly(sd15):
    before = _processors(sd15)

    def stop(pipe, i, t, kwargs):
        if i == 0:
            pipe._interrupt = True
        return {}

    result = attnkit.generate(sd15, PROMPT, [Observe(words=["car"])], seed=0, callback_on_step_end=stop, **FAST)
    assert _same_objects(before, _processors(sd15))
    assert result.report.steps == 1
    assert result.report["observe"].maps["car"].shape == (1, 4, 4)


def test_attach_twice_raises_and_keeps_the_first(sd15):
    before = _processors(sd15)
    with attnkit.attach(sd15, [], prompt=PROMPT) as run:
        attached = _processors(sd15)
        with pytest.raises(AlreadyAttachedError, match="already attached"):
            with attnkit.attach(sd15, [], prompt=PROMPT):
                pass
        assert _same_objects(attached, _processors(sd15)), "the failed second attach must not undo the first"
        sd15(PROMPT, callback_on_step_end=run.callback, **FAST)
    assert _same_objects(before, _processors(sd15))


def test_bad_word_fails_before_touching_the_pipeline(sd15):
    before = _processors(sd15)
    with pytest.raises(attnkit.WordNotFoundError, match="'cat' is not in the prompt"):
        attnkit.generate(sd15, PROMPT, [Observe(words=["cat"])], seed=0, **FAST)
    assert _same_objects(before, _processors(sd15))


def test_missing_step_callback_is_a_clear_error(sd15):
    before = _processors(sd15)
    with pytest.raises(StepCallbackError, match=r"\*\*run.call_kwargs\(\)"):
        with attnkit.attach(sd15, [Observe()], prompt=PROMPT):
            sd15(PROMPT, **FAST)
    assert _same_objects(before, _processors(sd15))


class GainProcessor(AttnProcessor2_0):
    """A user's custom processor with its own keyword argument (as IP-Adapter's masks or a LoRA scale)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, gain=1.0):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb) * gain


class WeightedProcessor(torch.nn.Module):
    """A processor with weights (an nn.Module, as IP-Adapter's): diffusers keeps it in the module tree."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.9))
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb) * self.scale


def test_custom_processors_and_their_kwargs_survive():
    pipe = attnkit.tiny_pipeline("sd15")
    unet = pipe.unet
    procs = {
        name: (GainProcessor() if "attn2" in name else WeightedProcessor()) for name in unet.attn_processors
    }
    unet.set_attn_processor(procs)
    before = _processors(pipe)
    kwargs = dict(cross_attention_kwargs={"gain": 0.5})
    expected = plain(pipe, PROMPT, **kwargs)
    assert not np.array_equal(expected, plain(pipe, PROMPT)), "the custom kwarg must matter (test is live)"
    idle, _ = with_attnkit(pipe, PROMPT, **kwargs)
    observed, result = with_attnkit(pipe, PROMPT, [Observe(words=["car"])], **kwargs)
    assert np.array_equal(idle, expected) and np.array_equal(observed, expected)
    assert _same_objects(before, _processors(pipe))
    weights = dict(unet.named_parameters())
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.scale" in weights


def test_steps_advance_from_the_callback(sd15):
    seen = []
    result = attnkit.generate(sd15, PROMPT, [Observe()], seed=0, on_step=seen.append, **FAST)
    count = len(sd15.scheduler.timesteps)
    assert [s.index for s in seen] == list(range(count)) and result.report.steps == count
    assert all(s.count == count for s in seen)
    assert [s.timestep for s in seen] == [float(t) for t in sd15.scheduler.timesteps]
    assert seen[0].progress == 0.0 and seen[-1].progress == (count - 1) / count


def test_user_callbacks_are_chained(sd15):
    calls = []

    def mine(pipe, i, t, kwargs):
        calls.append(i)
        return {}

    attnkit.generate(sd15, PROMPT, [], seed=0, callback_on_step_end=mine, **FAST)
    assert calls == list(range(len(sd15.scheduler.timesteps)))

    class Halve(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {"latents": callback_kwargs["latents"] * 0.5}

    changed, _ = with_attnkit(sd15, PROMPT, callback_on_step_end=Halve())
    reference = plain(sd15, PROMPT, callback_on_step_end=Halve())
    assert np.array_equal(changed, reference) and not np.array_equal(changed, plain(sd15, PROMPT))


def test_two_threads_two_pipelines_match_sequential_runs():
    a, b = attnkit.tiny_pipeline("sd15", seed=1), attnkit.tiny_pipeline("sdxl", seed=2)
    jobs = {
        "a": (a, "a red car and a blue bird", [Observe(words=["car"])], 5),
        "b": (b, "a dog on a green sofa", [Observe(words=["sofa", "dog"], steps=[(0.0, 0.5)])], 6),
    }
    sequential = {k: with_attnkit(p, prompt, m, seed=s) for k, (p, prompt, m, s) in jobs.items()}
    threaded = in_threads(lambda key: with_attnkit(jobs[key][0], jobs[key][1], jobs[key][2], seed=jobs[key][3]), jobs)
    for key in jobs:
        images, result = threaded[key]
        ref_images, ref_result = sequential[key]
        assert np.array_equal(images, ref_images)
        for word, m in ref_result.report["observe"].maps.items():
            torch.testing.assert_close(result.report["observe"].maps[word], m, rtol=0, atol=0)


def test_generate_input_errors(sd15):
    with pytest.raises(attnkit.AttnKitError, match="one prompt per call"):
        attnkit.generate(sd15, ["a", "b"], [Observe()], **FAST)
    with pytest.raises(attnkit.AttnKitError, match=r"seed must be an integer from 0 to 2\*\*64 - 1, got -1"):
        attnkit.generate(sd15, PROMPT, [], seed=-1, **FAST)
    with pytest.raises(attnkit.AttnKitError, match="given twice"):
        attnkit.generate(sd15, PROMPT, [Observe(), Observe()], **FAST)
    with pytest.raises(attnkit.AttnKitError, match="attnkit.methods objects"):
        attnkit.generate(sd15, PROMPT, ["observe"], **FAST)
    with pytest.raises(attnkit.AttnKitError, match="pass prompt="):
        with attnkit.attach(sd15, [Observe()]):
            pass


@pytest.mark.parametrize("family, per_call, once", [("sd15", 1, 0), ("sdxl", 1, 0), ("flux", 2, 6)])
def test_idle_adds_no_work_to_a_denoiser_call(pipes, family, per_call, once):
    """Counted, not timed: the torch operations dispatched inside the pipeline's denoiser calls, attached-idle vs
    stock. Idle adds only reading the step's timestep (one scalar; Flux also its position ids once)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    pipe = pipes[family]

    class Count(TorchDispatchMode):
        inside = calls = depth = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.inside += bool(self.depth)
            return func(*args, **(kwargs or {}))

    def ops(methods):
        counter = Count()
        denoiser = denoiser_of(pipe)

        def enter(*_):
            counter.depth += 1
            counter.calls += 1

        def leave(*_):
            counter.depth -= 1

        handles = [denoiser.register_forward_pre_hook(enter), denoiser.register_forward_hook(leave)]
        try:
            with counter:
                kwargs = dict(num_inference_steps=2, height=64, width=64, output_type="latent")
                if methods is None:
                    pipe("a red car", generator=torch.Generator("cpu").manual_seed(0), **kwargs)
                else:
                    attnkit.generate(pipe, "a red car", methods, seed=0, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return counter.inside, counter.calls

    (stock, calls), (idle, idle_calls) = ops(None), ops([])
    assert calls == idle_calls
    assert 0 <= idle - stock <= per_call * calls + once, (stock, idle, calls)


def test_a_hand_driven_loop_ends_its_steps_with_end_step(sd15):
    """Loops that call the denoiser themselves end each step with run.end_step() (no pipeline callback to fake)."""
    from attnkit.runtime import Run

    unet = sd15.unet
    text = sd15.encode_prompt(PROMPT, "cpu", 1, False)[0]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    run = Run(sd15, [Observe(words=["car"])], prompt=PROMPT, cfg=False, num_steps=3)
    with pytest.raises(StepCallbackError, match="no denoiser call in the step"):
        run.end_step()
    run.install()
    assert run.installed and run.step_count == 3
    try:
        with torch.no_grad():
            for t in (900, 500, 100):
                unet(latents, t, encoder_hidden_states=text)
                assert run.end_step(latents) is latents  # observe leaves the latents alone
    finally:
        run.uninstall()
    assert not run.installed
    report = run.finish()
    assert report.steps == 3 and float(report["observe"].maps["car"].sum()) == pytest.approx(1.0, abs=1e-4)
