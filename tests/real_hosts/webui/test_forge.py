"""attnkit's Forge job in Forge's own ``backend`` (dfdcbab6): its ``IntegratedUNet2DConditionModel`` (tiny, random
weights), ``UnetPatcher`` (clone, patch setters), ``KModel`` and ``sampling_function_inner`` (the CFG batch that fills
``transformer_options``), driven in the order of ``modules/processing.py`` (``process_images_inner``, ``sample``,
``sample_hr_pass``), with the slow ``CLIPTokenizer`` from Forge's SD 1.5 tokenizer files.

Findings: 6 (steps off by one), 7 (batch count heatmaps), 8 (a later clone deep-copies the patch), 9 (hires applies
twice), and 1's second half (an error that is not attnkit's escaped into the host)."""

from __future__ import annotations

import pytest
import torch

from conftest import FORGE, host_modules, load_script, scripts_stand_in, stand_in
from webuihost import CONTEXT, Processing, TextEncoder, callbacks_stand_in, euler, karras_free_sigmas, solid_images

PROMPT = "a red car and a white sheep"


class ForgeModel:
    """``p.sd_model`` as ``backend/diffusion_engine/sd15.py`` ``StableDiffusion`` builds it: ``forge_objects``
    (``unet`` a ``UnetPatcher`` over a ``KModel``), ``forge_objects_original``, ``forge_objects_after_applying_lora``,
    ``text_processing_engine.tokenizer``, ``is_sd1``."""

    is_sd1, is_sd2, is_sdxl = True, False, False

    def __init__(self, tokenizer):
        from backend.diffusion_engine.base import ForgeObjects
        from backend.nn.unet import IntegratedUNet2DConditionModel
        from backend.patcher.unet import UnetPatcher
        from diffusers import EulerDiscreteScheduler

        torch.manual_seed(0)
        unet = IntegratedUNet2DConditionModel(
            in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1, channel_mult=(1, 2), num_heads=2,
            use_spatial_transformer=True, transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
            transformer_depth_middle=1, context_dim=CONTEXT, use_linear_in_transformer=True).eval()
        # what backend/loader.py sets on a loaded UNet
        unet.storage_dtype = unet.computation_dtype = torch.float32
        unet.load_device = unet.initial_device = unet.offload_device = torch.device("cpu")
        scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        patcher = UnetPatcher.from_model(unet, scheduler, config=None)
        self.forge_objects = ForgeObjects(patcher, None, None, None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.text_processing_engine = type("Engine", (), {"tokenizer": tokenizer})()
        self.encoder = TextEncoder(tokenizer)

    def get_learned_conditioning(self, prompts):
        return self.encoder(prompts)


class Forge:
    """One Forge job: ``process_images_inner`` -> per batch ``process_batch``, ``sample`` (and ``sample_hr_pass``),
    ``postprocess_batch`` -> ``postprocess``."""

    def __init__(self, script_module, callbacks, tokenizer):
        self.module, self.callbacks, self.tokenizer = script_module, callbacks, tokenizer
        self.script = script_module.AttnKitScript()

    def model(self):
        return ForgeModel(self.tokenizer)

    def _sample(self, p, x, hires):
        from backend.sampling.condition import compile_conditions
        from backend.sampling.sampling_function import sampling_function_inner

        model = p.sd_model
        cond = model.get_learned_conditioning(p.hr_prompts if hires else p.prompts)
        uncond = model.get_learned_conditioning([p.negative_prompt] * p.batch_size)
        unet = model.forge_objects.unet  # whatever the scripts left there
        steps = (p.hr_second_pass_steps or p.steps) if hires else p.steps
        sigmas = karras_free_sigmas(unet.model.predictor.sigmas, steps + 1)[1:] if hires else \
            karras_free_sigmas(unet.model.predictor.sigmas, steps)

        def on_call(sampling_step, denoiser, x_, sigma):
            self.callbacks.cfg_denoiser_callback(self.callbacks.CFGDenoiserParams(
                x_, None, sigma, sampling_step, steps, cond, uncond, denoiser))

        def denoise(x_, sigma):
            return sampling_function_inner(unet.model, x_, sigma.expand(x_.shape[0]), compile_conditions(uncond),
                                           compile_conditions(cond), 7.0, unet.model_options, seed=p.seed)

        with torch.no_grad():
            return euler(x * sigmas[0], sigmas, denoise, on_call)

    def run(self, p, args, after_attnkit=None, size=8):
        """The job; ``after_attnkit(p)`` is another script's ``process_before_every_sampling`` running after
        attnkit's. Returns the latents of each batch."""
        from modules import scripts  # noqa: F401  (the stand-in; kept for the script's import)

        m = p.sd_model
        m.forge_objects = m.forge_objects_original.shallow_copy()
        self.script.process(p, *args)
        m.forge_objects_after_applying_lora = m.forge_objects.shallow_copy()
        out = []
        for n in range(p.n_iter):
            p.iteration = n
            self.script.process_batch(p, *args, batch_number=n, prompts=p.prompts, seeds=[p.seed], subseeds=[p.seed])
            g = torch.Generator().manual_seed(p.seed + n)
            x = torch.randn(p.batch_size, 4, size, size, generator=g)
            m.forge_objects = m.forge_objects_after_applying_lora.shallow_copy()  # sample()
            self._before_sampling(p, args, after_attnkit)
            x = self._sample(p, x, hires=False)
            if p.enable_hr:  # sample_hr_pass: the scripts' hook once before and once after the reset
                p.is_hr_pass = True
                x = torch.nn.functional.interpolate(x, scale_factor=1.5, mode="nearest")
                self._before_sampling(p, args, after_attnkit)
                m.forge_objects = m.forge_objects_after_applying_lora.shallow_copy()
                self._before_sampling(p, args, after_attnkit)
                x = self._sample(p, x * 0.5 + torch.randn_like(x) * 0.5, hires=True)
                p.is_hr_pass = False
            self.script.postprocess_batch(p, *args, batch_number=n)
            out.append(x)
        processed = type("Processed", (), {"images": solid_images(p.n_iter * p.batch_size), "infotexts": [],
                                           "index_of_first_image": 0})()
        self.script.postprocess(p, processed, *args)
        self.processed = processed
        return out

    def _before_sampling(self, p, args, after):
        self.script.process_before_every_sampling(p, *args, x=None, noise=None, c=None, uc=None)
        if after is not None:
            after(p)


@pytest.fixture
def forge(forge_backend, slow_tokenizer):
    callbacks = callbacks_stand_in()
    shared = stand_in("shared", "stands for Forge modules/shared.py (parses the webui's command line at import)")
    with host_modules(FORGE, {"script_callbacks": callbacks, "scripts": scripts_stand_in(), "shared": shared}):
        yield Forge(load_script(), callbacks, slow_tokenizer)


def args_for(**methods):
    from attnkit import Preset
    from attnkit.methods import REGISTRY

    return [Preset.from_methods([REGISTRY[m](**cfg) for m, cfg in methods.items()]).to_share_code()]


def control_args(hires=False, **methods):
    """The script's positional control values (as the UI sends them) with ``methods`` enabled at their defaults."""
    from attnkit.hosts import webui
    from attnkit.ui.panel import param_to_widget_value

    values = []
    for c in webui.controls():
        if c.name == "enabled":
            values.append(True)
        elif c.name == "words":
            values.append("")
        elif c.name == "exact_tokens":
            values.append(True)
        elif c.name == "hires":
            values.append(hires)
        elif c.field is None:
            values.append(c.method in methods)
        else:
            given = methods.get(c.method, {})
            values.append(given.get(c.field.name, param_to_widget_value(c.field, c.field.default)))
    return values


def test_observe_and_structured_run_every_step_and_restore(forge):
    p = Processing(forge.model(), PROMPT, steps=5)
    plain = Forge(forge.module, forge.callbacks, forge.tokenizer).run(
        Processing(p.sd_model, PROMPT, steps=5), control_args())  # nothing enabled
    original = p.sd_model.forge_objects_original.unet
    got = forge.run(p, control_args(observe={"words": "car, sheep"}, structured={}))
    job = forge.script.last_job
    assert not p.comments, p.comments
    report = job.reports[0]
    assert report.steps == 5, "finding 6: every step of the pass is its own step"
    for word in ("car", "sheep"):
        m = report["observe"].maps[word]
        assert torch.allclose(m.flatten(1).sum(-1), torch.ones(m.shape[0]), atol=1e-4)
    assert (got[0] - plain[0]).abs().max() > 1e-4, "structured changed nothing"
    assert original.model_options == {"transformer_options": {}}, "the host's own patcher was patched"
    assert p.sd_model.forge_objects.unet is not None and "AttnKit" in p.extra_generation_params
    assert not forge.callbacks.callback_map["callbacks_cfg_denoiser"], "the step callback was left registered"


def test_step_windows_follow_the_host_steps(forge):
    """A window over the last quarter of a 4-step run holds step 3; with the lagging index the run ended at step 2
    and the window was empty (a note said so and no maps came)."""
    p = Processing(forge.model(), PROMPT, steps=4)
    forge.run(p, control_args(observe={"words": "car", "steps": "0.75-1"}))
    report = forge.script.last_job.reports[0]
    assert not p.comments, p.comments
    assert report.steps == 4 and report["observe"].maps["car"].shape[-1] > 0


def test_a_run_warning_is_a_note_under_the_image(forge):
    p = Processing(forge.model(), PROMPT, steps=4)
    forge.run(p, control_args(observe={"words": "car", "steps": "0.9-1"}))
    assert [c for c in p.comments if "no step fell in the window 0.9-1 of this 4-step run" in c], p.comments


def test_another_extensions_replace_and_a_later_clone(forge):
    """Theirs (set on the host's patcher before attnkit) still computes every block; another script cloning the
    unet after attnkit (Forge deep-copies ``model_options``) does not cut attnkit off."""
    from attnkit.hosts.kernel import unet_block_keys

    calls = []

    def theirs(q, k, v, extra_options):
        calls.append(extra_options["block"])
        heads = extra_options["n_heads"]
        b, n, inner = q.shape
        split = [t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v)]
        return torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, n, inner)

    model = forge.model()
    dm = model.forge_objects.unet.model.diffusion_model
    keys = unet_block_keys(dm)
    for key in keys:
        model.forge_objects_original.unet.set_model_attn2_replace(theirs, *key)

    def later_script(p):  # e.g. a ControlNet/FreeU-style extension ordered after attnkit
        unet = p.sd_model.forge_objects.unet.clone()
        unet.set_model_attn1_patch(lambda n, c, v, extra: (n, c, v))
        p.sd_model.forge_objects.unet = unet

    p = Processing(model, PROMPT, steps=3)
    forge.run(p, control_args(observe={"words": "car"}), after_attnkit=later_script)
    assert len(calls) == len(keys) * 3 * 1, "the other extension's replace must run on every block and step"
    report = forge.script.last_job.reports[0]
    assert report.steps == 3 and report["observe"].maps["car"].shape[-1] > 0

    # structured alone installs a bound patch (no replace): the clone deep-copied it with its run
    p = Processing(forge.model(), PROMPT, steps=3)
    forge.run(p, control_args(structured={}), after_attnkit=later_script)
    report = forge.script.last_job.reports[0]
    assert report.steps == 3 and report["structured"].data["steps"] == 3, \
        "finding 8: structured ran on a copy of the run after the later clone; the job's run saw nothing"


