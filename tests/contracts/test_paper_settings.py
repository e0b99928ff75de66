"""Paper settings one step away: a constructor argument in Python, a built-in preset in the app, a flag in the CLI."""

from __future__ import annotations

import dataclasses

import pytest

import attnkit
from attnkit import AttnKitError
from attnkit.cli import main
from attnkit.methods import DPL, P2P, PKA, REGISTRY, AStar, AttendExcite, Observe, StructuredGuidance
from attnkit.presets import Preset

WITH_PAPER = [AttendExcite, AStar, StructuredGuidance, P2P, DPL]


@pytest.mark.parametrize("cls", WITH_PAPER, ids=lambda c: c.id)
def test_settings_paper_builds_the_method_at_the_papers_options(cls):
    kwargs = {"words": ["cat"]} if cls.needs_words else {}
    method = cls(settings="paper", **kwargs)
    for name, value in cls.paper.items():
        got = getattr(method.config, name)
        assert (list(got) if isinstance(got, tuple) else got) == (list(value) if isinstance(value, tuple) else value)
    assert cls.paper_run["steps"] == 50 and cls.paper_run["guidance_scale"] == 7.5 and cls.paper_source
    assert cls.title


def test_the_papers_own_values():
    assert AttendExcite.paper["thresholds"] == {0: 0.05, 10: 0.5, 20: 0.8} and not AttendExcite.paper["scale_input"]
    assert AttendExcite.paper["max_iter_to_alter"] == 25 and AttendExcite.paper["scale_factor"] == 20
    assert P2P.paper["cross_replace"] == (0.0, 0.8) and P2P.paper["self_replace"] == (0.0, 0.4)
    assert P2P.paper["step_rounding"] == "official"
    assert DPL.paper["token_iterations"] == 21 and DPL.paper["mask_resize"] == "official"
    assert StructuredGuidance.paper_run["sampler"] == "PNDM" and StructuredGuidance.paper["lowercase"]


def test_an_option_given_wins_and_bad_names_are_refused():
    assert AttendExcite(words=["cat"], settings="paper", max_iter_to_alter=3).config.max_iter_to_alter == 3
    with pytest.raises(AttnKitError, match="settings='papers'; the only named settings are 'paper'"):
        AttendExcite(words=["cat"], settings="papers")
    with pytest.raises(AttnKitError, match="observe has no paper settings"):
        Observe(settings="paper")
    assert not Observe.paper and not PKA.paper


def test_builtin_paper_presets_round_trip_to_the_paper():
    builtins = Preset.builtins()
    for cls in (AttendExcite, AStar, StructuredGuidance):
        preset = builtins[f"{cls.title} (paper settings)"]
        assert preset.settings == cls.paper_run
        again = Preset.from_share_code(preset.to_share_code())
        [(method_id, params)] = again.methods
        method = REGISTRY[method_id](**{**params, **({"words": ["cat"]} if cls.needs_words else {})})
        reference = cls(settings="paper", **({"words": ["cat"]} if cls.needs_words else {}))
        assert dataclasses.asdict(method.config) == dataclasses.asdict(reference.config)


def test_generate_with_paper_settings_runs_the_papers_schedule(sd15):
    result = attnkit.generate(sd15, "a cat and a frog", [AttendExcite(words=["cat", "frog"])], seed=0,
                              settings="paper", height=64, width=64)
    losses = result.report["attend_excite"].losses
    assert result.report.steps >= 50
    assert sorted({r["step"] for r in losses}) == list(range(25))  # max_iter_to_alter 25
    assert {r["step"] for r in losses if "refinement_tries" in r} == {0, 10, 20}


def test_cli_paper_flag(tmp_path, capsys):
    out = tmp_path / "p.png"
    code = main(["generate", "--prompt", "a cat and a frog", "--method", "attend_excite", "--words", "cat,frog",
                 "--paper", "--height", "64", "--width", "64", "--out", str(out)])
    assert code == 0
    preset = Preset.from_png(out)
    assert preset.methods[0][1]["scale_input"] is False and preset.settings["steps"] == 50
    assert preset.settings["guidance_scale"] == 7.5
    assert main(["generate", "--prompt", "a cat", "--method", "observe", "--paper", "--out", str(out)]) != 0
    assert "--paper needs a --method with paper settings" in capsys.readouterr().err


def test_edit_tab_paper_button_sets_the_papers_values():
    from attnkit.ui.edit_tab import paper_values

    cross, self_, threshold, tokens, _null, dpl_null, seed, steps, cfg = paper_values()
    assert (cross, self_, threshold, tokens, dpl_null, seed, steps, cfg) == ("0-0.8", "0-0.4", 0.3, 21, True, 1, 50, 7.5)
