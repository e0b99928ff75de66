"""A1111 c8a5322d ``modules/script_callbacks.py``: the callbacks attnkit registers, and how the host fires them."""

from collections import defaultdict

callback_map = defaultdict(list)


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


def on_infotext_pasted(callback):
    callback_map["callbacks_infotext_pasted"].append(callback)


def on_script_unloaded(callback):
    callback_map["callbacks_script_unloaded"].append(callback)


def on_cfg_denoiser(callback):
    callback_map["callbacks_cfg_denoiser"].append(callback)


def remove_callbacks_for_function(callback_func):
    for callbacks in callback_map.values():
        for c in list(callbacks):
            if c is callback_func:
                callbacks.remove(c)


def infotext_pasted_callback(infotext, params):
    for c in callback_map["callbacks_infotext_pasted"]:
        c(infotext, params)


def cfg_denoiser_callback(params):
    for c in callback_map["callbacks_cfg_denoiser"]:
        c(params)


def script_unloaded_callback():
    for c in reversed(callback_map["callbacks_script_unloaded"]):
        c()