def test_hires_pass_applies_once_with_its_own_run(forge):
    p = Processing(forge.model(), PROMPT, steps=3, enable_hr=True, hr_second_pass_steps=2)
    registered = []
    forge.run(p, control_args(hires=True, observe={"words": "car"}, attend_excite={"words": "car"}),
              after_attnkit=lambda p: registered.append(len(forge.callbacks.callback_map["callbacks_cfg_denoiser"])))
    assert registered == [1, 1, 1], "one step callback per job"
    job = forge.script.last_job
    assert [key for key, _ in job.passes] == [(0, False), (0, True)], "finding 9: one run per pass"
    first, hires = job.reports
    assert first.steps == 3 and hires.steps == 2
    assert first.grid == (8, 8) and hires.grid == (12, 12)
    notes = [c for c in p.comments if "attend_excite cannot run" in c]
    assert len(notes) == 1, p.comments


def test_hires_pass_left_alone_unless_ticked(forge):
    p = Processing(forge.model(), PROMPT, steps=3, enable_hr=True, hr_second_pass_steps=2)
    forge.run(p, control_args(observe={"words": "car"}))
    assert [key for key, _ in forge.script.last_job.passes] == [(0, False)]


def test_batch_count_heatmaps_go_over_their_own_images(forge, monkeypatch):
    import attnkit.viz

    drawn = []
    monkeypatch.setattr(attnkit.viz, "heatmap_grid", lambda image, maps: drawn.append((image, maps)) or image)
    p = Processing(forge.model(), PROMPT, steps=2, n_iter=2)
    forge.run(p, control_args(observe={"words": "car"}))
    job = forge.script.last_job
    images = forge.processed.images[:2]
    assert [image for image, _ in drawn] == images
    for (image, maps), ((iteration, _), report) in zip(drawn, job.passes):
        assert torch.equal(maps["car"], report["observe"].maps["car"][0]), "finding 7: a batch's maps over another's image"
    assert [key for key, _ in job.passes] == [(0, False), (1, False)]
    assert not torch.equal(job.reports[0]["observe"].maps["car"], job.reports[1]["observe"].maps["car"])


