"""The attnkit command: progress, outputs, and one readable line with exit status 2 on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from attnkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASE = ["generate", "--model", "tiny-sd15", "--prompt", "a red car and a blue bird", "--steps", "2", "--height", "64",
        "--width", "64"]


def test_generate_writes_image_maps_and_report(tmp_path, capsys):
    out, maps, report = tmp_path / "o.png", tmp_path / "m.png", tmp_path / "r.json"
    code = main(BASE + ["--method", "observe", "--words", "car,blue bird", "--out", str(out), "--maps", str(maps),
                        "--report", str(report)])
    assert code == 0
    assert Image.open(out).size == (64, 64)
    from attnkit.presets import Preset

    preset = Preset.from_png(out)
    assert preset.methods == [("observe", {"words": ["car", "blue bird"]})]
    assert preset.settings == {"steps": 2, "seed": 0, "width": 64, "height": 64}
    assert Image.open(out).text["parameters"].startswith("a red car and a blue bird\nSteps: 2, Seed: 0, Size: 64x64")
    assert Image.open(maps).size == (3 * 256, 256 + 25)
    data = json.loads(report.read_text())
    assert set(data["methods"]["observe"]["maps"]) == {"car", "blue bird"} and data["steps"] == 3
    captured = capsys.readouterr()
    assert "attnkit" in captured.err and "step" in captured.err  # the tqdm progress bar
    assert "2/2" in captured.err and "/3" not in captured.err, "the bar counts the steps asked for (PNDM takes 3)"


def test_generate_with_a_sampler_saves_its_name(tmp_path):
    out = tmp_path / "o.png"
    assert main(BASE + ["--sampler", "euler a", "--out", str(out)]) == 0
    assert "Sampler: Euler a" in Image.open(out).text["parameters"]
    from attnkit.presets import Preset

    assert Preset.from_png(out).settings["sampler"] == "Euler a"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "observe", "--words", "cat"], "attnkit: error: 'cat' is not in the prompt"),
        (["--words", "car"], "attnkit: error: --words needs --method a_star or attend_excite or observe"),
        (["--method", "observe", "--phrases", "red car"], "attnkit: error: --phrases needs --method structured"),
        (["--method", "structured", "--phrases", "blue car"], "attnkit: error: 'blue car' is not in the prompt"),
        (["--maps", "m.png"], "attnkit: error: --maps needs --method observe"),
        (["--model", "/nonexistent/model.safetensors"], "attnkit: error: no such file or folder"),
        (["--steps", "0"], "attnkit: error: --steps: expected an integer from 1 to 200, got 0"),
        (["--out", "/nonexistent/dir/o.png"], "attnkit: error: cannot write --out /nonexistent/dir/o.png"),
        (["--method", "observe", "--resolution", "3"], "attnkit: error: resolution 3x3 has no cross-attention"),
    ],
)
def test_bad_input_exits_2_with_one_line(extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message), err
    assert not any("Traceback" in line for line in err)


def test_structured_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "s.png"
    code = main(BASE + ["--method", "structured", "--method", "observe", "--words", "car", "--phrases",
                        "a red car,a blue bird", "--conjunction", "--out", str(out)])
    assert code == 0 and out.is_file()


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--method", "nope", "--prompt", "x"])
    assert exit_info.value.code == 2


def test_python_dash_m_and_tokens(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "attnkit", "tokens", "--prompt", "a porcupine, and a red car"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "porcupine            [2, 3, 4]  por cup ine</w>" in proc.stdout


def test_edit_writes_the_edit_reconstruction_grid_maps_and_report(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (160, 120), (200, 120, 40)).save(photo)
    out, recon, grid, maps, report = (tmp_path / n for n in ("e.png", "r.png", "g.png", "m.png", "rep.json"))
    code = main(["edit", "--image", str(photo), "--source", "a cat and a dog", "--target", "a cat and a fox",
                 "--words", "cat,dog", "--steps", "3", "--token-iterations", "1", "--null-iterations", "1",
                 "--blend-words", "dog,fox", "--out", str(out), "--reconstruction", str(recon), "--grid", str(grid),
                 "--maps", str(maps), "--report", str(report)])
    assert code == 0
    assert Image.open(out).size == Image.open(recon).size == (64, 64)  # the default model (shapes) is 64 px
    assert Image.open(grid).size[0] == 3 * 256 and Image.open(maps).size[0] >= 3 * 256
    data = json.loads(report.read_text())
    assert len(data["null_text"]) == 3 and data["settings"]["words"] == ["cat", "dog"] and "total" in data["timings"]
    captured = capsys.readouterr()
    assert "reconstruction PSNR" in captured.out
    assert "inverting" in captured.err and "editing" in captured.err  # the progress bars


@pytest.mark.parametrize("extra, message", [
    (["--words", "horse"], "'horse' is not in the prompt"),
    (["--reweight", "red"], "--reweight takes word=scale pairs"),
    (["--cross-replace", "0.8"], "--cross-replace: write from-to fractions of the run such as 0-0.8"),
    (["--target", "a cat and a red fox"], "words one for one"),
])
def test_edit_bad_input_is_one_line_and_status_2(tmp_path, capsys, extra, message):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    args = ["edit", "--image", str(photo), "--source", "a cat and a dog", "--target", "a cat and a fox",
            "--steps", "2"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_generate_with_conditions_runs_pka_on_flux(tmp_path):
    edges, cat, out, report = tmp_path / "e.png", tmp_path / "c.png", tmp_path / "o.png", tmp_path / "r.json"
    Image.new("RGB", (64, 64), "white").save(edges)
    Image.new("RGB", (64, 64), "orange").save(cat)
    code = main(["generate", "--model", "tiny-flux", "--prompt", "a cat on a sofa", "--steps", "2", "--height", "64",
                 "--width", "64", "--condition", f"spatial:{edges}", "--condition", f"subject:{cat}:cat",
                 "--pka-window", "3", "--out", str(out), "--report", str(report)])
    assert code == 0 and Image.open(out).size == (64, 64)
    assert json.loads(report.read_text())["methods"]["pka"]["maps"]["cat"]


@pytest.mark.parametrize("extra, message", [
    (["--condition", "subject:{cat}"], "needs its keyword"),
    (["--condition", "spatial:nope.png"], "no such image file"),
    (["--pka-window", "3"], "need at least one --condition"),
    (["--condition", "spatial:{cat}", "--condition-lora", "2=x.safetensors"], "N from 1 to 1"),
    (["--condition", "subject:{cat}:dog"], "'dog' is not in the prompt"),
])
def test_condition_errors_are_one_line(tmp_path, capsys, extra, message):
    cat = tmp_path / "c.png"
    Image.new("RGB", (64, 64)).save(cat)
    extra = [e.format(cat=cat) for e in extra]
    args = ["generate", "--model", "tiny-flux", "--prompt", "a cat on a sofa", "--steps", "2", "--height", "64",
            "--width", "64"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("extra, message", [
    (["--cfg", "31"], "--cfg: expected a number from 0 to 30, got 31.0"),
    (["--seed", "4294967296"], "--seed: expected an integer from 0 to 4294967295, got 4294967296"),
    (["--steps", "201"], "--steps: expected an integer from 1 to 200, got 201"),
    (["--width", "4104"], "--width: expected an integer from 64 to 4096, got 4104"),
    (["--height", "100"], "--height: expected a multiple of 8, got 100"),
    (["--height", "-64"], "--height: expected an integer from 64 to 4096, got -64"),
    (["--out", "."], "--out . is a folder; give a file name"),
    (["--out", "x.xyz"], "--out x.xyz: unknown image type '.xyz'"),
    (["--maps", "m", "--method", "observe"], "--maps m: unknown image type '(no extension)'"),
    (["--device", "bogus"], "device 'bogus' is not a device name"),
    (["--sampler", "Euler b"], "unknown sampler 'Euler b'; choose one of: default, Euler, Euler a"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
])
def test_every_input_is_checked_before_any_work(extra, message, tmp_path, monkeypatch, capsys):
    """Caps, output paths and the device are refused before the model loads: nothing is made and thrown away."""
    import attnkit.models

    monkeypatch.chdir(tmp_path)
    loaded = []
    real = attnkit.models.tiny_pipeline
    monkeypatch.setattr(attnkit.models, "tiny_pipeline", lambda *a, **k: loaded.append(1) or real(*a, **k))
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: ") and message in err[0], err
    assert not loaded, "the model was loaded before the input was checked"
    assert not list(tmp_path.iterdir())


def test_edit_steps_0_is_refused(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    assert main(["edit", "--image", str(photo), "--source", "a cat", "--target", "a dog", "--steps", "0"]) == 2
    assert "--steps: expected an integer from 1 to 200, got 0" in capsys.readouterr().err


def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    assert main(BASE + ["--model", str(bad), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a readable checkpoint" in err[0], err


def test_a_finished_image_is_kept_when_its_settings_cannot_be_written(tmp_path, capsys, monkeypatch):
    from attnkit.presets import Preset, PresetError

    def refuse(self, *a, **k):
        raise PresetError("settings.steps: out of range")

    monkeypatch.setattr(Preset, "png_info", refuse)
    out = tmp_path / "o.png"
    assert main(BASE + ["--out", str(out)]) == 0
    assert Image.open(out).size == (64, 64)
    assert "saved without its settings (settings.steps: out of range)" in capsys.readouterr().err
