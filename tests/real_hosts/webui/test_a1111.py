"""attnkit's A1111 job on the ldm modules A1111 runs (``repositories/stable-diffusion-stability-ai``, cf1d67a6: a tiny
random-weight ``UNetModel`` with ldm's own ``SpatialTransformer``/``CrossAttention``), with A1111's real
``modules/script_callbacks.py`` (c8a5322d) firing ``on_cfg_denoiser``, in the order of ``modules/processing.py``
(``process_images_inner``; ``StableDiffusionProcessingTxt2Img.sample`` runs ``sample_hr_pass`` inside the same call,
with ``is_hr_pass`` set).

Findings: 3 (the hires pass crashed), 4 (SD 2.x refused: its text encoder is open_clip's), 6 (steps off by one)."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import types

import pytest
import torch

from conftest import A1111, host_modules, load_script, need, scripts_stand_in
from webuihost import CONTEXT, Processing, TextEncoder, euler, karras_free_sigmas, solid_images

PROMPT = "a red car and a white sheep"


def unet(linear: bool, heads: dict):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(0)
    return UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
                     num_res_blocks=1, channel_mult=[1, 2], use_spatial_transformer=True, transformer_depth=1,
                     context_dim=CONTEXT, use_linear_in_transformer=linear, legacy=False, **heads).eval()


class SD1Model:
    """``p.sd_model`` of an SD 1.x checkpoint: ldm ``LatentDiffusion`` with ``model.diffusion_model`` and
    ``cond_stage_model`` = ``FrozenCLIPEmbedderWithCustomWords`` (``modules/sd_hijack_clip.py``), whose ``wrapped``
    is ldm's ``FrozenCLIPEmbedder`` holding the slow ``CLIPTokenizer``."""

    is_sd1, is_sd2, is_sdxl = True, False, False

    def __init__(self, tokenizer):
        self.model = types.SimpleNamespace(diffusion_model=unet(False, {"num_heads": 2}))
        self.cond_stage_model = types.SimpleNamespace(wrapped=types.SimpleNamespace(tokenizer=tokenizer))
        self.encoder = TextEncoder(tokenizer)

    def get_learned_conditioning(self, prompts):
        return self.encoder(prompts)


def open_clip_tokenizer():
    """open_clip 2.20.0's ``SimpleTokenizer`` from its own file (its package ``__init__`` imports torchvision)."""
    found = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "open_clip", "tokenizer.py"))
    need(found[0] if found else "/nonexistent/open_clip/tokenizer.py", "open-clip-torch (installed by the tier)")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_file", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._tokenizer


class FrozenOpenCLIPEmbedderWithCustomWords:
    """A1111 c8a5322d ``modules/sd_hijack_open_clip.py`` (the parts attnkit reads; the real class needs the whole
    webui): ``tokenize(texts)`` is ``[tokenizer.encode(text) for text in texts]`` with the module's
    ``tokenizer = open_clip.tokenizer._tokenizer``; ``id_start``/``id_end`` from its encoder table."""

    def __init__(self, bpe):
        self.id_start = bpe.encoder["<start_of_text>"]
        self.id_end = bpe.encoder["<end_of_text>"]
        self.id_pad = 0
        self._bpe = bpe

    def tokenize(self, texts):
        return [self._bpe.encode(text) for text in texts]


FrozenOpenCLIPEmbedderWithCustomWords.__module__ = "modules.sd_hijack_open_clip"


class SD2Model:
    """``p.sd_model`` of an SD 2.x checkpoint: ``cond_stage_model`` is the open_clip hijack (no CLIP tokenizer)."""

    is_sd1, is_sd2, is_sdxl = False, True, False

    def __init__(self, clip_tokenizer):
        bpe = open_clip_tokenizer()
        sys.modules["modules.sd_hijack_open_clip"] = types.SimpleNamespace(tokenizer=bpe)
        self.model = types.SimpleNamespace(diffusion_model=unet(True, {"num_head_channels": 16}))
        self.cond_stage_model = FrozenOpenCLIPEmbedderWithCustomWords(bpe)
        self.encoder = TextEncoder(clip_tokenizer)  # same vocabulary and ids as open_clip's

    def get_learned_conditioning(self, prompts):
        return self.encoder(prompts)


