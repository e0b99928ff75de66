"""``dpl``: Dynamic Prompt Learning, leakage repair for text-based editing of real images.

Wang et al., "Dynamic Prompt Learning: Addressing Cross-Attention Leakage for Text-Based Image Editing",
NeurIPS 2023, https://arxiv.org/abs/2309.15664 (official code: wangkai930418/DPL).

Prompt-to-Prompt edits of a real image spill into the background and into other objects because the source
caption's cross-attention leaks. DPL gives each chosen noun of the caption a **dynamic token**: one learnable
embedding per noun (initialised from the noun's own embedding; a noun of several BPE pieces becomes one token
initialised from their mean [ours]), at the noun's true token position, updated at every denoising step of the
reconstruction and carried to the next step. At step ``i`` the tokens take up to ``token_iterations`` AdamW steps
(a fresh optimiser per step, torch's defaults lr 1e-3 and weight decay 1e-2) on

- attention balancing ``L_at = max_v (1 - max_ij A~^v)``: Attend-and-Excite's loss on the ``x100`` token softmax of
  the aggregated 16x16 maps, 3x3-smoothed;
- disjoint object attention ``L_dj = mean_{u<v} cos(A^u, A^v)`` on the raw aggregated maps;
- background leakage ``L_bg = mean_v cos(A^v, B)`` with ``B`` the background mask;

``L = lambda_at L_at + lambda_dj L_dj + lambda_bg L_bg``, stopping early once ``L_at < beta_at e^{-i/alpha_at}``,
``L_dj < beta_dj e^{-i/alpha_dj}`` and ``L_bg < beta_bg e^{-(i - bg_start)/alpha_bg}`` all hold (thresholds
tighten as denoising proceeds). The text encoder is otherwise frozen: the tokens enter through a forward hook on
its token-embedding module for the duration of one encoding, so the user's tokenizer and encoder are never changed.

The background mask comes from the DDIM inversion: k-means (5 clusters, seed 1, 10 inits) on the rows of the
averaged 32x32 self-attention; each cluster goes to the noun whose upsampled, normalised 16x16 cross-attention is
highest inside it if that mean exceeds 0.2, else to the background; the background clusters, resized to 16x16 and
binarised, are ``B``. With no background cluster the background loss is dropped (``lambda_bg = 0``) and the report
says so. (16/32 are the grids at 512 px for SD 1.x: a quarter and a half of the latent side.)

Hyper-parameters are the official ones (supplementary and ``DPL.sh`` agree). Token positions come from the
tokenizer's offsets: the official ``word position + 1`` rule is wrong whenever an earlier word has several pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.layers import LayerInfo, choose_grid
from ..core.tokens import TokenMap
from ..errors import AttnKitError
from .base import Controller, Method
from .latent import SMOOTHING, aggregate, smoothing_kernel, token_maps
from .p2p import Keys

MAX_TOKEN_ITERATIONS = 200  # [ours] caps for shared presets
MAX_WORDS = 8
MASK_RESIZES = ("official", "area")
CLUSTER_NOUNS = ("caption", "words")
#: the official map grid (16x16 cross-attention, 32x32 self-attention at 512 px on SD 1.x)
OFFICIAL_GRID = (16, 16)
#: the official code saves the background mask as an image of this side before shrinking it
MASK_IMAGE_SIDE = 512


def map_grid(layers, latent_hw, attn_res) -> tuple[int, int]:
    """The cross-attention grid DPL reads: ``attn_res``; by default 16x16 where the image has it, else
    :func:`~attnkit.core.layers.choose_grid`'s default."""
    from ..core.layers import text_grids

    if attn_res is None and OFFICIAL_GRID in text_grids(layers):
        return OFFICIAL_GRID
    return choose_grid(layers, latent_hw, attn_res)


