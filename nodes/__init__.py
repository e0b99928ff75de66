"""AttnKit nodes for ComfyUI (V1 node API): the only code in this project that imports ``comfy``.

Nodes: **AttnKit Words** (CLIP + prompt + words -> targets), **AttnKit Apply <method>** for every method (MODEL +
targets + the method's fields from attnkit's field table -> a patched clone of the MODEL, plus the settings as a
share code), **AttnKit Apply Preset**, **AttnKit Preset** (JSON or share code -> preset, JSON, share code) and
**AttnKit Attention Maps** (the ``observe`` maps of the latest run over the decoded images, as an IMAGE).
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import attnkit  # noqa: F401
except ImportError:  # the pack folder holds the attnkit package
    sys.path.insert(0, _ROOT)

from attnkit import comfyui  # noqa: E402
from attnkit.errors import AttnKitError  # noqa: E402
from attnkit.methods import REGISTRY, get_method  # noqa: E402
from attnkit.presets import Preset  # noqa: E402
from attnkit.ui.fields import fields_for  # noqa: E402
from attnkit.ui.panel import METHOD_TITLES, param_to_widget_value, widget_value_to_param  # noqa: E402

CATEGORY = "attnkit"
TARGETS = "ATTNKIT_TARGETS"
PRESET = "ATTNKIT_PRESET"
MAPS = "ATTNKIT_MAPS"


def _comfy():
    """ComfyUI's sampler-wrapper type and conditional forward (imported when a node runs, not at import)."""
    from comfy.patcher_extension import WrappersMP
    from comfy.samplers import calc_cond_batch

    return WrappersMP.SAMPLER_SAMPLE, calc_cond_batch


def field_input(f):
    """A V1 input spec for a field-table row (``None`` for rows that are not node inputs)."""
    if not f.panel or f.name == "words":
        return None
    tip = {"tooltip": f.help}
    if f.kind == "bool":
        return ("BOOLEAN", {"default": f.default, **tip})
    if f.kind == "int":
        return ("INT", {"default": f.default, "min": int(f.minimum), "max": int(f.maximum), "step": int(f.step), **tip})
    if f.kind == "float":
        return ("FLOAT", {"default": f.default, "min": f.minimum, "max": f.maximum, "step": f.step, **tip})
    if f.kind == "choice":
        return (list(f.choices), {"default": f.default, **tip})
    return ("STRING", {"default": str(param_to_widget_value(f, f.default)), "multiline": False, **tip})


class AttnKitWords:
    DESCRIPTION = "The words of the prompt the AttnKit methods act on, found as ComfyUI's CLIP tokenises the prompt."
    CATEGORY = CATEGORY
    RETURN_TYPES = (TARGETS,)
    RETURN_NAMES = ("targets",)
    FUNCTION = "pick"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP",),
            "text": ("STRING", {"multiline": True, "tooltip": "the prompt, exactly as you encode it"}),
            "words": ("STRING", {"default": "", "tooltip": "comma-separated words or phrases: car, white sheep, dog#2"}),
        }}

    def pick(self, clip, text, words):
        return (comfyui.targets(clip, text, words),)


def _methods_from(method_id, values, targets):
    params = {}
    for f in fields_for(method_id):
        if f.name in values:
            params[f.name] = widget_value_to_param(f, values[f.name])
    if "words" in {f.name for f in fields_for(method_id)} and not params.get("token_indices"):
        if method_id != "observe" or targets.words:
            params["words"] = list(targets.words) or None
    if method_id in ("attend_excite", "a_star") and not params.get("words") and not params.get("token_indices"):
        raise AttnKitError(f"{METHOD_TITLES[method_id]} needs words: type them in AttnKit Words")
    return get_method(method_id)(**params)


def _apply(model, targets, methods):
    wrapper_type, calc_cond_batch = _comfy()
    return comfyui.apply(model, targets, methods, sampler_wrapper_type=wrapper_type, calc_cond_batch=calc_cond_batch)


