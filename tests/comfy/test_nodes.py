"""The ComfyUI node pack against stub ``comfy`` modules (see stubs/comfy/__init__.py for the version mirrored)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import attnkit
from attnkit import hostkernel
from attnkit.attention import unet_cross_attention_probs
from attnkit.latent_guidance import aggregate, smoothing_kernel, token_maps
from attnkit.methods import AttendExcite, Observe, StructuredGuidance

from .conftest import ROOT

PROMPT = "a red car and a white sheep"
EXPECTED_NODES = {
    "AttnKitWords": "AttnKit Words",
    "AttnKitApplyObserve": "AttnKit Apply Observe",
    "AttnKitApplyStructured": "AttnKit Apply Structured Diffusion Guidance",
    "AttnKitApplyAttendExcite": "AttnKit Apply Attend-and-Excite",
    "AttnKitApplyAStar": "AttnKit Apply A-STAR",
    "AttnKitApplyPreset": "AttnKit Apply Preset",
    "AttnKitPreset": "AttnKit Preset",
    "AttnKitAttentionMaps": "AttnKit Attention Maps",
}


def defaults(node):
    """A node's widget defaults (what ComfyUI shows when the node is added)."""
    required = node.INPUT_TYPES()["required"]
    out = {}
    for name, spec in required.items():
        if isinstance(spec[0], list):
            out[name] = spec[1].get("default", spec[0][0])
        elif len(spec) > 1 and "default" in spec[1]:
            out[name] = spec[1]["default"]
    return out


def sample(patcher, clip, prompt=PROMPT, negative="", steps=4, cfg=7.5, seed=0):
    """ComfyUI's KSampler (euler, normal schedule) on the stub, under inference mode as ComfyUI executes."""
    from comfy.samplers import KSAMPLER, CFGGuider

    ms = patcher.model.model_sampling
    idx = torch.linspace(len(ms.sigmas) - 1, 0, steps).round().long()
    sigmas = torch.cat([ms.sigmas[idx], torch.zeros(1)])
    with torch.inference_mode():
        positive = [{"cross_attn": clip.encode_from_tokens(clip.tokenize(prompt))}]
        neg = [{"cross_attn": clip.encode_from_tokens(clip.tokenize(negative))}]
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        guider = CFGGuider(patcher, positive, neg, cfg)
        return guider.sample(noise, sigmas, KSAMPLER(), seed=seed), sigmas


def test_root_package_imports_nothing_without_comfyui():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pack', {os.path.join(ROOT, '__init__.py')!r}, "
        f"submodule_search_locations=[{ROOT!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
        "assert m.NODE_CLASS_MAPPINGS == {} and m.NODE_DISPLAY_NAME_MAPPINGS == {}\n"
        "assert 'torch' not in sys.modules and 'attnkit' not in sys.modules, sorted(sys.modules)\n"
        "print('cheap')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "cheap", proc.stderr


def test_root_package_forwards_the_node_mappings(pack):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS == EXPECTED_NODES
    assert set(pack.NODE_CLASS_MAPPINGS) == set(EXPECTED_NODES)


def test_every_node_declares_valid_v1_types(pack):
    for name, node in pack.NODE_CLASS_MAPPINGS.items():
        types = node.INPUT_TYPES()
        assert set(types) <= {"required", "optional", "hidden"} and types["required"], name
        for input_name, spec in types["required"].items():
            assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, (name, input_name)
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list):
                assert kind and options.get("default", kind[0]) in kind, (name, input_name)
            else:
                assert isinstance(kind, str) and kind.isupper() or kind in ("INT", "FLOAT", "STRING", "BOOLEAN")
            if kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], (name, input_name)
        assert isinstance(node.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in node.RETURN_TYPES)
        assert len(node.RETURN_NAMES) == len(node.RETURN_TYPES)
        assert callable(getattr(node(), node.FUNCTION)), name
        assert isinstance(node.CATEGORY, str) and node.DESCRIPTION


def test_words_node_matches_comfy_tokens_and_refuses_missing_words(pack, comfy_model):
    _, clip = comfy_model
    words = pack.NODE_CLASS_MAPPINGS["AttnKitWords"]()
    (targets,) = words.pick(clip, "a (red car:1.2) and a white sheep", "car, white sheep")
    ids = [t for t, _ in clip.tokenize(PROMPT)["l"][0]]
    car = targets.positions["car"]
    assert car == (3,) and targets.tokenizer.convert_ids_to_tokens([ids[3]]) == ["car</w>"]
    with pytest.raises(attnkit.WordNotFoundError, match="'dog' is not in the prompt"):
        words.pick(clip, PROMPT, "dog")


def _targets(pack, clip, words="car, sheep", text=PROMPT):
    return pack.NODE_CLASS_MAPPINGS["AttnKitWords"]().pick(clip, text, words)[0]


@pytest.mark.parametrize("node_name", ["AttnKitApplyObserve", "AttnKitApplyStructured", "AttnKitApplyAStar",
                                       "AttnKitApplyAttendExcite"])
