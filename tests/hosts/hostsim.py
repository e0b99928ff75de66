"""Host simulations for the webui-family and ComfyUI adapter tests, built on a tiny diffusers SD 1.5 pipeline.

What each simulation mirrors (versions as in ``stubs/modules/__init__.py``):

- **SD.Next** (diffusers backend): the model is the diffusers pipeline itself; processing runs the scripts'
  ``process`` -> ``process_batch`` -> pipeline call -> ``postprocess``, always passes its own
  ``processing_callbacks.diffusers_callback`` as ``callback_on_step_end``, then applies ``p.task_args`` over the call's
  arguments (filtered to the pipeline's signature), and passes the prompt string only under the ``fixed`` parser
  (else ``prompt_embeds`` it encoded itself).
- **ldm-layout UNet** (:class:`LdmUNet`): ``input_blocks``/``middle_block``/``output_blocks`` holding
  ``SpatialTransformer``\\ s whose ``transformer_blocks`` have an ``attn2`` ``CrossAttention`` with ``to_q``/``to_k``/
  ``to_v``/``to_out`` and ``forward(x, context=None, mask=None)`` (A1111's ldm/sgm modules, Forge's
  ``backend/nn/unet.py``, ComfyUI's ``comfy/ldm``), sharing the weights of the diffusers UNet, which does the compute.
- **Forge/ComfyUI patch semantics** (:func:`patched_attn2`): per transformer block, ``attn2_patch`` functions rewrite
  ``(n, context, value)``, then a replace keyed by ``(block, number, block_index)`` (else by ``(block, number)``)
  gets projected q/k/v, else the host's own attention runs; ``extra_options`` carries ``n_heads``, ``dim_head``,
  ``block``, ``block_index`` (the transformer block inside its SpatialTransformer, as in the key),
  ``transformer_index`` (a counter over the UNet's SpatialTransformers, which is not the key's third part),
  ``original_shape``, ``cond_or_uncond`` and ``sigmas`` (ComfyUI ``BasicTransformerBlock._forward`` and
  ``SpatialTransformer.forward`` as of v0.3.x; Forge mirrors it). :class:`FakePatcher` clones the way ``ModelPatcher.clone`` does (a deep copy of
  ``model_options``, the model shared).
- **k-diffusion-style sampling loop** (:func:`ldm_sample`): the A1111/Forge CFG denoiser batches conditional rows
  first, unconditional last, and fires ``on_cfg_denoiser`` with the step index before each model call.
"""

from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------ ldm-layout UNet


class CrossAttention(nn.Module):
    """ldm's ``CrossAttention``: the host's class-level forward (an SDPA "optimisation")."""

    def __init__(self, attn):
        super().__init__()
        self.heads = attn.heads
        self.to_q, self.to_k, self.to_v = attn.to_q, attn.to_k, attn.to_v
        self.to_out = nn.Sequential(attn.to_out[0], attn.to_out[1])

    def forward(self, x, context=None, mask=None, **kwargs):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out(sdpa(q, k, v, self.heads))


class Downsample(nn.Identity):
    """ldm's ``Downsample`` (a placeholder: the diffusers UNet computes)."""


class Upsample(nn.Identity):
    """ldm's ``Upsample``."""


