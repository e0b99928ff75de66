"""Graphs queued in the real ComfyUI: every example workflow, the latent methods under ComfyUI's samplers and
schedulers, patches that survive MODEL -> MODEL nodes, maps of a batch, and bad input reported at the right node."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

import host

APPLY = {"observe": "AttnKitApplyObserve", "structured": "AttnKitApplyStructured",
         "attend_excite": "AttnKitApplyAttendExcite", "a_star": "AttnKitApplyAStar"}


def run_ok(executor, graph, **kwargs):
    result = executor.run(graph, **kwargs)
    assert result.ok, result.error or result.validation
    return result


def differs(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two 8-bit images (0-255)."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


#: a change no rounding explains: the method acted on the image
CHANGED = 0.05


def attnkit_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("AttnKit")]


def _workflows():
    folder = os.path.join(host.PACK, "example_workflows", "api") if host.PACK else ""
    return sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []


@pytest.mark.parametrize("name", _workflows())
def test_every_example_workflow_runs(executor, name):
    """Each shipped API workflow, as written, with three changes a CPU needs: the test checkpoint, a 128 px image
    and 4 steps. A method that changes images must change this one against the same graph without AttnKit;
    observe must leave it bit-identical."""
    graph = host.load_workflow(os.path.join(host.PACK, "example_workflows", "api", name))
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = host.checkpoint()
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=128, height=128)
        if node["class_type"] == "KSampler":
            inputs["steps"] = 4
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
    save = next(i for i, n in graph.items() if n["class_type"] == "SaveImage")
    result = run_ok(executor, graph)
    if "prompt_to_prompt" in name:  # no plain counterpart: it samples [source, edited] (see the P2P tests below)
        source, edited = result.images[save]
        assert differs(source, edited) > CHANGED
        return
    plain = json.loads(json.dumps(graph))
    plain_sampler = next(n for n in plain.values() if n["class_type"] == "KSampler")
    loader = next(i for i, n in plain.items() if n["class_type"] == "CheckpointLoaderSimple")
    plain_sampler["inputs"]["model"] = [loader, 0]
    for i in [i for i, n in plain.items() if n["class_type"].startswith("AttnKit")]:
        del plain[i]
    baseline = run_ok(executor, plain)
    assert sampler["inputs"]["model"][0] != loader
    change = differs(result.image(save), baseline.image(save))
    if "observe" in name:
        assert change == 0.0
        maps = next(i for i, n in graph.items() if n["class_type"] == "AttnKitAttentionMaps")
        assert len(result.images[next(i for i, n in graph.items() if n["class_type"] == "PreviewImage"
                                      and n["inputs"]["images"][0] == maps)]) == 1
    else:
        assert change > CHANGED, name


SAMPLERS = [  # (method, sampler, scheduler): every sampler and scheduler the issue names, each latent method thrice+
    ("attend_excite", "euler", "normal"),
    ("attend_excite", "euler_ancestral", "karras"),
    ("attend_excite", "heun", "exponential"),
    ("attend_excite", "dpmpp_2m", "sgm_uniform"),
    ("attend_excite", "uni_pc", "simple"),
    ("attend_excite", "ddim", "normal"),
    ("attend_excite", "dpm_2", "karras"),  # a midpoint call after each step's callback
    ("a_star", "euler", "karras"),
    ("a_star", "dpmpp_2m", "simple"),
    ("a_star", "heun", "normal"),
    ("a_star", "uni_pc", "exponential"),
]


@pytest.mark.parametrize("method,sampler,scheduler", SAMPLERS)
def test_latent_methods_under_comfyui_samplers(executor, caplog, method, sampler, scheduler):
    """The gradient pass runs through ComfyUI's inference-mode weights under each sampler, the latent update lands
    (the image differs from the same graph without AttnKit), no AttnKit warning unless the sampler cannot take the
    update in full (uni_pc, said once), and the model's weights are left as ComfyUI loaded them."""
    base = host.base_graph(sampler=sampler, scheduler=scheduler, steps=4, seed=3)
    plain = run_ok(executor, base)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = run_ok(executor, host.with_method(base, APPLY[method], max_iter_to_alter=3))
    assert differs(result.image(), plain.image()) > CHANGED
    said = attnkit_warnings(caplog)
    if sampler == "uni_pc":
        assert len(said) == 1 and "copy of the sampler's latent" in said[0], said
    else:
        assert said == [], said
    model = executor.output("ckpt", 0)
    assert all(p.is_inference() for p in model.model.diffusion_model.parameters())


