"""attnkit imports with no UI or host module available, and keeps no mutable state at module level."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCK = """
import sys
for name in ("gradio", "comfy", "modules", "folder_paths", "matplotlib", "IPython"):
    sys.modules[name] = None  # importing any of them now raises ImportError
import attnkit, attnkit.cli, attnkit.viz
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
