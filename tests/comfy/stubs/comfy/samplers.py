"""ComfyUI ``comfy/samplers.py``: batched conditional forward, the CFG guider and ``KSAMPLER.sample``."""

import torch

from comfy.patcher_extension import WrapperExecutor, WrappersMP


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    """One forward of every cond list in ``conds`` batched together; ``cond_or_uncond`` holds each chunk's index."""
    inputs, crossattn, cond_or_uncond = [], [], []
    for index, cond in enumerate(conds):
        if cond is None:
            continue
        for c in cond:
            inputs.append(x_in)
            crossattn.append(c["cross_attn"].expand(x_in.shape[0], -1, -1))
            cond_or_uncond.append(index)
    transformer_options = dict(model_options.get("transformer_options", {}))
    transformer_options["cond_or_uncond"] = cond_or_uncond[:]
    transformer_options["sigmas"] = timestep
    output = model.apply_model(torch.cat(inputs), torch.cat([timestep] * len(inputs)),
                               c_crossattn=torch.cat(crossattn), transformer_options=transformer_options)
    chunks = output.chunk(len(inputs))
    return [chunks[cond_or_uncond.index(i)] if i in cond_or_uncond else None for i in range(len(conds))]


class CFGGuider:
    def __init__(self, model_patcher, positive, negative, cfg):
        self.model_patcher = model_patcher
        self.inner_model = model_patcher.model
        self.conds = {"positive": positive, "negative": negative}
        self.cfg = cfg
        self.model_options = model_patcher.model_options

    def __call__(self, x, sigma, model_options=None, seed=None):
        cond, uncond = calc_cond_batch(self.inner_model, [self.conds["positive"], self.conds["negative"]], x, sigma,
                                       model_options or self.model_options)
        return uncond + (cond - uncond) * self.cfg

    def sample(self, noise, sigmas, sampler, seed=None):
        extra_args = {"model_options": self.model_options, "seed": seed}
        latent_image = torch.zeros_like(noise)
        wrappers = self.model_patcher.get_wrappers(WrappersMP.SAMPLER_SAMPLE)
        executor = WrapperExecutor(sampler.sample, wrappers)
        return executor(self, sigmas, extra_args, None, noise, latent_image, None, True)


class KSamplerX0Inpaint:
    def __init__(self, model, sigmas):
        self.inner_model = model
        self.sigmas = sigmas

    def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
        return self.inner_model(x, sigma, model_options=model_options, seed=seed)


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


class KSAMPLER:
    def __init__(self, sampler_function=sample_euler):
        self.sampler_function = sampler_function

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        model_k = KSamplerX0Inpaint(model_wrap, sigmas)
        x = noise * (1.0 + sigmas[0] ** 2.0) ** 0.5 + latent_image  # noise_scaling with max_denoise
        return self.sampler_function(model_k, x, sigmas, extra_args=extra_args, callback=callback,
                                     disable=disable_pbar)
