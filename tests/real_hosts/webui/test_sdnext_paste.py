"""Finding 2: SD.Next's PNG Info paste (``modules/generation_parameters_copypaste.py``, the real file) with the
script's ``infotext_fields`` and its real gradio 3.x controls: SD.Next calls ``.lower()`` on every key, so a callable
key broke the paste button for every image."""

from __future__ import annotations

import os

import pytest

from conftest import SDNEXT, host_modules, load_script, need, scripts_stand_in, stand_in


class _Opts:
    """SD.Next ``modules/shared.py`` ``opts``: the two settings the paste reads, at their defaults
    (``modules/shared_items``/``ui_definitions``: ``disable_apply_params`` "", ``clip_skip_enabled`` False)."""

    disable_apply_params = ""
    clip_skip_enabled = False

    def cast_value(self, key, value):
        return value


class _Button:
    """A gradio button that keeps what ``click`` is given (the paste handler SD.Next wires to it)."""

    def __init__(self):
        self.clicks = []

    def click(self, fn=None, **kwargs):
        self.clicks.append(fn)


@pytest.fixture
def sdnext_paste(tmp_path):
    need(os.path.join(SDNEXT, "modules", "generation_parameters_copypaste.py"), "SD.Next's source")
    stand_ins = {
        "shared": stand_in("shared", "stands for SD.Next modules/shared.py (opts only)", opts=_Opts(),
                           log=None),
        "images": stand_in("images", "stands for SD.Next modules/images.py (not used by the paste)"),
        "paths": stand_in("paths", "stands for SD.Next modules/paths.py", params_path=str(tmp_path / "params.txt"),
                          data_path=str(tmp_path)),
        "scripts": scripts_stand_in(),
    }
    with host_modules(SDNEXT, stand_ins):
        import gradio as gr
        from modules import generation_parameters_copypaste as paste  # the real file
        from modules import script_callbacks  # the real file (the script registers its paste handler there)

        script_module = load_script()
        script = script_module.AttnKitScript()
        with gr.Blocks():
            script.ui(False)
        yield paste, script, script_callbacks


def paste_values(paste, fields, text):
    """Press SD.Next's paste button for ``text``: the values its handler gives each control (``None``: untouched)."""
    button = _Button()
    paste.connect_paste(button, fields, None, None, "txt2img")
    handler = button.clicks[0]
    updates = handler(text)
    return [u.get("value") if isinstance(u, dict) else None for u in updates]


def attnkit_infotext():
    from attnkit import Preset
    from attnkit.methods import Observe, StructuredGuidance
    from attnkit.hosts.webui import JobOptions, infotext_params

    methods = [StructuredGuidance(), Observe(words=["car", "sheep"])]
    params = infotext_params(methods, JobOptions())
    extra = ", ".join(f"{k}: {v}" for k, v in params.items())
    assert Preset.from_share_code(params["AttnKit"]).methods
    return f"a red car and a white sheep\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, {extra}"


def test_paste_restores_attnkit_controls(sdnext_paste):
    paste, script, _ = sdnext_paste
    from attnkit.hosts import webui

    values = paste_values(paste, script.infotext_fields, attnkit_infotext())
    names = [c.name for c in webui.controls()]
    got = dict(zip(names, values))
    assert got["enabled"] is True
    assert got["structured_enabled"] is True and got["observe_enabled"] is True and got["a_star_enabled"] is False


def test_paste_of_an_image_without_attnkit_turns_it_off(sdnext_paste):
    paste, script, _ = sdnext_paste
    values = paste_values(paste, script.infotext_fields, "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1")
    assert values[0] is False and all(v is None for v in values[1:])


def test_every_key_is_a_string(sdnext_paste):
    """What broke: a callable key reaches ``should_skip(key)``, which lower-cases it."""
    paste, script, _ = sdnext_paste
    assert all(isinstance(key, str) for _, key in script.infotext_fields)
    component = script.infotext_fields[0][0]
    with pytest.raises(AttributeError, match="lower"):
        paste_values(paste, [(component, lambda params: True)], "a cat\nSteps: 20, Seed: 1")
