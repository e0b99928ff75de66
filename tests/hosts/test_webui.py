"""scripts/attnkit_webui.py in SD.Next, Forge and A1111 (stub hosts, tiny SD 1.5 pipeline).

For each host: a job with a method enabled applies it and gives the same latents (and maps) as the Python API on the
same model; the host's processors/modules are restored afterwards and after an injected error; the infotext it
writes pastes back into the same control values.
"""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.hosts import webui
from attnkit.methods import Observe, StructuredGuidance

from . import hostsim

PROMPT = "a red car and a white sheep"
NEG = ""
STEPS = 3


def control_args(enabled=True, words="", methods=None, **job):
    """The script's positional arguments: defaults everywhere, then ``methods = {id: {field: widget value}}``."""
    from attnkit.ui.panel import param_to_widget_value

    methods = methods or {}
    values = []
    for c in webui.controls():
        if c.name == "enabled":
            values.append(enabled)
        elif c.name == "words":
            values.append(words)
        elif c.name in ("exact_tokens", "hires"):
            values.append(job.get(c.name, c.name == "exact_tokens"))
        elif c.field is None:
            values.append(c.method in methods)
        else:
            given = methods.get(c.method, {})
            values.append(given[c.field.name] if c.field.name in given else param_to_widget_value(c.field, c.field.default))
    return values


CASES = {
    "observe": ({"observe": {"words": "car, sheep"}}, lambda: [Observe(words=["car", "sheep"])]),
    "structured": ({"structured": {}}, lambda: [StructuredGuidance()]),
    "structured-conj": ({"structured": {"conjunction": True}}, lambda: [StructuredGuidance(conjunction=True)]),
}


def make_job(host, pipe):
    from modules import processing

    model = {"sdnext": lambda: pipe, "forge": lambda: hostsim.ForgeModel(pipe),
             "a1111": lambda: hostsim.A1111Model(pipe)}[host]()
    return processing.StableDiffusionProcessingTxt2Img(sd_model=model, prompt=PROMPT, negative_prompt=NEG,
                                                      steps=STEPS, seed=3)


def reference(pipe, methods, p):
    """The Python API on the same model: attach() around a plain pipeline call."""
    with attnkit.attach(pipe, methods, prompt=p.prompt) as run:
        latents = pipe(p.prompt, negative_prompt=p.negative_prompt, num_inference_steps=p.steps,
                       guidance_scale=p.cfg_scale, height=p.height, width=p.width, output_type="latent",
                       generator=torch.Generator("cpu").manual_seed(p.seed), **run.call_kwargs()).images
    return latents, run.report


def host_state(host, p):
    """Everything a job may touch, to compare before and after."""
    from modules import script_callbacks

    model = p.sd_model
    if host == "sdnext":
        unet = model.unet
        return {"processors": dict(unet.attn_processors), "hooks": (len(unet._forward_hooks), len(unet._forward_pre_hooks))}
    if host == "forge":
        return {"unet": model.forge_objects.unet, "options": repr(model.forge_objects_original.unet.model_options)}
    dm = model.model.diffusion_model
    return {
        "forwards": [n for n, m in dm.named_modules() if "forward" in m.__dict__],
        "hooks": len(dm._forward_pre_hooks),
        "cfg": len(script_callbacks.callback_map["callbacks_cfg_denoiser"]),
        "sample": "sample" in p.__dict__ and getattr(p.sample, "__name__", "") == "guarded_sample",
    }


def same_state(before, after):
    for key, value in before.items():
        if key == "processors":
            assert after[key].keys() == value.keys()
            assert all(after[key][k] is v for k, v in value.items()), "a processor object was not put back"
        elif key == "unet":
            assert after[key] is value, "forge_objects.unet is not the host's patcher again"
        else:
            assert after[key] == value, key