@pytest.mark.parametrize("sampler", ["heun", "dpm_2"])
def test_second_order_samplers_update_each_step_once_at_its_own_call(executor, sampler):
    """Heun and DPM2 call the model twice a step (Heun's corrector at the next step's noise level, DPM2's at a
    midpoint): the update happens at each step's own call only, and the report counts every step."""
    g = host.with_method(host.base_graph(sampler=sampler, steps=4, seed=5), APPLY["attend_excite"],
                         max_iter_to_alter=4)
    run_ok(executor, g)
    report = _session_of(executor, "attnkit").last_report
    assert report.steps == 4
    assert sorted({r["step"] for r in report.methods["attend_excite"].losses}) == [0, 1, 2, 3]


def _session_of(executor, node_id):
    """The AttnKit session behind an Apply node's MODEL output (the sampler wrapper it installed)."""
    from comfy.patcher_extension import WrappersMP

    model = executor.output(node_id, 0)
    wrappers = model.wrappers[WrappersMP.SAMPLER_SAMPLE]
    session = next(w.__self__ for key, ws in wrappers.items() if key == "attnkit" for w in ws)
    return session


def test_gradient_pass_costs_no_copy_of_the_weights(executor):
    """Peak memory of an Attend-and-Excite graph against the same graph without AttnKit, the model already loaded
    (what a user's second queue costs). The weights are not copied for the gradient pass: the difference is the
    pass's activations only."""
    base = host.base_graph(steps=4, seed=11, width=256, height=256)
    run_ok(executor, host.base_graph(steps=1, seed=99, width=256, height=256))  # load the model first
    plain = run_ok(executor, base, measure_memory=True)
    latent = run_ok(executor, host.with_method(base, APPLY["attend_excite"], max_iter_to_alter=4), measure_memory=True)
    model = executor.output("ckpt", 0)
    weights = sum(p.numel() * p.element_size() for p in model.model.parameters())
    ratio = latent.peak_rss / plain.peak_rss
    print(f"\npeak RSS: plain {plain.peak_rss / 2**30:.2f} GiB, attend_excite {latent.peak_rss / 2**30:.2f} GiB, "
          f"ratio {ratio:.3f}; UNet weights {weights / 2**30:.2f} GiB")
    assert latent.peak_rss - plain.peak_rss < 0.5 * weights


def test_structured_survives_model_clones(executor):
    """Apply Structured followed by MODEL -> MODEL nodes (ModelSamplingDiscrete, another AttnKit Apply) still runs
    structured: the image equals Apply Structured alone and differs from the plain graph."""
    base = host.base_graph(seed=4)
    plain = run_ok(executor, base).image()
    alone = run_ok(executor, host.with_method(base, APPLY["structured"])).image()
    assert differs(alone, plain) > CHANGED
    g = host.with_method(base, APPLY["structured"])
    g["msd"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["attnkit", 0], "sampling": "eps",
                                                                  "zsnr": False}}
    g["sampler"]["inputs"]["model"] = ["msd", 0]
    np.testing.assert_array_equal(run_ok(executor, g).image(), alone)
    g2 = host.with_method(host.with_method(base, APPLY["structured"]), APPLY["observe"], node_id="obs",
                          model_from=("attnkit", 0))
    np.testing.assert_array_equal(run_ok(executor, g2).image(), alone)
    assert set(executor.output("obs", 1).last_report.methods["observe"].maps) == {"car", "sheep"}


def test_structured_survives_a_lora_loader(executor, lora):
    """Apply Structured then LoraLoaderModelOnly gives the same image as the LoRA then Apply Structured, and not the
    LoRA's image alone: the patch came through the loader's clone."""
    base = host.base_graph(seed=6)

    def lora_after(model_from):
        return {"class_type": "LoraLoaderModelOnly", "inputs": {"model": list(model_from), "lora_name": lora,
                                                                 "strength_model": 1.0}}

    lora_only = dict(base, lora=lora_after(("ckpt", 0)))
    lora_only["sampler"] = json.loads(json.dumps(base["sampler"]))
    lora_only["sampler"]["inputs"]["model"] = ["lora", 0]
    with_lora = run_ok(executor, lora_only).image()
    assert differs(with_lora, run_ok(executor, base).image()) > CHANGED  # the LoRA does something

    after = host.with_method(base, APPLY["structured"])
    after["lora"] = lora_after(("attnkit", 0))
    after["sampler"]["inputs"]["model"] = ["lora", 0]
    before = host.with_method(lora_only, APPLY["structured"], model_from=("lora", 0))
    image_after = run_ok(executor, after).image()
    assert differs(image_after, with_lora) > CHANGED
    np.testing.assert_allclose(image_after.astype(np.float32), run_ok(executor, before).image().astype(np.float32),
                               atol=2)


