"""Presets: identities through every carrier (property-tested) and a documented error for every malformed input."""

import base64
import io
import json
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnkit import AttnKitError
from attnkit.methods import AStar, AttendExcite, Observe, StructuredGuidance
from attnkit.presets import MAX_JSON_BYTES, Preset, PresetError, delete_preset, user_dir, user_presets
from attnkit.methods.fields import fields_for

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


def value_for(f):
    if f.kind == "bool":
        return st.booleans()
    if f.kind == "int":
        return st.integers(int(f.minimum), int(f.maximum))
    if f.kind == "float":
        return st.floats(f.minimum, f.maximum, allow_nan=False)
    if f.kind == "choice":
        return st.sampled_from(f.choices)
    if f.kind == "words":
        return st.lists(WORD, min_size=1, max_size=4)
    if f.kind == "indices":
        return st.lists(st.integers(1, 70), min_size=1, max_size=4)
    window = st.tuples(st.floats(0, 0.49), st.floats(0.5, 1.0))
    if f.kind == "window":
        return window
    if f.kind == "windows":
        return st.lists(window, min_size=1, max_size=3)
    if f.kind == "grid":
        return st.one_of(st.none(), st.integers(1, 64), st.tuples(st.integers(1, 64), st.integers(1, 64)))
    if f.kind == "thresholds":
        return st.dictionaries(st.integers(0, 50), st.floats(0, 1), max_size=4)
    raise AssertionError(f.kind)


def params_for(method_id):
    rows = [f for f in fields_for(method_id) if f.kind != "masks" and f.name != "token_indices"]
    return st.fixed_dictionaries({}, optional={f.name: value_for(f) for f in rows})


PRESETS = st.builds(
    lambda methods, settings, name: Preset.from_dict(
        {"attnkit": 1, "name": name, "methods": [{"id": i, "params": _json(p)} for i, p in methods],
         "settings": settings}
    ),
    st.lists(st.sampled_from(["observe", "structured", "attend_excite", "a_star"]), min_size=1, max_size=4,
             unique=True).flatmap(lambda ids: st.tuples(*[st.tuples(st.just(i), params_for(i)) for i in ids])),
    st.fixed_dictionaries({}, optional={"steps": st.integers(1, 200), "guidance_scale": st.floats(0, 30),
                                         "seed": st.integers(0, 2**32 - 1), "sampler": WORD}),
    st.text(max_size=20),
)


def _json(value):
    return json.loads(json.dumps(value, default=list))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PRESETS)
def test_identities(preset):
    assert Preset.from_json(preset.to_json()) == preset
    assert Preset.from_share_code(preset.to_share_code()) == preset
    assert Preset.from_infotext(preset.to_infotext("a red car", "blurry", model="tiny-sd15")) == preset
    buffer = io.BytesIO()
    preset.save_png(Image.new("RGB", (8, 8)), buffer, prompt="a red car")
    buffer.seek(0)
    assert Preset.from_png(buffer) == preset


def test_png_parameters_read_like_webui(tmp_path):
    preset = Preset.from_methods([StructuredGuidance(conjunction=True)], settings={"steps": 20, "seed": 7})
    path = tmp_path / "x.png"
    preset.save_png(Image.new("RGB", (8, 8)), path, prompt="a red car and a white sheep", negative_prompt="blurry",
                    model="tiny-sd15", width=512, height=512, guidance_scale=7.5)
    text = Image.open(path).text
    lines = text["parameters"].split("\n")
    assert lines[0] == "a red car and a white sheep" and lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 20, CFG scale: 7.5, Seed: 7, Size: 512x512, Model: tiny-sd15, AttnKit: ak1.")
    assert json.loads(text["attnkit"])["methods"] == [{"id": "structured", "params": {"conjunction": True}}]
    only_parameters = Image.new("RGB", (8, 8))
    only_parameters.info["parameters"] = text["parameters"]
    assert Preset.from_png(only_parameters) == preset


def test_from_methods_keeps_non_defaults_and_round_trips():
    methods = [Observe(words=["car"]), AttendExcite(words=["cat"], scale_factor=30.0, thresholds={0: 0.1}),
               AStar(words=["cat", "dog"], masks={"cat": [[1, 0], [0, 0]], "dog": [[0, 0], [0, 1]]})]
    preset = Preset.from_methods(methods)
    assert preset.methods[1] == ("attend_excite", {"words": ["cat"], "thresholds": {0: 0.1}, "scale_factor": 30.0})
    rebuilt = preset.to_methods()
    assert rebuilt[1].config == methods[1].config
    assert [[float(x) for x in row] for row in rebuilt[2].config.masks["cat"].tolist()] == [[1, 0], [0, 0]]


def test_prompt_free_presets_take_words_later():
    preset = Preset.builtins()["A-STAR"]
    with pytest.raises(PresetError, match="a_star needs words: pick its words in the prompt"):
        preset.to_methods()
    assert preset.to_methods(words=["cat", "dog"])[0].config.words == ["cat", "dog"]


def test_builtins_cover_every_method_and_load():
    builtins = Preset.builtins()
    assert len(builtins) >= 4
    covered = {method_id for p in builtins.values() for method_id, _ in p.methods}
    assert covered == {"observe", "structured", "attend_excite", "a_star"}
    assert all(p.description for p in builtins.values())


