"""The ComfyUI node pack without ComfyUI: the root package costs nothing outside ComfyUI, the node declarations,
and the host patches against the diffusers processors they must equal. Everything that needs ComfyUI itself runs in
the real-ComfyUI tier (tests/real_hosts/comfyui, ``bash tools/test_hosts.sh comfyui``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import attnkit
from attnkit.hosts import kernel as hostkernel
from attnkit.core.attention import unet_cross_attention_probs
from attnkit.core.engine import Event
from attnkit.core.processor import computed_attention
from attnkit.methods import Observe, StructuredGuidance

from .conftest import ROOT

PROMPT = "a red car and a white sheep"


def test_root_package_imports_nothing_without_comfyui():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pack', {os.path.join(ROOT, '__init__.py')!r}, "
        f"submodule_search_locations=[{ROOT!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
        "assert m.NODE_CLASS_MAPPINGS == {} and m.NODE_DISPLAY_NAME_MAPPINGS == {}\n"
        "assert 'torch' not in sys.modules and 'attnkit' not in sys.modules, sorted(sys.modules)\n"
        "print('cheap')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "cheap", proc.stderr


def test_every_node_declares_valid_v1_types(pack_nodes):
    for name, node in pack_nodes.NODE_CLASS_MAPPINGS.items():
        types = node.INPUT_TYPES()
        assert set(types) <= {"required", "optional", "hidden"} and types["required"], name
        for input_name, spec in types["required"].items():
            assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, (name, input_name)
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list):
                assert kind and options.get("default", kind[0]) in kind, (name, input_name)
            else:
                assert isinstance(kind, str) and kind.isupper() or kind in ("INT", "FLOAT", "STRING", "BOOLEAN")
            if kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], (name, input_name)
        assert isinstance(node.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in node.RETURN_TYPES)
        assert len(node.RETURN_NAMES) == len(node.RETURN_TYPES)
        assert callable(getattr(node(), node.FUNCTION)), name
        assert isinstance(node.CATEGORY, str) and node.DESCRIPTION


@pytest.mark.parametrize("conjunction", [False, True])
def test_structured_patch_equals_the_diffusers_processor(sd15, conjunction):
    attn, hidden, text = _layer_inputs(sd15)
    method = StructuredGuidance(conjunction=conjunction)
    with attnkit.attach(sd15, [method], prompt=PROMPT) as run:
        controller = run.controllers[0]
        layer = next(i for i in run.layers if i.module == "down_blocks.0.attentions.0.transformer_blocks.0.attn2")
        with torch.no_grad():  # the diffusers adapter of the same event
            expected = computed_attention(attn, hidden, text, event=Event(text=controller), layer=layer, step=None,
                                          rows=slice(1, 2))
    host = hostkernel.HostRun([method], PROMPT, sd15.tokenizer, family="sd", steps=1,
                              encode=lambda t: hostsim_encode(sd15, t), blocks=[(("input", 1, 0), 1)])
    with torch.no_grad():
        got = _host_layer(host, attn, hidden, text)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    plain = attn(hidden, encoder_hidden_states=text)
    torch.testing.assert_close(got[:1], plain[:1], atol=1e-5, rtol=1e-5)  # the unconditional half is untouched
    assert (got[1:] - plain[1:]).abs().max() > 1e-4


def test_observe_patch_reads_the_same_probabilities_as_the_diffusers_runtime(sd15):
    attn, hidden, text = _layer_inputs(sd15)
    host = hostkernel.HostRun([Observe(words=["car"])], PROMPT, sd15.tokenizer, family="sd", steps=1,
                              blocks=[(("input", 1, 0), 1)])
    with torch.no_grad():
        got = _host_layer(host, attn, hidden, text)
    torch.testing.assert_close(got, attn(hidden, encoder_hidden_states=text), atol=1e-5, rtol=1e-5)
    raw = host.finish()["observe"].data["raw"]["car"]
    probs = unet_cross_attention_probs(attn, hidden[1:], text[1:])
    torch.testing.assert_close(raw, probs[..., 3].reshape(1, 8, 8), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("edit", ["replace", "refine", "reweight"])
def test_p2p_patches_equal_the_diffusers_processor(sd15, edit):
    """Prompt-to-Prompt through the host patches (attn2 and attn1 replaces, rows [uncond src, uncond tgt, src, tgt] as
    ComfyUI batches them) computes what the diffusers adapter computes: the same controller code, no host copy."""
    from attnkit.core.steps import StepInfo
    from attnkit.methods import P2P

    source, target = {"replace": ("a red car", "a blue car"), "refine": ("a red car", "a red sports car"),
                      "reweight": ("a red car", "a red car")}[edit]
    method = P2P(edit=edit, reweight={"red": 3.0} if edit == "reweight" else {}, self_replace_res=8)
    block = sd15.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    torch.manual_seed(0)
    hidden = torch.randn(4, 64, block.attn2.to_q.in_features)
    uncond = hostsim_encode(sd15, "")
    text = torch.cat([uncond, uncond, hostsim_encode(sd15, source), hostsim_encode(sd15, target)])
    step = StepInfo(0, 10, 14.6)
    with attnkit.attach(sd15, [method], prompt=source, target_prompt=target) as run:
        run.bind((8, 8))
        controller = run.controllers[0]
        expected = {}
        for kind, attn, ctx in (("cross", block.attn2, text), ("self", block.attn1, None)):
            layer = next(i for i in run.layers if i.module == f"down_blocks.0.attentions.0.transformer_blocks.0."
                         f"attn{2 if kind == 'cross' else 1}")
            with torch.no_grad():
                expected[kind] = computed_attention(attn, hidden, ctx, event=Event(editors=(controller,)), layer=layer,
                                                    step=step, rows=slice(2, 4))
    host = hostkernel.HostRun([method], source, sd15.tokenizer, family="sd", steps=10, blocks=[(("input", 1, 0), 1)],
                              target_prompt=target)
    assert host.needs_self and not host.needs_patch
    with torch.no_grad():
        got_cross = _host_layer(host, block.attn2, hidden, text)
        attn = block.attn1
        out = host.replace(None, "self")(attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden),
                                         _extra(attn, ("input", 1, 0)))
        got_self = attn.to_out[1](attn.to_out[0](out))
    torch.testing.assert_close(got_cross, expected["cross"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_self, expected["self"], atol=1e-5, rtol=1e-5)
    plain = block.attn2(hidden, encoder_hidden_states=text)
    torch.testing.assert_close(got_cross[:3], plain[:3], atol=1e-5, rtol=1e-5)  # only the target row changes
    assert (got_cross[3] - plain[3]).abs().max() > 1e-4
    # the target's self-attention is the source's probabilities over the target's own values (the naive formula)
    heads = attn.heads

    def split(x):
        return x.reshape(x.shape[0], heads, -1).transpose(0, 1)

    q, k, v = (split(f(hidden[r])) for f, r in ((attn.to_q, 2), (attn.to_k, 2), (attn.to_v, 3)))
    naive = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1) @ v
    naive = attn.to_out[0](naive.transpose(0, 1).reshape(64, -1))
    torch.testing.assert_close(got_self[3], naive, atol=1e-5, rtol=1e-5)
    assert (got_self[3] - block.attn1(hidden)[3]).abs().max() > 1e-4


def test_p2p_local_blend_is_refused_in_hosts(sd15):
    from attnkit.errors import UnsupportedModelError
    from attnkit.methods import P2P

    with pytest.raises(UnsupportedModelError, match="p2p changes the latents after every step"):
        hostkernel.HostRun([P2P(blend_words=["car"])], "a red car", sd15.tokenizer, family="sd", steps=4,
                           target_prompt="a blue car", host="ComfyUI")


def _layer_inputs(sd15):
    """One cross-attention layer of the tiny UNet, image tokens of an 8x8 latent, [uncond, cond] text."""
    attn = sd15.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    torch.manual_seed(0)
    hidden = torch.randn(2, 64, attn.to_q.in_features)
    text = torch.cat([hostsim_encode(sd15, ""), hostsim_encode(sd15, PROMPT)])
    return attn, hidden, text


def hostsim_encode(pipe, text):
    return pipe.encode_prompt(text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]


def _extra(attn, key, batch=2):
    """ComfyUI's extra_options of one transformer block (``comfy/ldm/modules/attention.py``)."""
    return {"n_heads": attn.heads, "dim_head": attn.to_q.out_features // attn.heads, "block": key[:2],
            "block_index": key[2], "transformer_index": 7, "original_shape": [batch, 4, 8, 8], "cond_or_uncond": [1, 0],
            "sigmas": torch.full((batch,), 14.6)}


def _host_layer(run, attn, hidden, text, key=("input", 1, 0)):
    extra = _extra(attn, key, hidden.shape[0])
    n, context, value = hidden, text, text
    if run.needs_patch:
        n, context, value = run.attn2_patch(n, context, value, extra)
    out = run.replace(None)(attn.to_q(n), attn.to_k(context), attn.to_v(value), extra)
    return attn.to_out[1](attn.to_out[0](out))
