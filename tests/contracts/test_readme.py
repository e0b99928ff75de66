"""Every example in the README runs, and the README's two commands are what CI and the scripts use."""

import re
import shlex
from pathlib import Path

import pytest

from attnkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
CLI_LINES = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    for line in block.splitlines()
    if line.strip().startswith("attnkit ")
]


def test_readme_has_examples():
    assert len(PYTHON_BLOCKS) >= 4 and len(CLI_LINES) >= 3


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    block = PYTHON_BLOCKS[index]
    if "gradio_client" in block:  # the API example talks to a running app
        _run_against_the_app(block, tmp_path, capsys)
        return
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    if index == 0:
        assert (tmp_path / "shapes.png").is_file() and (tmp_path / "shapes_maps.png").is_file()
        assert capsys.readouterr().out.strip() == "torch.Size([1, 8, 8]) 1.0"
    if index == 1:
        assert set(namespace["maps"]) == {"porcupine", "bird"}
    if index == 2:
        assert capsys.readouterr().out.strip() == "['a red car', 'a white sheep']"
    if "Preset" in block and "methods" in namespace:
        assert namespace["methods"][0].config.words == ["cat", "dog"]
    if "attnkit.edit(" in PYTHON_BLOCKS[index]:
        for name in ("fox.png", "before_after.png", "edit_maps.png"):
            assert (tmp_path / name).is_file()
        assert capsys.readouterr().out.strip() == "['decode', 'edit', 'encode', 'invert', 'optimise', 'total']"


def _run_against_the_app(block, tmp_path, capsys):
    """Start the app as ``tools/run.sh`` does (the built-in model) on a free port and run the example against it."""
    pytest.importorskip("gradio")
    from attnkit.ui.panel import build_app

    demo = build_app(preset_dir=str(tmp_path / "presets"))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        source = block.replace("http://127.0.0.1:7860/", demo.local_url)
        exec(compile(source, "README.md gradio_client block", "exec"), {})
    finally:
        demo.close()
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("Closing server")]
    assert printed[-2:] == ["Done.", "attnkit True"], printed


@pytest.mark.parametrize("line", CLI_LINES)
def test_cli_example_runs(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from PIL import Image

    for name in re.findall(r"(?:--image |--condition \w+:)([\w.]+\.png)", line):  # pictures of yours
        Image.new("RGB", (96, 64), (120, 80, 40)).save(tmp_path / name)
    assert main(shlex.split(line)[1:]) == 0
    if "--out" in line:
        assert (tmp_path / "out.png").is_file()
    if "--maps" in line:
        assert (tmp_path / "maps.png").is_file()


def test_ci_runs_the_readme_test_command():
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1].strip() == "bash tools/test.sh"
    assert "bash tools/test.sh" in README and "bash tools/run.sh" in README
