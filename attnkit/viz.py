"""Pictures of attention: each word's heatmap over the generated image, labelled, in one grid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, red, orange, pale yellow).
_ANCHORS = torch.tensor(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=torch.float32,
) / 255.0


def colorize(values: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1], shape ``(H, W)``, to RGB colours ``(H, W, 3)`` in [0, 1]."""
    x = values.clamp(0, 1) * (len(_ANCHORS) - 1)
    lo = x.floor().long().clamp(max=len(_ANCHORS) - 2)
    frac = (x - lo).unsqueeze(-1)
    return _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.6) -> Image.Image:
    """``heat`` ``(h, w)`` upsampled (bilinear) to the image, stretched to [0, 1] (min to max), blended over ``image``."""
    heat = heat.detach().float().cpu()
    up = F.interpolate(heat[None, None], size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0]
    up = (up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)
    base = torch.from_numpy(_rgb_array(image)).float() / 255.0
    mixed = (1 - alpha) * base + alpha * colorize(up)
    return Image.fromarray((mixed * 255).round().clamp(0, 255).to(torch.uint8).numpy())


def _rgb_array(image: Image.Image):
    import numpy as np

    return np.array(image.convert("RGB"))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def heatmap_grid(
    image: Image.Image, maps: dict[str, torch.Tensor], tile: int = 256, columns: int = 5, alpha: float = 0.6
) -> Image.Image:
    """A labelled grid: the image, then one heatmap per word over it.

    Args:
        image: the generated image.
        maps: ``{word: (h, w) map}`` (e.g. ``report["observe"].maps`` indexed by image).
        tile: side of each tile in pixels (the image is resized to it).
        columns: tiles per row.
    """
    base = image.convert("RGB").resize((tile, tile), Image.BICUBIC)
    tiles = [("image", base)] + [(word, overlay(base, heat, alpha)) for word, heat in maps.items()]
    return labelled_grid(tiles, tile, columns)


def image_row(images: list[Image.Image], labels: list[str], tile: int = 256) -> Image.Image:
    """Images side by side at ``tile`` px, each labelled (before/after views)."""
    tiles = [(label, im.convert("RGB").resize((tile, tile), Image.BICUBIC)) for im, label in zip(images, labels)]
    return labelled_grid(tiles, tile, len(tiles))


def labelled_grid(tiles: list[tuple[str, Image.Image]], tile: int, columns: int) -> Image.Image:
    """``(label, tile x tile image)`` pairs in a grid of ``columns``, each label under its image."""
    label_h = max(18, tile // 10)
    font = _font(label_h - 4)
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    grid = Image.new("RGB", (cols * tile, rows * (tile + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (label, picture) in enumerate(tiles):
        x, y = (i % cols) * tile, (i // cols) * (tile + label_h)
        grid.paste(picture, (x, y))
        fitted, size = font, label_h - 4
        while size > 8 and draw.textlength(label, font=fitted) > tile - 8:  # a long label gets a smaller font
            size -= 2
            fitted = _font(size)
        draw.text((x + tile // 2, y + tile + label_h // 2), label, fill="black", font=fitted, anchor="mm")
    return grid
