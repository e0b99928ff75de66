"""Write a diffusers SD 1.x pipeline as an original (LDM-layout) single-file checkpoint, for the loading tests.

Inverse of the key layout diffusers' single-file loader reads: UNet under ``model.diffusion_model.``, VAE under
``first_stage_model.``, CLIP under ``cond_stage_model.transformer.``. Only what the tiny SD 1.x pipelines use.
"""

from __future__ import annotations

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _move(src: dict, prefix: str, dst: dict, new_prefix: str, rename: dict | None = None) -> None:
    for key in [k for k in src if k.startswith(prefix + ".")]:
        rest = key[len(prefix) + 1 :]
        head, _, tail = rest.partition(".")
        if rename and head in rename:
            rest = rename[head] + "." + tail
        dst[new_prefix + "." + rest] = src.pop(key)


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in unet.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    per = unet.config.layers_per_block + 1
    _move(sd, "time_embedding.linear_1", out, "time_embed.0")
    _move(sd, "time_embedding.linear_2", out, "time_embed.2")
    _move(sd, "conv_in", out, "input_blocks.0.0")
    _move(sd, "conv_norm_out", out, "out.0")
    _move(sd, "conv_out", out, "out.2")
    for i, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            n = 1 + i * per + j
            _move(sd, f"down_blocks.{i}.resnets.{j}", out, f"input_blocks.{n}.0", _RESNET)
            _move(sd, f"down_blocks.{i}.attentions.{j}", out, f"input_blocks.{n}.1")
        if block.downsamplers:
            _move(sd, f"down_blocks.{i}.downsamplers.0.conv", out, f"input_blocks.{1 + i * per + per - 1}.0.op")
    _move(sd, "mid_block.resnets.0", out, "middle_block.0", _RESNET)
    _move(sd, "mid_block.attentions.0", out, "middle_block.1")
    _move(sd, "mid_block.resnets.1", out, "middle_block.2", _RESNET)
    up_per = unet.config.layers_per_block + 1  # each up level has one resnet more; its last entry holds the upsampler
    for i, block in enumerate(unet.up_blocks):
        for j in range(len(block.resnets)):
            n = i * up_per + j
            _move(sd, f"up_blocks.{i}.resnets.{j}", out, f"output_blocks.{n}.0", _RESNET)
            _move(sd, f"up_blocks.{i}.attentions.{j}", out, f"output_blocks.{n}.1")
        if block.upsamplers:
            has_attn = getattr(block, "attentions", None) is not None
            _move(sd, f"up_blocks.{i}.upsamplers.0.conv", out, f"output_blocks.{i * up_per + up_per - 1}.{2 if has_attn else 1}.conv")
    assert not sd, f"unconverted UNet keys: {sorted(sd)[:5]}"
    return {"model.diffusion_model." + k: v for k, v in out.items()}


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v"}


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in vae.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    n = len(vae.encoder.down_blocks)
    for part in ("encoder", "decoder"):
        _move(sd, f"{part}.conv_in", out, f"{part}.conv_in")
        _move(sd, f"{part}.conv_out", out, f"{part}.conv_out")
        _move(sd, f"{part}.conv_norm_out", out, f"{part}.norm_out")
        _move(sd, f"{part}.mid_block.resnets.0", out, f"{part}.mid.block_1", _VAE_RESNET)
        _move(sd, f"{part}.mid_block.resnets.1", out, f"{part}.mid.block_2", _VAE_RESNET)
        for key in [k for k in sd if k.startswith(f"{part}.mid_block.attentions.0.")]:
            rest = key[len(f"{part}.mid_block.attentions.0.") :]
            head, _, tail = rest.partition(".")
            if head == "to_out":
                head, tail = "proj_out", tail.partition(".")[2]
            else:
                head = _VAE_ATTN[head]
            value = sd.pop(key)
            out[f"{part}.mid.attn_1.{head}.{tail}"] = value[:, :, None, None] if value.ndim == 2 else value
    for i in range(n):
        for j in range(len(vae.encoder.down_blocks[i].resnets)):
            _move(sd, f"encoder.down_blocks.{i}.resnets.{j}", out, f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        _move(sd, f"encoder.down_blocks.{i}.downsamplers.0.conv", out, f"encoder.down.{i}.downsample.conv")
        for j in range(len(vae.decoder.up_blocks[i].resnets)):
            _move(sd, f"decoder.up_blocks.{i}.resnets.{j}", out, f"decoder.up.{n - 1 - i}.block.{j}", _VAE_RESNET)
        _move(sd, f"decoder.up_blocks.{i}.upsamplers.0.conv", out, f"decoder.up.{n - 1 - i}.upsample.conv")
    _move(sd, "quant_conv", out, "quant_conv")
    _move(sd, "post_quant_conv", out, "post_quant_conv")
    assert not sd, f"unconverted VAE keys: {sorted(sd)[:5]}"
    return {"first_stage_model." + k: v for k, v in out.items()}


def sd_to_original(pipe) -> dict[str, torch.Tensor]:
    """The whole SD 1.x pipeline as one original-layout state dict."""
    state = unet_to_original(pipe.unet)
    state.update(vae_to_original(pipe.vae))
    for k, v in pipe.text_encoder.state_dict().items():  # original checkpoints keep CLIP's text_model. prefix
        k = k if k.startswith("text_model.") else "text_model." + k
        state["cond_stage_model.transformer." + k] = v.clone()
    return {k: v.contiguous() for k, v in state.items()}
