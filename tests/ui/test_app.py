"""The Gradio app, driven through its API (gradio_client): generation, errors, presets, concurrency."""

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

import attnkit  # noqa: E402
from attnkit.methods import REGISTRY  # noqa: E402
from attnkit.presets import Preset  # noqa: E402
from attnkit.ui.panel import build_app, panel_fields, param_to_widget_value, word_choices  # noqa: E402

from ..conftest import in_threads  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    pipes = {}

    def loader(name):  # one tiny pipeline per name, built once
        if name not in pipes:
            pipes[name] = attnkit.load_pipeline(name, device="cpu")
        return pipes[name]

    demo = build_app(loader=loader, default_model="tiny-sd15", preset_dir=str(tmp_path_factory.mktemp("presets")))
    demo.queue(default_concurrency_limit=4).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


def defaults(enable=(), **overrides):
    """Positional inputs of /run: enable toggles then every field's default widget value."""
    toggles = [m in enable for m in REGISTRY]
    values = []
    for m in REGISTRY:
        for f in panel_fields(m):
            values.append(overrides.get(f.key, param_to_widget_value(f, f.default)))
    return toggles + values


def no_conditions():
    """The Conditions section's inputs of /run, all empty: per slot (image, kind, keyword), then the knobs."""
    from attnkit.ui.conditions import SLOTS

    return [None, "spatial", None] * SLOTS + ["pka", 1, 0.2, False]


def call_run(client, prompt, words=(), seed=0, enable=(), compare=False, **overrides):
    return client.predict("tiny-sd15", prompt, "", ", ".join(words), seed, 3, 7.5, 64, 64, "default", compare,
                          *defaults(enable, **overrides), *no_conditions(), api_name="/run")


def pixels(gallery, index=0):
    return np.asarray(Image.open(gallery[index]["image"]).convert("RGB"))


def test_word_picker_choices(app):
    pipe = app.attnkit_state.pipe("tiny-sd15")[0]
    assert word_choices(pipe, "a porcupine and a porcupine") == [
        ("a#1", "a#1"), ("porcupine#1 (por·cup·ine)", "porcupine#1"), ("and", "and"), ("a#2", "a#2"),
        ("porcupine#2 (por·cup·ine)", "porcupine#2")]
    assert word_choices(pipe, "") == []


def test_generate_with_observe_and_baseline(app):
    client = Client(app.local_url, verbose=False)
    images, maps, png, status = call_run(client, "a red car and a blue bird", ["car", "bird"], enable=("observe",),
                                         compare=True)
    assert len(images) == 2 and [i["caption"] for i in images] == ["attnkit", "baseline"]
    assert np.array_equal(pixels(images, 0), pixels(images, 1)), "observe changes nothing"
    assert [m["caption"] for m in maps] == ["observe: car", "observe: bird"]
    preset = Preset.from_png(png)
    assert preset.methods == [("observe", {"words": ["car", "bird"]})] and preset.settings["seed"] == 0
    assert status.startswith("Done.")


def status_of(outputs) -> str:
    return outputs[-1]


def test_errors_are_readable_and_keep_the_last_results(app):
    """An error is a line in the status area that stays; the last results stay up, labelled as the previous run's."""
    client = Client(app.local_url, verbose=False)
    first = call_run(client, "a cat and a dog", ["cat"], enable=("observe",))
    assert status_of(first).startswith("Done.")
    for args, message in [
        (("a cat and a dog", (), 0, ("a_star",)), "A-STAR needs words: pick them in the word picker"),
        (("  ", (), 0, ()), "type a prompt first"),
        (("a cat and a dog", ["cow"], 0, ("observe",)), "'cow' is not in the prompt"),
    ]:
        prompt, words, seed, enable = args
        status = call_run(client, prompt, words, seed=seed, enable=enable)[-1]
        error, stale = status.split("\n\n")
        assert error.startswith("**Error:** ") and message in error and "\n" not in error, status
        assert stale == "Any images shown are from an earlier run."


