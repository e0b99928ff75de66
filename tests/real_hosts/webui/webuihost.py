"""What the Forge and A1111 tests share: the job object ``p``, a text encoder, the callback registry and the
processing order of a job, each as the host's own file has it (named on each)."""

from __future__ import annotations

import types

import torch

from conftest import stand_in

CONTEXT = 32  # the tiny UNets' context width


class Processing:
    """The fields of ``StableDiffusionProcessingTxt2Img`` (A1111 c8a5322d / Forge dfdcbab6 ``modules/processing.py``)
    that attnkit reads, with the host's defaults; ``comment`` as in ``StableDiffusionProcessing.comment``."""

    def __init__(self, sd_model, prompt, steps=4, batch_size=1, n_iter=1, enable_hr=False, hr_second_pass_steps=0,
                 hr_prompt=None, seed=1):
        self.sd_model = sd_model
        self.prompt, self.negative_prompt = prompt, ""
        self.steps, self.batch_size, self.n_iter, self.seed = steps, batch_size, n_iter, seed
        self.enable_hr, self.hr_second_pass_steps = enable_hr, hr_second_pass_steps
        self.hr_prompt = hr_prompt if hr_prompt is not None else prompt
        self.prompts = [prompt] * batch_size
        self.hr_prompts = [self.hr_prompt] * batch_size
        self.is_hr_pass = False
        self.iteration = 0
        self.extra_generation_params = {}
        self.comments = {}

    def comment(self, text):
        self.comments[text] = 1


class TextEncoder(torch.nn.Module):
    """A random-weight stand-in for the CLIP text model: token embeddings of the real tokenizer's ids, 77 long."""

    def __init__(self, tokenizer, seed=0):
        super().__init__()
        self.tokenizer = tokenizer
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(49408, CONTEXT, generator=g) * 0.5, requires_grad=False)

    def forward(self, texts):
        ids = []
        for text in texts:
            row = self.tokenizer(text)["input_ids"][:77]
            ids.append(row + [row[-1]] * (77 - len(row)))
        return self.table[torch.tensor(ids)]


def callbacks_stand_in() -> types.ModuleType:
    """Forge dfdcbab6 / A1111 c8a5322d ``modules/script_callbacks.py``: ``CFGDenoiserParams`` and the registry
    functions attnkit uses (the real Forge file imports the whole webui; the A1111 tests use A1111's real file)."""
    callback_map = {"callbacks_cfg_denoiser": [], "callbacks_infotext_pasted": [], "callbacks_script_unloaded": []}

    class CFGDenoiserParams:
        def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                     denoiser=None):
            self.x, self.image_cond, self.sigma = x, image_cond, sigma
            self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
            self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser

    def add(name):
        return lambda fn: callback_map[name].append(fn)

    def remove_callbacks_for_function(fn):
        for callbacks in callback_map.values():
            while fn in callbacks:
                callbacks.remove(fn)

    def cfg_denoiser_callback(params):
        for fn in list(callback_map["callbacks_cfg_denoiser"]):
            fn(params)

    return stand_in(
        "script_callbacks", "stands for modules/script_callbacks.py", callback_map=callback_map,
        CFGDenoiserParams=CFGDenoiserParams, on_cfg_denoiser=add("callbacks_cfg_denoiser"),
        on_infotext_pasted=add("callbacks_infotext_pasted"), on_script_unloaded=add("callbacks_script_unloaded"),
        remove_callbacks_for_function=remove_callbacks_for_function, cfg_denoiser_callback=cfg_denoiser_callback)


class CFGDenoiser:
    """The step bookkeeping of ``modules/sd_samplers_cfg_denoiser.py`` ``CFGDenoiser`` (both hosts): ``step`` counts
    this pass's model calls (reset in ``sd_samplers_common.Sampler.initialize``, ``+= 1`` after each call); ``steps``
    and ``total_steps`` come from ``launch_sampling``."""

    def __init__(self, steps):
        self.step, self.steps, self.total_steps = 0, steps, steps


def euler(x, sigmas, denoise, on_call):
    """k-diffusion's ``sample_euler`` over ``sigmas``; ``on_call(sampling_step, denoiser, x, sigma)`` fires before each
    model call as the CFG denoiser fires ``on_cfg_denoiser``, with ``shared.state.sampling_step``, which
    ``Sampler.callback_state`` sets to ``i`` after step ``i`` (so it lags one step)."""
    steps = len(sigmas) - 1
    denoiser, sampling_step = CFGDenoiser(steps), 0
    for i in range(steps):
        sigma = sigmas[i]
        on_call(sampling_step, denoiser, x, sigma)
        denoised = denoise(x, sigma)
        denoiser.step += 1
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
        sampling_step = i
    return x


def karras_free_sigmas(sigmas_table: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` sigmas spread over the model's table, high to low, then 0 (the "Automatic"/normal schedule)."""
    idx = torch.linspace(len(sigmas_table) - 1, 0, steps).round().long()
    return torch.cat([sigmas_table[idx], torch.zeros(1)]).float()


def solid_images(n):
    from PIL import Image

    return [Image.new("RGB", (64, 64), (40 * i % 255, 200, 90)) for i in range(n)]
