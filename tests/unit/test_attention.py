"""The side computation of probabilities equals the naive formulas."""

import torch

from attnkit.core.attention import flux_text_attention_probs, unet_cross_attention_probs


def test_unet_probs_match_diffusers_scores(sd15):
    attn = sd15.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, 64, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        ours = unet_cross_attention_probs(attn, hidden, text)
        q = attn.head_to_batch_dim(attn.to_q(hidden))
        k = attn.head_to_batch_dim(attn.to_k(text))
        naive = attn.get_attention_scores(q, k, None).view(2, attn.heads, 16, 77).mean(1)
    assert ours.shape == (2, 16, 77)
    torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.sum(-1), torch.ones(2, 16))


def test_unet_probs_with_mask(sd15):
    attn = sd15.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    hidden, text = torch.randn(1, 16, 64), torch.randn(1, 77, 32)
    mask = torch.zeros(1, 1, 77)
    mask[..., 10:] = -10000.0
    with torch.no_grad():
        probs = unet_cross_attention_probs(attn, hidden, text, attention_mask=mask)
    assert float(probs[..., 10:].sum()) < 1e-3
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 16))


def _naive_flux(attn, hidden, text, rope, text_len):
    """Full joint softmax over [text; image] keys, all heads at once, image rows x text columns."""
    from attnkit.core.attention import _flux_qk

    q, k = _flux_qk(attn, hidden, text, rope)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, N, d)
    probs = (q @ k.transpose(-1, -2) * attn.head_dim ** -0.5).softmax(-1)
    return probs[:, :, text_len:, :text_len].mean(1)


def test_flux_probs_match_full_joint_softmax(flux):
    tr = flux.transformer
    g = torch.Generator().manual_seed(0)
    text_len, n_img = 32, 16
    ids = torch.cat([torch.zeros(text_len, 3), torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(-1, 3)])
    rope = tr.pos_embed(ids)
    img = torch.randn(2, n_img, 32, generator=g)
    txt = torch.randn(2, text_len, 32, generator=g)
    with torch.no_grad():
        double = tr.transformer_blocks[0].attn
        ours = flux_text_attention_probs(double, img, txt, rope, text_len)
        naive = _naive_flux(double, img, txt, rope, text_len)
        torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-6)
        assert ours.shape == (2, n_img, text_len) and bool((ours.sum(-1) < 1).all())
        single = tr.single_transformer_blocks[0].attn
        joint = torch.cat([txt, img], dim=1)
        ours = flux_text_attention_probs(single, joint, None, rope, text_len)
        naive = _naive_flux(single, joint, None, rope, text_len)
        torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-6)