@pytest.mark.parametrize("host", ["sdnext", "forge", "a1111"])
@pytest.mark.parametrize("case", list(CASES))
def test_job_matches_python_api_and_restores(webui_script, sd15, host, case):
    controls, methods = CASES[case]
    p = make_job(host, sd15)
    if host == "a1111":
        p.sample = lambda: None  # placeholder so the state snapshot sees the host's own sampler
    script = webui_script.AttnKitScript()
    before = host_state(host, p)
    latents, processed = hostsim.run_job(host, script, p, control_args(methods=controls))
    expected, report = reference(sd15, methods(), p)
    assert not p.comments, p.comments
    torch.testing.assert_close(latents, expected, atol=2e-4, rtol=1e-4)
    job = script.last_job
    assert job.host == host and job.reports, "the job reported nothing"
    got = job.reports[0]
    assert got.steps == report.steps == len(sd15.scheduler.timesteps)
    if case == "observe":
        for word in ("car", "sheep"):
            torch.testing.assert_close(got["observe"].data["raw"][word], report["observe"].data["raw"][word],
                                       atol=1e-6, rtol=1e-5)
        assert len(processed.images) == 2, "the heatmap grid is shown with the image"
    else:
        assert got["structured"].data["phrases"] == report["structured"].data["phrases"]
        plain = reference(sd15, [], p)[0]
        assert (latents - plain).abs().max() > 1e-3, "structured changed nothing"
    after = host_state(host, p)
    if host == "forge":  # Forge resets forge_objects from forge_objects_original for the next job; so did we
        assert p.sd_model.forge_objects.unet is p.sd_model.forge_objects_original.unet
    same_state(before, after)
    assert "AttnKit" in p.extra_generation_params


@pytest.mark.parametrize("host", ["sdnext", "forge", "a1111"])
def test_failed_job_leaves_the_host_as_it_was(webui_script, sd15, host):
    from modules import script_callbacks, shared

    p = make_job(host, sd15)
    if host == "a1111":
        p.sample = lambda: None
    shared.opts.data["prompt_attention"] = "native"
    before = host_state(host, p)
    script = webui_script.AttnKitScript()
    with pytest.raises(RuntimeError, match="injected"):
        hostsim.run_job(host, script, p, control_args(methods={"observe": {}, "structured": {}}),
                        fail_in_sampling=True)
    if host in ("sdnext", "a1111"):  # restored on the spot
        same_state(before, host_state(host, p))
    assert shared.opts.data["prompt_attention"] == "native", "the user's prompt parser setting was not restored"
    assert sd15.unet.attn_processors == before.get("processors", sd15.unet.attn_processors)
    # Forge keeps the failed job's clone until the next job; the host's own patcher never saw a patch
    if host == "forge":
        assert p.sd_model.forge_objects_original.unet.model_options == {"transformer_options": {}}
    # the next job (here: the script being unloaded) puts everything back
    script_callbacks.script_unloaded_callback()
    same_state(before, host_state(host, p))
    # and the model still gives the plain result
    p2 = make_job(host, sd15)
    latents, _ = hostsim.run_job(host, webui_script.AttnKitScript(), p2, control_args(enabled=False))
    torch.testing.assert_close(latents, reference(sd15, [], p2)[0], atol=2e-4, rtol=1e-4)


def test_sdnext_chains_its_step_callback_and_parser_setting(webui_script, sd15):
    from modules import processing_callbacks, shared

    processing_callbacks.calls.clear()
    shared.opts.data["prompt_attention"] = "compel"
    p = make_job("sdnext", sd15)
    hostsim.run_job("sdnext", webui_script.AttnKitScript(), p, control_args(methods={"observe": {"words": "car"}}))
    steps = len(sd15.scheduler.timesteps)
    assert steps >= STEPS and processing_callbacks.calls == list(range(steps)), "SD.Next's callback must run every step"
    assert shared.opts.data["prompt_attention"] == "compel"