class _Block(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.attn2 = CrossAttention(block.attn2)


class SpatialTransformer(nn.Module):
    def __init__(self, attentions):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([_Block(b) for b in attentions.transformer_blocks])


class LdmUNet(nn.Module):
    """ldm-layout view of a diffusers UNet: same weights, ldm block numbering. ``forward`` runs the diffusers UNet."""

    def __init__(self, unet):
        super().__init__()
        self.unet = [unet]  # not a submodule: named_modules() shows the ldm layout only
        per = unet.config.layers_per_block
        per = per if isinstance(per, int) else per[0]
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Identity()])])
        self.keys = {}
        for i, down in enumerate(unet.down_blocks):
            for j in range(per):
                parts = [nn.Identity()]
                if getattr(down, "attentions", None):
                    parts.append(SpatialTransformer(down.attentions[j]))
                    self._key(down.attentions[j], f"down_blocks.{i}.attentions.{j}", "input", len(self.input_blocks))
                self.input_blocks.append(nn.ModuleList(parts))
            if getattr(down, "downsamplers", None):
                self.input_blocks.append(nn.ModuleList([Downsample()]))
        mid = unet.mid_block
        self.middle_block = nn.ModuleList([nn.Identity(), SpatialTransformer(mid.attentions[0]), nn.Identity()])
        self._key(mid.attentions[0], "mid_block.attentions.0", "middle", 0)
        self.output_blocks = nn.ModuleList()
        for i, up in enumerate(unet.up_blocks):
            for j in range(per + 1):
                parts = [nn.Identity()]
                if getattr(up, "attentions", None):
                    parts.append(SpatialTransformer(up.attentions[j]))
                    self._key(up.attentions[j], f"up_blocks.{i}.attentions.{j}", "output", len(self.output_blocks))
                if j == per and getattr(up, "upsamplers", None):
                    parts.append(Upsample())
                self.output_blocks.append(nn.ModuleList(parts))

    def _key(self, attentions, path, block, number):
        for k in range(len(attentions.transformer_blocks)):
            self.keys[f"{path}.transformer_blocks.{k}.attn2.processor"] = (block, number, k)

    def ldm_attn2(self, name):
        """The ldm ``CrossAttention`` module of a diffusers attn2 processor name."""
        block, number, k = self.keys[name]
        blocks = {"input": self.input_blocks, "output": self.output_blocks}
        holder = self.middle_block if block == "middle" else blocks[block][number]
        st = next(m for m in holder if isinstance(m, SpatialTransformer))
        return st.transformer_blocks[k].attn2

    def forward(self, x, timesteps=None, context=None, **kwargs):
        return self.unet[0](x, timesteps, encoder_hidden_states=context, return_dict=False)[0]


def sdpa(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    split = [t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, n, inner)


class _Delegate:
    """A diffusers attn2 processor that hands the call to the ldm module (so instance-level swaps take effect)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        return self.module(hidden_states, context=encoder_hidden_states, mask=attention_mask)


class _Patched:
    """A diffusers attn2 processor with ComfyUI/Forge transformer-block patch semantics."""

    def __init__(self, key, options, state):
        self.key, self.options, self.state = key, options, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        return patched_attn2(attn, hidden_states, encoder_hidden_states, self.key, self.options, self.state)


def _transformer_index(state, key) -> int:
    """The host's running SpatialTransformer counter for ``key``'s block (first seen, first numbered)."""
    order = state.setdefault("transformer_order", {})
    return order.setdefault(tuple(key[:2]), len(order))


def patched_attn2(attn, n, context, key, transformer_options, state):
    heads = attn.heads
    extra_options = {
        "n_heads": heads, "dim_head": attn.to_q.out_features // heads, "block": key[:2], "block_index": key[2],
        "transformer_index": _transformer_index(state, key), "original_shape": list(state["shape"]), "cond_or_uncond": state["cond_or_uncond"],
        "sigmas": state["sigmas"], **{k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")},
    }
    patches = transformer_options.get("patches", {})
    replace = transformer_options.get("patches_replace", {}).get("attn2", {})
    value = context
    for p in patches.get("attn2_patch", []):
        n, context, value = p(n, context, value, extra_options)
    fn = replace.get(key, replace.get(key[:2]))
    if fn is not None:
        out = fn(attn.to_q(n), attn.to_k(context), attn.to_v(value), extra_options)
    else:
        out = sdpa(attn.to_q(n), attn.to_k(context), attn.to_v(value), heads)
    return attn.to_out[1](attn.to_out[0](out))


class FakePatcher:
    """ComfyUI's ``ModelPatcher`` / Forge's ``UnetPatcher`` (v0.3.x / 2025-06): ``clone`` shares the model and deep
    copies ``model_options``; the ``set_model_attn2_*`` setters write where ComfyUI's do."""

    def __init__(self, model, model_options=None):
        self.model = model
        self.model_options = model_options if model_options is not None else {"transformer_options": {}}
        self.patches = {}

    def clone(self):
        n = FakePatcher(self.model, copy.deepcopy(self.model_options))
        n.patches = {k: list(v) for k, v in self.patches.items()}
        return n

    def is_clone(self, other):
        return getattr(other, "model", None) is self.model

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {}).setdefault(name, []).append(patch)

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = self.model_options["transformer_options"]
        block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        to.setdefault("patches_replace", {}).setdefault(name, {})[block] = patch

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)


class _Model:
    def __init__(self, diffusion_model):
        self.diffusion_model = diffusion_model


# ------------------------------------------------------------------------------------------ sampling


