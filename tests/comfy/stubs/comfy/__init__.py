"""Stand-ins for ComfyUI's ``comfy`` package, for tests only.

They mirror the names, signatures and semantics attnkit's nodes rely on, as of ComfyUI v0.3.x (2025):
``comfy.model_patcher.ModelPatcher`` (``clone`` shares the model and deep-copies ``model_options``;
``set_model_attn2_patch``/``set_model_attn2_replace`` write ``model_options["transformer_options"]["patches" |
"patches_replace"]``; ``add_wrapper_with_key``), ``comfy.patcher_extension.WrappersMP``, ``comfy.samplers``
(``calc_cond_batch``, ``CFGGuider``, ``KSAMPLER.sample`` wrapped by the ``SAMPLER_SAMPLE`` wrappers, the sampler
calling ``KSamplerX0Inpaint(model_wrap)(x, sigma)`` on its own latent), ``comfy.model_base`` (``BaseModel``, ``SDXL``:
``apply_model`` scales the input by ``c_in`` and returns the denoised latent of an EPS model) and ``comfy.sd.CLIP``
(``tokenize``/``encode_from_tokens``, ``tokenizer.clip_l.tokenizer``). The compute is a tiny diffusers SD 1.5 UNet.
"""