def test_observe_and_attention_maps_with_batch_two(executor):
    g = host.with_method(host.base_graph(batch=2, seed=8), APPLY["observe"])
    g["maps"] = {"class_type": "AttnKitAttentionMaps", "inputs": {"maps": ["attnkit", 1], "images": ["decode", 0]}}
    g["save_maps"] = {"class_type": "SaveImage", "inputs": {"images": ["maps", 0], "filename_prefix": "maps"}}
    result = run_ok(executor, g)
    assert len(result.images["save"]) == 2 and len(result.images["save_maps"]) == 2
    report = executor.output("attnkit", 1).last_report
    maps = report.methods["observe"].maps
    assert set(maps) == {"car", "sheep"} and all(m.shape[0] == 2 for m in maps.values())
    for m in maps.values():
        assert torch.isfinite(m).all() and m.min() >= 0
        assert not torch.equal(m[0], m[1])  # two images, two sets of maps
    assert differs(result.images["save_maps"][0], result.images["save_maps"][1]) > 0


def with_preset(g, preset: str) -> dict:
    """AttnKit Preset (JSON or share code) -> AttnKit Apply Preset between the checkpoint and the KSampler."""
    g = json.loads(json.dumps(g))
    g["preset"] = {"class_type": "AttnKitPreset", "inputs": {"preset": preset}}
    g["attnkit"] = {"class_type": "AttnKitApplyPreset", "inputs": {"model": ["ckpt", 0], "targets": ["words", 0],
                                                                   "preset": ["preset", 0]}}
    g["sampler"]["inputs"]["model"] = ["attnkit", 0]
    return g


def test_apply_preset_and_apply_observe_map_the_same_words(executor):
    g = host.with_method(host.base_graph(seed=9), APPLY["observe"])
    run_ok(executor, g)
    observe = executor.output("attnkit", 1).last_report.methods["observe"].maps
    code = executor.output("attnkit", 2)
    run_ok(executor, with_preset(host.base_graph(seed=9), code))
    preset = executor.output("attnkit", 1).last_report.methods["observe"].maps
    assert set(preset) == set(observe) == {"car", "sheep"}
    for word in observe:
        torch.testing.assert_close(preset[word], observe[word])


def test_a_word_not_in_the_prompt_is_named_at_the_words_node(executor):
    g = host.with_method(host.base_graph(words="giraffe, car"), APPLY["attend_excite"])
    result = executor.run(g)
    assert not result.ok
    assert result.error["node_type"] == "AttnKitWords" and result.error["node_id"] == "words"
    message = result.error["exception_message"]
    assert "'giraffe' is not in the prompt" in message and "sheep" in message
    assert "Traceback" not in message


def test_attn_res_the_image_cannot_serve_is_reported_at_the_apply_node(executor):
    g = host.with_method(host.base_graph(width=128, height=128), APPLY["attend_excite"], attn_res="32x32")
    result = executor.run(g)
    assert not result.ok and result.error["node_id"] == "attnkit", result.error
    message = result.error["exception_message"]
    assert "AttnKit Apply Attend-and-Excite (node attnkit)" in message and "128x128" in message
    assert "32x32" in message and "16x16" in message


def test_attn_res_unknown_until_sampling_names_the_apply_node(executor):
    """A latent the graph does not size (here: a latent upscaled by a node) is checked at the sampler; the
    message names the Apply node whose setting to change."""
    g = host.with_method(host.base_graph(width=64, height=64), APPLY["attend_excite"], attn_res="32x32")
    g["up"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["latent", 0], "upscale_method": "nearest-exact",
                                                        "width": 128, "height": 128, "crop": "disabled"}}
    g["sampler"]["inputs"]["latent_image"] = ["up", 0]
    result = executor.run(g)
    assert not result.ok and result.error["node_type"] == "KSampler"
    assert "AttnKit Apply Attend-and-Excite (node attnkit)" in result.error["exception_message"]
    assert "32x32" in result.error["exception_message"]