def test_apply_patches_a_clone_and_leaves_the_model_untouched(pack, comfy_model, node_name):
    model, clip = comfy_model
    before = (repr(model.model_options), repr(model.wrappers))
    node = pack.NODE_CLASS_MAPPINGS[node_name]
    out = getattr(node(), node.FUNCTION)(model, _targets(pack, clip), **defaults(node))
    clone = out[0]
    assert clone is not model and clone.model is model.model
    assert (repr(model.model_options), repr(model.wrappers)) == before
    replace = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replace) == set(hostkernel.unet_block_keys(model.model.diffusion_model))
    assert clone.get_wrappers("sampler_sample"), "no sampler wrapper"
    assert attnkit.Preset.from_share_code(out[-1]).methods[0][0] in node_name.lower().replace("attnkitapply", "").replace("astar", "a_star").replace("attendexcite", "attend_excite")


@pytest.mark.parametrize("keyed", ["block_index", "block"])
def test_a_replace_another_pack_installed_is_still_called(pack, comfy_model, keyed):
    """Another pack's replace, keyed (block, number, index) or (block, number) (ComfyUI looks up both), is wrapped."""
    model, clip = comfy_model
    calls = []

    def theirs(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return hostkernel.sdpa_heads(q, k, v, extra_options["n_heads"])

    other = model.clone()
    for key in hostkernel.unet_block_keys(model.model.diffusion_model):
        other.set_model_attn2_replace(theirs, *(key if keyed == "block_index" else key[:2]))
    plain, _ = sample(other, clip)
    calls.clear()
    node = pack.NODE_CLASS_MAPPINGS["AttnKitApplyObserve"]
    patched, session, _ = node().apply(other, _targets(pack, clip), **defaults(node))
    latents, _ = sample(patched, clip)
    assert len(calls) == len(hostkernel.unet_block_keys(model.model.diffusion_model)) * 4
    torch.testing.assert_close(latents, plain)  # observe changes nothing; their patch still computed every output
    assert session.last_report["observe"].maps["car"].sum().item() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------- the patch vs the diffusers processor


def _layer_inputs(sd15):
    """One cross-attention layer of the tiny UNet, image tokens of an 8x8 latent, [uncond, cond] text."""
    attn = sd15.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    torch.manual_seed(0)
    hidden = torch.randn(2, 64, attn.to_q.in_features)
    text = torch.cat([hostsim_encode(sd15, ""), hostsim_encode(sd15, PROMPT)])
    return attn, hidden, text


def hostsim_encode(pipe, text):
    return pipe.encode_prompt(text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]


def _host_layer(run, attn, hidden, text, key=("input", 1, 0)):
    extra = {"n_heads": attn.heads, "dim_head": attn.to_q.out_features // attn.heads, "block": key[:2],
             "block_index": key[2], "transformer_index": 7, "original_shape": [2, 4, 8, 8], "cond_or_uncond": [1, 0],
             "sigmas": torch.tensor([14.6, 14.6])}
    n, context, value = hidden, text, text
    if run.needs_patch:
        n, context, value = run.attn2_patch(n, context, value, extra)
    out = run.replace(None)(attn.to_q(n), attn.to_k(context), attn.to_v(value), extra)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("conjunction", [False, True])
def test_structured_patch_equals_the_diffusers_processor(sd15, conjunction):
    attn, hidden, text = _layer_inputs(sd15)
    method = StructuredGuidance(conjunction=conjunction)
    with attnkit.attach(sd15, [method], prompt=PROMPT) as run:
        controller = run.controllers[0]
        layer = next(i for i in run.layers if i.module == "down_blocks.0.attentions.0.transformer_blocks.0.attn2")
        with torch.no_grad():
            expected = controller.attend(layer, None, attn, hidden, encoder_hidden_states=text, attention_mask=None,
                                         temb=None, rows=slice(1, 2))
    host = hostkernel.HostRun([method], PROMPT, sd15.tokenizer, family="sd", steps=1,
                              encode=lambda t: hostsim_encode(sd15, t), blocks=[(("input", 1, 0), 1)])
    with torch.no_grad():
        got = _host_layer(host, attn, hidden, text)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    plain = attn(hidden, encoder_hidden_states=text)
    torch.testing.assert_close(got[:1], plain[:1], atol=1e-5, rtol=1e-5)  # the unconditional half is untouched
    assert (got[1:] - plain[1:]).abs().max() > 1e-4


def test_observe_patch_reads_the_same_probabilities_as_the_diffusers_runtime(sd15):
    attn, hidden, text = _layer_inputs(sd15)
    host = hostkernel.HostRun([Observe(words=["car"])], PROMPT, sd15.tokenizer, family="sd", steps=1,
                              blocks=[(("input", 1, 0), 1)])
    with torch.no_grad():
        got = _host_layer(host, attn, hidden, text)
    torch.testing.assert_close(got, attn(hidden, encoder_hidden_states=text), atol=1e-5, rtol=1e-5)
    raw = host.finish()["observe"].data["raw"]["car"]
    probs = unet_cross_attention_probs(attn, hidden[1:], text[1:])
    torch.testing.assert_close(raw, probs[..., 3].reshape(1, 8, 8), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------- sampling through the nodes


def test_observe_maps_and_heatmap_node(pack, comfy_model):
    model, clip = comfy_model
    node = pack.NODE_CLASS_MAPPINGS["AttnKitApplyObserve"]
    patched, maps, code = node().apply(model, _targets(pack, clip), **defaults(node))
    plain, _ = sample(model, clip)
    latents, _ = sample(patched, clip)
    torch.testing.assert_close(latents, plain)
    report = maps.last_report
    assert report.steps == 4 and set(report["observe"].maps) == {"car", "sheep"}
    images = torch.rand(1, 64, 64, 3)
    (grid,) = pack.NODE_CLASS_MAPPINGS["AttnKitAttentionMaps"]().draw(maps, images)
    assert grid.ndim == 4 and grid.shape[-1] == 3 and 0 <= grid.min() and grid.max() <= 1


def test_structured_changes_the_image_and_uncond_stays(pack, comfy_model):
    model, clip = comfy_model
    node = pack.NODE_CLASS_MAPPINGS["AttnKitApplyStructured"]
    patched, _ = node().apply(model, _targets(pack, clip, words=""), **defaults(node))
    plain, _ = sample(model, clip)
    latents, _ = sample(patched, clip)
    assert (latents - plain).abs().max() > 1e-3


def test_latent_method_runs_through_the_sampler_wrapper_in_inference_mode(pack, comfy_model, sd15):
    model, clip = comfy_model
    node = pack.NODE_CLASS_MAPPINGS["AttnKitApplyAttendExcite"]
    values = {**defaults(node), "max_iter_to_alter": 2, "thresholds": "{}"}
    patched, code = node().apply(model, _targets(pack, clip), **values)
    session = patched.get_wrappers("sampler_sample")[0].__self__
    plain, sigmas = sample(model, clip)
    latents, _ = sample(patched, clip)
    report = session.last_report["attend_excite"]
    assert [r["step"] for r in report.losses] == [0, 1]
    assert (latents - plain).abs().max() > 1e-4, "the latent update did not reach the sampler"
    # the loss at step 0 is A&E's loss on the diffusers UNet's maps for the same input and timestep
    ms = model.model.model_sampling
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = ms.timestep(sigmas[:1])
    cond = hostsim_encode(sd15, PROMPT)
    maps, layers = {}, []
    store = {}

    class Recorder:
        def __init__(self, inner, name):
            self.inner, self.name = inner, name

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kw):
            if encoder_hidden_states is not None and hidden_states.shape[1] == 16:
                store[self.name] = unet_cross_attention_probs(attn, hidden_states, encoder_hidden_states,
                                                              mean_heads=False)
            return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, **kw)

    saved = dict(sd15.unet.attn_processors)
    sd15.unet.set_attn_processor({k: Recorder(v, k) for k, v in saved.items()})
    try:
        with torch.no_grad():
            sd15.unet(noise, t, encoder_hidden_states=cond)
    finally:
        sd15.unet.set_attn_processor(saved)
    run = attnkit.Run(sd15, [AttendExcite(words=["car", "sheep"])], prompt=PROMPT)
    run.layers = [layer.with_grid(attnkit.layers.grid_for(layer, (8, 8))) for layer in run.layers]
    by_name = {layer.name: layer for layer in run.layers}
    for name, probs in store.items():
        maps[by_name[name].index] = probs
    attention = aggregate(maps, run.layers, (4, 4))
    positions = [list(run.tokens.find(w).positions) for w in ("car", "sheep")]
    concept = token_maps(attention, positions, smoothing_kernel("diffusers"))
    expected = float((1 - concept.flatten(1).max(1).values).max())
    assert report.losses[0]["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_preset_node_moves_presets_between_hosts(pack, comfy_model):
    model, clip = comfy_model
    code = attnkit.Preset.from_methods([StructuredGuidance(conjunction=True), Observe()]).to_share_code()
    preset, text, share = pack.NODE_CLASS_MAPPINGS["AttnKitPreset"]().load(code)
    assert share == code and json.loads(text)["methods"][0]["id"] == "structured"
    assert pack.NODE_CLASS_MAPPINGS["AttnKitPreset"]().load(text)[2] == code
    patched, maps = pack.NODE_CLASS_MAPPINGS["AttnKitApplyPreset"]().apply(model, _targets(pack, clip), preset)
    sample(patched, clip)
    assert set(maps.last_report.methods) == {"structured", "observe"}
    with pytest.raises(attnkit.PresetError):
        pack.NODE_CLASS_MAPPINGS["AttnKitPreset"]().load("ak1.broken")


def test_flux_models_are_refused_with_a_message(pack, comfy_model):
    model, clip = comfy_model

    class Flux:
        diffusion_model = model.model.diffusion_model

    from comfy.model_patcher import ModelPatcher

    node = pack.NODE_CLASS_MAPPINGS["AttnKitApplyObserve"]
    with pytest.raises(attnkit.UnsupportedModelError, match="this MODEL is a Flux"):
        node().apply(ModelPatcher(Flux()), _targets(pack, clip), **defaults(node))
