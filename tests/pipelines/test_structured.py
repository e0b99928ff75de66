"""structured: alignment, the exact fast path against the naive formulas, and behaviour on the tiny pipelines."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import attnkit
from attnkit.core.engine import Event
from attnkit.core.processor import computed_attention
from attnkit.methods import Observe, StructuredConfig, StructuredGuidance

from ..conftest import FAST, plain, with_attnkit

PROMPT = "a red car and a white sheep"


def controller_for(pipe, prompt=PROMPT, **config):
    with attnkit.attach(pipe, [StructuredGuidance(**config)], prompt=prompt) as run:
        pass
    return run.controllers[0]


def naive_heads(attn, hidden, key_text, value_texts, key_weights=None):
    """Per head: mean over value sequences of softmax(q k^T / sqrt d) v, merged and projected (the paper's formula).
    With several key sequences (conjunction), mean over keys of softmax(q k_i^T / sqrt d) v."""
    q = attn.head_to_batch_dim(attn.to_q(hidden))
    outs = []
    keys = key_text if isinstance(key_text, list) else [key_text]
    for key in keys:
        k = attn.head_to_batch_dim(attn.to_k(key))
        m = attn.get_attention_scores(q, k, None)
        for value in value_texts:
            outs.append(torch.bmm(m, attn.head_to_batch_dim(attn.to_v(value))))
    out = attn.batch_to_head_dim(torch.stack(outs).mean(0))
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_alignment_splices_phrases_at_their_spans(pipes, family):
    c = controller_for(pipes[family], "a red teddy bear in a christmas hat")
    assert [p.text for p in c.phrases] == ["a red teddy bear", "a christmas hat"]
    w0, bear, hat = c.sequences
    assert c.report.data["phrases"][0]["tokens"]["tokenizer"] == [1, 5]
    assert c.report.data["phrases"][1]["tokens"]["tokenizer"] == [6, 9]
    own = c.run.encode_text("a red teddy bear")
    torch.testing.assert_close(bear[:, 1:5], own[:, 1:5], rtol=0, atol=0)
    unchanged = torch.ones(77, dtype=torch.bool)
    unchanged[1:5] = False
    torch.testing.assert_close(bear[:, unchanged], w0[:, unchanged], rtol=0, atol=0)  # BOS, rest, EOS, padding
    # CLIP's text encoder is causal: the first phrase sees only BOS either way, so it is unchanged; the second one
    # is encoded without "a red teddy bear in" before it, and differs. That difference is what the method uses.
    torch.testing.assert_close(bear[:, 1:5], w0[:, 1:5], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hat[:, 6:9], w0[:, 6:9], atol=1e-3), "context changes later phrases (test is live)"
    torch.testing.assert_close(c.substituted[:, 1:5], bear[:, 1:5], rtol=0, atol=0)
    torch.testing.assert_close(c.substituted[:, 6:9], hat[:, 6:9], rtol=0, atol=0)


def test_nested_phrases_inner_wins_in_all_substituted(sd15):
    c = controller_for(sd15, "a photo of a cat", phrases=["a photo of a cat", "a cat"])
    outer, inner = c.sequences[1], c.sequences[2]
    torch.testing.assert_close(c.substituted[:, 4:6], inner[:, 4:6], rtol=0, atol=0)
    torch.testing.assert_close(c.substituted[:, 1:4], outer[:, 1:4], rtol=0, atol=0)


def _layer(pipe):
    unet = pipe.unet
    name = next(n for n in unet.attn_processors if "down_blocks.1" in n and "attn2" in n)
    info = next(i for i in attnkit.core.layers.discover_layers(unet) if i.name == name)
    return info, unet.get_submodule(info.module)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_default_mode_shortcut_equals_naive_k_plus_1_values(pipes, family):
    pipe = pipes[family]
    c = controller_for(pipe)
    info, attn = _layer(pipe)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, attn.to_q.in_features, generator=g)
    uncond = torch.randn(1, 77, attn.to_k.in_features, generator=g)
    text = torch.cat([uncond, c.sequences[0]])
    with torch.no_grad():
        ours = computed_attention(attn, hidden, text, event=Event(text=c), layer=info, rows=slice(1, 2))
        naive_cond = naive_heads(attn, hidden[1:], c.sequences[0], c.sequences)
        plain_uncond = AttnProcessor2_0()(attn, hidden[:1], uncond)
    torch.testing.assert_close(ours[1:], naive_cond, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[:1], plain_uncond, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(naive_cond, AttnProcessor2_0()(attn, hidden[1:], c.sequences[0]), atol=1e-6)


@pytest.mark.parametrize("first_key", ["official", "prompt"])
def test_conjunction_mode_equals_naive(sd15, first_key):
    c = controller_for(sd15, conjunction=True, conjunction_first_key=first_key)
    info, attn = _layer(sd15)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 16, attn.to_q.in_features, generator=g)  # 2 images per prompt: rows 2, 3 are cond
    uncond = torch.randn(2, 77, attn.to_k.in_features, generator=g)
    text = torch.cat([uncond, c.sequences[0].expand(2, -1, -1)])
    first = c.substituted if first_key == "official" else c.sequences[0]
    keys = [first] + c.sequences[1:]
    with torch.no_grad():
        ours = computed_attention(attn, hidden, text, event=Event(text=c), layer=info, rows=slice(2, 4))
        for row in (2, 3):
            naive = naive_heads(attn, hidden[row : row + 1], keys, [c.substituted])
            torch.testing.assert_close(ours[row : row + 1], naive, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours[:2], AttnProcessor2_0()(attn, hidden[:2], uncond), rtol=1e-5, atol=1e-6)


class NaiveStructured(AttnProcessor2_0):
    """A plain diffusers processor computing the paper's formula directly (k+1 value passes), for the cond half."""

    def __init__(self, sequences):
        super().__init__()
        self.sequences = sequences

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        half = hidden_states.shape[0] // 2
        uncond = super().__call__(attn, hidden_states[:half], encoder_hidden_states[:half])
        cond = naive_heads(attn, hidden_states[half:], encoder_hidden_states[half:],
                           [s.expand(half, -1, -1) for s in self.sequences])
        return torch.cat([uncond, cond])


def test_whole_image_matches_the_naive_processor(sd15):
    c = controller_for(sd15)
    ours, result = with_attnkit(sd15, PROMPT, [StructuredGuidance()])
    saved = dict(sd15.unet.attn_processors)
    try:
        sd15.unet.set_attn_processor({n: NaiveStructured(c.sequences) if "attn2" in n else p for n, p in saved.items()})
        naive = plain(sd15, PROMPT)
    finally:
        sd15.unet.set_attn_processor(saved)
    np.testing.assert_allclose(ours, naive, atol=1e-4)
    assert np.abs(ours - plain(sd15, PROMPT)).max() > 1e-3, "structured changes the image"
    assert result.report.warnings == []


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_enabled_changes_the_image_and_reports_phrases(pipes, family):
    pipe = pipes[family]
    before = dict(pipe.unet.attn_processors)
    for config in ({}, {"conjunction": True}):
        images, result = with_attnkit(pipe, PROMPT, [StructuredGuidance(**config)])
        assert np.abs(images - plain(pipe, PROMPT)).max() > 1e-3
        data = result.report["structured"].data
        assert [p["text"] for p in data["phrases"]] == ["a red car", "a white sheep"]
        assert data["mode"] == ("conjunction" if config else "default")
    after = dict(pipe.unet.attn_processors)
    assert all(before[k] is after[k] for k in before)


def test_no_phrase_is_bit_identical_and_warns(sd15):
    prompt = "landscape, mountains, sunset"
    images, result = with_attnkit(sd15, prompt, [StructuredGuidance()])
    assert np.array_equal(images, plain(sd15, prompt))
    assert result.report.warnings == [
        "structured: no phrase of more than one word in 'landscape, mountains, sunset'; structured changed nothing "
        "(give phrases=[...] to choose them)"
    ]


def test_explicit_phrases_and_their_errors(sd15):
    c = controller_for(sd15, phrases=["white sheep", "red car"])
    assert [p.text for p in c.phrases] == ["white sheep", "red car"]
    with pytest.raises(attnkit.WordNotFoundError, match="'blue bird' is not in the prompt"):
        controller_for(sd15, phrases=["blue bird"])
    with pytest.raises(attnkit.AttnKitError, match="unknown parser"):
        StructuredConfig(parser="nltk")
    with pytest.raises(attnkit.AttnKitError, match="conjunction_first_key"):
        StructuredConfig(conjunction_first_key="first")


def test_flux_is_refused(flux):
    with pytest.raises(attnkit.UnsupportedModelError, match="structured does not support Flux pipelines"):
        attnkit.generate(flux, PROMPT, [StructuredGuidance()], **FAST)


def test_custom_processor_is_refused_and_restored():
    pipe = attnkit.tiny_pipeline("sd15")

    class Custom(AttnProcessor2_0):
        pass

    pipe.unet.set_attn_processor(Custom())
    before = dict(pipe.unet.attn_processors)
    with pytest.raises(attnkit.UnsupportedModelError, match="has a Custom processor"):
        attnkit.generate(pipe, PROMPT, [StructuredGuidance()], **FAST)
    assert all(before[k] is v for k, v in pipe.unet.attn_processors.items())


def test_composes_with_observe(sd15):
    first_step = [(0.0, 0.01)]
    both, result = with_attnkit(sd15, PROMPT, [StructuredGuidance(), Observe(words=["car", "sheep"], steps=first_step)])
    alone, _ = with_attnkit(sd15, PROMPT, [StructuredGuidance()])
    assert np.array_equal(both, alone), "observe does not change what structured makes"
    _, observed = with_attnkit(sd15, PROMPT, [Observe(words=["car", "sheep"], steps=first_step)])
    for word in ("car", "sheep"):  # default mode keeps the keys: step-0 maps are the same
        torch.testing.assert_close(result.report["observe"].maps[word], observed.report["observe"].maps[word])


def test_different_prompt_embeddings_are_reported(sd15):
    weighted, _ = sd15.encode_prompt(PROMPT, "cpu", 1, False)
    weighted = weighted * 1.2  # as a host's prompt weighting would
    with attnkit.attach(sd15, [StructuredGuidance()], prompt=PROMPT) as run:
        sd15(prompt_embeds=weighted, callback_on_step_end=run.callback, **FAST)
    assert any("differ from attnkit's encoding" in w for w in run.report.warnings)


def test_steps_window(sd15):
    images, result = with_attnkit(sd15, PROMPT, [StructuredGuidance(steps=(0.5, 1.0))])
    full, _ = with_attnkit(sd15, PROMPT, [StructuredGuidance()])
    assert not np.array_equal(images, full) and not np.array_equal(images, plain(sd15, PROMPT))