def test_concurrent_requests_match_runs_alone(app):
    client = Client(app.local_url, verbose=False)
    jobs = {"a": dict(prompt="a red car and a white sheep", words=["car"], seed=1, enable=("structured",)),
            "b": dict(prompt="a cat and a dog", words=["cat", "dog"], seed=2, enable=("a_star",))}
    alone = {k: pixels(call_run(client, **j)[0]) for k, j in jobs.items()}
    together = in_threads(lambda key: pixels(call_run(Client(app.local_url, verbose=False), **jobs[key])[0]), jobs)
    for key in jobs:
        assert np.array_equal(together[key], alone[key])
    assert not np.array_equal(alone["a"][:32, :32], alone["b"][:32, :32])


def toggles(outputs):
    return [o["value"] if isinstance(o, dict) else o for o in outputs[: len(REGISTRY)]]


def test_presets_from_the_panel(app):
    client = Client(app.local_url, verbose=False)
    values = defaults(enable=("structured",), structured_conjunction=True)
    code, said = client.predict(*values, api_name="/export_code")
    assert Preset.from_share_code(code).methods == [("structured", {"conjunction": True})] and "copy it" in said
    client.predict("my preset", *values, api_name="/save_preset")
    loaded = client.predict("my preset", api_name="/load_preset")
    assert toggles(loaded) == [m == "structured" for m in REGISTRY] and status_of(loaded) == "Loaded preset 'my preset'."
    builtin = client.predict("Attend-and-Excite", api_name="/load_preset")
    assert toggles(builtin) == [m == "attend_excite" for m in REGISTRY]
    refused = client.predict("garbage", api_name="/import_code")
    assert status_of(refused).startswith("**Error:** not an attnkit share code")
    assert all(isinstance(v, dict) and set(v) <= {"__type__"} for v in refused[:-1]), "controls were changed"
    client.predict("my preset", api_name="/remove_preset")


def test_stop_interrupts_and_restores(app):
    client = Client(app.local_url, verbose=False)
    pipe = app.attnkit_state.pipe("tiny-sd15")[0]
    before = dict(pipe.unet.attn_processors)
    job = client.submit("tiny-sd15", "a cat and a dog", "", "cat, dog", 0, 150, 7.5, 64, 64, "default", False,
                        *defaults(enable=("a_star",)), *no_conditions(), api_name="/run")
    import time

    deadline = time.time() + 60
    while not app.attnkit_state.locks["tiny-sd15"].locked() and time.time() < deadline:
        time.sleep(0.05)
    client.predict(api_name="/request_stop")
    images, maps, png, status = job.result(timeout=120)
    assert status.startswith("Stopped; the pipeline is restored.")
    assert all(before[k] is v for k, v in pipe.unet.attn_processors.items())


def test_extension_starts_the_app_on_localhost(tmp_path):
    import socket
    import subprocess
    import sys
    import threading
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "extension.py", "--port", str(port), "--presets", str(tmp_path)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # the banner is printed once launch() returns, which can be a while after the page first answers
        deadline, page = time.time() + 120, ""
        while time.time() < deadline and proc.poll() is None and not any("Ctrl+C" in line for line in lines):
            time.sleep(0.2)
        assert proc.poll() is None, "".join(lines)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert "attnkit" in page
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=10)
    banner = "".join(lines)
    assert f"attnkit app: http://127.0.0.1:{port}" in banner and "--share for a public link" in banner, banner
    assert "share=True" not in banner and "launch()" not in banner


def test_locked_model_refuses_other_sources(tmp_path):
    from attnkit.ui.panel import AppState

    state = AppState("tiny-sd15", lambda name: object(), lock_model=True)
    with pytest.raises(attnkit.AttnKitError, match="serves only 'tiny-sd15'"):
        state.pipe("/etc/passwd")
    assert state.pipe("tiny-sd15")[0] is state.pipe("")[0]


