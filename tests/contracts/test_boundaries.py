"""attnkit imports with no UI or host module available, and keeps no mutable state at module level."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCK = """
import sys
for name in ("gradio", "comfy", "modules", "folder_paths", "matplotlib", "IPython"):
    sys.modules[name] = None  # importing any of them now raises ImportError
import attnkit, attnkit.cli, attnkit.viz, attnkit.hosts.webui, attnkit.hosts.kernel, attnkit.hosts.comfyui
from attnkit.methods import Observe
print("ok")
"""


def test_package_imports_without_ui_or_host_modules():
    proc = subprocess.run([sys.executable, "-c", BLOCK], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_every_user_error_is_a_value_error():
    import attnkit

    for name in ("WordNotFoundError", "AlreadyAttachedError", "UnsupportedModelError", "ModelLoadError",
                 "StepCallbackError", "PresetError"):
        cls = getattr(attnkit, name)
        assert issubclass(cls, attnkit.AttnKitError) and issubclass(cls, ValueError)


def _imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_nodes_import_comfy_and_only_scripts_import_modules():
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if rel[0] in (".venv", "tests", "build") or "site-packages" in rel:
            continue
        names = _imports(path)
        if "comfy" in names or "folder_paths" in names:
            assert rel[0] == "nodes", f"{path} imports comfy"
        if "modules" in names:
            assert rel[0] == "scripts", f"{path} imports the webui's modules"
    assert sorted(p.name for p in (ROOT / "scripts").iterdir() if p.suffix == ".py") == ["attnkit_webui.py"]


def test_comfy_registry_metadata():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "Icon" in comfy
    assert data["project"]["name"] == "attnkit"
