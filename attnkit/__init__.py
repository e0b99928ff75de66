"""attnkit: published cross-attention control methods for diffusers pipelines (SD 1.x/2.x, SDXL, Flux).

Quick start::

    import attnkit
    from .methods import Observe

    pipe = attnkit.load_pipeline("tiny-sd15")          # or a diffusers folder, a .safetensors file, a hub id
    result = attnkit.generate(pipe, "a red car and a bird", [Observe(words=["car", "bird"])], seed=0)
    result.images[0].save("out.png")
    result.heatmaps().save("maps.png")
"""

from __future__ import annotations

from . import methods
from .core.layers import LayerInfo
from .core.steps import StepInfo
from .editing import EditReport, EditResult, edit, prompt_to_prompt
from .errors import (
    AlreadyAttachedError,
    AttnKitError,
    Interrupted,
    ModelLoadError,
    StepCallbackError,
    UnsupportedModelError,
    WordNotFoundError,
)
from .methods.pka.branches import Condition
from .models import family_of, load_pipeline, tiny_pipeline
from .presets import Preset, PresetError
from .runtime import Report, Result, Run, attach, generate
from .version import __version__

__all__ = [
    "AlreadyAttachedError",
    "AttnKitError",
    "Condition",
    "EditReport",
    "EditResult",
    "Interrupted",
    "LayerInfo",
    "ModelLoadError",
    "Preset",
    "PresetError",
    "Report",
    "Result",
    "Run",
    "StepCallbackError",
    "StepInfo",
    "UnsupportedModelError",
    "WordNotFoundError",
    "__version__",
    "attach",
    "edit",
    "family_of",
    "generate",
    "load_pipeline",
    "methods",
    "prompt_to_prompt",
    "tiny_pipeline",
]
