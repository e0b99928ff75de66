"""Install what attnkit needs and the host lacks; change nothing else.

Runs under the webui launchers (A1111, Forge, SD.Next: a subprocess in which ``launch`` is importable; its
``is_installed``/``run_pip`` are used) and under ComfyUI-Manager (no ``launch``: ``python -m pip``). Reads
``requirements.txt`` beside this file. Never installs torch (the host's GPU build), never pins, upgrades or downgrades
a package that is already there (torch, diffusers, transformers and gradio belong to the host): each pip call gets a
constraints file holding the installed versions of the host's stack, so a missing requirement's own dependencies
cannot move them either. Downloads no models, and does nothing on a second run.
"""

import importlib.metadata
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
#: packages only the host may install (its GPU stack); never installed from here even when missing
NEVER = {"torch", "torchvision", "torchaudio", "xformers", "gradio"}
#: packages whose installed version a dependency of ours must not move: pinned in a constraints file for each pip call
HOLD = ("torch", "torchvision", "torchaudio", "xformers", "gradio", "diffusers", "transformers", "tokenizers",
        "huggingface-hub", "accelerate", "safetensors", "numpy", "pillow")


def requirements(path=os.path.join(HERE, "requirements.txt")):
    """Package names of ``requirements.txt`` (versions and markers dropped: nothing is pinned from here)."""
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(re.split(r"[<>=!~;\[\s]", line, maxsplit=1)[0])
    return names


def _installed(name):
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def plan(names, is_installed):
    """The packages to install: the missing ones, minus those only the host installs."""
    return [n for n in names if n.lower() not in NEVER and not is_installed(n)]


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def constraints():
    """``name==version`` lines holding every installed package of :data:`HOLD` where it is, so that installing a
    missing requirement cannot upgrade or downgrade them through its own dependencies."""
    return [f"{name}=={v}" for name in HOLD if (v := _version(name))]


def _constraints_file(lines):
    import tempfile

    fd, path = tempfile.mkstemp(prefix="attnkit-hold-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(launch=None, pip=None, out=print):
    """Install what is missing; returns the names installed (an empty list when nothing was needed)."""
    if launch is None:
        try:
            import launch as launch_module  # webui launchers
        except ImportError:
            launch_module = None
        launch = launch_module
    is_installed = getattr(launch, "is_installed", None) or _installed
    todo = plan(requirements(), is_installed)
    if not todo:
        out("[AttnKit] all requirements are present; nothing to install")
        return []
    held = constraints()
    path = _constraints_file(held)
    try:
        for name in todo:
            out(f"[AttnKit] installing missing requirement: {name} (holding {len(held)} host packages where they are)")
            if pip is not None:
                pip(name, path)
            elif launch is not None and hasattr(launch, "run_pip"):
                launch.run_pip(f'install {name} -c "{path}"', f"AttnKit requirement: {name}")
            else:
                subprocess.run([sys.executable, "-m", "pip", "install", name, "-c", path], check=True)
    finally:
        os.remove(path)
    return todo


if __name__ == "__main__":
    main()
