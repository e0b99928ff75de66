"""What a user types, shares or uploads: caps hold before any work, and reading a preset fails only with
``PresetError`` (fast, small), whatever the bytes."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnkit import AttnKitError
from attnkit.methods import AStar, AttendExcite, Observe, StructuredGuidance
from attnkit.methods.p2p import P2P
from attnkit.presets import Preset, PresetError

PRESET = Preset.from_methods([StructuredGuidance(), Observe(words=["car"])])


# ------------------------------------------------------------------------------------------------ word caps


@pytest.mark.parametrize("method", [AStar, AttendExcite, Observe])
def test_word_lists_are_capped_at_the_config(method):
    start = time.perf_counter()
    with pytest.raises(AttnKitError, match="words takes at most 32 entries, got 10000"):
        method(words=["car"] * 10000)
    assert time.perf_counter() - start < 0.5
    assert len(method(words=["car"] * 32).config.words) == 32


def test_every_list_option_of_every_method_is_capped():
    with pytest.raises(AttnKitError, match="at most 32 phrases|phrases takes at most 32"):
        StructuredGuidance(phrases=["red car"] * 33)
    with pytest.raises(AttnKitError, match="token_indices takes at most 16"):
        AStar(token_indices=list(range(1, 18)))
    with pytest.raises(AttnKitError, match="blend_words takes at most 32"):
        P2P(blend_words=["car"] * 33)
    with pytest.raises(AttnKitError, match="at most 200"):
        Observe(words=["x" * 201])
    with pytest.raises(AttnKitError, match="a_star: iterations(=1000)? must be (from 1 to 20|in 1..20)"):
        AStar(words=["car"], iterations=1000)
    with pytest.raises(AttnKitError, match="attend_excite: max_refinement_steps.* must be"):
        AttendExcite(words=["car"], max_refinement_steps=10 ** 6)


def test_preset_to_methods_holds_the_cap():
    preset = Preset.from_params([("a_star", {})])
    with pytest.raises(AttnKitError, match="at most 32"):
        preset.to_methods(words=["car"] * 100)


def test_occurrence_number_past_the_digit_limit_is_a_clear_error():
    from attnkit.models import clip_tokenizer
    from attnkit.core.tokens import TokenMap

    tokens = TokenMap("a car and a car", clip_tokenizer(), 77)
    with pytest.raises(AttnKitError, match="occurrence number after '#' is too large"):
        tokens.find("car#" + "9" * 5000)


# ------------------------------------------------------------------------------------------------ presets


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width, height, *chunks, idat=b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(chunks)
            + (png_chunk(b"IDAT", idat) if idat else b"") + png_chunk(b"IEND", b""))


def text_chunk(key: str, value: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))


def saved_png() -> bytes:
    buffer = io.BytesIO()
    PRESET.save_png(Image.new("RGB", (64, 64), "red"), buffer, prompt="a red car")
    return buffer.getvalue()


HOSTILE = {
    "id is a list": lambda: Preset.from_json('{"attnkit":1,"methods":[{"id":[]}]}'),
    "id is an object": lambda: Preset.from_dict({"attnkit": 1, "methods": [{"id": {"a": 1}}]}),
    "threshold key ²": lambda: Preset.from_json(
        '{"attnkit":1,"methods":[{"id":"attend_excite","params":{"thresholds":{"²":0.5}}}]}'),
    "threshold key of 5000 digits": lambda: Preset.from_json(
        '{"attnkit":1,"methods":[{"id":"attend_excite","params":{"thresholds":{"' + "9" * 5000 + '":0.5}}}]}'),
    "an integer of 5000 digits": lambda: Preset.from_dict(
        {"attnkit": 1, "methods": [{"id": "a_star", "params": {"iterations": 10 ** 5000}}]}),
    "share code version of 5000 digits": lambda: Preset.from_share_code("ak" + "9" * 5000 + ".eNqrVg"),
    "infotext as bytes, without a code": lambda: Preset.from_infotext(b"a cat\nSteps: 20"),
    "infotext as a number": lambda: Preset.from_infotext(5),
    "a lone surrogate": lambda: Preset.from_json('{"attnkit": 1, "name": "\ud800"}'),
    "a lone surrogate in a share code": lambda: Preset.from_share_code("ak1.\ud800"),
    "truncated PNG": lambda: Preset.from_png(io.BytesIO(saved_png()[:60])),
    "PNG declaring 100000x100000": lambda: Preset.from_png(io.BytesIO(png(100000, 100000, idat=b"x" * 40))),
    "APNG with missing frames": lambda: Preset.from_png(io.BytesIO(png(
        4, 4, png_chunk(b"acTL", struct.pack(">II", 5, 0)), idat=zlib.compress(b"\0" * 20)))),
    "a 2 MB text chunk": lambda: Preset.from_png(io.BytesIO(png(4, 4, text_chunk("parameters", "x" * (2 << 20))))),
    "not an image": lambda: Preset.from_png(io.BytesIO(b"GIF89a" + b"\0" * 100)),
    "a folder": lambda: Preset.from_png("/"),
    "a number": lambda: Preset.from_png(7),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_presets_are_preset_errors(case):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(PresetError) as err:
            HOSTILE[case]()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 2 and peak < 200 * 2 ** 20
    message = str(err.value)
    assert message and "\n" not in message and len(message) < 500, message


def test_text_chunk_of_a_huge_png_is_read_without_decoding_pixels():
    """A 13000x13000 PNG (its real IDAT, about 160 KB compressed) carrying a preset: read its text only."""
    raw = zlib.compressobj(9)
    row = b"\0" * 13001
    idat = b"".join(raw.compress(row) for _ in range(13000)) + raw.flush()
    data = png(13000, 13000, text_chunk("parameters", PRESET.to_infotext("a car")), idat=idat)
    tracemalloc.start()
    start = time.perf_counter()
    got = Preset.from_png(io.BytesIO(data))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got.methods == PRESET.methods
    assert time.perf_counter() - start < 0.5 and peak < 5 * 2 ** 20


def test_png_text_after_the_pixels_and_compressed_text_are_read(tmp_path):
    value = PRESET.to_json(indent=None)
    itxt = png_chunk(b"iTXt", b"attnkit\0\x01\0\0\0" + zlib.compress(value.encode()))
    data = png(4, 4, idat=zlib.compress(b"\0" * 20))
    data = data[:-12] + itxt + data[-12:]  # after IDAT, before IEND
    assert Preset.from_png(io.BytesIO(data)).methods == PRESET.methods
    path = tmp_path / "x.png"
    path.write_bytes(saved_png())
    assert Preset.from_png(path).methods == PRESET.methods
    assert Preset.from_png(Image.open(path)).methods == PRESET.methods
    assert Preset.from_png(saved_png()).methods == PRESET.methods


def test_other_formats_still_read_through_pil():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG", comment=b"x")
    with pytest.raises(PresetError, match="no attnkit preset"):
        Preset.from_png(io.BytesIO(buffer.getvalue()))


ANY_TEXT = st.one_of(st.text(max_size=400), st.binary(max_size=400).map(lambda b: b.decode("latin-1")),
                     st.from_regex(r"ak[0-9]{1,8}\.[A-Za-z0-9_-]{0,80}", fullmatch=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT, st.binary(max_size=600), st.integers(0, 2 ** 31))
def test_reading_anything_is_a_preset_or_a_preset_error_fast_and_small(text, blob, size):
    """Only ``PresetError`` escapes the four readers; each call under 2 s and 200 MB (Python allocations)."""
    base = saved_png()
    cut = base[: len(blob) % len(base)]
    images = [blob, cut, png(size % 200000 + 1, size % 100000 + 1, png_chunk(b"zTXt", b"parameters\0\0" + blob)),
              base[:33] + blob + base[33:]]
    calls = [lambda: Preset.from_json(text), lambda: Preset.from_share_code(text), lambda: Preset.from_infotext(text),
             lambda: Preset.from_json(blob)] + [lambda data=data: Preset.from_png(io.BytesIO(data)) for data in images]
    for call in calls:
        tracemalloc.start()
        start = time.perf_counter()
        try:
            call()
        except PresetError:
            pass
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.perf_counter() - start < 2 and peak < 200 * 2 ** 20


# ------------------------------------------------------------------------------------------------ preset files


def test_saving_refuses_to_overwrite_and_is_atomic(tmp_path, monkeypatch):
    import os

    first = Preset.from_methods([Observe()], name="mine")
    first.save(tmp_path)
    second = Preset.from_methods([StructuredGuidance()], name="mine")
    with pytest.raises(PresetError, match="a preset named 'mine' already exists; choose another name or delete it"):
        second.save(tmp_path)
    assert Preset.load("mine", tmp_path) == first

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the write fails after the temporary file was opened
    with pytest.raises(PresetError, match="could not save preset 'mine' .*No space left on device.*nothing was changed"):
        second.save(tmp_path, overwrite=True)
    monkeypatch.undo()
    assert Preset.load("mine", tmp_path) == first, "the old preset was lost"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json"], "a temporary file was left behind"
    second.save(tmp_path, overwrite=True)
    assert Preset.load("mine", tmp_path) == second


def test_killed_mid_save_leaves_the_old_preset(tmp_path):
    """A process killed while saving (SIGKILL right after the write starts) leaves the old file whole."""
    import subprocess
    import sys

    Preset.from_methods([Observe()], name="kept").save(tmp_path)
    script = (
        "import os, signal, sys\n"
        "from attnkit.presets import Preset\n"
        "from attnkit.methods import StructuredGuidance\n"
        "real = os.fsync\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"Preset.from_methods([StructuredGuidance()], name='kept').save({str(tmp_path)!r}, overwrite=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode != 0
    assert Preset.load("kept", tmp_path).methods == [("observe", {})]


def test_unwritable_folder_is_a_preset_error(tmp_path):
    folder = tmp_path / "file-not-folder"
    folder.write_text("x")
    with pytest.raises(PresetError, match="could not save preset 'p' in .*file-not-folder"):
        Preset.from_methods([Observe()], name="p").save(folder)


def test_a_huge_json_upload_is_not_read_past_the_cap(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.seek(300 << 20)  # a 300 MB file (sparse: cheap to make)
        handle.write(b" ")
    tracemalloc.start()
    with pytest.raises(PresetError, match="big.json is too large for a preset"):
        Preset.from_file(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


# ------------------------------------------------------------------------------------------------ image inputs


def test_a_long_strip_is_cropped_before_it_is_resized(tmp_path):
    from attnkit.editing import load_image

    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 40000), "white").save(path)
    assert path.stat().st_size < 2000
    tracemalloc.start()
    out = load_image(path, (512, 512))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.size == (512, 512) and peak < 20 * 2 ** 20


@pytest.mark.parametrize("case", ["truncated", "bomb", "not an image", "too many pixels"])
def test_bad_image_files_are_one_line_errors(tmp_path, case):
    from attnkit.editing import load_image

    path = tmp_path / "photo.png"
    if case == "truncated":
        Image.new("RGB", (256, 256), "red").save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "bomb":
        path.write_bytes(png(100000, 100000, idat=zlib.compress(b"\0" * 1000)))
    elif case == "not an image":
        path.write_bytes(b"hello")
    else:
        path.write_bytes(png(9000, 9000, idat=zlib.compress(b"\0" * 1000)))
    with pytest.raises(AttnKitError) as err:
        load_image(path, (64, 64))
    message = str(err.value)
    assert message.startswith(f"cannot read the image {str(path)!r}") or "megapixels are read" in message, message
    assert "\n" not in message


def test_prompts_of_an_a1111_parameters_text():
    from attnkit.presets import prompts_of_infotext

    text = PRESET.to_infotext("a red car,\nsecond line", "blurry, low quality", steps=20, seed=3)
    assert prompts_of_infotext(text) == ("a red car,\nsecond line", "blurry, low quality")
    assert prompts_of_infotext("just a prompt") == ("just a prompt", "")
