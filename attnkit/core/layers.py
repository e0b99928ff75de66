"""Attention layers described as data.

Every attention layer of a denoiser gets a :class:`LayerInfo`: its processor name, whether it is self-, cross- or
joint attention, where it sits (block kind, block index), its heads, and its query grid (h, w) once the latent size
of a run is known. Methods select layers by these fields, never by parsing names themselves.

- UNets (SD 1.x/2.x, SDXL): ``attn1`` is self-attention, ``attn2`` cross-attention; blocks are ``down``/``mid``/
  ``up``; the grid follows from how many downsamplers precede the block.
- Flux: every layer is ``joint`` attention over [text; image] tokens, in ``double``-stream
  (``transformer_blocks``) or ``single``-stream (``single_transformer_blocks``) blocks. Its "cross-attention" is
  the image-query x text-key slice of the joint attention. All layers share one grid: the packed latent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import AttnKitError


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer of a denoiser.

    Attributes:
        index: position in the denoiser's processor order (stable for a model).
        name: processor key, as in ``denoiser.attn_processors`` (``"down_blocks.2.attentions.0...attn2.processor"``).
        module: the attention module's path (the name without ``.processor``).
        kind: ``"self"``, ``"cross"`` or ``"joint"``.
        block: ``"down"``, ``"mid"``, ``"up"`` (UNet) or ``"double"``, ``"single"`` (Flux).
        block_index: index of the block within its kind (``down_blocks.2`` -> 2).
        heads: number of attention heads.
        head_dim: channels per head.
        downsample: query grid = latent grid / downsample (rounded up at each halving), for UNets; 1 for Flux,
            whose grid is given directly as the packed token grid.
        grid: ``(h, w)`` of the query tokens, set once a run knows its latent size; ``None`` before.
    """

    index: int
    name: str
    module: str
    kind: str
    block: str
    block_index: int
    heads: int
    head_dim: int
    downsample: int
    grid: tuple[int, int] | None = None

    @property
    def is_text_attention(self) -> bool:
        """Whether image queries attend to text keys here (cross-attention, or joint attention in Flux)."""
        return self.kind in ("cross", "joint")

    @property
    def path(self) -> tuple[str, ...]:
        """The block path as a tuple, e.g. ``("up_blocks", "1", "attentions", "0", ...)``."""
        return tuple(self.module.split("."))

    def with_grid(self, grid: tuple[int, int]) -> "LayerInfo":
        return dataclasses.replace(self, grid=(int(grid[0]), int(grid[1])))


def _halve(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 1) // 2
    return size


def grid_for(info: LayerInfo, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The query grid of ``info`` for a latent of ``latent_hw`` (UNet) or a token grid (Flux)."""
    times = info.downsample.bit_length() - 1
    return _halve(latent_hw[0], times), _halve(latent_hw[1], times)


def _unet_factors(unet) -> dict[tuple[str, int], int]:
    """Downsample factor of every UNet block, from which blocks have down/upsamplers."""
    factors: dict[tuple[str, int], int] = {}
    f = 1
    for i, block in enumerate(unet.down_blocks):
        factors[("down", i)] = f
        if getattr(block, "downsamplers", None):
            f *= 2
    factors[("mid", 0)] = f
    for i, block in enumerate(unet.up_blocks):
        factors[("up", i)] = f
        if getattr(block, "upsamplers", None):
            f //= 2
    return factors


def discover_layers(denoiser: torch.nn.Module) -> list[LayerInfo]:
    """A :class:`LayerInfo` for every attention processor of ``denoiser`` (UNet2DConditionModel or Flux)."""
    names = list(denoiser.attn_processors.keys())
    is_unet = hasattr(denoiser, "down_blocks")
    factors = _unet_factors(denoiser) if is_unet else {}
    infos = []
    for index, name in enumerate(names):
        module_path = name[: -len(".processor")] if name.endswith(".processor") else name
        attn = denoiser.get_submodule(module_path)
        parts = module_path.split(".")
        if is_unet:
            block = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(parts[0], parts[0])
            block_index = int(parts[1]) if block in ("down", "up") else 0
            kind = "cross" if getattr(attn, "is_cross_attention", False) else "self"
            downsample = factors.get((block, block_index), 1)
        else:
            block = {"transformer_blocks": "double", "single_transformer_blocks": "single"}.get(parts[0], parts[0])
            block_index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            kind = "joint"
            downsample = 1
        heads = int(attn.heads)
        inner = getattr(attn, "inner_dim", None) or attn.to_q.out_features
        infos.append(LayerInfo(index, name, module_path, kind, block, block_index, heads, inner // heads, downsample))
    return infos


def text_grids(layers: list[LayerInfo]) -> list[tuple[int, int]]:
    """Distinct query grids of the text-attention layers, finest first."""
    grids = {layer.grid for layer in layers if layer.is_text_attention and layer.grid is not None}
    return sorted(grids, key=lambda g: (-g[0] * g[1], g))


def choose_grid(layers: list[LayerInfo], latent_hw: tuple[int, int], resolution=None) -> tuple[int, int]:
    """The query grid a map-reading method works at.

    Args:
        layers: layers with their grids bound.
        latent_hw: the run's latent size (UNet) or token grid (Flux).
        resolution: ``None`` for the default, an ``int`` side, or ``(h, w)``.

    The default is the coarsest grid with text attention whose area is at least ``(latent/4)^2``: 16x16 for
    SD 1.x at 512 px, 32x32 for SDXL at 1024 px (the semantic level of Attend-and-Excite), and the single grid of
    Flux. Without such a grid, the finest one.

    Raises:
        AttnKitError: ``resolution`` names a grid with no text-attention layer; the message lists those that exist.
    """
    grids = text_grids(layers)
    if not grids:
        raise AttnKitError("this model has no cross-attention layers to read maps from")
    if resolution is not None:
        want = (resolution, resolution) if isinstance(resolution, int) else tuple(int(x) for x in resolution)
        if want not in grids:
            have = ", ".join(f"{h}x{w}" for h, w in grids)
            raise AttnKitError(
                f"resolution {want[0]}x{want[1]} has no cross-attention layer at this image size; "
                f"choose one of: {have}"
            )
        return want
    target = ((latent_hw[0] + 3) // 4) * ((latent_hw[1] + 3) // 4)
    fitting = [g for g in grids if g[0] * g[1] >= target]
    return fitting[-1] if fitting else grids[0]
