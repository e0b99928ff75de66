"""ComfyUI node tests run against the stub ``comfy`` package in ``stubs/`` (compute: a tiny diffusers SD 1.5 UNet)."""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (os.path.join(HERE, "stubs"), os.path.join(os.path.dirname(HERE), "hosts")):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="module")
def pack():
    """The node pack imported the way ComfyUI imports a custom node folder (as a package, by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("attnkit_pack_under_test", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    for name in [n for n in sys.modules if n.startswith(spec.name)]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def comfy_model(sd15):
    """A ComfyUI MODEL (ModelPatcher around the stub BaseModel) and CLIP over the tiny SD 1.5 pipeline."""
    from comfy.model_base import BaseModel
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP

    return ModelPatcher(BaseModel(sd15)), CLIP(sd15)