def test_edit_tab_edits_a_photo_and_shows_maps(app, tmp_path):
    from gradio_client import handle_file

    photo = tmp_path / "photo.png"
    Image.new("RGB", (128, 128), (30, 160, 90)).save(photo)
    client = Client(app.local_url, verbose=False)
    views, maps, png, report, status = client.predict(
        model="tiny-sd15", photo=handle_file(str(photo)), caption="a cat and a dog", edited_caption="a cat and a fox",
        words="cat, dog", blend_words="dog, fox", cross_replace="0-0.8", token_iterations=1, null_iterations=1,
        steps=4, api_name="/edit")
    assert [v["caption"] for v in views] == ["input", "reconstruction", "edited"]
    assert {m["caption"] for m in maps} >= {"cat (inversion)", "dog (inversion)", "blend mask"}
    mask = Image.open(next(m["image"] for m in maps if m["caption"] == "blend mask"))
    assert mask.height > mask.width, "the mask carries its label under it"
    assert status.startswith("Done in ") and "The inversion reproduces the photo at " in status and "dB PSNR" in status
    import json

    assert len(json.load(open(report))["null_text"]) == 4
    text = Image.open(png).text
    assert text["parameters"].startswith("a cat and a fox\nSteps: 4, CFG scale: 7.5, Seed: 1, Edit: replace, "
                                         "Source caption: a cat and a dog, Dynamic words: cat + dog")
    assert json.loads(text["attnkit-edit"])["p2p"]["blend_words"] == ["dog", "fox"]


def test_edit_progress_is_one_bar_over_every_phase(app, tmp_path):
    run_edit = app_function(app, "run_edit")
    progress = Recorder()
    out = run_edit("tiny-sd15", Image.new("RGB", (64, 64), (30, 160, 90)), "a cat and a dog", "a cat and a fox",
                   token_iterations=1, null_iterations=2, steps=3, progress=progress)
    assert out[-1].startswith("Done in "), out[-1]
    fractions = [f for f, _ in progress.shown]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, "one bar, forward only, to the end"
    descs = [d for _, d in progress.shown]
    assert any(d.startswith("inverting: step 1/3 (part 1 of 3)") for d in descs)
    assert any(d.startswith("editing: step 3/3 (part 3 of 3)") for d in descs)
    assert any("left" in d for d in descs)


def test_edit_tab_errors_are_one_readable_line(app, tmp_path):
    from gradio_client import handle_file

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    client = Client(app.local_url, verbose=False)
    status = client.predict("tiny-sd15", handle_file(str(photo)), "a cat and a dog", "a cat and a fox", "horse",
                            "replace", "", "", 0.3, "0-0.8", "0-0.4", 1, 1, False, 1, 4, 7.5, api_name="/edit")[-1]
    assert status.startswith("**Error:** ") and "'horse' is not in the prompt" in status
    status = client.predict("tiny-sd15", None, "a cat", "a dog", "", "replace", "", "", 0.3, "0, 0.8", "0, 0.4", 1,
                            1, False, 1, 4, 7.5, api_name="/edit")[-1]
    assert status.startswith("**Error:** ") and "upload a photo first" in status


def test_conditions_section_runs_pka_on_flux(app, tmp_path):
    from gradio_client import handle_file

    edges, cat = tmp_path / "edges.png", tmp_path / "cat.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(edges)
    Image.new("RGB", (64, 64), (200, 100, 50)).save(cat)
    client = Client(app.local_url, verbose=False)
    inputs = no_conditions()
    inputs[0:3] = [handle_file(str(edges)), "spatial", None]
    inputs[3:6] = [handle_file(str(cat)), "subject", "cat"]
    gallery, maps, png, status = client.predict("tiny-flux", "a cat on a sofa", "", "", 0, 2, 3.5, 64, 64, "default", False,
                                                *defaults(), *inputs, api_name="/run")
    assert status.startswith("Done") and len(gallery) == 1
    inputs[3:6] = [handle_file(str(cat)), "subject", None]
    status = client.predict("tiny-flux", "a cat on a sofa", "", "", 0, 2, 3.5, 64, 64, "default", False, *defaults(), *inputs,
                            api_name="/run")[-1]
    assert status.startswith("**Error:** ") and "pick the prompt word that names it" in status


