"""Fixtures of the real-ComfyUI tier (see host.py; run with `bash tools/test_hosts.sh comfyui`)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import host  # noqa: E402


@pytest.fixture(scope="session")
def comfy():
    """``(nodes, execution)`` of the booted ComfyUI, the attnkit pack loaded by ComfyUI's own loader."""
    return host.boot()


@pytest.fixture(scope="session")
def executor(comfy):
    return host.Executor()


@pytest.fixture(scope="session")
def lora(comfy):
    """A LoRA for the test checkpoint (every linear layer of its transformer blocks), in ComfyUI's ``loras``
    folder; its keys come from ComfyUI's own LoRA key map (``comfy.lora.model_lora_keys_unet``). Cached."""
    import comfy.lora
    import comfy.sd
    import comfy.utils
    import folder_paths
    import torch

    name = "attnkit-test-lora-v1.safetensors"
    folder = os.path.join(host.CACHE, "loras")
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        ckpt = folder_paths.get_full_path_or_raise("checkpoints", host.checkpoint())
        model = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)[0]
        weights = model.model.state_dict()
        g = torch.Generator().manual_seed(5)
        sd, rank = {}, 4
        for lora_key, model_key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
            if not isinstance(model_key, str) or "transformer_blocks" not in model_key or not lora_key.startswith("lora_unet_"):
                continue
            w = weights.get(model_key)
            if w is None or w.ndim != 2:
                continue
            out_f, in_f = w.shape
            sd[f"{lora_key}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) * in_f**-0.5
            sd[f"{lora_key}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * 0.5 * float(w.std()) * rank**-0.5
            sd[f"{lora_key}.alpha"] = torch.tensor(float(rank))
        assert sd, "no LoRA keys for the test checkpoint"
        comfy.utils.save_torch_file(sd, path + ".tmp")
        os.replace(path + ".tmp", path)
    if folder not in folder_paths.get_folder_paths("loras"):
        folder_paths.add_model_folder_path("loras", folder)
    return name