def test_words_of_another_prompt_are_refused_at_the_apply_node(executor):
    g = host.with_method(host.base_graph(words_prompt="a white sheep and a red car", words="car"),
                         APPLY["observe"])
    result = executor.run(g)
    assert not result.ok and result.error["node_id"] == "attnkit"
    message = result.error["exception_message"]
    assert "CLIP Text Encode (node pos)" in message and "'car'" in message and "same text" in message


def test_words_of_a_longer_prompt_with_the_same_start_are_fine(executor):
    g = host.with_method(host.base_graph(prompt="a red car and a white sheep, studio photo",
                                         words_prompt="a red car and a white sheep"), APPLY["observe"])
    run_ok(executor, g)


def test_conditioning_the_graph_cannot_read_is_checked_at_sampling(executor, caplog):
    """When the sampler's conditioning does not come straight from a CLIP Text Encode with typed text (here it
    passes through another node), the conditioning itself is compared with the Words text's at sampling, and a
    mismatch is said in the log."""
    g = host.with_method(host.base_graph(), APPLY["observe"])
    g["pos"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["pos_inner", 0]}}
    g["pos_inner"] = {"class_type": "CLIPTextEncode", "inputs": {"text": host.PROMPT, "clip": ["ckpt", 1]}}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_ok(executor, g)
    assert any("not encoded from the AttnKit Words text" in m for m in attnkit_warnings(caplog))


def test_a_failed_run_says_only_the_real_error(executor, caplog):
    g = host.with_method(host.base_graph(width=64, height=64), APPLY["observe"], resolution="32x32")
    g["up"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["latent", 0], "upscale_method": "nearest-exact",
                                                        "width": 128, "height": 128, "crop": "disabled"}}
    g["sampler"]["inputs"]["latent_image"] = ["up", 0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = executor.run(g)
    assert not result.ok
    assert not [m for m in attnkit_warnings(caplog) if "no step fell" in m]


@pytest.mark.parametrize("keyed", ["block_index", "block"])
def test_another_packs_attention_replace_still_computes_every_block(executor, keyed):
    """Another pack's attn2 replace (keyed either way ComfyUI looks it up) is wrapped, not dropped: with Apply
    Observe after it, it still runs on every cross-attention call and the image is that of the other pack alone."""
    import sys

    other = sys.modules[[m for m in sys.modules if m.endswith("other_attention_pack")][0]]
    base = host.base_graph(seed=12)
    base["other"] = {"class_type": "OtherPackAttention", "inputs": {"model": ["ckpt", 0], "keyed": keyed}}
    alone = json.loads(json.dumps(base))
    alone["sampler"]["inputs"]["model"] = ["other", 0]
    other.CALLS.clear()
    image = run_ok(executor, alone).image()
    calls = len(other.CALLS)
    assert calls > 0
    other.CALLS.clear()
    result = run_ok(executor, host.with_method(base, APPLY["observe"], model_from=("other", 0)))
    assert len(other.CALLS) == calls
    np.testing.assert_array_equal(result.image(), image)
    assert set(executor.output("attnkit", 1).last_report.methods["observe"].maps) == {"car", "sheep"}


def test_preset_node_reads_share_codes_and_json_and_refuses_damage(comfy, executor):
    nodes, _ = comfy
    import attnkit
    from attnkit.methods import Observe, StructuredGuidance

    code = attnkit.Preset.from_methods([StructuredGuidance(conjunction=True), Observe()]).to_share_code()
    node = nodes.NODE_CLASS_MAPPINGS["AttnKitPreset"]()
    preset, text, share = node.load(code)
    assert share == code and json.loads(text)["methods"][0]["id"] == "structured"
    assert node.load(text)[2] == code
    g = with_preset(host.base_graph(seed=13), code)
    run_ok(executor, g)
    assert set(executor.output("attnkit", 1).last_report.methods) == {"structured", "observe"}
    g["preset"]["inputs"]["preset"] = "ak1.broken"
    result = executor.run(g)
    assert not result.ok and result.error["node_id"] == "preset"
    assert "Traceback" not in result.error["exception_message"]


def test_a_flux_model_is_refused_at_the_apply_node(executor):
    """A MODEL that is not a SD 1.x/2.x/SDXL UNet (here ComfyUI's own Flux class, built small) gets one line."""
    nodes, _ = host.boot()
    import attnkit
    import comfy.model_patcher
    import comfy.supported_models
    config = comfy.supported_models.Flux({"image_model": "flux", "in_channels": 16, "patch_size": 2,
                                          "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 32,
                                          "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
                                          "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000,
                                          "qkv_bias": True, "guidance_embed": False})
    model = comfy.model_patcher.ModelPatcher(config.get_model({}, device=torch.device("cpu")), torch.device("cpu"),
                                             torch.device("cpu"))
    words = nodes.NODE_CLASS_MAPPINGS["AttnKitWords"]
    ckpt = nodes.CheckpointLoaderSimple().load_checkpoint(host.checkpoint())
    targets = words().pick(ckpt[1], host.PROMPT, "car")[0]
    node = nodes.NODE_CLASS_MAPPINGS["AttnKitApplyObserve"]
    with pytest.raises(attnkit.UnsupportedModelError, match="this MODEL is a Flux"):
        node().apply(model, targets, **host.node_defaults("AttnKitApplyObserve"))


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2m",
                                     "dpmpp_2s_ancestral", "lms", "dpmpp_sde"])