def test_stop_is_per_browser_session(app):
    """One browser's Stop never stops another's run, and a new run never clears another session's Stop."""
    import time

    runner, other = Client(app.local_url, verbose=False), Client(app.local_url, verbose=False)
    state = app.attnkit_state

    def wait_for_run():
        deadline = time.time() + 60
        while not state.locks["tiny-sd15"].locked() and time.time() < deadline:
            time.sleep(0.05)

    job = runner.submit("tiny-sd15", "a cat and a dog", "", "", 0, 40, 7.5, 64, 64, "default", False,
                        *defaults(), *no_conditions(), api_name="/run")
    wait_for_run()
    assert other.predict(api_name="/request_stop") == "Nothing is running."  # another browser presses Stop
    assert job.result(timeout=300)[3].startswith("Done."), "another session's Stop stopped this run"
    assert other.session_hash not in state.stops or not state.stops[other.session_hash].is_set()

    job = runner.submit("tiny-sd15", "a cat and a dog", "", "", 0, 150, 7.5, 64, 64, "default", False,
                        *defaults(), *no_conditions(), api_name="/run")
    wait_for_run()
    runner.predict(api_name="/request_stop")
    assert job.result(timeout=300)[3].startswith("Stopped; the pipeline is restored.")


@pytest.mark.parametrize("seed, width, message", [
    (2**32, 64, "greater than maximum value 4294967295"),  # the box's own limit, shown by Gradio
    (0, 100, "Width: expected a multiple of 8, got 100"),  # an API caller off the slider's steps
])
def test_settings_over_the_caps_are_refused_before_generating(app, seed, width, message):
    client = Client(app.local_url, verbose=False)
    calls = []
    pipe = app.attnkit_state.pipe("tiny-sd15")[0]
    hook = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        try:
            said = client.predict("tiny-sd15", "a cat", "", "", seed, 3, 7.5, width, 64, "default", False, *defaults(),
                                  *no_conditions(), api_name="/run")[-1]
        except Exception as exc:  # Gradio's own check of the seed box's range answers first
            said = str(exc)
        assert message in said
    finally:
        hook.remove()
    assert not calls, "the image was generated before the settings were checked"


