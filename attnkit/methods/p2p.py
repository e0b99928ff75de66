"""``p2p``: Prompt-to-Prompt attention control.

Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control", ICLR 2023,
https://arxiv.org/abs/2208.01626 (official code: google/prompt-to-prompt).

A source and a target prompt are denoised side by side from the same starting latent; the batch is
``[uncond_src, uncond_tgt, cond_src, cond_tgt]`` with classifier-free guidance. In the **conditional half only**,
the target's attention is rewritten from the source's:

- cross-attention, in every cross-attention layer, at steps inside ``cross_replace`` (per target token ``j`` a 0/1
  weight ``alpha_j(t)``; ``cross_replace_words`` gives some words their own window):
  ``M_tgt <- alpha * R(M_src, M_tgt) + (1 - alpha) * M_tgt``, with ``R``
  - ``edit="replace"`` (word swap; the prompts have the same number of space-separated words): ``M_src @ P``,
    ``P`` the token mapping of the words in order (a swapped word with another token count maps uniformly, 1/len);
  - ``edit="refine"`` (words added or removed): the global alignment of the token ids (match +1, mismatch -1,
    gap 0, ties to the gap) gives each target token a source token ``pi(j)`` or none:
    ``R[..., j] = M_src[..., pi(j)]`` where aligned, ``M_tgt[..., j]`` where not;
  - ``edit="reweight"``: the refine mapping (the identity for equal prompts), and ``reweight={word: scale}``
    multiplies the target words' columns (``R <- R * c``); ``reweight`` also chains onto replace/refine;
- self-attention, at steps inside ``self_replace``, in layers whose query grid side is at most
  ``self_replace_res`` (default: a quarter of the latent side, i.e. 16x16 and 8x8 for SD 1.x at 512 px, as the
  official ``<= 16**2`` rule): ``M_tgt <- M_src``;
- local blend (``blend_words``): after each scheduler step from ``start_blend`` on, the target latent keeps the
  source latent outside the words' region: ``z_tgt <- z_src + mask * (z_tgt - z_src)``. The mask is the union over
  both prompts of the words' cross-attention at the latent/4 grid (heads and layers averaged, summed over the steps
  so far, after the edit), 3x3 max-pooled, nearest-upsampled to the latent, divided by its max and thresholded at
  ``blend_threshold``. A blend word counts in each prompt that contains it (``["cat", "tiger"]``: "cat" in the
  source, "tiger" in the target).

Defaults: ``cross_replace=(0, 0.8)`` and ``self_replace=(0, 0.4)`` (the official notebooks; DPL's editing uses
40/50 and 20/50 steps), ``blend_threshold=0.3``, ``start_blend=0.2`` (the later official notebook).

Where this differs from the official code [ours]: after a swapped word of another token count, and for EOS/padding,
positions are mapped shifted by the length difference (the official mappers map them one to one, i.e. onto the
wrong tokens); everything is on token positions computed from the tokenizer's offsets, never from word indices.

Run it with :func:`attnkit.prompt_to_prompt` (two prompts, one seed) or :func:`attnkit.edit` (a real image, after
null-text inversion or Dynamic Prompt Learning); ``attnkit.attach(pipe, [P2P()], prompt=src, target_prompt=tgt)``
around a pipeline call with ``prompt=[src, tgt]`` and equal initial latents for both does the same by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..core.engine import Touch
from ..core.layers import choose_grid
from ..core.steps import StepInfo, check_window
from ..core.tokens import TokenMap
from ..errors import AttnKitError
from .base import Controller, Method

if TYPE_CHECKING:  # pragma: no cover
    from ..runtime.contract import RunContext

EDITS = ("replace", "refine", "reweight")
_CHUNK = re.compile(r"\S+")


def _window(value, name) -> tuple[float, float]:
    """A progress window from ``(start, stop)`` or a stop fraction (``0.8`` -> ``(0, 0.8)``; ``0`` -> never)."""
    if value is None or value is False:
        return (0.0, 0.0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0.0 <= float(value) <= 1.0:
            raise AttnKitError(f"{name}={value!r} must be a fraction of the steps in [0, 1]")
        return (0.0, float(value)) if value > 0 else (0.0, 0.0)
    if isinstance(value, (list, tuple)) and len(value) == 2 and float(value[0]) == float(value[1]) == 0.0:
        return (0.0, 0.0)
    return check_window(value, name)


#: how a window's fractions become steps: ``"official"`` as the official code, ``"progress"`` [ours]
ROUNDINGS = ("official", "progress")


def _inside(window: tuple[float, float], step: StepInfo, slots: int | None = None) -> bool:
    """Whether ``step`` is inside ``window``. With ``slots`` (the official rounding), steps
    ``int(start * slots) <= i < int(stop * slots)``: the official code lays cross-attention windows over ``N + 1``
    slots and self-attention windows over ``N``; without, steps whose progress ``i / N`` is inside ``[start, stop)``."""
    if not window[0] < window[1]:
        return False
    if slots is None:
        return step.within(window)
    return int(window[0] * slots) <= step.index < int(window[1] * slots)


@dataclass
class P2PConfig:
    """Settings of ``p2p``.

    Attributes:
        edit: ``"replace"`` (swap words: the prompts have the same number of space-separated words), ``"refine"``
            (add or remove words) or ``"reweight"`` (the same prompt, some words stronger or weaker).
        cross_replace: progress window ``(start, stop)`` (or a stop fraction) in which the target's cross-attention
            comes from the source's.
        cross_replace_words: ``{target word: window}``: words with a window of their own.
        self_replace: window in which the target's self-attention in coarse layers is the source's.
        self_replace_res: the largest query-grid side whose self-attention is replaced; ``None``: a quarter of the
            latent side (16 at 512 px for SD 1.x).
        reweight: ``{target word: scale}``: > 1 amplifies, < 1 weakens, < 0 removes (acts inside the
            cross-attention window, on top of the edit's mapping).
        blend_words: words whose attention outlines the region that may change (local blend); ``None``: no blend.
        blend_threshold: the local blend's threshold on the max-normalised map.
        start_blend: progress fraction from which the local blend acts.
        step_rounding: how windows become steps: ``"official"`` (default: cross-attention windows over ``N + 1``
            slots, ``int(stop * (N + 1))`` steps; self-attention and the blend start over ``N``, as the official
            code) or ``"progress"`` (steps whose ``i / N`` falls inside the window) [ours].
    """

    edit: str = "replace"
    cross_replace: tuple[float, float] = (0.0, 0.8)
    cross_replace_words: dict[str, tuple[float, float]] = field(default_factory=dict)
    self_replace: tuple[float, float] = (0.0, 0.4)
    self_replace_res: int | None = None
    reweight: dict[str, float] = field(default_factory=dict)
    blend_words: list[str] | None = None
    blend_threshold: float = 0.3
    start_blend: float = 0.2
    step_rounding: str = "official"

    def __post_init__(self):
        if self.edit not in EDITS:
            raise AttnKitError(f"p2p: edit={self.edit!r}; use one of {', '.join(EDITS)}")
        self.cross_replace = _window(self.cross_replace, "p2p: cross_replace")
        self.self_replace = _window(self.self_replace, "p2p: self_replace")
        if not isinstance(self.cross_replace_words, dict):
            raise AttnKitError(f"p2p: cross_replace_words must map words to windows, got {self.cross_replace_words!r}")
        self.cross_replace_words = {
            str(w): _window(v, f"p2p: cross_replace_words[{w!r}]") for w, v in self.cross_replace_words.items()
        }
        if self.self_replace_res is not None and (
                isinstance(self.self_replace_res, bool) or not isinstance(self.self_replace_res, int)
                or not 1 <= self.self_replace_res <= 512):
            raise AttnKitError(f"p2p: self_replace_res={self.self_replace_res!r} must be a grid side in 1..512 or None")
        if not isinstance(self.reweight, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and -10 <= v <= 10
                for k, v in self.reweight.items()):
            raise AttnKitError(f"p2p: reweight must map words to scales in [-10, 10], e.g. {{'red': 2.0}}; got {self.reweight!r}")
        self.reweight = {k: float(v) for k, v in self.reweight.items()}
        if self.edit == "reweight" and not self.reweight:
            raise AttnKitError("p2p: the reweight edit needs reweight words and their scales, e.g. red=2 "
                               "(in Python reweight={'red': 2.0})")
        if isinstance(self.blend_words, str):
            self.blend_words = [w.strip() for w in self.blend_words.split(",") if w.strip()]
        if self.blend_words is not None:
            self.blend_words = [str(w) for w in self.blend_words] or None
        if isinstance(self.blend_threshold, bool) or not 0.0 < float(self.blend_threshold) < 1.0:
            raise AttnKitError(f"p2p: blend_threshold={self.blend_threshold!r} must be between 0 and 1")
        if isinstance(self.start_blend, bool) or not 0.0 <= float(self.start_blend) < 1.0:
            raise AttnKitError(f"p2p: start_blend={self.start_blend!r} must be in [0, 1)")
        if self.step_rounding not in ROUNDINGS:
            raise AttnKitError(f"p2p: step_rounding={self.step_rounding!r}; use one of {', '.join(ROUNDINGS)}")


# ------------------------------------------------------------------------------------------------ text keys


class Keys:
    """The text keys a denoiser attends to for one prompt: content token ids, word and chunk positions.

    Built from a :class:`~attnkit.core.tokens.TokenMap`; ``collapse`` replaces some word occurrences (their token
    positions) by a single key each, with a negative pseudo id (DPL's dynamic tokens: one learnable token per noun).
    Position 0 is BOS; content keys follow; then EOS and padding up to ``length``.

    Args:
        tmap: the token map of the prompt.
        collapse: ``{pseudo id (< 0): [positions of each occurrence in tmap], ...}``.
    """

    def __init__(self, tmap: TokenMap, collapse: dict[int, list[tuple[int, ...]]] | None = None):
        self.tmap = tmap
        self.prompt = tmap.prompt
        self.length = tmap.max_length
        last = min(len(tmap.ids) - 1, tmap.last_kept + 1)  # content positions are 1..last-1 (kept ones)
        first_of: dict[int, int] = {}
        inside: set[int] = set()
        for pid, occurrences in (collapse or {}).items():
            if pid >= 0:
                raise AttnKitError("placeholder ids must be negative")
            for occ in occurrences:
                first_of[occ[0]] = pid
                inside.update(occ[1:])
        self.remap: dict[int, int] = {0: 0}
        self.content_ids: list[int] = []
        self.slots: dict[int, list[int]] = {}
        position = 0
        for p in range(1, last):
            if tmap.special[p]:
                continue
            if p in inside:
                self.remap[p] = position
                continue
            position += 1
            self.remap[p] = position
            if p in first_of:
                pid = first_of[p]
                self.content_ids.append(pid)
                self.slots.setdefault(pid, []).append(position)
            else:
                self.content_ids.append(tmap.ids[p])
        self.eos = position + 1

    def positions(self, original: tuple[int, ...]) -> tuple[int, ...]:
        """Key positions of token-map positions."""
        return tuple(sorted({self.remap[p] for p in original if p in self.remap}))

    def find(self, query: str) -> tuple[int, ...]:
        """Key positions of a word or phrase of the prompt (see :meth:`TokenMap.find`)."""
        return self.positions(self.tmap.find(query).positions)

    def has(self, query: str) -> bool:
        try:
            return bool(self.find(query))
        except AttnKitError:
            return False

    def chunks(self) -> list[tuple[int, ...]]:
        """Key positions of each space-separated chunk of the prompt (Prompt-to-Prompt's "words"), in order."""
        out = []
        for m in _CHUNK.finditer(self.prompt):
            positions = self.positions(self.tmap.positions_of_chars(m.start(), m.end()))
            if positions:
                out.append(positions)
        return out

    def sequence(self) -> list[int]:
        """Ids of the keys ``[BOS] + content + [EOS]`` (placeholders as their pseudo ids)."""
        return [-1000] + self.content_ids + [-1001]


def replace_mapper(source: Keys, target: Keys) -> torch.Tensor:
    """``(T, T)`` mapping ``P`` with ``M_src @ P`` the target's cross-attention for a word swap.

    Space-separated words are paired in order. A pair with the same token count maps one to one; a pair with
    different counts maps each source token to every target token at 1/len(target). BOS maps to BOS; EOS and
    padding map shifted by the difference in length [ours].

    Raises:
        AttnKitError: the prompts have different numbers of words.
    """
    src, tgt = source.chunks(), target.chunks()
    if len(src) != len(tgt):
        raise AttnKitError(
            f"p2p replace swaps words one for one, but the source has {len(src)} words and the target "
            f"{len(tgt)}; to add or remove words choose the refine edit (edit=\"refine\" in Python)"
        )
    length = source.length
    mapper = torch.zeros(length, length)
    mapper[0, 0] = 1.0
    for s, t in zip(src, tgt):
        if len(s) == len(t):
            for i, j in zip(s, t):
                mapper[i, j] = 1.0
        else:
            for i in s:
                for j in t:
                    mapper[i, j] = 1.0 / len(t)
    _map_tail(mapper, source.eos, target.eos)
    return mapper


def _map_tail(mapper: torch.Tensor, src_eos: int, tgt_eos: int) -> None:
    """EOS and padding: target position ``tgt_eos + k`` reads source position ``src_eos + k`` (the last source
    position where the source's tail is shorter)."""
    length = mapper.shape[0]
    for j in range(tgt_eos, length):
        mapper[min(src_eos + (j - tgt_eos), length - 1), j] = 1.0


def global_alignment(a: list[int], b: list[int]) -> list[int]:
    """For each element of ``b``, the index of the element of ``a`` aligned to it, or -1.

    Needleman-Wunsch with match +1, mismatch -1, gap 0, and Prompt-to-Prompt's ``seq_aligner`` preferences on ties
    (a gap in ``a``, then a gap in ``b``, then the diagonal); traced back from the end.
    """
    n, m = len(a), len(b)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 1 left (gap in a), 2 up (gap in b), 3 diagonal, 4 origin
    for j in range(1, m + 1):
        move[0][j] = 1
    for i in range(1, n + 1):
        move[i][0] = 2
    move[0][0] = 4
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left, up = score[i][j - 1], score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if a[i - 1] == b[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            move[i][j] = 1 if best == left else (2 if best == up else 3)
    pairs = [-1] * m
    i, j = n, m
    while (i > 0 or j > 0) and move[i][j] != 4:
        step = move[i][j]
        if step == 3:
            i, j = i - 1, j - 1
            pairs[j] = i
        elif step == 1:
            j -= 1
        else:
            i -= 1
    return pairs


def refine_mapper(source: Keys, target: Keys) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pi, alpha)`` for the refine edit: each target key ``j`` reads source key ``pi[j]`` where ``alpha[j]`` is 1
    (aligned tokens), and keeps its own attention where ``alpha[j]`` is 0 (new tokens). EOS and padding follow the
    source's, shifted [ours]."""
    length = source.length
    aligned = global_alignment(source.sequence(), target.sequence())
    pi = torch.zeros(length, dtype=torch.long)
    alpha = torch.ones(length)
    for j, i in enumerate(aligned):
        if j >= length:
            break
        pi[j] = max(i, 0)
        alpha[j] = float(i >= 0)
    for j in range(len(aligned), length):
        pi[j] = min(source.eos + (j - target.eos), length - 1)
    return pi, alpha


class P2PEdit:
    """The cross-/self-attention rule of one Prompt-to-Prompt edit between two prompts.

    Args:
        config: the p2p settings.
        source, target: the :class:`Keys` of the two prompts.
    """

    def __init__(self, config: P2PConfig, source: Keys, target: Keys):
        self.config = config
        self.source, self.target = source, target
        self.length = source.length
        self.mapper = None
        self.pi = self.alpha = None
        if config.edit == "replace":
            self.mapper = replace_mapper(source, target)
        else:
            self.pi, self.alpha = refine_mapper(source, target)
        self.equalizer = None
        if config.reweight:
            self.equalizer = torch.ones(self.length)
            for word, scale in config.reweight.items():
                self.equalizer[list(self._target_positions(word, "reweight"))] = scale
        self.word_windows = [
            (self._target_positions(word, "cross_replace_words"), window)
            for word, window in config.cross_replace_words.items()
        ]
        self._weights: tuple[int, int, torch.Tensor] | None = None  # (step index, count, weights) of the last step
        self.blend: tuple[list[int], list[int]] | None = None
        if config.blend_words:
            src_cols, tgt_cols = set(), set()
            for word in config.blend_words:
                in_src, in_tgt = source.has(word), target.has(word)
                if not (in_src or in_tgt):
                    raise AttnKitError(
                        f"p2p: blend word {word!r} is in neither prompt ({source.prompt!r} -> {target.prompt!r})"
                    )
                if in_src:
                    src_cols.update(source.find(word))
                if in_tgt:
                    tgt_cols.update(target.find(word))
            self.blend = (sorted(src_cols), sorted(tgt_cols))

    def _target_positions(self, word: str, option: str) -> tuple[int, ...]:
        try:
            return self.target.find(word)
        except AttnKitError as exc:
            raise AttnKitError(f"p2p {option}: {exc}") from None

    def token_weights(self, step: StepInfo) -> torch.Tensor:
        """``alpha_j(t)``: 1 for the target keys whose cross-attention is replaced at ``step`` (made once a step)."""
        if self._weights is not None and self._weights[:2] == (step.index, step.count):
            return self._weights[2]
        slots = step.count + 1 if self.config.step_rounding == "official" else None
        weights = torch.full((self.length,), float(_inside(self.config.cross_replace, step, slots)))
        for positions, window in self.word_windows:
            weights[list(positions)] = float(_inside(window, step, slots))
        self._weights = (step.index, step.count, weights)
        return weights

    def cross_active(self, step: StepInfo) -> bool:
        return bool(self.token_weights(step).any())

    def self_active(self, step: StepInfo) -> bool:
        return _inside(self.config.self_replace, step, step.count if self.config.step_rounding == "official" else None)

    def blends_at(self, step: StepInfo) -> bool:
        """Whether the local blend acts after ``step``: from step ``int(start_blend * N)`` on (official: its
        counter, 1 after the first step, must exceed that), or from progress ``start_blend`` on."""
        if self.config.step_rounding == "official":
            return step.index >= int(self.config.start_blend * step.count)
        return step.progress >= self.config.start_blend

    def cross(self, src: torch.Tensor, tgt: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """New target cross-attention from ``(..., N, T)`` source and target probabilities."""
        if self.mapper is not None:
            replaced = src @ self.mapper.to(src.device, src.dtype)
        else:
            alpha = self.alpha.to(src.device, src.dtype)
            replaced = src[..., self.pi.to(src.device)] * alpha + tgt * (1 - alpha)
        if self.equalizer is not None:
            replaced = replaced * self.equalizer.to(src.device, src.dtype)
        weights = self.token_weights(step).to(src.device, src.dtype)
        return replaced * weights + tgt * (1 - weights)

    def blend_mask(self, maps: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        """``(1, 1, h, w)`` local-blend mask from summed cross maps ``(2, gh, gw, T)`` of the source and target rows:
        the union of each prompt's blend-word mask."""
        rows = []
        for r, cols in enumerate(self.blend):
            rows.append(maps[r][..., cols].sum(-1) if cols else torch.zeros_like(maps[r][..., 0]))
        m = torch.stack(rows).unsqueeze(1)
        m = F.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1))
        m = F.interpolate(m, size=latent_hw)
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        m = m.gt(self.config.blend_threshold)
        return (m[:1] | m[1:]).float()


# -------------------------------------------------------------------------------------------------- the method


class P2PController(Controller):
    """Applies one :class:`P2PEdit` to the conditional source/target rows of each denoiser call."""

    def __init__(self, method, run: "RunContext"):
        super().__init__(method, run)
        if run.sequences is not None:
            source, target = run.sequences
        else:
            if run.target_prompt is None:
                raise AttnKitError(
                    "p2p edits one prompt into another: use attnkit.prompt_to_prompt(pipe, source, target, ...) or "
                    "attnkit.edit(...), or pass target_prompt= to attach()"
                )
            source = Keys(run.tokens.attention)
            target = Keys(run.tokens_of(run.target_prompt).attention)
        self.edit = P2PEdit(self.config, source, target)
        self.report.data.update(source=source.prompt, target=target.prompt, edit=self.config.edit)
        self.cross_layers: frozenset[int] = frozenset()
        self.self_layers: frozenset[int] = frozenset()
        self.blend_layers: frozenset[int] = frozenset()
        self.store: torch.Tensor | None = None  # (2, gh, gw, T): blend maps summed over steps
        self.mask: torch.Tensor | None = None
        self.latent_hw: tuple[int, int] | None = None
        self._step_maps: list[torch.Tensor] = []

    @property
    def edits_step_latents(self) -> bool:  # type: ignore[override]
        return self.config.blend_words is not None

    def bind(self, layers, latent_hw):
        self.latent_hw = latent_hw
        side = self.config.self_replace_res or max(1, (max(latent_hw) + 3) // 4)
        self.cross_layers = frozenset(layer.index for layer in layers if layer.kind == "cross")
        self.self_layers = frozenset(
            layer.index for layer in layers if layer.kind == "self" and max(layer.grid) <= side
        )
        if self.edit.blend is not None:
            self.blend_grid = choose_grid(layers, latent_hw)
            self.blend_layers = frozenset(
                layer.index for layer in layers if layer.kind == "cross" and layer.grid == self.blend_grid
            )
            self.prob_layers = self.blend_layers
        self.edit_layers = self.cross_layers | self.self_layers
        self.layers = layers
        self.report.data["self_replace_layers"] = [layers[i].name for i in sorted(self.self_layers)]

    def layers_at(self, step):
        edit = set()
        if self.edit.cross_active(step):
            edit |= self.cross_layers
        if self.edit.self_active(step):
            edit |= self.self_layers
        return Touch(read=self.blend_layers, probs=frozenset(edit))

    def begin_step(self, step):
        self._step_maps = []

    def on_probs(self, layer, step, probs):
        """Blend store: ``(2, N, T)`` head-averaged probabilities of one blend layer at this step (after the edit)."""
        h, w = self.blend_grid
        self._step_maps.append(probs.detach().float().reshape(probs.shape[0], h, w, -1))

    def edit_probs(self, layer, step, probs):
        """``(2, heads, N, T)`` source and target rows: the target's cross-attention from the edit's rule, its
        self-attention the source's."""
        if probs.shape[0] != 2:
            raise AttnKitError(
                f"p2p needs one source and one target image per denoiser call; this call has {probs.shape[0]} "
                "conditional rows (use num_images_per_prompt=1)"
            )
        src, tgt = probs[0], probs[1]
        return torch.stack([src, self.edit.cross(src, tgt, step) if layer.kind == "cross" else src])

    def end_step(self, step):
        if self.edit.blend is not None and self._step_maps:
            mean = torch.stack(self._step_maps).mean(0)
            self.store = mean if self.store is None else self.store + mean

    def step_latents(self, latents, step):
        if self.edit.blend is None or self.store is None or not self.edit.blends_at(step):
            return latents
        if latents.shape[0] != 2:
            raise AttnKitError(f"p2p local blend expects the source and target latents, got a batch of {latents.shape[0]}")
        self.mask = self.edit.blend_mask(self.store, tuple(latents.shape[-2:])).to(latents.device, latents.dtype)
        return torch.cat([latents[:1], latents[:1] + self.mask * (latents[1:] - latents[:1])])

    def finish(self):
        if self.mask is not None:
            self.report.maps["blend"] = self.mask[:, 0].cpu()


class P2P(Method):
    """Prompt-to-Prompt: edit an image by editing its prompt. See :class:`P2PConfig`.

    Example::

        attnkit.prompt_to_prompt(pipe, "a cat riding a bike", "a dog riding a bike", seed=0)
        attnkit.edit(pipe, photo, "a cat and a dog", "a cat and a fox", words=["cat", "dog"], edit="replace")
    """

    id = "p2p"
    title = "Prompt-to-Prompt"
    paper = {"cross_replace": (0.0, 0.8), "self_replace": (0.0, 0.4), "blend_threshold": 0.3, "start_blend": 0.2,
             "step_rounding": "official"}
    paper_run = {"steps": 50, "guidance_scale": 7.5}
    paper_source = ("Hertz et al. 2023's notebooks: cross-attention injected for 0.8 of the steps, self-attention for "
                    "0.4, blend threshold 0.3 from 0.2 of the steps, the official step rounding; 50 DDIM steps, CFG 7.5")
    config_class = P2PConfig
    controller_class = P2PController
    families = ("sd", "sdxl")
    attention = frozenset({"read", "probs"})