@torch.no_grad()
def encode(pipe, text):
    return pipe.encode_prompt(text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]


class CFGDenoiser:
    """The step bookkeeping of A1111's (c8a5322d) and Forge's (dfdcbab6) ``modules/sd_samplers_cfg_denoiser.py``
    ``CFGDenoiser``: ``step`` counts the model calls of a pass (reset to 0 in ``sd_samplers_common.Sampler.initialize``,
    ``self.step += 1`` at the end of ``forward``); ``steps`` and ``total_steps`` are set by ``launch_sampling``
    (``total_steps`` doubles for second-order samplers)."""

    def __init__(self, steps, second_order=False):
        self.step = 0
        self.steps = steps
        self.total_steps = 2 * steps if second_order else steps


def ldm_sample(pipe, p, call_model, on_step=None, grad_mode=torch.no_grad):
    """The A1111/Forge CFG loop on the diffusers scheduler: cond rows first, uncond last. Returns the latents.

    ``call_model(x_in, t, context, step)`` returns the noise prediction; ``on_step(sampling_step, count, x, cond,
    uncond, denoiser)`` runs before each model call (A1111's ``on_cfg_denoiser``) with what the host passes:
    ``shared.state.sampling_step``, which the sampler's step callback (``sd_samplers_common.Sampler.callback_state``)
    sets to ``i`` after step ``i`` (so it lags: steps 0 and 1 both read 0), and the :class:`CFGDenoiser`."""
    with grad_mode():
        cond, uncond = encode(pipe, p.prompt), encode(pipe, p.negative_prompt)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(p.steps, device="cpu")
        generator = torch.Generator("cpu").manual_seed(p.seed)
        latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, p.height, p.width, cond.dtype, "cpu",
                                       generator)
        count = len(scheduler.timesteps)
        denoiser, sampling_step = CFGDenoiser(count), 0
        for i, t in enumerate(scheduler.timesteps):
            if on_step is not None:
                on_step(sampling_step, count, latents, cond, uncond, denoiser)
            x_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = call_model(x_in, t, torch.cat([cond, uncond]), i)
            denoiser.step += 1
            c, u = noise.chunk(2)
            latents = scheduler.step(u + p.cfg_scale * (c - u), t, latents).prev_sample
            sampling_step = i
        return latents


def with_processors(unet, processors, work):
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({**saved, **processors})
    try:
        return work()
    finally:
        unet.set_attn_processor(saved)


def forge_sample(pipe, p):
    """Forge's sampling of one pass: the (possibly cloned and patched) ``forge_objects.unet`` drives attn2."""
    unet_patcher = p.sd_model.forge_objects.unet
    ldm = unet_patcher.model.diffusion_model
    options = unet_patcher.model_options["transformer_options"]
    state = {}

    def call(x_in, t, context, step):
        state.update(shape=tuple(x_in.shape), cond_or_uncond=[0, 1], sigmas=torch.full((x_in.shape[0],), float(t)))
        return ldm(x_in, t, context)

    procs = {name: _Patched(key, options, state) for name, key in ldm.keys.items()}
    return with_processors(pipe.unet, procs, lambda: ldm_sample(pipe, p, call, on_step=_cfg_denoiser_callback))


def _cfg_denoiser_callback(sampling_step, count, x, cond, uncond, denoiser):
    from modules import script_callbacks

    script_callbacks.cfg_denoiser_callback(
        script_callbacks.CFGDenoiserParams(x, None, None, sampling_step, count, cond, uncond, denoiser))


def comfy_patched_processors(ldm, transformer_options, state):
    return {name: _Patched(key, transformer_options, state) for name, key in ldm.keys.items()}


def a1111_sample(pipe, p):
    """A1111's sampling: attn2 runs through the ldm modules (whose forward an extension may swap per instance), and
    ``on_cfg_denoiser`` fires before each model call."""
    dm = p.sd_model.model.diffusion_model
    procs = {name: _Delegate(dm.ldm_attn2(name)) for name in dm.keys}
    return with_processors(pipe.unet, procs, lambda: ldm_sample(pipe, p, lambda x, t, c, i: dm(x, t, context=c),
                                                                on_step=_cfg_denoiser_callback))


# ------------------------------------------------------------------------------------------ host models


class ForgeObjects:
    def __init__(self, unet, clip=None):
        self.unet, self.clip = unet, clip

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip)


class _TextEngine:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


