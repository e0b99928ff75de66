"""Tiny offline pipelines and the loading code, tested on pipelines saved to disk."""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

import attnkit
from attnkit import ModelLoadError, UnsupportedModelError
from attnkit.models import _checkpoint_family, family_of, is_tiny

from ..conftest import plain

CLASSES = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline, "flux": FluxPipeline}
FAMILY = {"sd15": "sd", "sdxl": "sdxl", "flux": "flux"}


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_tiny_pipelines_are_real_pipelines(pipes, family):
    pipe = pipes[family]
    assert type(pipe) is CLASSES[family]
    assert family_of(pipe) == FAMILY[family] and is_tiny(pipe)
    assert pipe.vae_scale_factor == 8
    image = plain(pipe, "a red car", num_inference_steps=2, height=64, width=64)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_tiny_weights_are_deterministic_and_leave_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = attnkit.tiny_pipeline("sd15", seed=0), attnkit.tiny_pipeline("sd15", seed=0), attnkit.tiny_pipeline("sd15", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    wa, wb, wc = (p.unet.conv_in.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_load_saved_diffusers_folder(pipes, family, tmp_path):
    pipe = pipes[family]
    pipe.save_pretrained(tmp_path / family)
    loaded = attnkit.load_pipeline(tmp_path / family, device="cpu")
    assert type(loaded) is CLASSES[family] and family_of(loaded) == FAMILY[family]
    assert loaded.unet.dtype == torch.float32 if family != "flux" else loaded.transformer.dtype == torch.float32
    # same weights; the loaded text encoders may pick another attention kernel, so equal to float precision
    np.testing.assert_allclose(plain(loaded, "a red car"), plain(pipe, "a red car"), atol=1e-5)
    assert loaded.tokenizer("a red car").input_ids == pipe.tokenizer("a red car").input_ids


def test_load_builtin_names():
    pipe = attnkit.load_pipeline("tiny-flux", device="cpu")
    assert type(pipe) is FluxPipeline and pipe.transformer.dtype == torch.float32
    half = attnkit.load_pipeline("tiny-sd15", device="cpu", dtype="bf16")
    assert half.unet.dtype == torch.bfloat16


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        attnkit.load_pipeline(tmp_path / "missing.safetensors")
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline \\(no model_index.json\\)"):
        attnkit.load_pipeline(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a .safetensors or .ckpt checkpoint"):
        attnkit.load_pipeline(tmp_path / "notes.txt")
    (tmp_path / "broken.safetensors").write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="not a readable .safetensors file"):
        attnkit.load_pipeline(tmp_path / "broken.safetensors")
    with pytest.raises(ModelLoadError, match=r"no model 'nobody/no-such-model': it is not a built-in model .*, and "
                                             r"the model hub cannot be reached from here \(offline\)") as err:
        attnkit.load_pipeline("nobody/no-such-model", device="cpu")
    assert len(str(err.value)) < 300 and "local_files_only" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="dtype='int3' is not understood"):
        attnkit.load_pipeline("tiny-sd15", dtype="int3")
    with pytest.raises(UnsupportedModelError, match="Stable Diffusion 1.x/2.x, SDXL and Flux"):
        family_of(object())
    with pytest.raises(UnsupportedModelError, match="unknown tiny family 'sd3'"):
        attnkit.tiny_pipeline("sd3")


def test_single_file_family_detection(tmp_path):
    cases = {
        "sd": "model.diffusion_model.input_blocks.0.0.weight",
        "sdxl": "conditioner.embedders.1.model.ln_final.weight",
        "flux": "double_blocks.0.img_attn.qkv.weight",
    }
    for family, key in cases.items():
        path = tmp_path / f"{family}.safetensors"
        save_file({key: torch.zeros(1), "other": torch.zeros(1)}, str(path))
        assert _checkpoint_family(path) == family
    save_file({"foo.weight": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ModelLoadError, match="does not look like an SD 1.x/2.x, SDXL or Flux checkpoint"):
        attnkit.load_pipeline(tmp_path / "x.safetensors")
    with pytest.raises(ModelLoadError, match="Flux transformer checkpoint; pass config="):
        attnkit.load_pipeline(tmp_path / "flux.safetensors")


def test_load_single_file_checkpoint(sd15, tmp_path):
    from ..original_format import sd_to_original

    sd15.save_pretrained(tmp_path / "config")
    save_file(sd_to_original(sd15), str(tmp_path / "tiny-sd15.safetensors"))
    loaded = attnkit.load_pipeline(tmp_path / "tiny-sd15.safetensors", device="cpu", config=str(tmp_path / "config"))
    assert type(loaded) is StableDiffusionPipeline
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(sd15, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    np.testing.assert_allclose(plain(loaded, "a red car"), plain(sd15, "a red car"), atol=1e-5)
