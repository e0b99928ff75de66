"""Stand-in for torchvision in the real-ComfyUI test environment (not shipped, never installed for users).

Why: ComfyUI imports torchvision at import time (``comfy/sd.py`` -> ``comfy/ldm/cascade/stage_c_coder.py``, and
``comfy/ldm/cosmos``, ``comfy/ldm/ace``), but the registry these machines reach has torchvision only as CUDA builds,
which do not load beside the CPU torch the project pins (``operator torchvision::nms does not exist``); a CUDA torch
to match is several GB. The SD 1.x/SDXL paths attnkit patches never call torchvision: they only need the import to
succeed. So this package satisfies the import and raises on any use, naming what asked for it. It carries no
package metadata, so ``transformers``/``diffusers`` do not see a torchvision and keep their torchvision-free paths.
"""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise RuntimeError(f"torchvision.transforms.{name} was used, but the attnkit ComfyUI test environment has no torchvision "
                       "(see tests/real_hosts/comfyui/shims/torchvision/__init__.py)")
