"""The shapes model: a ``StableDiffusionPipeline`` small enough to train on a CPU, built from configs.

- ``vae``: an ``AutoencoderKL`` with a 4x downsampling (64 px pictures, 16x16x4 latents);
- ``text_encoder``: a 3-layer ``CLIPTextModel`` of width 128 under the real CLIP tokenizer;
- ``unet``: a ``UNet2DConditionModel`` with cross-attention at 16x16 and 8x8 (what attnkit's methods read);
- ``scheduler``: DDIM for sampling (DDPM's schedule for training).

Only the token-embedding rows of the world's words (and the start, end and padding tokens) are ever trained, so a
saved model stores those rows; the other 49,000-odd rows are rebuilt from a fixed seed when it loads, which keeps
the weights small enough to ship inside the package.
"""

from __future__ import annotations

import torch

from .world import SIZE, WORDS

#: how the model's parts are shaped (kept in the saved model; change only with a new model)
CONFIG = {
    "vae": {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3, "block_out_channels": [32, 64, 64], "layers_per_block": 1,
            "latent_channels": 4, "norm_num_groups": 16, "sample_size": SIZE},
    "text": {"vocab_size": 49408, "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4,
             "num_hidden_layers": 3, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
             "pad_token_id": 49407},
    "unet": {"sample_size": SIZE // 4, "in_channels": 4, "out_channels": 4, "block_out_channels": [48, 96],
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1,
             "cross_attention_dim": 128, "attention_head_dim": 8, "norm_num_groups": 16},
    "schedule": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear"},
}
#: the seed the untrained token-embedding rows are rebuilt from
EMBEDDING_SEED = 1234


def build(seed: int = 0):
    """A fresh (untrained) shapes pipeline on the CPU, float32, its weights from ``seed``."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models import clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**CONFIG["vae"])
        text = CLIPTextModel(CLIPTextConfig(**CONFIG["text"]))
        unet = UNet2DConditionModel(**CONFIG["unet"])
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(EMBEDDING_SEED)
        table = text.get_input_embeddings().weight
        table.copy_(torch.randn(table.shape) * 0.02)
    scheduler = DDIMScheduler(**CONFIG["schedule"], clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def world_token_ids(tokenizer) -> list[int]:
    """The token ids the world's captions use, with the start, end and padding tokens."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    for word in WORDS:
        ids.update(tokenizer(word, add_special_tokens=False)["input_ids"])
    ids.update(tokenizer("", padding="max_length", max_length=77)["input_ids"])
    return sorted(i for i in ids if i is not None)


def parameter_count(pipe) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("vae", "text_encoder", "unet")}


#: the format of a saved shapes model (``save``/``load``)
FORMAT = "attnkit-shapes-1"


def save(pipe, path) -> int:
    """Write ``pipe``'s weights as one fp16 safetensors file: the autoencoder, the UNet, the text encoder without its
    token-embedding table, and the table's rows the world uses (the rest is rebuilt from :data:`EMBEDDING_SEED`).
    Written whole or not at all; returns the file's size in bytes."""
    import json
    import os

    from safetensors.torch import save_file

    ids = world_token_ids(pipe.tokenizer)
    table_key = "text_encoder." + _table_key(pipe.text_encoder)
    tensors = {}
    for name in ("vae", "unet", "text_encoder"):
        for key, value in getattr(pipe, name).state_dict().items():
            full = f"{name}.{key}"
            if full == table_key:
                tensors["token_rows"] = value[ids].detach().to(torch.float16).contiguous()
            elif value.is_floating_point():
                tensors[full] = value.detach().to(torch.float16).contiguous()
            else:
                tensors[full] = value.detach().contiguous()
    metadata = {"format": FORMAT, "token_ids": json.dumps(ids), "config": json.dumps(CONFIG),
                "scaling_factor": repr(float(pipe.vae.config.scaling_factor))}
    temporary = f"{path}.tmp"
    save_file(tensors, temporary, metadata=metadata)
    os.replace(temporary, path)
    return os.path.getsize(path)


def load(path, dtype=torch.float32):
    """A shapes pipeline from a file :func:`save` wrote (CPU, ``dtype``)."""
    import json

    from safetensors import safe_open

    from ..errors import AttnKitError

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise AttnKitError(f"{path} is not a shapes model of this attnkit (format {metadata.get('format')!r}, "
                               f"expected {FORMAT!r})")
        if json.loads(metadata["config"]) != json.loads(json.dumps(CONFIG)):
            raise AttnKitError(f"{path} was saved for another shapes model layout; retrain or use its attnkit")
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    pipe = build()
    ids = json.loads(metadata["token_ids"])
    table_key = "text_encoder." + _table_key(pipe.text_encoder)
    for name in ("vae", "unet", "text_encoder"):
        module = getattr(pipe, name)
        state = module.state_dict()
        for key in state:
            full = f"{name}.{key}"
            if full == table_key:
                state[key][ids] = tensors["token_rows"].to(state[key].dtype)
            else:
                state[key] = tensors[full].to(state[key].dtype)
        module.load_state_dict(state)
    pipe.vae.register_to_config(scaling_factor=float(metadata["scaling_factor"]))
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _table_key(text_encoder) -> str:
    """The state-dict key of the token-embedding table (its prefix differs between transformers versions)."""
    table = text_encoder.get_input_embeddings().weight
    return next(k for k, v in text_encoder.state_dict(keep_vars=True).items() if v is table)