def test_the_update_lands_on_the_latent_each_step_starts_from(comfy, sampler):
    """ComfyUI's own sampler functions (``comfy/k_diffusion/sampling.py``, behind ``KSamplerX0Inpaint``) driven
    through attnkit's step clock: each step's update is written into exactly the tensor the sampler then reports
    as that step's latent (its callback's ``x``), once per step, never into a corrector's or midpoint's input."""
    import comfy.k_diffusion.sampling as k
    import comfy.samplers

    from attnkit.hosts.comfyui import _Stepper, corrector_at_next_sigma

    class Run:  # what _Stepper asks of a HostRun: a step clock, the updaters and their update
        def __init__(self):
            self.updaters = [self]
            self.updated_ids, self.steps = {}, []
            self.report = type("R", (), {"warnings": []})()

        def acts_at(self, step):
            return True

        def set_step(self, index, count):
            self.steps.append(index)

        def update_latents(self, z, step):
            return z + 0.0

    import comfy.model_sampling

    class Sampling(comfy.model_sampling.EPS, comfy.model_sampling.ModelSamplingDiscrete):
        pass

    class Base(torch.nn.Module):  # what the samplers read of the model: its noise schedule
        def __init__(self):
            super().__init__()
            self.model_sampling = Sampling()

    class Model:  # the guider (CFGGuider's attributes the samplers read), a denoiser that pulls towards zero
        inner_model = Base()
        model_patcher = type("Patcher", (), {"get_model_object": lambda self, name: Model.inner_model.model_sampling})()

        def __call__(self, x, sigma, **kwargs):
            return x * 0.5

    run = Run()
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    stepper = _Stepper(Model(), run, [float(s) for s in sigmas], corrector_at_next_sigma(f"sample_{sampler}", {}),
                       optimise=True)
    seen = {}
    original = stepper._update

    def record(x, sigma):
        seen.setdefault(stepper.step, []).append(id(x))
        original(x, sigma)

    stepper._update = record
    reported = {}

    def callback(d):
        reported[d["i"]] = id(d["x"])
        stepper.stepped(d["i"])

    model_k = comfy.samplers.KSamplerX0Inpaint(stepper, sigmas)
    x = torch.randn(1, 4, 8, 8) * 14.6
    getattr(k, f"sample_{sampler}")(model_k, x, sigmas, extra_args={"denoise_mask": None, "seed": 0},
                                    callback=callback, disable=True)
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(len(ids) == 1 for ids in seen.values()), seen
    assert {i: ids[0] for i, ids in seen.items()} == reported


def test_sd2_checkpoints_run_every_method(executor):
    """An SD 2.x checkpoint (OpenCLIP ViT-H text encoder: ComfyUI tokenises with ``clip_h``; linear transformer
    projections; fp32 attention precision): observe leaves the image bit-identical and reads both words,
    structured and Attend-and-Excite change it, and a missing word is named at the Words node."""
    base = host.base_graph(model="sd2", seed=14)
    plain = run_ok(executor, base).image()
    np.testing.assert_array_equal(run_ok(executor, host.with_method(base, APPLY["observe"])).image(), plain)
    assert set(executor.output("attnkit", 1).last_report.methods["observe"].maps) == {"car", "sheep"}
    assert differs(run_ok(executor, host.with_method(base, APPLY["structured"])).image(), plain) > CHANGED
    ae = host.with_method(base, APPLY["attend_excite"], max_iter_to_alter=3)
    assert differs(run_ok(executor, ae).image(), plain) > CHANGED
    bad = host.with_method(host.base_graph(model="sd2", words="giraffe"), APPLY["observe"])
    result = executor.run(bad)
    assert not result.ok and result.error["node_type"] == "AttnKitWords" and "giraffe" in result.error["exception_message"]