class ForgeModel:
    """Forge's ``p.sd_model`` (a ``ForgeDiffusionEngine``): ``forge_objects`` + ``forge_objects_original``."""

    is_sd1, is_sd2, is_sdxl = True, False, False

    def __init__(self, pipe):
        self.pipe = pipe
        self.ldm = LdmUNet(pipe.unet)
        self.forge_objects_original = ForgeObjects(FakePatcher(_Model(self.ldm)))
        self.forge_objects = self.forge_objects_original.shallow_copy()
        self.text_processing_engine = _TextEngine(pipe.tokenizer)

    def get_learned_conditioning(self, prompts):
        return torch.cat([encode(self.pipe, t) for t in prompts])


class _Wrapped:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


class _CondStage:
    def __init__(self, tokenizer):
        self.wrapped = _Wrapped(tokenizer)


class A1111Model:
    """A1111's ``p.sd_model`` (ldm ``LatentDiffusion``): ``model.diffusion_model``, ``cond_stage_model``."""

    is_sd1, is_sd2, is_sdxl = True, False, False

    def __init__(self, pipe):
        self.pipe = pipe
        self.model = _Model(LdmUNet(pipe.unet))
        self.cond_stage_model = _CondStage(pipe.tokenizer)

    def get_learned_conditioning(self, prompts):
        return torch.cat([encode(self.pipe, t) for t in prompts])


# ------------------------------------------------------------------------------------------ processing


def run_job(host, script, p, args, fail_in_sampling=False, before_call=None):
    """One job through a host's always-on script lifecycle, as that host orders the calls.

    Returns ``(latents, processed)``; with ``fail_in_sampling`` sampling raises mid-run (like an OOM or a NaN check)
    and, as in the hosts, ``postprocess`` is then never called. ``before_call(p)`` runs between the scripts'
    ``process_batch`` and sampling (SD.Next's ``process_pre``: IP-Adapter, PAG and attention settings set the
    pipeline's processors there, ``modules/processing_diffusers.py``).
    """
    from modules import processing, processing_callbacks

    pipe = p.sd_model if host == "sdnext" else p.sd_model.pipe
    if host == "a1111":
        p.sample = _bound_sample(p, fail_in_sampling)  # the host's own sampler; an extension may wrap it
    script.process(p, *args)
    script.process_batch(p, *args, batch_number=0, prompts=list(p.prompts), seeds=[p.seed], subseeds=[p.seed])
    if before_call is not None:
        before_call(p)
    if host == "sdnext":
        processing_callbacks.fail_at_step = 1 if fail_in_sampling else None
        try:
            latents = _sdnext_call(pipe, p)
        finally:
            processing_callbacks.fail_at_step = None
    elif host == "forge":
        script.process_before_every_sampling(p, *args, x=None, noise=None, c=None, uc=None)
        _maybe_fail(fail_in_sampling)
        latents = forge_sample(pipe, p)
    else:
        latents = p.sample()
    script.postprocess_batch(p, *args, batch_number=0)
    processed = processing.Processed(p, decode(pipe, latents))
    script.postprocess(p, processed, *args)
    return latents, processed


@torch.no_grad()
def decode(pipe, latents):
    """The host's decode to PIL images."""
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pil")


def _bound_sample(p, fail):
    def sample(*a, **k):
        _maybe_fail(fail)
        return a1111_sample(p.sd_model.pipe, p)

    return sample


def _maybe_fail(fail):
    if fail:
        raise RuntimeError("injected sampling failure")


def _sdnext_call(pipe, p):
    """SD.Next's diffusers pipeline call for one batch."""
    from modules import processing_callbacks, shared

    call = dict(num_inference_steps=p.steps, guidance_scale=p.cfg_scale, height=p.height, width=p.width,
                generator=torch.Generator("cpu").manual_seed(p.seed), output_type="latent",
                callback_on_step_end=processing_callbacks.diffusers_callback,
                callback_on_step_end_tensor_inputs=["latents"])
    if shared.opts.data.get("prompt_attention") == "fixed":
        call.update(prompt=p.prompt, negative_prompt=p.negative_prompt)
    else:
        call.update(prompt_embeds=encode(pipe, p.prompt), negative_prompt_embeds=encode(pipe, p.negative_prompt))
    accepted = set(inspect.signature(type(pipe).__call__).parameters)
    call.update({k: v for k, v in p.task_args.items() if k in accepted})
    return pipe(**call).images