def test_an_unexpected_error_in_a_preset_handler_is_a_message(app, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("the disk is on fire\nsecond line")

    monkeypatch.setattr(Preset, "load", broken)
    client = Client(app.local_url, verbose=False)
    status = status_of(client.predict("A-STAR", api_name="/load_preset"))
    assert status == "**Error:** loading the preset failed: RuntimeError: the disk is on fire"


def test_stop_with_nothing_running_and_a_random_seed(app):
    from gradio_client import handle_file  # noqa: F401

    client = Client(app.local_url, verbose=False)
    assert client.predict(api_name="/request_stop") == "Nothing is running."
    images, maps, png, status = call_run(client, "a red car", seed=-1)
    assert status.startswith("Done.\n- random seed: "), status  # the earlier Stop did not carry over
    seed = int(status.split("random seed: ")[1].split()[0])
    assert 0 <= seed < 2**32 and Preset.from_png(png).settings["seed"] == seed


def test_png_import_restores_the_prompt_and_size_and_says_so(app):
    from gradio_client import handle_file

    client = Client(app.local_url, verbose=False)
    png = client.predict("tiny-sd15", "a red car and a white sheep", "blurry", "car", 5, 3, 6.5, 64, 72, "default", False,
                         *defaults(enable=("observe",)), *no_conditions(), api_name="/run")[2]
    out = client.predict(handle_file(png), api_name="/import_file")
    values = [o["value"] if isinstance(o, dict) and "value" in o else o for o in out]
    steps, cfg, seed, width, height, _sampler, prompt, negative, status = values[-9:]
    assert (steps, cfg, seed, width, height) == (3, 6.5, 5, 64, 72)
    assert (prompt, negative) == ("a red car and a white sheep", "blurry")
    assert status == "Imported its prompt, settings and methods from attnkit.png."


def test_picked_words_with_no_method_on_say_so(app):
    client = Client(app.local_url, verbose=False)
    status = call_run(client, "a red car", ["car"])[-1]
    assert status.startswith("Done.\n- no method that acts on words is on, so the picked words were not used"), status
    # structured acts on phrases, not picked words: saying so beats ignoring them
    status = client.predict(prompt="a red car", preset="Keep attributes with objects", words="car", steps=2,
                            width=64, height=64, seed=0, api_name="/generate")[-1]
    assert "the picked words were not used" in status, status


def app_function(app, name):
    """The Python function behind one of the app's events (to call it with a recording progress tracker)."""
    return next(f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == name)


class Recorder:
    """Stands for ``gr.Progress``: records what the progress bar would show."""

    def __init__(self):
        self.shown = []

    def __call__(self, progress=None, desc=None, **_):
        self.shown.append((progress, desc))


def test_progress_counts_the_steps_asked_for_with_inner_passes_and_the_baseline(app):
    run = app_function(app, "run")
    values = defaults(("attend_excite",), attend_excite_thresholds="0: 1.0", attend_excite_max_refinement_steps=3)
    progress = Recorder()
    *_, status = run(None, "tiny-sd15", "a cat and a frog", "", "cat, frog", 0, 3, 7.5, 64, 64, "default", True, progress,
                     *values, *no_conditions())
    assert status.startswith("Done."), status
    descs = [d for _, d in progress.shown]
    fractions = [f for f, _ in progress.shown]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, "progress only moves forward, to the end"
    assert not any("/4" in d for d in descs), "PNDM's extra denoiser step is not a step the user asked for"
    assert [d.split(" ·")[0] for d in descs if "refining" in d] == [
        f"attnkit step 1/3: refining, try {i} of at most 3" for i in (1, 2, 3)]
    assert any(d.startswith("attnkit step 3/3") for d in descs)
    assert any(d.startswith("baseline step 3/3") for d in descs)
    assert fractions[descs.index(next(d for d in descs if d.startswith("baseline")))] > 0.5
    assert any("left" in d for d in descs), "an estimate of the time left"


def test_fields_are_typed_in_plain_formats_and_old_ones_still_read():
    from attnkit.errors import AttnKitError
    from attnkit.methods.fields import fields_for
    from attnkit.ui.panel import widget_value_to_param as read

    rows = {f.key: f for m in REGISTRY for f in fields_for(m)}
    windows, window = rows["observe_steps"], rows["a_star_steps"]
    thresholds, grid = rows["attend_excite_thresholds"], rows["observe_resolution"]
    # what the panel shows for the defaults
    assert param_to_widget_value(windows, [(0.0, 1.0)]) == "0-1"
    assert param_to_widget_value(window, (0.0, 0.5)) == "0-0.5"
    assert param_to_widget_value(thresholds, {0: 0.05, 10: 0.5, 20: 0.8}) == "0: 0.05, 10: 0.5, 20: 0.8"
    assert param_to_widget_value(grid, None) == "auto"
    # and reads back, in the forms people type
    assert read(windows, "0-0.5, 0.5-1") == [(0.0, 0.5), (0.5, 1.0)]
    assert read(windows, "0 to .5; .5 to 1") == [(0.0, 0.5), (0.5, 1.0)]
    assert read(windows, "[[0.0, 1.0]]") == [(0.0, 1.0)]  # what earlier versions showed
    assert read(window, "0.2-0.8") == read(window, "0.2, 0.8") == (0.2, 0.8)
    assert read(thresholds, "0: 0.05, 10: 0.5") == read(thresholds, '{"0": 0.05, "10": 0.5}') == {0: 0.05, 10: 0.5}
    assert read(thresholds, "0=0.1") == {0: 0.1}
    assert read(grid, "16×16") == (16, 16) and read(grid, "Auto") is None
    for field, typed, message in [
        (windows, "0, 1", "write from-to fractions of the run such as 0-0.5, 0.5-1, got '0'"),
        (window, "half", "Optimised steps: write from-to fractions of the run such as 0-1"),
        (thresholds, "0.05 at 0", "Refinement thresholds: write step: threshold pairs such as 0: 0.05"),
        (grid, "big", "Map resolution: choose auto or a grid such as 16x16"),
    ]:
        with pytest.raises(AttnKitError, match=message):
            read(field, typed)
    # no label speaks of BOS, JSON or HxW
    labels = " ".join(f"{f.label} {f.help}" for f in rows.values())
    assert "BOS" not in labels and "JSON" not in labels and "HxW" not in labels


def test_the_generate_endpoint_takes_a_preset_and_words_by_name(app):
    client = Client(app.local_url, verbose=False)
    images, maps, png, status = client.predict(prompt="a cat and a frog", preset="Attend-and-Excite",
                                               words="cat, frog", steps=3, width=64, height=64, seed=4,
                                               api_name="/generate")
    assert status.startswith("Done."), status
    assert [i["caption"] for i in images] == ["attnkit"]
    preset = Preset.from_png(png)
    assert preset.methods == [("attend_excite", {"words": ["cat", "frog"]})]
    assert preset.settings["seed"] == 4 and preset.settings["steps"] == 3
    # a share code, the app's defaults for what is not given, and a random seed by default
    code = Preset.from_methods([attnkit.methods.Observe(words=["frog"])], settings={"steps": 2}).to_share_code()
    images, maps, png, status = client.predict(prompt="a cat and a frog", preset=code, width=64, height=64,
                                               api_name="/generate")
    assert status.startswith("Done.\n- random seed: ") and [m["caption"] for m in maps] == ["observe: frog"]
    assert Preset.from_png(png).settings["steps"] == 2
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="no preset named 'nonsense'|'nonsense'"):
        client.predict(prompt="a cat", preset="nonsense", api_name="/generate")
    with pytest.raises(AppError, match="'dog' is not in the prompt"):
        client.predict(prompt="a cat", preset="Word maps", words="dog", steps=2, width=64, height=64,
                       api_name="/generate")


