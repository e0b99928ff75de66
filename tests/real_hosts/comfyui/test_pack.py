"""The pack as ComfyUI loads it: names, types, what it leaves in the process, the test checkpoint, and a plain
graph that must not change at all because the pack is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import host

EXPECTED = {
    "AttnKitWords": "AttnKit Words",
    "AttnKitApplyObserve": "AttnKit Apply Observe",
    "AttnKitApplyStructured": "AttnKit Apply Structured Diffusion Guidance",
    "AttnKitApplyAttendExcite": "AttnKit Apply Attend-and-Excite",
    "AttnKitApplyAStar": "AttnKit Apply A-STAR",
    "AttnKitApplyPreset": "AttnKit Apply Preset",
    "AttnKitPreset": "AttnKit Preset",
    "AttnKitAttentionMaps": "AttnKit Attention Maps",
}


def test_comfyui_loads_every_node_of_the_pack(comfy):
    nodes, _ = comfy
    assert os.path.abspath(host.PACK) in map(os.path.abspath, nodes.LOADED_MODULE_DIRS.values())
    for name, title in EXPECTED.items():
        assert name in nodes.NODE_CLASS_MAPPINGS, name
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[name] == title
        node = nodes.NODE_CLASS_MAPPINGS[name]
        assert len(node.RETURN_TYPES) == len(node.RETURN_NAMES)
        assert callable(getattr(node(), node.FUNCTION))


def test_the_pack_shadows_no_other_packs_top_level_names(comfy):
    """Loading the pack puts nothing on sys.path: another pack's ``import tests`` (or install, extension, tools,
    scripts, nodes) must not find attnkit's files; only the name ``attnkit`` is taken, by the pack's library."""
    pack = os.path.abspath(host.PACK)
    assert not [p for p in sys.path if os.path.abspath(p or ".") == pack]
    for name in ("tests", "install", "extension", "tools", "scripts", "benchmarks", "examples"):
        spec = importlib.util.find_spec(name) if name not in sys.modules else sys.modules[name].__spec__
        origin = getattr(spec, "origin", None) or ""
        assert not os.path.abspath(origin).startswith(pack + os.sep), (name, origin)
    import attnkit

    assert os.path.dirname(os.path.abspath(attnkit.__file__)) == os.path.join(pack, "attnkit")
    import nodes

    assert nodes.__file__ == os.path.join(host.COMFY, "nodes.py")  # ComfyUI's own nodes.py, not the pack's nodes/


def test_parser_choices_are_what_is_installed(comfy):
    nodes, _ = comfy
    choices, options = nodes.NODE_CLASS_MAPPINGS["AttnKitApplyStructured"].INPUT_TYPES()["required"]["parser"]
    installed = ["rules"] + [n for n in ("stanza", "spacy") if importlib.util.find_spec(n) is not None]
    assert choices == installed and options["default"] == "rules"
    for missing in {"stanza", "spacy"} - set(installed):
        assert "pip install" in options["tooltip"] and missing in options["tooltip"]


@pytest.mark.parametrize("kind,config,clip_name", [("sd15", "SD15", "clip_l"), ("sd2", "SD20", "clip_h")])
def test_the_checkpoints_are_what_comfyui_detects_and_load_as_inference_tensors(comfy, kind, config, clip_name):
    """ComfyUI's detection calls the test checkpoints SD 1.5 and SD 2.x; loaded as the executor loads them (under
    inference_mode), their weights are inference tensors: what made gradient passes fail."""
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path_or_raise("checkpoints", host.checkpoint(kind))
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path)[:4]
    assert type(model.model.model_config).__name__ == config
    assert type(model.model).__name__ == "BaseModel"
    assert next(model.model.diffusion_model.parameters()).is_inference()
    tokenizer = getattr(clip.tokenizer, clip_name).tokenizer
    assert not type(tokenizer).__name__.endswith("Fast")  # the slow tokenizer nodes get


def test_a_plain_graph_is_bit_identical_with_and_without_the_pack(executor, tmp_path):
    settings = {"seed": 7, "steps": 4, "sampler": "dpmpp_2m", "scheduler": "karras"}
    ours = executor.run(host.base_graph(**settings))
    assert ours.ok, ours.error
    out = tmp_path / "plain.npy"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "plain_run.py"), str(out),
                           json.dumps(settings)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(ours.image(), np.load(out))


def _ui_workflows():
    folder = os.path.join(host.PACK, "example_workflows") if host.PACK else ""
    return sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []


@pytest.mark.parametrize("name", _ui_workflows())
def test_ui_workflows_name_slots_as_the_nodes_do(comfy, name):
    """A UI-format workflow's input and output slot names are the names the nodes declare (RETURN_NAMES; the
    output type for core nodes that declare none), so ComfyUI's frontend shows and links them as written."""
    nodes, _ = comfy
    with open(os.path.join(host.PACK, "example_workflows", name), encoding="utf-8") as f:
        workflow = json.load(f)
    for node in workflow["nodes"]:
        cls = nodes.NODE_CLASS_MAPPINGS[node["type"]]
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        assert [o["name"] for o in node.get("outputs", [])] == list(names), (name, node["type"])
        assert [o["type"] for o in node.get("outputs", [])] == list(cls.RETURN_TYPES), (name, node["type"])
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for slot in node.get("inputs", []):
            assert slot["name"] in declared, (name, node["type"], slot["name"])


@pytest.mark.parametrize("prompt", ["a red car and a white sheep", "A photo of a Dog, and a cat-dog!! 3d render",
                                    "the dog's ball   over  there", "café ünïcode naïve", "photorealistic unrealengine"])
def test_words_sit_where_the_slow_comfyui_tokenizer_puts_them(comfy, prompt):
    """ComfyUI's CLIP tokenizer (``comfy/sd1_tokenizer``, the slow Python one under transformers 4.x) gives every
    word the positions the fast tokenizer built from the same files gives it."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    from attnkit.core.tokens import TokenMap

    files = os.path.join(host.COMFY, "comfy", "sd1_tokenizer")
    slow, fast = CLIPTokenizer.from_pretrained(files), CLIPTokenizerFast.from_pretrained(files)
    assert not slow.is_fast
    a, b = TokenMap(prompt, slow, 77), TokenMap(prompt, fast, 77)
    assert a.ids == b.ids and a.word_list() == b.word_list()
    for word in b.word_list():
        assert a.find(word).positions == b.find(word).positions
