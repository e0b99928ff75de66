"""AttnKit nodes for ComfyUI (V1 node API): the only code in this project that imports ``comfy``.

Nodes: **AttnKit Words** (CLIP + prompt + words -> targets), **AttnKit Apply <method>** for every method (MODEL +
targets + the method's fields from attnkit's field table -> a patched clone of the MODEL, plus the settings as a
share code), **AttnKit Apply Preset**, **AttnKit Preset** (JSON or share code -> preset, JSON, share code),
**AttnKit Attention Maps** (the ``observe`` maps of the latest run over the decoded images, as an IMAGE) and
**AttnKit Prompt-to-Prompt** (MODEL + CLIP + two prompts + a latent -> the MODEL, conditioning and latent that sample
the source and the edited image side by side).
"""

from __future__ import annotations

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _library():
    """The ``attnkit`` package of this pack, imported by its path.

    ComfyUI-Manager installs the pack as a folder of ``custom_nodes/`` and never pip-installs it, so the package is
    not importable by name. Putting the pack folder on ``sys.path`` would make its other top-level names
    (``tests``, ``install``, ``extension``, ``tools``...) shadow those of every other pack; instead only the name
    ``attnkit`` is registered, pointing at this folder's package. An ``attnkit`` package already imported (a pip
    install that the user's own code loaded first) is reused.
    """
    loaded = sys.modules.get("attnkit")
    paths = list(getattr(loaded, "__path__", None) or [])
    if loaded is not None and paths and os.path.isfile(os.path.join(paths[0], "hosts", "comfyui.py")):
        return loaded
    here = os.path.join(_ROOT, "attnkit")
    spec = importlib.util.spec_from_file_location("attnkit", os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    module = importlib.util.module_from_spec(spec)
    sys.modules["attnkit"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if loaded is not None:
            sys.modules["attnkit"] = loaded
        else:
            sys.modules.pop("attnkit", None)
        raise
    return module


_library()
from attnkit.errors import AttnKitError  # noqa: E402
from attnkit.hosts import comfyui  # noqa: E402
from attnkit.methods import REGISTRY, get_method  # noqa: E402
from attnkit.methods.fields import fields_for  # noqa: E402
from attnkit.presets import Preset  # noqa: E402
from attnkit.ui.panel import METHOD_TITLES, param_to_widget_value, widget_value_to_param  # noqa: E402

CATEGORY = "attnkit"
#: node titles of the methods (the panel's longer titles read badly in a node menu)
NODE_TITLES = {**METHOD_TITLES, "observe": "Observe"}
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
    if not f.panel or f.name == "words" or not f.host_model:
        return None
    tip = {"tooltip": f.help}
    if f.kind == "bool":
        return ("BOOLEAN", {"default": f.default, **tip})
    if f.kind == "int":
        return ("INT", {"default": f.default, "min": int(f.minimum), "max": int(f.maximum), "step": int(f.step), **tip})
    if f.kind == "float":
        return ("FLOAT", {"default": f.default, "min": f.minimum, "max": f.maximum, "step": f.step, **tip})
    if f.kind == "choice":
        choices = list(f.choices)
        if (f.method, f.name) == ("structured", "parser"):
            choices, tip = _parsers(f)
        return (choices, {"default": f.default, **tip})
    return ("STRING", {"default": str(param_to_widget_value(f, f.default)), "multiline": False, **tip})


def _parsers(f):
    """The structured parsers that can run here: ``rules`` always; ``stanza``/``spacy`` once their packages are
    installed (the tooltip says how)."""
    missing = [name for name in f.choices if name != "rules" and importlib.util.find_spec(name) is None]
    choices = [name for name in f.choices if name not in missing]
    tip = f.help
    if missing:
        tip += ". Not installed here: " + ", ".join(missing) + " (pip install " + " ".join(missing) + \
            " into ComfyUI's Python, add its English model, restart ComfyUI)"
    return choices, {"tooltip": tip}


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


def _params_with_words(method_id, params, targets):
    """``params`` with the Words node's words where the method maps or targets words and names none itself: the one
    rule for Apply <method> and Apply Preset, so both act on the same tokens."""
    params = dict(params)
    takes_words = "words" in {f.name for f in fields_for(method_id)}
    if takes_words and params.get("words") is None and not params.get("token_indices") and targets.words:
        params["words"] = list(targets.words)
    if REGISTRY[method_id].needs_words and not params.get("words") and not params.get("token_indices"):
        raise AttnKitError(f"{METHOD_TITLES[method_id]} needs words: type them in AttnKit Words")
    return params


def _methods_from(method_id, values, targets):
    params = {}
    for f in fields_for(method_id):
        if f.name in values:
            params[f.name] = widget_value_to_param(f, values[f.name])
    return get_method(method_id)(**_params_with_words(method_id, params, targets))


def _label(title, unique_id):
    return f"{title} (node {unique_id})" if unique_id is not None else title


def _attention(q, k, v, heads, extra_options=None):
    """ComfyUI's own attention, called as its ``CrossAttention.forward`` calls it (``comfy/ldm/modules/attention.py``,
    the kernel ComfyUI chose for this machine), for the layers where no AttnKit method changes the result."""
    from comfy.ldm.modules import attention

    options = extra_options or {}
    return attention.optimized_attention(q, k, v, heads, attn_precision=options.get("attn_precision"),
                                         transformer_options=options)


def _apply(model, targets, methods, label, prompt=None, unique_id=None):
    from comfy.model_management import throw_exception_if_processing_interrupted

    wrapper_type, calc_cond_batch = _comfy()
    return comfyui.apply(model, targets, methods, sampler_wrapper_type=wrapper_type, calc_cond_batch=calc_cond_batch,
                         label=label, prompt=prompt, node_id=unique_id, attention=_attention,
                         interrupted=throw_exception_if_processing_interrupted)


#: the graph and the node's id, which ComfyUI passes to nodes that ask (to check image sizes and prompts there)
HIDDEN = {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}


def _apply_node(method_id):
    inputs = {f.name: field_input(f) for f in fields_for(method_id)}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    observe = method_id == "observe"
    title = f"AttnKit Apply {NODE_TITLES[method_id]}"

    class Node:
        DESCRIPTION = f"{METHOD_TITLES[method_id]} on a patched copy of the MODEL (the input MODEL is not changed)."
        CATEGORY = CATEGORY
        RETURN_TYPES = ("MODEL", MAPS, "STRING") if observe else ("MODEL", "STRING")
        RETURN_NAMES = ("model", "maps", "share_code") if observe else ("model", "share_code")
        FUNCTION = "apply"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": ("MODEL",), "targets": (TARGETS,), **inputs}, "hidden": dict(HIDDEN)}

        def apply(self, model, targets, prompt=None, unique_id=None, **values):
            method = _methods_from(method_id, values, targets)
            clone, session = _apply(model, targets, [method], _label(title, unique_id), prompt, unique_id)
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
        return {"required": {"model": ("MODEL",), "targets": (TARGETS,), "preset": (PRESET,)}, "hidden": dict(HIDDEN)}

    def apply(self, model, targets, preset, prompt=None, unique_id=None):
        methods = [get_method(i)(**_params_with_words(i, params, targets)) for i, params in preset.methods]
        clone, session = _apply(model, targets, methods, _label("AttnKit Apply Preset", unique_id), prompt, unique_id)
        return (clone, session)


class AttnKitPromptToPrompt:
    DESCRIPTION = ("Prompt-to-Prompt: sample the source and the target prompt side by side from the same noise, the "
                   "target's attention taken from the source's, so only what the words change changes. Sample with "
                   "the outputs: images come out as [source, edited].")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("model", "positive", "latent")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        from attnkit.methods.p2p import EDITS

        return {"required": {
            "model": ("MODEL",),
            "clip": ("CLIP",),
            "latent": ("LATENT", {"tooltip": "an empty latent of batch 1 (its size sets the image size)"}),
            "source": ("STRING", {"multiline": True, "default": "a cat riding a bicycle",
                                  "tooltip": "the prompt of the original image"}),
            "target": ("STRING", {"multiline": True, "default": "a dog riding a bicycle",
                                  "tooltip": "the edited prompt: swap words (replace), add or remove words (refine), "
                                             "or the same prompt (reweight)"}),
            "edit": (list(EDITS), {"default": "replace", "tooltip": "replace: swap words one for one; refine: add or "
                                   "remove words; reweight: make words stronger or weaker"}),
            "cross_replace": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "the fraction of the steps, from the start, in which the target's "
                                                   "cross-attention is the source's"}),
            "self_replace": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "the fraction of the steps in which the target's coarse "
                                                  "self-attention is the source's (keeps the layout)"}),
            "reweight": ("STRING", {"default": "", "tooltip": "target words and scales, e.g. fluffy=2, red=0.5 "
                                                              "(needed by the reweight edit)"}),
        }, "hidden": dict(HIDDEN)}

    def apply(self, model, clip, latent, source, target, edit, cross_replace, self_replace, reweight, prompt=None,
              unique_id=None):
        from attnkit.editing import parse_scales
        from attnkit.methods import P2P

        label = _label("AttnKit Prompt-to-Prompt", unique_id)
        try:
            method = P2P(edit=edit, cross_replace=float(cross_replace), self_replace=float(self_replace),
                         reweight=parse_scales(reweight, "reweight"))
        except AttnKitError as e:
            raise AttnKitError(f"{label}: {e}") from None
        wrapper_type, _ = _comfy()
        out = comfyui.prompt_to_prompt(model, clip, source, target, latent, method, sampler_wrapper_type=wrapper_type,
                                       label=label, attention=_attention)
        return (out.model, out.positive, out.latent)


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


NODE_CLASS_MAPPINGS = {"AttnKitWords": AttnKitWords}
NODE_DISPLAY_NAME_MAPPINGS = {"AttnKitWords": "AttnKit Words"}
for _id in REGISTRY:
    _node = _apply_node(_id)
    NODE_CLASS_MAPPINGS[_node.__name__] = _node
    NODE_DISPLAY_NAME_MAPPINGS[_node.__name__] = f"AttnKit Apply {NODE_TITLES[_id]}"
NODE_CLASS_MAPPINGS.update(AttnKitApplyPreset=AttnKitApplyPreset, AttnKitPreset=AttnKitPreset,
                           AttnKitAttentionMaps=AttnKitAttentionMaps, AttnKitPromptToPrompt=AttnKitPromptToPrompt)
NODE_DISPLAY_NAME_MAPPINGS.update(AttnKitApplyPreset="AttnKit Apply Preset", AttnKitPreset="AttnKit Preset",
                                  AttnKitAttentionMaps="AttnKit Attention Maps",
                                  AttnKitPromptToPrompt="AttnKit Prompt-to-Prompt")