def test_an_error_inside_sampling_is_one_note_and_the_image_is_finished(forge, monkeypatch):
    from attnkit.hosts.kernel import HostRun

    seen = []
    real = HostRun._attn_replace

    def failing(self, q, k, v, extra_options, previous=None, kind="cross"):
        seen.append(1)
        if len(seen) > 9:
            raise RuntimeError("boom\nsecond line")
        return real(self, q, k, v, extra_options, previous, kind)

    monkeypatch.setattr(HostRun, "_attn_replace", failing)
    p = Processing(forge.model(), PROMPT, steps=3)
    got = forge.run(p, control_args(observe={"words": "car"}))
    assert torch.isfinite(got[0]).all()
    notes = list(p.comments)
    assert len(notes) == 1 and "RuntimeError: boom" in notes[0] and "second line" not in notes[0], notes
    assert not [k for k in p.extra_generation_params if k.startswith("AttnKit")], "no AttnKit infotext for it"
    assert p.sd_model.forge_objects_original.unet.model_options == {"transformer_options": {}}


def test_a_tokenizer_that_raises_is_a_note_not_a_traceback(forge):
    """Finding 1, second half: ``NotImplementedError`` (what the offsets call raised) is not an ``AttnKitError``; it
    escaped the script, the host logged a traceback and still wrote the AttnKit infotext."""

    class Broken:
        is_fast = True  # claims offsets, as the old code assumed

        def __call__(self, *a, **k):
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")

    model = forge.model()
    model.text_processing_engine.tokenizer = Broken()
    p = Processing(model, PROMPT, steps=2)
    plain = Forge(forge.module, forge.callbacks, forge.tokenizer).run(Processing(forge.model(), PROMPT, steps=2),
                                                                       control_args())
    got = forge.run(p, control_args(observe={"words": "car"}))
    assert len(p.comments) == 1 and "NotImplementedError" in next(iter(p.comments)), p.comments
    assert "made without AttnKit" in next(iter(p.comments))
    assert not [k for k in p.extra_generation_params if k.startswith("AttnKit")]
    torch.testing.assert_close(got[0], plain[0])