def _advanced(g):
    i = g["sampler"]["inputs"]
    g["sampler"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": i["model"], "add_noise": "enable", "noise_seed": 21, "steps": 6, "cfg": 7.5, "sampler_name": "euler",
        "scheduler": "normal", "positive": i["positive"], "negative": i["negative"], "latent_image": i["latent_image"],
        "start_at_step": 2, "end_at_step": 5, "return_with_leftover_noise": "disable"}}
    return g


def _custom(g):
    i = g["sampler"]["inputs"]
    g["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    g["sigmas"] = {"class_type": "BasicScheduler", "inputs": {"model": i["model"], "scheduler": "karras", "steps": 4,
                                                              "denoise": 1.0}}
    g["sampler"] = {"class_type": "SamplerCustom", "inputs": {
        "model": i["model"], "add_noise": True, "noise_seed": 21, "cfg": 7.5, "positive": i["positive"],
        "negative": i["negative"], "sampler": ["select", 0], "sigmas": ["sigmas", 0], "latent_image": i["latent_image"]}}
    return g


def _img2img(g, mask=False):
    g["image"] = {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 1,
                                                         "color": 8421504}}
    g["encode"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["image", 0], "vae": ["ckpt", 2]}}
    g["sampler"]["inputs"].update(latent_image=["encode", 0], denoise=0.6)
    if mask:
        g["mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}}
        g["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["encode", 0], "mask": ["mask", 0]}}
        g["sampler"]["inputs"]["latent_image"] = ["masked", 0]
    return g


@pytest.mark.parametrize("shape", ["ksampler_advanced", "sampler_custom", "batch_2", "img2img", "inpaint_mask"])
def test_attend_and_excite_in_the_graphs_users_build(executor, caplog, shape):
    """KSamplerAdvanced over part of a schedule, SamplerCustom with a sampler and a scheduler node, a batch of two,
    img2img and inpainting with a noise mask: each runs, the method changes the image against the same graph
    without it, and only the noise mask draws the warning that the update is weaker there."""
    build = {"ksampler_advanced": _advanced, "sampler_custom": _custom, "batch_2": lambda g: g,
             "img2img": _img2img, "inpaint_mask": lambda g: _img2img(g, mask=True)}[shape]
    base = build(host.base_graph(seed=21, batch=2 if shape == "batch_2" else 1))
    plain = run_ok(executor, base)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = run_ok(executor, host.with_method(base, APPLY["attend_excite"], max_iter_to_alter=3))
    for a, b in zip(result.images["save"], plain.images["save"]):
        assert differs(a, b) > CHANGED
    said = attnkit_warnings(caplog)
    if shape == "inpaint_mask":
        assert len(said) == 1 and "noise mask" in said[0] and "euler" not in said[0], said
    else:
        assert said == [], said


def test_cancel_stops_a_latent_method_between_gradient_passes(executor):
    """Cancel pressed during Attend-and-Excite's iterative refinement (up to 20 gradient passes at one step) stops
    the run before the next gradient pass, not after the step: at most the pass under way finishes."""
    import sys

    other = sys.modules[[m for m in sys.modules if m.endswith("other_attention_pack")][0]]
    base = host.base_graph(seed=15)
    base["cancel"] = {"class_type": "CancelInGradientPass", "inputs": {"model": ["ckpt", 0], "what": "cancel"}}
    g = host.with_method(base, APPLY["attend_excite"], model_from=("cancel", 0), thresholds='{"0": 0.999}',
                         max_refinement_steps=20)
    result = executor.run(g)
    assert not result.ok
    assert any(event == "execution_interrupted" for event, _ in result.messages)
    from attnkit.hosts.kernel import unet_blocks

    blocks = len(unet_blocks(executor.output("ckpt", 0).model.diffusion_model))  # one pass calls each at most once
    assert len(other.CancelInGradientPass.GRAD_CALLS) < blocks, other.CancelInGradientPass.GRAD_CALLS


def test_a_failing_gradient_pass_names_attnkit_and_its_node(executor):
    """An error inside the gradient pass (here a patch raising) reaches the user as one message that names the
    AttnKit node, the method and the step, not as a bare PyTorch error."""
    base = host.base_graph(seed=16)
    base["fail"] = {"class_type": "CancelInGradientPass", "inputs": {"model": ["ckpt", 0], "what": "fail"}}
    result = executor.run(host.with_method(base, APPLY["attend_excite"], model_from=("fail", 0)))
    assert not result.ok and result.error["node_type"] == "KSampler"
    message = result.error["exception_message"]
    assert message.startswith("AttnKit Apply Attend-and-Excite (node attnkit): the gradient pass of attend_excite")
    assert "step 1" in message and "a kernel failed in the gradient pass" in message


def p2p_graph(source="a cat riding a bicycle", target="a dog riding a bicycle", seed=3, **values) -> dict:
    """Checkpoint -> AttnKit Prompt-to-Prompt -> KSampler -> VAE Decode -> Save Image (two images)."""
    g = host.base_graph(prompt=source, seed=seed, words=None)
    del g["pos"]
    g["p2p"] = {"class_type": "AttnKitPromptToPrompt", "inputs": {
        **host.node_defaults("AttnKitPromptToPrompt"), "model": ["ckpt", 0], "clip": ["ckpt", 1],
        "latent": ["latent", 0], "source": source, "target": target, **values}}
    g["sampler"]["inputs"].update(model=["p2p", 0], positive=["p2p", 1], latent_image=["p2p", 2])
    return g


def test_prompt_to_prompt_edits_in_comfyui_through_the_same_code(executor):
    """The AttnKit Prompt-to-Prompt node in a real graph: the source row is the plain image of the source prompt
    (same seed, same noise); with both injection windows at 0 the edited row is the plain target image, with them it
    is another (the injection acts), closer to the source at full injection; reweighting by 1 changes nothing, by 4 it
    does; refine runs."""
    source, target = "a cat riding a bicycle", "a dog riding a bicycle"
    plain_source = run_ok(executor, host.base_graph(prompt=source, seed=3, words=None)).image()
    plain_target = run_ok(executor, host.base_graph(prompt=target, seed=3, words=None)).image()
    src, edited = run_ok(executor, p2p_graph(source, target)).images["save"]
    assert differs(src, plain_source) < 0.5, "the source row is the source prompt's own image"
    _, untouched = run_ok(executor, p2p_graph(source, target, cross_replace=0.0, self_replace=0.0)).images["save"]
    assert differs(untouched, plain_target) < 0.5, "no injection: the target prompt's own image"
    assert differs(edited, untouched) > CHANGED, "the injection changes the edited image"
    _, full = run_ok(executor, p2p_graph(source, target, cross_replace=1.0, self_replace=1.0)).images["save"]
    print(f"\nmean abs difference to the source image: plain target {differs(plain_target, src):.2f}, "
          f"edited (0.8/0.4) {differs(edited, src):.2f}, edited (1/1) {differs(full, src):.2f}")
    assert differs(full, src) < differs(plain_target, src)
    _, same = run_ok(executor, p2p_graph(source, source, edit="reweight", reweight="cat=1")).images["save"]
    assert differs(same, src) < 0.5, "reweighting by 1 is the source image"
    _, stronger = run_ok(executor, p2p_graph(source, source, edit="reweight", reweight="cat=4")).images["save"]
    assert differs(stronger, src) > CHANGED
    _, refined = run_ok(executor, p2p_graph(source, "a fluffy cat riding a bicycle", edit="refine")).images["save"]
    assert differs(refined, src) > CHANGED


def test_prompt_to_prompt_bad_input_is_named_at_its_node(executor):
    result = executor.run(p2p_graph("a cat riding a bicycle", "a dog on a red bicycle"))
    assert not result.ok
    message = result.error["exception_message"]
    assert "AttnKit Prompt-to-Prompt (node p2p)" in message and "refine" in message
    result = executor.run(p2p_graph(edit="reweight", reweight="horse=2", target="a cat riding a bicycle"))
    assert not result.ok and "horse" in result.error["exception_message"]
    g = p2p_graph()
    g["latent"]["inputs"]["batch_size"] = 2
    result = executor.run(g)
    assert not result.ok and "batch 1" in result.error["exception_message"]
