"""Stand-ins for the webui family's ``modules`` package, for tests only.

Each file mirrors the classes, function names and signatures attnkit's script touches, as of:
- A1111 stable-diffusion-webui c8a5322d (pinned in ../shared/hosts/a1111): ``modules/scripts.py`` (Script, AlwaysVisible, the always-on lifecycle),
  ``modules/script_callbacks.py`` (on_infotext_pasted, on_script_unloaded, on_cfg_denoiser + CFGDenoiserParams,
  remove_callbacks_for_function), ``modules/infotext_utils.py`` (quote, parse_generation_parameters, the paste
  coercion of connect_paste), ``modules/processing.py`` (StableDiffusionProcessingTxt2Img fields, Processed).
- SD.Next (vladmandic/sdnext, 2026-07-23): ``modules/processing_callbacks.py`` (diffusers_callback), ``shared.opts``
  ``prompt_attention`` and the diffusers processing path (see ``tests/hosts/hostsim.py``).
- Forge (lllyasviel/stable-diffusion-webui-forge, 2025-06-26): ``process_before_every_sampling`` and
  ``p.sd_model.forge_objects.unet`` (a ``UnetPatcher``; see ``tests/hosts/hostsim.py``).
"""