def sigma_table():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    return ((1 - alphas) / alphas).sqrt().float()


class A1111Host:
    def __init__(self, script_module, callbacks):
        self.module, self.callbacks = script_module, callbacks
        self.script = script_module.AttnKitScript()
        self.sigmas = sigma_table()

    def _pass(self, p, x, steps, prompts):
        model = p.sd_model
        dm = model.model.diffusion_model
        cond = model.get_learned_conditioning(prompts)
        uncond = model.get_learned_conditioning([p.negative_prompt] * p.batch_size)
        sigmas = karras_free_sigmas(self.sigmas, steps)
        log_table = self.sigmas.log()

        def on_call(sampling_step, denoiser, x_, sigma):
            self.callbacks.cfg_denoiser_callback(self.callbacks.CFGDenoiserParams(
                torch.cat([x_, x_]), None, sigma, sampling_step, steps, cond, uncond, denoiser))

        def denoise(x_, sigma):  # CFGDenoiser.forward: cond rows first, uncond last; eps model under k-diffusion
            t = (log_table - sigma.log()).abs().argmin().float()
            x_in = torch.cat([x_, x_]) / (sigma ** 2 + 1) ** 0.5
            eps = dm(x_in, t.expand(x_in.shape[0]), context=torch.cat([cond, uncond]))
            c, u = (x_.repeat(2, 1, 1, 1) - sigma * eps).chunk(2)
            return u + 7.0 * (c - u)

        with torch.no_grad():
            return euler(x * sigmas[0], sigmas, denoise, on_call)

    def run(self, p, args, size=8):
        def sample():  # StableDiffusionProcessingTxt2Img.sample, hires pass included
            x = torch.randn(p.batch_size, 4, size, size, generator=torch.Generator().manual_seed(p.seed + p.iteration))
            x = self._pass(p, x, p.steps, p.prompts)
            if p.enable_hr:
                p.is_hr_pass = True
                x = torch.nn.functional.interpolate(x, scale_factor=1.5, mode="nearest")
                x = self._pass(p, x * 0.1, p.hr_second_pass_steps or p.steps, p.hr_prompts)
                p.is_hr_pass = False
            return x

        p.sample = sample
        self.script.process(p, *args)
        out = []
        for n in range(p.n_iter):
            p.iteration = n
            self.script.process_batch(p, *args, batch_number=n, prompts=p.prompts, seeds=[p.seed], subseeds=[p.seed])
            out.append(p.sample())
            self.script.postprocess_batch(p, *args, batch_number=n)
        processed = types.SimpleNamespace(images=solid_images(p.n_iter * p.batch_size), infotexts=[],
                                          index_of_first_image=0)
        self.script.postprocess(p, processed, *args)
        return out


@pytest.fixture
def a1111(ldm, slow_tokenizer):
    need(os.path.join(A1111, "modules", "script_callbacks.py"), "A1111's source")
    with host_modules(A1111, {"scripts": scripts_stand_in()}):
        from modules import script_callbacks  # the real file

        yield A1111Host(load_script(), script_callbacks)


def controls(hires=False, **methods):
    from test_forge import control_args

    return control_args(hires=hires, **methods)


def attn2_forwards(model):
    return [n for n, m in model.model.diffusion_model.named_modules() if "forward" in m.__dict__]


def test_every_step_is_its_own_step(a1111, slow_tokenizer):
    p = Processing(SD1Model(slow_tokenizer), PROMPT, steps=4)
    a1111.run(p, controls(observe={"words": "car, sheep"}, structured={}))
    report = a1111.script.last_job.reports[0]
    assert not p.comments, p.comments
    assert report.steps == 4, "finding 6: the lagging sampling_step merged steps 0 and 1"
    m = report["observe"].maps["car"]
    assert torch.allclose(m.flatten(1).sum(-1), torch.ones(m.shape[0]), atol=1e-4)
    assert attn2_forwards(p.sd_model) == [] and not a1111.callbacks.callback_map["callbacks_cfg_denoiser"]
    assert "AttnKit" in p.extra_generation_params


