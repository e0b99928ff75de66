"""PKA on the tiny Flux pipeline: bit-identity without conditions, the condition branch, keyword masks, the cache,
condition LoRAs, lifecycle, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import attnkit
from attnkit import AttnKitError, Condition, UnsupportedModelError
from attnkit.methods.pka import branches as flux_branches
from attnkit.methods import PKA
from attnkit.methods.pka.training import Example, csas_timesteps, train_condition_lora
from attnkit.core.processor import LayerProcessor

PROMPT = "a cat sitting on a red sofa"
KW = dict(num_inference_steps=3, height=64, width=64, max_sequence_length=32, output_type="np")


def picture(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))


def conditions(lora=None):
    return [Condition(kind="spatial", image=picture(1), lora=lora), Condition(kind="subject", image=picture(2),
                                                                                keyword="cat")]


def run(flux, methods, **kwargs):
    result = attnkit.generate(flux, PROMPT, methods, seed=0, **{**KW, **kwargs})
    return np.asarray(result.images), result


def test_no_condition_is_bit_identical_to_the_stock_pipeline(flux):
    stock = flux(PROMPT, generator=torch.Generator().manual_seed(0), **KW).images
    images, result = run(flux, [PKA(conditions=[])])
    assert np.array_equal(images, stock)
    assert result.report["pka"].data["mode"] == "pka"


@pytest.mark.parametrize("mode", ["pka", "full"])
def test_conditions_change_the_image_and_the_pipeline_is_restored(flux, mode):
    before = dict(flux.transformer.attn_processors)
    plain, _ = run(flux, [])
    images, result = run(flux, [PKA(conditions=conditions(), mode=mode)])
    assert np.isfinite(images).all() and np.abs(images - plain).mean() > 1e-4
    assert flux.transformer.attn_processors == before
    if mode == "pka":  # a keyword mask after every step, used from the second step on
        fractions = result.report["pka"].data["mask_fraction"]
        assert len(fractions) == 3 and all(0 < f[0] <= 1 for f in fractions)
        assert result.report["pka"].maps["cat"].shape == (1, 4, 4)  # the packed token grid of 64 px


def test_keyword_mask_comes_from_the_keywords_tokens(flux):
    with attnkit.attach(flux, [PKA(conditions=conditions())], prompt=PROMPT, max_sequence_length=32) as attached:
        flux(PROMPT, generator=torch.Generator().manual_seed(0), **attached.call_kwargs(), **KW)
    controller = attached.controllers[0]
    assert controller.keyword_positions == [list(attached.tokens.find("cat").positions)]
    t5 = flux.tokenizer_2
    ids = t5(PROMPT)["input_ids"]
    assert [t5.convert_ids_to_tokens(ids[p]) for p in controller.keyword_positions[0]] == ["▁cat"]
    mass = attached.report["pka"].data["keyword_mass"][..., 0]
    scaled = (mass - mass.amin(1, keepdim=True)) / (mass.amax(1, keepdim=True) - mass.amin(1, keepdim=True))
    assert torch.equal(controller.masks[0].cpu(), scaled > 0.2)


def test_cached_condition_keys_give_the_same_images_as_recomputing(flux, monkeypatch):
    calls = []
    real = flux_branches.branch_qkv

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("attnkit.methods.pka.branch_qkv", counting)
    cached, _ = run(flux, [PKA(conditions=conditions())])
    with_cache = len(calls)
    calls.clear()
    fresh, _ = run(flux, [PKA(conditions=conditions(), cache=False)])
    assert np.array_equal(cached, fresh)
    layers, conds, steps = 2, 2, 3
    assert with_cache == layers * conds and len(calls) == layers * conds * steps


def test_bad_input_is_refused_with_a_message(flux, sd15):
    with pytest.raises(AttnKitError, match="keyword="):
        PKA(conditions=[Condition(kind="subject", image=picture(1))])
    with pytest.raises(AttnKitError, match="'dog' is not in the prompt"):
        run(flux, [PKA(conditions=[Condition(kind="subject", image=picture(1), keyword="dog")])])
    with pytest.raises(AttnKitError, match="kind='canny'"):
        Condition(kind="canny", image=picture(1))
    with pytest.raises(UnsupportedModelError, match="Flux"):
        attnkit.generate(sd15, PROMPT, [PKA(conditions=conditions())], num_inference_steps=2)
    with pytest.raises(AttnKitError, match="window"):
        PKA(window=2)


def test_a_failing_run_leaves_processors_and_adapters_as_they_were(flux, tmp_path):
    path = tmp_path / "adapter.safetensors"
    ex = Example(picture(3), [Condition(kind="spatial", image=picture(4))], PROMPT)
    train_condition_lora(flux, [ex], steps=1, size=(64, 64), max_sequence_length=32, out=path)
    before = dict(flux.transformer.attn_processors)

    def boom(pipe, i, t, kwargs):
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        attnkit.generate(flux, PROMPT, [PKA(conditions=conditions(lora=str(path)))], seed=0,
                         callback_on_step_end=boom, **KW)
    assert flux.transformer.attn_processors == before
    assert not any(isinstance(p, LayerProcessor) for p in flux.transformer.attn_processors.values())
    assert not getattr(flux.transformer, "peft_config", None)  # the condition's adapter was removed


def test_training_lowers_the_loss_and_the_adapter_acts_on_its_condition_only(flux, tmp_path):
    path = tmp_path / "canny.safetensors"
    ex = Example(picture(5), conditions(), PROMPT)
    state = {k: v.clone() for k, v in flux.transformer.state_dict().items()}
    result = train_condition_lora(flux, [ex], steps=12, lr=3e-3, size=(64, 64), max_sequence_length=32, out=path,
                                  evaluate=[(0.3, 1), (0.6, 2), (0.9, 3)])
    assert result.losses[-1] < result.losses[0], result.losses
    assert all(torch.equal(state[k], v) for k, v in flux.transformer.state_dict().items())  # weights untouched
    plain, _ = run(flux, [PKA(conditions=conditions())])
    adapted, _ = run(flux, [PKA(conditions=conditions(lora=str(path)))])
    assert np.abs(adapted - plain).max() > 0  # the adapter changes the condition branch...
    nothing, _ = run(flux, [PKA(conditions=[])])
    stock = flux(PROMPT, generator=torch.Generator().manual_seed(0), **KW).images
    assert np.array_equal(nothing, stock)  # ...and is gone afterwards


def test_csas_sampler_matches_the_shifted_logit_normal():
    t = csas_timesteps(200_000, mu=0.5, sigma=1.5, generator=torch.Generator().manual_seed(0)).double()
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.02)
    assert logit.std().item() == pytest.approx(1.5, abs=0.02)
    # E[sigmoid(0.5 + 1.5 n)] by quadrature over n ~ N(0, 1)
    n = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    weights = torch.exp(-n ** 2 / 2)
    expected = float((torch.sigmoid(0.5 + 1.5 * n) * weights).sum() / weights.sum())
    assert t.mean().item() == pytest.approx(expected, abs=0.005)
    assert (t > 0.5).double().mean().item() == pytest.approx(0.6306, abs=0.005)  # P(n > -1/3)


def test_users_own_lora_is_untouched_by_condition_adapters(tmp_path):
    """A LoRA of the user's, loaded before or after condition adapters were used, keeps working, keeps its gradient
    flags and gets no gradients from training."""
    from safetensors.torch import load_file

    flux = attnkit.tiny_pipeline("flux")
    ex = Example(picture(6), [Condition(kind="spatial", image=picture(7))], PROMPT)
    path = tmp_path / "cond.safetensors"
    train_condition_lora(flux, [ex], steps=2, lr=3e-2, size=(64, 64), max_sequence_length=32, out=path)
    run(flux, [PKA(conditions=[Condition(kind="spatial", image=picture(7), lora=str(path))])])
    # a LoRA the user loads now acts exactly as on a fresh pipeline
    state = load_file(str(path))
    flux.transformer.load_lora_adapter(state, adapter_name="user", prefix=None)
    fresh = attnkit.tiny_pipeline("flux")
    fresh.transformer.load_lora_adapter(state, adapter_name="user", prefix=None)
    ours = flux(PROMPT, generator=torch.Generator().manual_seed(0), **KW).images
    theirs = fresh(PROMPT, generator=torch.Generator().manual_seed(0), **KW).images
    stock = attnkit.tiny_pipeline("flux")(PROMPT, generator=torch.Generator().manual_seed(0), **KW).images
    assert np.array_equal(ours, theirs) and not np.array_equal(ours, stock)
    # training with the user's LoRA loaded and frozen leaves it frozen, without gradients, and still acting
    user = [p for n, p in flux.transformer.named_parameters() if ".user." in n]
    for p in user:
        p.requires_grad_(False)
    train_condition_lora(flux, [ex], steps=2, size=(64, 64), max_sequence_length=32)
    assert all(not p.requires_grad and p.grad is None for p in user)
    assert np.array_equal(flux(PROMPT, generator=torch.Generator().manual_seed(0), **KW).images, theirs)