@dataclass
class DPLConfig:
    """Settings of ``dpl`` (defaults: the official ones).

    Attributes:
        lambda_at, alpha_at, beta_at: weight, threshold decay and threshold of the attention-balancing loss.
        lambda_dj, alpha_dj, beta_dj: the same for the disjoint-object loss.
        lambda_bg, alpha_bg, beta_bg: the same for the background-leakage loss.
        bg_start: the step from which the background loss acts (``max_iter_to_alter``; 0: from the first).
        token_iterations: the most optimiser steps of the dynamic tokens per denoising step (J).
        token_lr, token_weight_decay: AdamW's learning rate and weight decay.
        attn_res: grid of the cross-attention maps, an int side or ``(h, w)``; ``None``: 16x16, the official grid,
            where the image has one (SD 1.x at 512 px; also the tiny test models), else a quarter of the latent side.
        self_res: grid of the self-attention clustered for the background; ``None``: twice ``attn_res``.
        clusters: k-means clusters of the background mask.
        cluster_threshold: a cluster belongs to a noun when the noun's mean normalised attention in it exceeds this.
        smoothing: smoothing of the balancing loss's maps (``"diffusers"``, ``"gaussian"``, ``"none"``).
        mask_resize: how the background clusters become the mask at the map grid: ``"official"`` (the official
            code's: the mask as a 512 px image, shrunk with PIL's bicubic resize, every non-zero pixel kept) or
            ``"area"`` (area average above one half) [ours].
        cluster_nouns: which nouns may own a cluster: ``"caption"`` (every noun of the caption, as the official
            code's POS tagger finds them; attnkit's rule lexicon stands in for NLTK's tagger) or ``"words"`` (only
            the dynamic words) [ours].
    """

    lambda_at: float = 1.0
    alpha_at: float = 25.0
    beta_at: float = 0.3
    lambda_dj: float = 0.05
    alpha_dj: float = 25.0
    beta_dj: float = 0.9
    lambda_bg: float = 0.05
    alpha_bg: float = 50.0
    beta_bg: float = 0.7
    bg_start: int = 0
    token_iterations: int = 21
    token_lr: float = 1e-3
    token_weight_decay: float = 1e-2
    attn_res: int | tuple[int, int] | None = None
    self_res: int | tuple[int, int] | None = None
    clusters: int = 5
    cluster_threshold: float = 0.2
    smoothing: str = "diffusers"
    mask_resize: str = "official"
    cluster_nouns: str = "caption"

    def __post_init__(self):
        for name in ("lambda_at", "lambda_dj", "lambda_bg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
                raise AttnKitError(f"dpl: {name}={v!r} must be a weight in [0, 100]")
        for name in ("alpha_at", "alpha_dj", "alpha_bg", "beta_at", "beta_dj", "beta_bg", "token_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise AttnKitError(f"dpl: {name}={v!r} must be a positive number")
        if isinstance(self.token_weight_decay, bool) or not 0 <= float(self.token_weight_decay) < 1:
            raise AttnKitError(f"dpl: token_weight_decay={self.token_weight_decay!r} must be in [0, 1)")
        if isinstance(self.bg_start, bool) or not isinstance(self.bg_start, int) or self.bg_start < 0:
            raise AttnKitError(f"dpl: bg_start={self.bg_start!r} must be a step index >= 0")
        if isinstance(self.token_iterations, bool) or not isinstance(self.token_iterations, int) or \
                not 0 <= self.token_iterations <= MAX_TOKEN_ITERATIONS:
            raise AttnKitError(f"dpl: token_iterations={self.token_iterations!r} must be in 0..{MAX_TOKEN_ITERATIONS}")
        if isinstance(self.clusters, bool) or not isinstance(self.clusters, int) or not 2 <= self.clusters <= 32:
            raise AttnKitError(f"dpl: clusters={self.clusters!r} must be in 2..32")
        if isinstance(self.cluster_threshold, bool) or not 0 < float(self.cluster_threshold) < 1:
            raise AttnKitError(f"dpl: cluster_threshold={self.cluster_threshold!r} must be between 0 and 1")
        if self.smoothing not in SMOOTHING:
            raise AttnKitError(f"dpl: smoothing={self.smoothing!r}; use one of {', '.join(SMOOTHING)}")
        if self.mask_resize not in MASK_RESIZES:
            raise AttnKitError(f"dpl: mask_resize={self.mask_resize!r}; use one of {', '.join(MASK_RESIZES)}")
        if self.cluster_nouns not in CLUSTER_NOUNS:
            raise AttnKitError(f"dpl: cluster_nouns={self.cluster_nouns!r}; use one of {', '.join(CLUSTER_NOUNS)}")
        self.attn_res = _grid(self.attn_res, "attn_res")
        self.self_res = _grid(self.self_res, "self_res")

    def thresholds(self, step: int) -> dict[str, float]:
        """The early-stop thresholds at denoising step ``step``."""
        return {
            "at": self.beta_at * math.exp(-step / self.alpha_at),
            "dj": self.beta_dj * math.exp(-step / self.alpha_dj),
            "bg": self.beta_bg * math.exp(-(step - self.bg_start) / self.alpha_bg),
        }


def _grid(value, name):
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = (int(x) for x in value)
    except (TypeError, ValueError):
        raise AttnKitError(f"dpl: {name}={value!r} must be a grid side or (h, w)") from None
    if not (1 <= h <= 256 and 1 <= w <= 256):
        raise AttnKitError(f"dpl: {name}={value!r} is out of range")
    return (h, w)


# ----------------------------------------------------------------------------------------------------- losses


def attention_balance_loss(maps: torch.Tensor) -> torch.Tensor:
    """``max_v (1 - max_ij maps[v])`` over ``(K, h, w)`` smoothed token-softmax maps."""
    return (1 - maps.flatten(1).amax(dim=1)).amax()


def disjoint_loss(maps: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over pairs ``u < v`` of ``(K, h, w)`` raw maps (0 for fewer than two)."""
    k = maps.shape[0]
    if k < 2:
        return maps.new_zeros(())
    flat = maps.flatten(1)
    total = maps.new_zeros(())
    for u in range(k):
        for v in range(u + 1, k):
            total = total + F.cosine_similarity(flat[u], flat[v], dim=0)
    return total / (k * (k - 1) / 2)


def background_loss(maps: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Mean over ``v`` of ``cos(maps[v], background)`` for ``(K, h, w)`` raw maps and an ``(h, w)`` mask."""
    flat = maps.flatten(1)
    b = background.to(flat.device, flat.dtype).flatten().expand_as(flat)
    return F.cosine_similarity(flat, b, dim=1).mean()


# ------------------------------------------------------------------------------------------- background mask


@dataclass
class BackgroundMask:
    """What the background segmentation found.

    Attributes:
        mask: ``(h, w)`` bool background at the cross-attention grid, or ``None`` when no cluster is background.
        labels: ``(hs, ws)`` cluster index of each self-attention query.
        owners: per cluster, the noun it went to, or ``"BG"``.
        scores: ``(clusters, nouns)`` mean normalised noun attention in each cluster.
    """

    mask: torch.Tensor | None
    labels: torch.Tensor
    owners: list[str]
    scores: torch.Tensor


def normalise_map(a: torch.Tensor) -> torch.Tensor:
    """The official normalisation ``(a - |min a|) / max a`` (``(a - min) / max`` for non-negative maps)."""
    return (a - a.min().abs()) / a.max().clamp_min(1e-12)


def background_mask(self_attention: torch.Tensor, noun_maps: dict[str, torch.Tensor], cross_grid: tuple[int, int],
                    self_grid: tuple[int, int], clusters: int = 5, threshold: float = 0.2,
                    seed: int = 1, resize: str = "official") -> BackgroundMask:
    """Training-free background segmentation (DPL's supplementary).

    Args:
        self_attention: ``(N, N)`` averaged self-attention at ``self_grid`` (``N = hs * ws``); its rows are clustered.
        noun_maps: ``{noun: (h, w)}`` averaged cross-attention at ``cross_grid``.
        clusters, threshold, seed: k-means clusters, the ownership threshold, k-means' seed (10 inits).
        resize: how the background becomes the mask at ``cross_grid`` (see :func:`shrink_mask`).
    """
    from sklearn.cluster import KMeans

    hs, ws = self_grid
    rows = self_attention.detach().float().cpu().numpy().astype(np.float64)
    if rows.shape != (hs * ws, hs * ws):
        raise AttnKitError(f"the self-attention to cluster is {tuple(rows.shape)}, expected {(hs * ws, hs * ws)}")
    k = min(clusters, rows.shape[0])
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rows)
    labels = torch.as_tensor(labels, dtype=torch.long).view(hs, ws)
    nouns = list(noun_maps)
    scores = torch.zeros(k, len(nouns))
    for n, noun in enumerate(nouns):
        a = noun_maps[noun].detach().float().cpu().view(1, 1, *cross_grid)
        up = normalise_map(F.interpolate(a, size=(hs, ws))[0, 0])
        for c in range(k):
            inside = labels == c
            if inside.any():
                scores[c, n] = up[inside].mean()
    owners = []
    for c in range(k):
        best = int(scores[c].argmax()) if nouns else 0
        owners.append(nouns[best] if nouns and float(scores[c, best]) > threshold else "BG")
    background = torch.zeros(hs, ws)
    for c, owner in enumerate(owners):
        if owner == "BG":
            background[labels == c] = 1.0
    mask = shrink_mask(background, cross_grid, resize) if background.any() else None
    return BackgroundMask(mask, labels, owners, scores)


def shrink_mask(background: torch.Tensor, grid: tuple[int, int], resize: str = "official") -> torch.Tensor:
    """The ``(hs, ws)`` 0/1 background at the map ``grid``, as a bool mask.

    ``"official"``: as the official code: the mask drawn as a 512 px 8-bit image (each cell a block of pixels),
    shrunk with PIL's default bicubic resize, and every pixel above 0 kept, so a cell near any background counts.
    ``"area"``: the area average above one half (a thin background that vanishes this way still counts where it is
    densest).
    """
    if resize == "official":
        from PIL import Image

        side = MASK_IMAGE_SIDE
        big = F.interpolate(background[None, None].float(), size=(side, side), mode="nearest")[0, 0]
        image = Image.fromarray((big.numpy() * 255).astype(np.uint8))
        small = np.asarray(image.resize((grid[1], grid[0]), Image.BICUBIC))
        return torch.from_numpy(small > 0)
    coarse = F.interpolate(background[None, None].float(), size=grid, mode="area")[0, 0]
    mask = coarse > 0.5
    return mask if mask.any() else coarse >= coarse.max()


# -------------------------------------------------------------------------------------------- dynamic tokens


@dataclass
class DynamicWord:
    """One dynamic token: the noun it stands for, its pseudo id in the key sequence, its initial embedding."""

    word: str
    pid: int
    occurrences: tuple[tuple[int, ...], ...]
    init: torch.Tensor


class DynamicPrompt:
    """A prompt whose chosen nouns are each one learnable token, encoded by the pipeline's own text encoder.

    The noun's tokens are replaced by one key (its pieces collapse into one), whose input embedding is the dynamic
    token's vector. The vector enters through a forward hook on the encoder's token-embedding module, removed right
    after the encoding: the encoder and tokenizer stay as they were.

    Args:
        pipe: an SD 1.x/2.x pipeline.
        tmap: the prompt's token map.
        words: ``{word: DynamicWord}`` of the dynamic tokens, each occurrence given by its positions in ``tmap``
            (for a target prompt: the occurrences of the same nouns in it).
    """

    def __init__(self, pipe, tmap: TokenMap, words: dict[str, DynamicWord]):
        self.pipe = pipe
        self.words = words
        collapse = {w.pid: list(w.occurrences) for w in words.values() if w.occurrences}
        self.keys = Keys(tmap, collapse)
        tokenizer = pipe.tokenizer
        stand_in = {w.pid: tmap.ids[w.occurrences[0][0]] for w in words.values() if w.occurrences}
        content = [stand_in.get(i, i) for i in self.keys.content_ids]
        length = tmap.max_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids = [tokenizer.bos_token_id] + content + [tokenizer.eos_token_id]
        ids = ids + [pad] * (length - len(ids))
        self.input_ids = torch.tensor([ids[:length]])
        self.slots = {pid: positions for pid, positions in self.keys.slots.items()}

    def encode(self, vectors: dict[int, torch.Tensor]) -> torch.Tensor:
        """``(1, T, C)`` prompt embedding with the dynamic tokens' ``vectors`` (``{pid: (C_in,)}``); differentiable
        with respect to the vectors."""
        encoder = self.pipe.text_encoder
        module = encoder.get_input_embeddings()
        slots = self.slots

        def hook(_module, _inputs, output):
            output = output.clone()
            for pid, positions in slots.items():
                output[:, positions] = vectors[pid].to(output.device, output.dtype)
            return output

        handle = module.register_forward_hook(hook)
        try:
            device = module.weight.device
            ids = self.input_ids.clone()  # a fresh tensor: one made under a caller's inference mode cannot be saved
            mask = None
            if getattr(encoder.config, "use_attention_mask", False):  # as the tokenizer's mask: BOS..EOS
                mask = torch.zeros_like(ids)
                mask[:, : self.keys.eos + 1] = 1
                mask = mask.to(device)
            out = encoder(ids.to(device), attention_mask=mask)[0]
        finally:
            handle.remove()
        return out.to(encoder.dtype)


def dynamic_words(pipe, tmap: TokenMap, words: list[str]) -> dict[str, DynamicWord]:
    """One :class:`DynamicWord` per chosen noun of the source prompt (its occurrences as ``word#n`` allows)."""
    if not words:
        raise AttnKitError("dpl needs the nouns to make dynamic, e.g. words=['cat', 'dog']")
    if len(words) > MAX_WORDS:
        raise AttnKitError(f"dpl: at most {MAX_WORDS} dynamic words, got {len(words)}")
    table = pipe.text_encoder.get_input_embeddings().weight
    out: dict[str, DynamicWord] = {}
    taken: set[int] = set()
    for k, word in enumerate(words):
        span = tmap.find(word)
        for occ in span.occurrences:
            if taken & set(occ):
                raise AttnKitError(f"dpl: {word!r} overlaps another dynamic word; pick each noun once")
            taken.update(occ)
        pieces = torch.tensor([tmap.ids[p] for p in span.occurrences[0]], device=table.device)
        init = table[pieces].detach().float().mean(0).cpu()
        out[word] = DynamicWord(word, -(k + 1), span.occurrences, init)
    return out


def target_words(tmap: TokenMap, words: dict[str, DynamicWord]) -> dict[str, DynamicWord]:
    """The dynamic tokens a target prompt keeps: the same occurrences of the source nouns that the target still has
    (``"dog"``: every "dog" of the target; ``"dog#2"``: its second "dog"), each position claimed once."""
    out = {}
    taken: set[int] = set()
    for word, dyn in words.items():
        try:
            span = tmap.find(word)
        except AttnKitError:
            continue
        occurrences = tuple(occ for occ in span.occurrences if not taken & set(occ))
        taken.update(p for occ in occurrences for p in occ)
        if occurrences:
            out[word] = DynamicWord(word, dyn.pid, occurrences, dyn.init)
    return out


# ------------------------------------------------------------------------------------------------ controller


class DPLController(Controller):
    """Per-run state of ``dpl``: the cross-attention layers its losses read (gradient passes only)."""

    def bind(self, layers: list[LayerInfo], latent_hw):
        self.grid = map_grid(layers, latent_hw, self.config.attn_res)
        self.prob_layers = frozenset(i.index for i in layers if i.kind == "cross" and i.grid == self.grid)
        self.layers = layers
        self.report.data["attn_res"] = self.grid

    def wants_step(self, step):  # reads only in its own gradient passes
        return False

    def maps(self, latent, text, timestep, step) -> torch.Tensor:
        """``(h, w, T)`` aggregated cross-attention of the conditional forward on ``latent`` with ``text``."""
        dtype = self.run.denoiser.dtype
        maps = self.run.gradient_maps(self, latent.to(dtype), step, text=text.to(dtype), timestep=timestep,
                                      scale_input=False)
        return aggregate(maps, self.layers, self.grid)

    def losses(self, attention: torch.Tensor, positions: list[int], background: torch.Tensor | None):
        """``(L_at, L_dj, L_bg or None)`` of the dynamic tokens at ``positions``."""
        kernel = smoothing_kernel(self.config.smoothing)
        smoothed = token_maps(attention, [[p] for p in positions], kernel)
        raw = torch.stack([attention[:, :, p] for p in positions])
        at = attention_balance_loss(smoothed)
        dj = disjoint_loss(raw)
        bg = background_loss(raw, background) if background is not None else None
        return at, dj, bg


class DPL(Method):
    """Dynamic Prompt Learning for :func:`attnkit.edit`. See :class:`DPLConfig`."""

    id = "dpl"
    title = "Dynamic Prompt Learning"
    paper = {"lambda_at": 1.0, "alpha_at": 25.0, "beta_at": 0.3, "lambda_dj": 0.05, "alpha_dj": 25.0, "beta_dj": 0.9,
             "lambda_bg": 0.05, "alpha_bg": 50.0, "beta_bg": 0.7, "bg_start": 0, "token_iterations": 21,
             "attn_res": None, "clusters": 5, "cluster_threshold": 0.2, "mask_resize": "official",
             "cluster_nouns": "caption"}
    paper_run = {"steps": 50, "guidance_scale": 7.5}
    paper_source = ("Wang et al. 2023's DPL.sh and supplementary: the thresholds and weights above, 21 token updates and "
                    "51 fixed null-text updates from \"\" per step, 16x16 maps, 5 clusters at 0.2; 50 DDIM steps, CFG 7.5")
    config_class = DPLConfig
    controller_class = DPLController
    families = ("sd",)
    attention = frozenset({"read"})
    needs_gradient = True  # its dynamic words come from attnkit.edit(words=...), not from its options
