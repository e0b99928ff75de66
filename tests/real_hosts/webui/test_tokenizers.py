"""Finding 1: Forge and A1111 hand extensions a slow ``CLIPTokenizer``; under their pinned transformers (4.46.1 Forge,
4.30.2 A1111) ``return_offsets_mapping`` raises ``NotImplementedError``. Token positions must come out exactly as a
fast tokenizer's, from the hosts' own tokenizer files, under both versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SD15_TOKENIZER, TOKENIZERS, need

PROMPTS = [
    "a red car and a white sheep",
    "a (red car:1.2), and a [white] sheep!!",
    "photo of a dog's toy,   bright   colours; 4k, dog",
    "an astronaut riding a horse on mars, highly detailed, trending on artstation",
]
DIRS = {
    "sd15": ("runwayml/stable-diffusion-v1-5", "tokenizer"),
    "sd21": ("stabilityai/stable-diffusion-2-1", "tokenizer"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
    "sdxl-2": ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
}

# printed as JSON by a child interpreter: {prompt: {word: positions}} for each tokenizer folder
POSITIONS = r"""
import json, sys
import transformers
from transformers import CLIPTokenizer
from attnkit.core.tokens import TokenMap
out = {"version": transformers.__version__, "maps": {}}
for key, folder in json.loads(sys.argv[1]).items():
    tok = CLIPTokenizer.from_pretrained(folder)
    try:
        tok("a car", return_offsets_mapping=True)
        out["offsets_raise"] = False
    except NotImplementedError:
        out["offsets_raise"] = True
    out["maps"][key] = {p: {w.text: list(w.positions) for w in TokenMap(p, tok, 77).words}
                        for p in json.loads(sys.argv[2])}
print(json.dumps(out))
"""


def positions_under(extra_path: str | None) -> dict:
    folders = {k: os.path.join(TOKENIZERS, *v) for k, v in DIRS.items()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra_path, ROOT) if p)}
    done = subprocess.run([sys.executable, "-c", POSITIONS, json.dumps(folders), json.dumps(PROMPTS)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def fast_positions() -> dict:
    from transformers import CLIPTokenizerFast

    from attnkit.core.tokens import TokenMap

    out = {}
    for key, parts in DIRS.items():
        tok = CLIPTokenizerFast.from_pretrained(os.path.join(TOKENIZERS, *parts))  # converted from the same files
        out[key] = {p: {w.text: list(w.positions) for w in TokenMap(p, tok, 77).words} for p in PROMPTS}
    return out


@pytest.mark.parametrize("version", ["4.46.1", "4.30.2"])
def test_slow_tokenizer_positions_match_the_fast_tokenizer(version):
    need(SD15_TOKENIZER, "Forge's tokenizer files")
    extra = None
    if version == "4.30.2":
        extra = os.environ.get("ATTNKIT_TRANSFORMERS_430", "")
        need(extra or "/nonexistent", "the transformers 4.30.2 folder made by tools/test_webui_hosts.sh")
    got = positions_under(extra)
    assert got["version"] == version
    assert got["offsets_raise"], "the slow tokenizer of this version no longer raises for offsets: the finding moved"
    expected = fast_positions()
    assert got["maps"] == expected
    # <start> a red car and a white sheep: the positions the model's context has
    assert got["maps"]["sd15"][PROMPTS[0]]["car"] == [3] and got["maps"]["sd15"][PROMPTS[0]]["sheep"] == [7]
