"""example_workflows/: an API-format and a UI-format workflow per method; they parse, name only existing nodes and
inputs, wire matching types, are what tools/comfy_workflows.py writes (the real-ComfyUI tier runs each of them)."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import ROOT

FOLDER = os.path.join(ROOT, "example_workflows")


@pytest.fixture(scope="module")
def gen():
    import importlib.util

    spec = importlib.util.spec_from_file_location("comfy_workflows", os.path.join(ROOT, "tools", "comfy_workflows.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files():
    out = []
    for base, _, names in os.walk(FOLDER):
        out += [os.path.relpath(os.path.join(base, n), FOLDER) for n in names if n.endswith(".json")]
    return sorted(out)


def test_one_api_and_one_ui_workflow_per_method(gen, pack_nodes):
    assert _files() == sorted(gen.workflows(pack_nodes.NODE_CLASS_MAPPINGS))
    for method in ("observe", "structured", "attend_excite", "a_star"):
        assert f"attnkit_{method}.json" in _files() and f"api/attnkit_{method}.json" in _files()


def test_files_are_what_the_generator_writes(gen, pack_nodes):
    for path, data in gen.workflows(pack_nodes.NODE_CLASS_MAPPINGS).items():
        with open(os.path.join(FOLDER, path), encoding="utf-8") as f:
            assert json.load(f) == json.loads(json.dumps(data)), f"{path} is stale: run python tools/comfy_workflows.py"


@pytest.mark.parametrize("path", [p for p in _files() if p.startswith("api")])
def test_api_workflow_names_existing_nodes_and_inputs(gen, pack_nodes, path):
    with open(os.path.join(FOLDER, path), encoding="utf-8") as f:
        graph = json.load(f)
    for node_id, node in graph.items():
        inputs, _ = gen.schema(node["class_type"], pack_nodes.NODE_CLASS_MAPPINGS)
        names = dict(inputs)
        assert set(node["inputs"]) == set(names), (path, node["class_type"])
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                source = graph[value[0]]
                _, outputs = gen.schema(source["class_type"], pack_nodes.NODE_CLASS_MAPPINGS)
                assert outputs[value[1]] == names[name], (path, node_id, name)
            else:
                assert names[name] in gen.WIDGET_TYPES, (path, node_id, name)


@pytest.mark.parametrize("path", [p for p in _files() if not p.startswith("api")])
def test_ui_workflow_names_existing_nodes_and_links(gen, pack_nodes, path):
    with open(os.path.join(FOLDER, path), encoding="utf-8") as f:
        workflow = json.load(f)
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        inputs, outputs = gen.schema(node["type"], pack_nodes.NODE_CLASS_MAPPINGS)
        widgets = [n for n, t in inputs if t in gen.WIDGET_TYPES]
        extra = 1 if node["type"] == "KSampler" else 0
        assert len(node["widgets_values"]) == len(widgets) + extra, (path, node["type"])
        assert [i["name"] for i in node["inputs"]] == [n for n, t in inputs if t not in gen.WIDGET_TYPES]
        assert all(i["link"] is not None for i in node["inputs"]), (path, node["type"], "unconnected input")
        assert [o["type"] for o in node["outputs"]] == outputs
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert by_id[src]["outputs"][src_slot]["type"] == kind == by_id[dst]["inputs"][dst_slot]["type"]
        assert link_id in by_id[src]["outputs"][src_slot]["links"] and by_id[dst]["inputs"][dst_slot]["link"] == link_id
