"""Fixtures of the real webui tier: Forge, A1111 and SD.Next code from ../shared/hosts (run with
`bash tools/test_hosts.sh webui`; see tools/test_webui_hosts.sh for the environment).

The three webuis each have a top-level ``modules`` package; :func:`host_modules` gives a test one host's (its real
files, plus stand-ins for the few heavy modules a file imports, each naming the host file it stands for).
"""

from __future__ import annotations

import contextlib
import os
import sys
import types

import pytest

ROOT = os.environ.get("ATTNKIT_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
HOSTS = os.environ.get("ATTNKIT_HOSTS") or os.path.join(ROOT, "..", "shared", "hosts")
FORGE, A1111, SDNEXT = (os.path.join(HOSTS, h) for h in ("forge", "a1111", "sdnext"))
LDM = os.path.join(A1111, "repositories", "stable-diffusion-stability-ai")
TOKENIZERS = os.path.join(FORGE, "backend", "huggingface")
SD15_TOKENIZER = os.path.join(TOKENIZERS, "runwayml", "stable-diffusion-v1-5", "tokenizer")

sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def need(path: str, what: str):
    if not os.path.exists(path):
        pytest.skip(f"{what} is not here ({os.path.relpath(path, ROOT)})")


@pytest.fixture(scope="session")
def forge_backend():
    """Forge's ``backend`` package, imported as Forge on a CPU machine runs it (``--always-cpu``)."""
    need(os.path.join(FORGE, "backend", "patcher", "unet.py"), "Forge's source")
    argv = sys.argv
    sys.argv = [argv[0], "--always-cpu"]  # backend/args.py parses the command line at import
    sys.path.insert(0, FORGE)
    try:
        import backend.patcher.unet  # noqa: F401
        import backend.sampling.sampling_function  # noqa: F401
    finally:
        sys.argv = argv
    return sys.modules["backend"]


@pytest.fixture(scope="session")
def ldm():
    """The ldm package A1111 clones (Stability-AI/stablediffusion)."""
    need(os.path.join(LDM, "ldm", "modules", "attention.py"), "A1111's repositories/stable-diffusion-stability-ai")
    sys.path.insert(0, LDM)
    import ldm.modules.diffusionmodules.openaimodel  # noqa: F401
    return sys.modules["ldm"]


@pytest.fixture(scope="session")
def slow_tokenizer():
    """The slow ``CLIPTokenizer`` Forge hands out for SD 1.5, from Forge's own tokenizer files."""
    need(SD15_TOKENIZER, "Forge's SD 1.5 tokenizer files")
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(SD15_TOKENIZER)


@contextlib.contextmanager
def host_modules(host_dir: str, stand_ins: dict[str, types.ModuleType] | None = None):
    """``import modules.x`` finds ``host_dir/modules/x.py`` (and ``stand_ins`` first) inside the block."""
    need(os.path.join(host_dir, "modules"), f"{os.path.basename(host_dir)}'s modules")

    def purge():
        for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
            del sys.modules[name]

    purge()
    package = types.ModuleType("modules")
    package.__path__ = [os.path.join(host_dir, "modules")]
    sys.modules["modules"] = package
    for name, module in (stand_ins or {}).items():
        sys.modules[f"modules.{name}"] = module
        setattr(package, name, module)
    try:
        yield package
    finally:
        purge()


def stand_in(name: str, doc: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(f"modules.{name}", doc)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


class Script:
    """A1111 c8a5322d / Forge dfdcbab6 ``modules/scripts.py`` ``Script``: what an always-on script subclasses (the
    real file imports the whole webui)."""

    def title(self):
        raise NotImplementedError


def scripts_stand_in() -> types.ModuleType:
    return stand_in("scripts", "stands for modules/scripts.py (Script, AlwaysVisible)", Script=Script,
                    AlwaysVisible=object())


def load_script():
    """``scripts/attnkit_webui.py`` loaded as the host's script loader does (a module from its file)."""
    import importlib.util

    path = os.path.join(ROOT, "scripts", "attnkit_webui.py")
    spec = importlib.util.spec_from_file_location("attnkit_webui_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
