"""LayerInfo for every layer, grids, and the default resolution rule."""

import pytest

from attnkit import AttnKitError
from attnkit.core.layers import LayerInfo, choose_grid, discover_layers, grid_for
from attnkit.models import denoiser_of


def bound(pipe, latent_hw):
    return [info.with_grid(grid_for(info, latent_hw)) for info in discover_layers(denoiser_of(pipe))]


def test_sd15_layers(sd15):
    layers = bound(sd15, (8, 8))
    assert len(layers) == len(sd15.unet.attn_processors) == 14
    assert [info.name for info in layers] == list(sd15.unet.attn_processors)
    cross = [info for info in layers if info.kind == "cross"]
    assert len(cross) == 7 and all(info.name.endswith("attn2.processor") for info in cross)
    first = layers[0]
    assert first == LayerInfo(0, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor",
                              "down_blocks.0.attentions.0.transformer_blocks.0.attn1", "self", "down", 0,
                              heads=8, head_dim=4, downsample=1, grid=(8, 8))
    grids = {(info.block, info.block_index): info.grid for info in cross}
    assert grids == {("down", 0): (8, 8), ("down", 1): (4, 4), ("mid", 0): (4, 4), ("up", 0): (4, 4), ("up", 1): (8, 8)}
    # diffusers' `attention_head_dim=8` is the head count on SD 1.x UNets: 8 heads of 32/8 and 64/8 channels
    assert {(info.heads, info.head_dim) for info in cross} == {(8, 4), (8, 8)}


def test_grids_round_up_on_odd_latents(sd15):
    layers = bound(sd15, (9, 7))
    down1 = next(info for info in layers if info.block == "down" and info.block_index == 1)
    assert down1.grid == (5, 4)


def test_flux_layers_are_joint(flux):
    layers = bound(flux, (4, 4))
    assert [(i.block, i.kind, i.grid, i.heads, i.head_dim) for i in layers] == [
        ("double", "joint", (4, 4), 2, 16), ("single", "joint", (4, 4), 2, 16)
    ]
    assert layers[0].path[:2] == ("transformer_blocks", "0")


def test_sdxl_layers(sdxl):
    layers = bound(sdxl, (16, 16))
    cross = [i for i in layers if i.kind == "cross"]
    assert {i.grid for i in cross} == {(16, 16), (8, 8)}
    assert sum(1 for i in cross if i.grid == (8, 8)) == 8  # transformer_layers_per_block=2 at the coarse level


def test_default_resolution_rule(sd15, sdxl):
    # 64 px -> latent 8: target (8/4)^2 = 4 cells; the coarsest grid with at least that is 4x4.
    assert choose_grid(bound(sd15, (8, 8)), (8, 8)) == (4, 4)
    # 256 px -> latent 32: target 8x8 = 64 cells; grids are 32x32 and 16x16 -> 16x16.
    assert choose_grid(bound(sd15, (32, 32)), (32, 32)) == (16, 16)
    # with SD 1.5's real levels at 512 px (64, 32, 16, 8) the rule gives 16x16
    real = [LayerInfo(i, f"l{i}", f"l{i}", "cross", "down", i, 8, 40, 2 ** i, grid=(64 >> i, 64 >> i)) for i in range(4)]
    assert choose_grid(real, (64, 64)) == (16, 16)
    # SDXL at 1024 px: latent 128, cross-attention at 64 and 32 -> 32
    xl = [LayerInfo(i, f"l{i}", f"l{i}", "cross", "down", i, 10, 64, 2 ** (i + 1), grid=(64 >> i, 64 >> i)) for i in range(2)]
    assert choose_grid(xl, (128, 128)) == (32, 32)


def test_explicit_resolution_and_its_error(sd15):
    layers = bound(sd15, (8, 8))
    assert choose_grid(layers, (8, 8), 8) == (8, 8)
    assert choose_grid(layers, (8, 8), (4, 4)) == (4, 4)
    with pytest.raises(AttnKitError, match=r"resolution 16x16 has no cross-attention layer .* choose one of: 8x8, 4x4"):
        choose_grid(layers, (8, 8), 16)