def test_hires_pass_gets_a_run_of_its_own(a1111, slow_tokenizer):
    p = Processing(SD1Model(slow_tokenizer), PROMPT, steps=3, enable_hr=True, hr_second_pass_steps=2,
                   hr_prompt="a blue car and a white sheep")
    a1111.run(p, controls(hires=True, observe={"words": "car, sheep"}, structured={}))
    job = a1111.script.last_job
    assert not p.comments, p.comments
    assert [key for key, _ in job.passes] == [(0, False), (0, True)], "finding 3: one run per pass"
    first, hires = job.reports
    assert (first.grid, first.steps) == ((8, 8), 3) and (hires.grid, hires.steps) == ((12, 12), 2)
    small, large = first["observe"].maps["car"].shape[-2:], hires["observe"].maps["car"].shape[-2:]
    assert (large[0] * 2, large[1] * 2) == (small[0] * 3, small[1] * 3), "the hires maps are at the hires size"
    assert attn2_forwards(p.sd_model) == []


def test_hires_pass_is_the_hosts_unless_ticked(a1111, slow_tokenizer):
    model = SD1Model(slow_tokenizer)
    plain = a1111.run(Processing(model, PROMPT, steps=3, enable_hr=True, hr_second_pass_steps=2), controls())
    p = Processing(model, PROMPT, steps=3, enable_hr=True, hr_second_pass_steps=2)
    got = a1111.run(p, controls(observe={"words": "car"}))
    assert [key for key, _ in a1111.script.last_job.passes] == [(0, False)]
    torch.testing.assert_close(got[0], plain[0], atol=1e-5, rtol=1e-5)


def test_sd2_uses_the_open_clip_tokenizer(a1111, slow_tokenizer):
    from attnkit.hosts.webui import OpenClipTokenizer, find_tokenizer

    p = Processing(SD2Model(slow_tokenizer), PROMPT + ", 4k photo", steps=3)
    tok = find_tokenizer(p.sd_model)
    assert isinstance(tok, OpenClipTokenizer), "finding 4: SD 2.x was refused (no CLIP tokenizer)"
    for prompt in (PROMPT, "a (red car:1.2), and a [white] sheep!!", "photo of a dog's toy,   bright colours; 4k"):
        ids = tok(prompt)["input_ids"]
        assert ids == slow_tokenizer(prompt)["input_ids"], "open_clip's ids are CLIP's"
    a1111.run(p, controls(observe={"words": "car, sheep"}))
    assert not p.comments, p.comments
    report = a1111.script.last_job.reports[0]
    assert report.steps == 3 and set(report["observe"].maps) == {"car", "sheep"}


def test_an_error_inside_sampling_is_one_note(a1111, slow_tokenizer, monkeypatch):
    from attnkit.hosts.kernel import HostRun

    def failing(self, q, k, v, extra_options, previous=None, kind="cross"):
        raise ValueError("bad shape")

    monkeypatch.setattr(HostRun, "_attn_replace", failing)
    model = SD1Model(slow_tokenizer)
    plain = a1111.run(Processing(model, PROMPT, steps=2), controls())
    p = Processing(model, PROMPT, steps=2)
    got = a1111.run(p, controls(observe={"words": "car"}))
    assert len(p.comments) == 1 and "ValueError: bad shape" in next(iter(p.comments)), p.comments
    assert not [k for k in p.extra_generation_params if k.startswith("AttnKit")]
    torch.testing.assert_close(got[0], plain[0], atol=1e-5, rtol=1e-5)
    assert attn2_forwards(model) == [] and not a1111.callbacks.callback_map["callbacks_cfg_denoiser"]