def test_sdnext_without_exact_tokens_reads_embeddings_sdnext_encoded(webui_script, sd15):
    from modules import shared

    shared.opts.data["prompt_attention"] = "native"
    p = make_job("sdnext", sd15)
    p.prompt = "a (red car:1.2) and a white sheep"
    p.prompts = [p.prompt]
    script = webui_script.AttnKitScript()
    hostsim.run_job("sdnext", script, p, control_args(methods={"observe": {"words": "car"}}, exact_tokens=False))
    maps = script.last_job.reports[0]["observe"].maps["car"]
    assert torch.isclose(maps.sum(), torch.tensor(1.0), atol=1e-4)
    # the user is told, under the result, once
    assert [c for c in p.comments if "token positions follow its plain text" in c] == [
        "AttnKit: SD.Next's prompt parser encodes the prompt, so token positions follow its plain text; turn on "
        "exact tokens for exact positions"]


def test_sdnext_gradient_method_runs_under_inference_mode(webui_script, sd15):
    p = make_job("sdnext", sd15)
    p.steps = 4
    script = webui_script.AttnKitScript()
    args = control_args(words="car, sheep", methods={"a_star": {}})
    with torch.inference_mode():  # SD.Next's "inference-mode" setting
        latents, _ = hostsim.run_job("sdnext", script, p, args)
    report = script.last_job.reports[0]["a_star"]
    assert report.losses and all(torch.isfinite(torch.tensor(r["loss"])) for r in report.losses)
    expected, ref = reference(sd15, [attnkit.methods.AStar(words=["car", "sheep"])], p)
    torch.testing.assert_close(latents, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("host", ["forge", "a1111"])
def test_latent_method_is_reported_and_left_out(webui_script, sd15, host):
    p = make_job(host, sd15)
    script = webui_script.AttnKitScript()
    latents, _ = hostsim.run_job(host, script, p, control_args(words="car", methods={"attend_excite": {}}))
    assert any("attend_excite cannot run" in c for c in p.comments), p.comments
    torch.testing.assert_close(latents, reference(sd15, [], p)[0], atol=2e-4, rtol=1e-4)


def test_forge_refuses_flux_with_a_message(webui_script, sd15):
    p = make_job("forge", sd15)
    p.sd_model.is_sd1 = False
    latents, _ = hostsim.run_job("forge", webui_script.AttnKitScript(), p, control_args(methods={"observe": {}}))
    assert any("Flux" in c for c in p.comments), p.comments


def test_forge_skips_hires_pass_unless_asked(webui_script, sd15):
    p = make_job("forge", sd15)
    p.is_hr_pass = True
    script = webui_script.AttnKitScript()
    hostsim.run_job("forge", script, p, control_args(methods={"structured": {}}))
    assert script.last_job.reports == []
    p = make_job("forge", sd15)
    p.is_hr_pass = True
    hostsim.run_job("forge", script, p, control_args(methods={"structured": {}}, hires=True))
    assert script.last_job.reports


def test_forge_wraps_another_extensions_replace(webui_script, sd15):
    calls = []

    def theirs(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return hostsim.sdpa(q, k, v, extra_options["n_heads"])

    p = make_job("forge", sd15)
    original = p.sd_model.forge_objects_original.unet
    keys = list(p.sd_model.ldm.keys.values())
    for key in keys:
        original.set_model_attn2_replace(theirs, *key)
    script = webui_script.AttnKitScript()
    hostsim.run_job("forge", script, p, control_args(methods={"observe": {"words": "car"}}))
    assert len(calls) == len(keys) * len(sd15.scheduler.timesteps), "the other extension's replace must still run on every block"
    assert script.last_job.reports[0]["observe"].maps["car"].shape[-1] > 0


def test_word_not_in_prompt_is_a_visible_note(webui_script, sd15):
    p = make_job("a1111", sd15)
    hostsim.run_job("a1111", webui_script.AttnKitScript(), p, control_args(methods={"observe": {"words": "dog"}}))
    assert any("'dog' is not in the prompt" in c for c in p.comments), p.comments


# --------------------------------------------------------------------------------------------------- infotext


def build_ui(script):
    import gradio as gr

    with gr.Blocks():
        components = script.ui(False)
    return components


def test_infotext_round_trip_restores_every_control(webui_script, sd15):
    from modules import infotext_utils

    script = webui_script.AttnKitScript()
    build_ui(script)
    chosen = {
        "structured": {"conjunction": True, "conjunction_first_key": "prompt", "phrases": "red car, white sheep"},
        "observe": {"words": "car, sheep", "resolution": "4x4"},
        "a_star": {"words": "car", "tau": 0.35, "iterations": 3, "steps": "0-0.5"},
    }
    args = control_args(methods=chosen, exact_tokens=False, hires=True)
    p = make_job("sdnext", sd15)
    script.process(p, *args)
    assert "AttnKit" not in p.extra_generation_params, "infotext is written once the job applies, not before"
    script.process_batch(p, *args, batch_number=0, prompts=list(p.prompts))
    text = infotext_utils.create_infotext(p)
    assert "AttnKit: ak1." in text and "AttnKit methods: " in text
    params = infotext_utils.parse_generation_parameters(text)
    pasted = infotext_utils.paste_values(script.infotext_fields, params)
    assert pasted[0] is True
    names = [c.name for c in webui.controls()]
    for name, value, original in zip(names, pasted, args):
        if name == "words":  # the picked words are restored in each method's own words control
            continue
        assert value is not None, f"{name} was not restored"
        if isinstance(original, float) or isinstance(value, float):
            assert float(value) == pytest.approx(float(original)), name
        else:
            assert value == original, name
    restored = [v if v is not None else a for v, a in zip(pasted, args)]
    assert [m.config for m in webui.read_args(restored)[1]] == [m.config for m in webui.read_args(args)[1]]


def test_paste_without_attnkit_turns_it_off(webui_script):
    from modules import infotext_utils

    script = webui_script.AttnKitScript()
    build_ui(script)
    params = infotext_utils.parse_generation_parameters("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1")
    pasted = infotext_utils.paste_values(script.infotext_fields, params)
    assert pasted[0] is False and all(v is None for v in pasted[1:])


def test_broken_share_code_does_not_break_the_paste(webui_script):
    from modules import infotext_utils

    script = webui_script.AttnKitScript()
    build_ui(script)
    params = infotext_utils.parse_generation_parameters("a cat\nSteps: 20, Seed: 1, CFG scale: 7, AttnKit: ak1.%%%")
    assert infotext_utils.paste_values(script.infotext_fields, params)[0] is False


def test_api_passes_a_preset_by_title(webui_script, sd15):
    code = attnkit.Preset.from_methods([StructuredGuidance()]).to_share_code()
    p = make_job("a1111", sd15)
    script = webui_script.AttnKitScript()
    assert script.title() == "AttnKit"
    latents, _ = hostsim.run_job("a1111", script, p, [code])
    expected, _ = reference(sd15, [StructuredGuidance()], p)
    torch.testing.assert_close(latents, expected, atol=2e-4, rtol=1e-4)


def test_script_import_patches_nothing(webui_script, sd15):
    from modules import script_callbacks

    registered = {k for k, v in script_callbacks.callback_map.items() if v}
    assert registered == {"callbacks_infotext_pasted", "callbacks_script_unloaded"}
    assert all(type(p).__name__ != "LayerProcessor" for p in sd15.unet.attn_processors.values())
    import os

    scripts_dir = os.path.dirname(webui_script.__file__)
    assert sorted(f for f in os.listdir(scripts_dir) if not f.startswith((".", "__"))) == ["attnkit_webui.py"]


@pytest.mark.parametrize("case", ["observe", "structured"])
def test_a1111_keeps_another_extensions_attention_forward(webui_script, sd15, case):
    """Another extension swapped attn2.forward on the instances: observe reads maps and lets theirs compute the
    output; structured must compute the layer itself and says so; theirs is back afterwards either way."""
    controls, methods = CASES[case]
    p = make_job("a1111", sd15)
    modules = [m for n, m in p.sd_model.model.diffusion_model.named_modules() if n.endswith("attn2")]
    calls = []

    def theirs_for(module):
        original = module.forward

        def forward(x, context=None, mask=None, **kwargs):
            calls.append(1)
            return original(x, context=context, mask=mask, **kwargs)

        return forward

    for m in modules:
        m.forward = theirs_for(m)
    installed = [m.__dict__["forward"] for m in modules]
    try:
        script = webui_script.AttnKitScript()
        latents, _ = hostsim.run_job("a1111", script, p, control_args(methods=controls))
        expected, report = reference(sd15, methods(), p)
        if case == "observe":
            assert calls, "the other extension's forward was not called"
            torch.testing.assert_close(latents, expected, atol=2e-4, rtol=1e-4)
            got = script.last_job.reports[0]["observe"].data["raw"]["car"]
            torch.testing.assert_close(got, report["observe"].data["raw"]["car"], atol=1e-6, rtol=1e-5)
            assert not p.comments
        else:
            assert any("another extension replaced the cross-attention" in c for c in p.comments), p.comments
        assert [m.__dict__["forward"] for m in modules] == installed
    finally:
        for m in modules:
            m.__dict__.pop("forward", None)


def test_sdnext_processors_set_after_process_batch_are_wrapped_and_put_back(webui_script, sd15):
    """Finding 5: SD.Next's ``process_pre`` (``modules/processing_diffusers.py``: IP-Adapter, PAG, attention
    settings) sets the pipeline's processors after the scripts' ``process_batch``. attnkit installs at the denoiser's
    first call, over what the host set, and puts exactly that back."""
    from diffusers.models.attention_processor import AttnProcessor

    saved = dict(sd15.unet.attn_processors)
    hosts = {}

    def process_pre(p):
        hosts.update({name: AttnProcessor() for name in saved})  # new objects, as an IP-Adapter load makes
        p.sd_model.unet.set_attn_processor(dict(hosts))

    try:
        p = make_job("sdnext", sd15)
        script = webui_script.AttnKitScript()
        hostsim.run_job("sdnext", script, p, control_args(methods={"observe": {"words": "car"}}),
                        before_call=process_pre)
        report = script.last_job.reports[0]
        assert report.steps == len(sd15.scheduler.timesteps) and report["observe"].maps["car"].shape[-1] > 0, \
            "the host's processors replaced attnkit's: it did nothing"
        now = sd15.unet.attn_processors
        assert all(now[name] is hosts[name] for name in hosts), "the processors the host set were not put back"
    finally:
        sd15.unet.set_attn_processor(saved)


def test_adetailer_inner_pass_leaves_the_job_alone(webui_script, sd15):
    """Finding 10: ADetailer calls an allow-listed script's hooks on its inner ``p`` (``_ad_inner``) with the same
    script instance. The option is gone; the inner pass must neither replace nor end the outer job."""
    assert "adetailer" not in [c.name for c in webui.controls()]
    p = make_job("a1111", sd15)
    script = webui_script.AttnKitScript()
    args = control_args(methods={"observe": {"words": "car"}})
    p.sample = hostsim._bound_sample(p, False)
    script.process(p, *args)
    job = script.job
    inner = make_job("a1111", sd15)
    inner._ad_inner = True
    script.process(inner, *args)
    script.process_batch(inner, *args, batch_number=0, prompts=list(inner.prompts))
    script.postprocess(inner, None, *args)
    assert script.job is job and not inner.comments and "AttnKit" not in inner.extra_generation_params
    script.process_batch(p, *args, batch_number=0, prompts=list(p.prompts))
    p.sample()
    script.postprocess_batch(p, *args, batch_number=0)
    assert job.reports and job.reports[0].steps == len(sd15.scheduler.timesteps)