def _apply_node(method_id):
    inputs = {f.name: field_input(f) for f in fields_for(method_id)}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    observe = method_id == "observe"

    class Node:
        DESCRIPTION = f"{METHOD_TITLES[method_id]} on a patched copy of the MODEL (the input MODEL is not changed)."
        CATEGORY = CATEGORY
        RETURN_TYPES = ("MODEL", MAPS, "STRING") if observe else ("MODEL", "STRING")
        RETURN_NAMES = ("model", "maps", "share_code") if observe else ("model", "share_code")
        FUNCTION = "apply"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": ("MODEL",), "targets": (TARGETS,), **inputs}}

        def apply(self, model, targets, **values):
            method = _methods_from(method_id, values, targets)
            clone, session = _apply(model, targets, [method])
            code = Preset.from_methods([method]).to_share_code()
            return (clone, session, code) if observe else (clone, code)

    Node.__name__ = "AttnKitApply" + "".join(p.title() for p in method_id.split("_"))
    return Node


class AttnKitPreset:
    DESCRIPTION = "An AttnKit preset from JSON or a share code (ak1...), as the app, the webui and Python write them."
    CATEGORY = CATEGORY
    RETURN_TYPES = (PRESET, "STRING", "STRING")
    RETURN_NAMES = ("preset", "json", "share_code")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"preset": ("STRING", {"multiline": True, "default": "",
                                                   "tooltip": "preset JSON or share code"})}}

    def load(self, preset):
        text = (preset or "").strip()
        if not text:
            raise AttnKitError("paste a preset: its JSON or a share code starting with ak1.")
        loaded = Preset.from_json(text) if text.startswith("{") else Preset.from_share_code(text)
        return (loaded, loaded.to_json(), loaded.to_share_code())


class AttnKitApplyPreset:
    DESCRIPTION = "Every method of an AttnKit preset on a patched copy of the MODEL."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", MAPS)
    RETURN_NAMES = ("model", "maps")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "targets": (TARGETS,), "preset": (PRESET,)}}

    def apply(self, model, targets, preset):
        clone, session = _apply(model, targets, preset.to_methods(targets.words or None))
        return (clone, session)


class AttnKitAttentionMaps:
    DESCRIPTION = "Heatmaps of each word over the images, from the latest sampling run of an observing MODEL."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("heatmaps",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"maps": (MAPS,), "images": ("IMAGE",)}}

    def draw(self, maps, images):
        import numpy as np
        import torch
        from PIL import Image

        from attnkit.viz import heatmap_grid

        report = maps.last_report
        if report is None or "observe" not in report or not report["observe"].maps:
            raise AttnKitError("no attention maps yet: sample with the MODEL from AttnKit Apply Observe first")
        words = report["observe"].maps
        out = []
        for i, image in enumerate(images):
            pil = Image.fromarray((image.cpu().numpy() * 255).clip(0, 255).astype(np.uint8))
            index = min(i, next(iter(words.values())).shape[0] - 1)
            grid = heatmap_grid(pil, {w: m[index] for w, m in words.items()})
            out.append(torch.from_numpy(np.asarray(grid.convert("RGB"), dtype=np.float32) / 255.0))
        return (torch.stack(out),)


#: node titles of the methods (the panel's longer titles read badly in a node menu)
NODE_TITLES = {**METHOD_TITLES, "observe": "Observe"}
NODE_CLASS_MAPPINGS = {"AttnKitWords": AttnKitWords}
NODE_DISPLAY_NAME_MAPPINGS = {"AttnKitWords": "AttnKit Words"}
for _id in REGISTRY:
    _node = _apply_node(_id)
    NODE_CLASS_MAPPINGS[_node.__name__] = _node
    NODE_DISPLAY_NAME_MAPPINGS[_node.__name__] = f"AttnKit Apply {NODE_TITLES[_id]}"
NODE_CLASS_MAPPINGS.update(AttnKitApplyPreset=AttnKitApplyPreset, AttnKitPreset=AttnKitPreset,
                           AttnKitAttentionMaps=AttnKitAttentionMaps)
NODE_DISPLAY_NAME_MAPPINGS.update(AttnKitApplyPreset="AttnKit Apply Preset", AttnKitPreset="AttnKit Preset",
                                  AttnKitAttentionMaps="AttnKit Attention Maps")
