"""The full-size SD 1.5 modules the benchmarks time, with deterministic random weights (nothing is downloaded)."""

from __future__ import annotations

import torch


def sd15_unet():
    """A UNet2DConditionModel with the SD 1.5 configuration (about 860M parameters), in eval mode, float32, CPU."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ).eval()


def sd15_text_encoder():
    """A one-layer CLIP text encoder of SD 1.5's width (768): phrase encodings cost what they cost, not more."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=1,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )).eval()