def test_user_presets_live_outside_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_PRESETS", str(tmp_path / "mine"))
    assert user_dir() == tmp_path / "mine"
    preset = Preset.from_methods([StructuredGuidance()], name="my colours")
    path = preset.save()
    assert path == tmp_path / "mine" / "my colours.json"
    assert user_presets() == ["my colours"] and Preset.load("my colours") == preset
    assert Preset.load("A-STAR") == Preset.builtins()["A-STAR"]
    name = "Keep attributes with objects (conjunction)"  # not a valid file name, but a built-in
    assert Preset.load(name) == Preset.builtins()[name]
    delete_preset("my colours")
    assert user_presets() == []
    for bad in ("../evil", "", "a/b", "x" * 80, "dots..", "end."):
        with pytest.raises(PresetError, match="preset name"):
            Preset.from_methods([], name=bad).save()
    with pytest.raises(PresetError, match="no preset named 'nope'"):
        Preset.load("nope")


def _code(data) -> str:
    raw = json.dumps(data).encode()
    return "ak1." + base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")


GOOD = Preset.from_methods([StructuredGuidance(conjunction=True)])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Preset.from_share_code(GOOD.to_share_code()[:-12]), "damaged or cut short"),
        (lambda: Preset.from_share_code("hello"), "not an attnkit share code"),
        (lambda: Preset.from_share_code("ak9.abc"), "made by a newer attnkit \\(ak9\\)"),
        (lambda: Preset.from_share_code("ak1.!!!"), "not an attnkit share code"),
        (lambda: Preset.from_json('{"attnkit": 7, "methods": []}'), "newer attnkit \\(schema 7\\)"),
        (lambda: Preset.from_json('{"methods": []}'), "schema version number is missing"),
        (lambda: Preset.from_json("[1, 2]"), "expected a JSON object"),
        (lambda: Preset.from_json("{nope"), "the JSON does not parse"),
        (lambda: Preset.from_json('{"attnkit": 1, "methods": [{"id": "x", "params": {}}]}'),
         "methods\\[0\\].id: unknown method 'x'"),
        (lambda: Preset.from_json('{"attnkit": 1, "methods": [{"id": "a_star", "params": {"tau": 1e300}}]}'),
         "methods\\[0\\].params.tau: expected a value from 0.05 to 0.95"),
        (lambda: Preset.from_json('{"attnkit": 1, "methods": [{"id": "attend_excite", "params": '
                                  '{"max_iter_to_alter": 100000000}}]}'), "max_iter_to_alter: expected a value"),
        (lambda: Preset.from_json('{"attnkit": 1, "methods": [{"id": "structured", "params": {"conjunction": "yes"}}]}'),
         "conjunction: expected true or false"),
        (lambda: Preset.from_json('{"attnkit": 1, "methods": [{"id": "observe", "params": {"steps": NaN}}]}'),
         "does not parse"),
        (lambda: Preset.from_json('{"attnkit": 1, "methods": [{"id": "observe", "params": {"colour": 1}}]}'),
         "params.colour: unknown option of observe"),
        (lambda: Preset.from_json('{"attnkit": 1, "settings": {"steps": 10000000}, "methods": []}'),
         "settings.steps: expected an integer from 1 to 200"),
        (lambda: Preset.from_json(json.dumps({"attnkit": 1, "methods": [], "pad": "x" * (10 * 2**20)})),
         "preset too large \\(10240 KiB\\)"),
        (lambda: Preset.from_share_code(_code({"attnkit": 1, "methods": [], "pad": "x" * (10 * 2**20)})),
         "preset too large"),
        (lambda: Preset.from_png(io.BytesIO(b"not a png")), "cannot read that image"),
        (lambda: Preset.from_png(Image.new("RGB", (4, 4))), "carries no attnkit preset"),
    ],
)
def test_malformed_inputs_give_the_documented_error(make, message):
    with pytest.raises(PresetError, match=message):
        make()


def test_every_problem_is_reported_at_once():
    data = {"attnkit": 1, "extra": 1, "methods": [
        {"id": "a_star", "params": {"tau": "high", "iterations": 0, "smoothing": "box"}},
        {"id": "nope"}]}
    with pytest.raises(PresetError) as err:
        Preset.from_dict(data)
    text = str(err.value)
    for part in ("extra: unknown key", "methods[0].params.tau", "methods[0].params.iterations",
                 "methods[0].params.smoothing", "methods[1].id: unknown method 'nope'"):
        assert part in text
    assert isinstance(err.value, AttnKitError)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: "ak1." + base64.urlsafe_b64encode(b).decode())))
def test_garbage_only_ever_raises_preset_error(text):
    for parse in (Preset.from_json, Preset.from_share_code, Preset.from_infotext):
        try:
            parse(text)
        except PresetError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=20))
def test_random_json_only_ever_raises_preset_error(data):
    for wrapped in (data, {"attnkit": 1, "methods": [{"id": "a_star", "params": data}]},
                    {"attnkit": 1, "methods": data, "settings": data}):
        try:
            Preset.from_dict(wrapped)
        except PresetError:
            pass
    assert MAX_JSON_BYTES == 65536