def test_the_api_page_lists_generate_and_edit_with_named_parameters(app):
    client = Client(app.local_url, verbose=False)
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(info) == {"/generate", "/edit"}, sorted(info)
    names = [p["parameter_name"] for p in info["/generate"]["parameters"]]
    assert names[:3] == ["prompt", "preset", "words"] and "sampler" in names and "param_10" not in names
    edit = [p["parameter_name"] for p in info["/edit"]["parameters"]]
    assert edit[:4] == ["model", "photo", "caption", "edited_caption"] and "cfg_scale" in edit


def test_a_sampler_is_used_for_the_run_saved_in_the_png_and_put_back(app):
    client = Client(app.local_url, verbose=False)
    pipe = app.attnkit_state.pipe("tiny-sd15")[0]
    own = pipe.scheduler
    images, maps, png, status = client.predict(prompt="a cat", sampler="Euler a", steps=2, width=64, height=64,
                                               seed=1, api_name="/generate")
    assert "Sampler: Euler a" in Image.open(png).text["parameters"]
    assert pipe.scheduler is own
    euler = attnkit.generate(pipe, "a cat", [], seed=1, num_inference_steps=2, width=64, height=64)
    assert not np.array_equal(pixels(images), np.asarray(euler.images[0])), "the sampler changed nothing"
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="unknown sampler 'Euler b'; choose one of: default, Euler, Euler a"):
        client.predict(prompt="a cat", sampler="Euler b", api_name="/generate")
    with pytest.raises(AppError, match="Flux models sample with their own flow-matching scheduler"):
        client.predict(prompt="a cat", sampler="DDIM", model="tiny-flux", api_name="/generate")


