"""ComfyUI ``comfy/model_base.py``: the EPS model wrapper around a UNet (``apply_model``)."""

import torch

import hostsim  # tests/hosts/hostsim.py (the comfy conftest puts its folder on sys.path)


class ModelSampling:
    """``ModelSamplingDiscrete``: sigmas of the training schedule, sigma <-> timestep."""

    def __init__(self, alphas_cumprod):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma):
        dists = sigma.log().reshape(-1, 1) - self.log_sigmas.reshape(1, -1)
        return dists.abs().argmin(dim=1).view(sigma.shape).float()

    def calculate_input(self, sigma, noise):
        return noise / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * sigma.reshape(-1, 1, 1, 1)


class BaseModel:
    def __init__(self, pipe):
        self.pipe = pipe
        self.diffusion_model = hostsim.LdmUNet(pipe.unet)
        self.model_sampling = ModelSampling(pipe.scheduler.alphas_cumprod.float())

    def apply_model(self, x, t, c_crossattn=None, transformer_options=None, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        timestep = self.model_sampling.timestep(sigma)
        options = transformer_options or {}
        state = {"shape": tuple(xc.shape), "cond_or_uncond": options.get("cond_or_uncond", [0]), "sigmas": sigma}
        ldm = self.diffusion_model
        procs = hostsim.comfy_patched_processors(ldm, options, state)
        eps = hostsim.with_processors(self.pipe.unet, procs, lambda: ldm(xc, timestep, context=c_crossattn))
        return self.model_sampling.calculate_denoised(sigma, eps, x)


class SDXL(BaseModel):
    pass
