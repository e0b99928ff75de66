"""Host adapter tests run against stub host packages (``stubs/``) and host simulations (``hostsim.py``)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

STUBS = os.path.join(os.path.dirname(__file__), "stubs")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if STUBS not in sys.path:
    sys.path.insert(0, STUBS)


def load_file(path: str, name: str):
    """Import a file the way a host does (by path, under its own module name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def webui_script():
    """A fresh import of scripts/attnkit_webui.py with clean host callback registries."""
    from modules import script_callbacks, shared

    script_callbacks.callback_map.clear()
    shared.opts.data["prompt_attention"] = "native"
    module = load_file(os.path.join(ROOT, "scripts", "attnkit_webui.py"), "attnkit_webui_under_test")
    yield module
    script_callbacks.script_unloaded_callback()
    script_callbacks.callback_map.clear()
