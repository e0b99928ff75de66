"""The pack's ``nodes/`` package, imported by path without ComfyUI (it imports ``comfy`` only when a node runs)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def pack_nodes():
    name = "attnkit_pack_nodes_under_test"
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "nodes", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(ROOT, "nodes")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]
