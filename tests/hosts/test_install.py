"""install.py under a webui launcher (a fake ``launch`` module) and under ComfyUI-Manager (no ``launch``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT, load_file

HOST_OWNED = ("torch", "diffusers", "transformers", "gradio")


@pytest.fixture
def install():
    return load_file(os.path.join(ROOT, "install.py"), "attnkit_install_under_test")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("install.py opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


class FakeLaunch:
    """A1111/Forge/SD.Next ``launch``: is_installed(name) and run_pip(command, desc)."""

    def __init__(self, present):
        self.present = set(present)
        self.pip = []

    def is_installed(self, name):
        return name in self.present

    def run_pip(self, command, desc=None):
        self.pip.append(command)

    def names(self):
        """The package each pip call installed."""
        return [cmd.split()[1] for cmd in self.pip]


def _held_file(command):
    """The constraints file a pip command passes (``install NAME -c "PATH"``)."""
    words = command.split(" -c ")
    assert len(words) == 2, f"no constraints file in {command!r}"
    return words[1].strip('"')


def test_requirements_name_no_torch_and_no_versions(install):
    names = install.requirements()
    assert "torch" not in names and "diffusers" in names and "transformers" in names
    text = open(os.path.join(ROOT, "requirements.txt")).read()
    assert not any(op in text for op in ("==", ">=", "<=", "~=")), "nothing may be pinned"


def test_launcher_installs_only_what_is_missing(install, no_network):
    launch = FakeLaunch(present={"diffusers", "transformers", "accelerate", "safetensors", "numpy", "pillow", "tqdm"})
    done = install.main(launch=launch, out=lambda *_: None)
    assert done == ["ftfy", "regex", "scikit-learn"]
    assert launch.names() == ["ftfy", "regex", "scikit-learn"]
    assert all(cmd.startswith(f"install {name} -c ") for cmd, name in zip(launch.pip, done))


def test_each_pip_call_holds_the_host_stack_where_it_is(install, no_network, monkeypatch):
    """A missing requirement's own dependencies cannot move torch, diffusers, transformers or gradio: every pip call
    gets a constraints file with their installed versions (removed afterwards)."""
    versions = {"torch": "2.3.1+cu121", "diffusers": "0.30.0", "transformers": "4.44.2", "gradio": "4.40.0",
                "numpy": "1.26.4"}
    monkeypatch.setattr(install, "_version", lambda name: versions.get(name))
    held = {}

    def pip(name, path):
        held[name] = open(path).read().split()

    launch = FakeLaunch(present=set(install.requirements()) - {"ftfy"})
    assert install.main(launch=launch, pip=pip, out=lambda *_: None) == ["ftfy"]
    assert sorted(held["ftfy"]) == sorted(f"{n}=={v}" for n, v in versions.items())

    launch = FakeLaunch(present=set(install.requirements()) - {"regex"})
    install.main(launch=launch, out=lambda *_: None)
    (command,) = launch.pip
    assert command.startswith("install regex -c ") and not os.path.exists(_held_file(command)), "temp file left"


def test_launcher_never_installs_host_packages_even_when_missing(install, no_network):
    launch = FakeLaunch(present=set())
    install.main(launch=launch, out=lambda *_: None)
    assert launch.pip and all(name not in ("torch", "gradio") for name in launch.names())
    assert all(len(cmd.split(" -c ")[0].split()) == 2 for cmd in launch.pip), "no versions, no --upgrade flags"
    assert "diffusers" in launch.names()  # A1111 has no diffusers: installed unpinned, never upgraded


def test_second_run_does_nothing(install, no_network):
    launch = FakeLaunch(present=set(install.requirements()))
    lines = []
    assert install.main(launch=launch, out=lines.append) == [] and launch.pip == []
    assert "nothing to install" in lines[0]


def test_without_launch_uses_pip_for_missing_only(install, no_network, monkeypatch):
    calls = []
    monkeypatch.setattr(install, "_installed", lambda name: name != "ftfy")
    monkeypatch.setattr(install.subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setitem(sys.modules, "launch", None)  # ComfyUI-Manager: `import launch` fails
    assert install.main(out=lambda *_: None) == ["ftfy"]
    assert len(calls) == 1 and calls[0][:5] == [sys.executable, "-m", "pip", "install", "ftfy"]
    assert calls[0][5] == "-c"


def _run_installer(tmp_path, launch_source=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if launch_source is not None:
        (tmp_path / "launch.py").write_text(textwrap.dedent(launch_source))
        env["PYTHONPATH"] = str(tmp_path)
    return subprocess.run([sys.executable, os.path.join(ROOT, "install.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_as_a_launcher_subprocess(tmp_path):
    log = tmp_path / "pip.log"
    proc = _run_installer(tmp_path, f"""
        def is_installed(name):
            return name != "regex"
        def run_pip(command, desc=None):
            open({str(log)!r}, "a").write(command + "\\n")
    """)
    assert proc.returncode == 0, proc.stderr
    (command,) = log.read_text().splitlines()
    assert command.startswith("install regex -c ")
    assert "installing missing requirement: regex" in proc.stdout


def test_as_a_comfyui_manager_subprocess(tmp_path):
    before = {n: _version(n) for n in HOST_OWNED}
    proc = _run_installer(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to install" in proc.stdout  # this environment has every requirement
    assert {n: _version(n) for n in HOST_OWNED} == before


def _version(name):
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