def test_choosing_a_model_hides_what_it_cannot_run(app):
    on_model = app_function(app, "on_model")
    toggles_on = [m in ("structured", "observe") for m in REGISTRY]
    out = on_model("tiny-flux", *toggles_on)
    n = len(REGISTRY)
    note, sections, toggles = out[0], out[1: 1 + n], out[1 + n: 1 + 2 * n]
    conditions, sampler, edit_note, edit_button, edit_steps, width, height = out[1 + 2 * n:]
    assert "random weights" in note and "noise" in note
    assert "Hidden for Flux models: Structured Diffusion Guidance, A-STAR, Attend-and-Excite" in note
    assert "Turned off: Structured Diffusion Guidance." in note
    assert {m: s["visible"] for m, s in zip(REGISTRY, sections)} == {
        "observe": True, "structured": False, "attend_excite": False, "a_star": False}
    assert [t.get("value") for t in toggles] == [None, False, None, None]  # only the hidden one that was on
    assert conditions["visible"] is True and sampler["choices"] == ["default"]
    assert "needs an SD 1.x/2.x model" in edit_note and edit_button["interactive"] is False
    assert width["value"] == height["value"] == 128  # a built-in model's own size
    out = on_model("tiny-sd15", *toggles_on)
    assert all(s["visible"] for s in out[1: 1 + n]) and out[1 + 2 * n]["visible"] is False
    assert "Conditions section is hidden" in out[0] and out[-4]["interactive"] is True
    assert out[-3]["value"] == 20 and "20 steps, a quick try" in out[-5]  # the built-in model's quick edit
    out = on_model("no-such-model-here", *toggles_on)
    assert out[0].startswith("**Error:** no model 'no-such-model-here'") and "\n" not in out[0]


def test_the_model_chooser_lists_built_ins_and_the_models_folder(tmp_path):
    from attnkit.models import model_choices

    (tmp_path / "my-sd15").mkdir()
    (tmp_path / "my-sd15" / "model_index.json").write_text("{}")
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "dreamy.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    listed = model_choices(tmp_path)
    assert [source for _, source in listed] == ["shapes", "tiny-sd15", "tiny-sdxl", "tiny-flux",
                                                str(tmp_path / "dreamy.safetensors"), str(tmp_path / "my-sd15")]
    assert "trained" in listed[0][0] and all("random weights" in label for label, _ in listed[1:4])
    assert [label for label, _ in model_choices(tmp_path / "missing")] == [label for label, _ in listed[:4]]


def test_a_new_app_starts_on_the_trained_shapes_model():
    """What a newcomer sees first: the built-in shapes model chosen, a prompt it knows, its 64 px size, and a note
    that says what it understands."""
    demo = build_app(preset_dir=None)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert by_id["ak-model"].value == "shapes"
    assert by_id["ak-prompt"].value == "a red circle and a blue square"
    assert by_id["ak-width"].value == by_id["ak-height"].value == 64
    on_model = app_function(demo, "on_model")
    out = on_model("shapes", *[False] * len(REGISTRY))
    assert "**shapes** is a built-in model trained on 64 px pictures" in out[0]
    assert "a, and, red, green, blue, yellow, circle, square, triangle" in out[0]
    assert out[-2]["value"] == out[-1]["value"] == 64 and out[-3]["value"] == 20
