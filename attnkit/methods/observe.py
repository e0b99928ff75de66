"""``observe``: where each word of the prompt lands, as cross-attention maps.

In the spirit of DAAM (Tang et al., "What the DAAM: Interpreting Stable Diffusion Using Cross Attention",
ACL 2023, https://arxiv.org/abs/2210.04885): the text-attention probabilities of the conditional branch, averaged
over heads and over the layers at one query grid, and as a running mean over steps. It changes nothing: images are
bit-identical to the plain pipeline's.

Maps (``report.maps[word]``, shape ``(B, h, w)``, float32): for each image query, the attention mass on the word's
tokens (summed over the tokens of a multi-piece word or phrase), averaged over heads, layers and the steps in the
window, then divided by its sum over the ``h x w`` grid, so **each map sums to 1**. ``report.data["raw"][word]``
keeps the un-normalised mean mass (in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.layers import choose_grid
from ..core.steps import check_window
from ..errors import AttnKitError, WordCutOffError
from .base import Controller, Method
from .fields import Field


@dataclass
class ObserveConfig:
    """Settings of ``observe``.

    Attributes:
        words: words or phrases of the prompt to map, spelled as in the prompt (``"car"``, ``"red car"``,
            ``"dog#2"`` for the second "dog"). ``None``: every word of the prompt, a repeated word once per
            occurrence (``"a#1"``, ``"a#2"``).
        resolution: query grid side (``16``) or ``(h, w)`` to aggregate at; ``None`` picks the coarsest grid that
            still localises (16x16 for SD 1.5 at 512 px, 32x32 for SDXL at 1024 px; Flux has one grid).
        steps: progress windows ``(start, stop)``, fractions of the run's steps; one set of maps per window. The
            first window's maps are ``report.maps``; all are in ``report.data["windows"]``.
    """

    words: list[str] | None = None
    resolution: int | tuple[int, int] | None = None
    steps: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 1.0)])

    def __post_init__(self):
        if self.words is not None:
            if isinstance(self.words, str):
                self.words = [w.strip() for w in self.words.split(",") if w.strip()]
            self.words = list(self.words)
            if not self.words:
                raise AttnKitError("observe: words is empty; give at least one word, or None for every word")
            for w in self.words:
                if not isinstance(w, str) or not w.strip():
                    raise AttnKitError(f"observe: words must be non-empty strings, got {w!r}")
        if self.resolution is not None:
            res = self.resolution
            ok = (isinstance(res, int) and not isinstance(res, bool) and res > 0) or (
                isinstance(res, (tuple, list)) and len(res) == 2 and all(isinstance(x, int) and x > 0 for x in res)
            )
            if not ok:
                raise AttnKitError(f"observe: resolution={res!r} must be a positive int side or (h, w), or None")
            self.resolution = res if isinstance(res, int) else (int(res[0]), int(res[1]))
        if not self.steps:
            raise AttnKitError("observe: steps needs at least one (start, stop) window, e.g. [(0.0, 1.0)]")
        if isinstance(self.steps, tuple) and len(self.steps) == 2 and not isinstance(self.steps[0], (tuple, list)):
            self.steps = [self.steps]
        self.steps = [check_window(w, "observe: steps") for w in self.steps]


def _every_word(words: list[str]) -> list[str]:
    """The prompt's words as queries; a word that occurs several times becomes ``word#1``, ``word#2``..."""
    lower = [w.lower() for w in words]
    seen: dict[str, int] = {}
    queries = []
    for word, key in zip(words, lower):
        seen[key] = seen.get(key, 0) + 1
        queries.append(f"{word}#{seen[key]}" if lower.count(key) > 1 else word)
    return queries


class ObserveController(Controller):
    """Running means of the selected words' attention, per step window. Memory: ``windows x B x h*w x P`` floats
    (``P`` = number of token positions of the words), independent of the step count."""

    def __init__(self, method, run):
        super().__init__(method, run)
        tokens = run.tokens
        queries = self.config.words if self.config.words is not None else _every_word(tokens.words())
        if not queries:
            raise AttnKitError(f"observe: the prompt {run.prompt!r} has no words to map")
        self.spans = {}
        cut = []
        for q in queries:
            try:
                self.spans[q] = tokens.find(q)
            except WordCutOffError:
                if self.config.words is not None:  # words the user picked must all be there
                    raise
                cut.append(q)
        if cut:
            kept = tokens.attention.last_kept
            self.report.warnings.append(
                f"the prompt is longer than the {kept} tokens the model reads; {len(cut)} words after that are "
                f"cut off and not mapped ({', '.join(cut[:6])}{', ...' if len(cut) > 6 else ''})")
        if not self.spans:
            raise AttnKitError(f"observe: none of the prompt's words is within the {tokens.attention.last_kept} "
                               "tokens the model reads")
        positions = sorted({p for span in self.spans.values() for p in span.positions})
        self.positions = torch.tensor(positions, dtype=torch.long)
        self.columns = {q: [positions.index(p) for p in span.positions] for q, span in self.spans.items()}
        self.windows = self.config.steps
        self.sums: list[torch.Tensor | None] = [None] * len(self.windows)
        self.counts = [0] * len(self.windows)
        self.active: list[int] = []
        self.grid: tuple[int, int] | None = None

    def bind(self, layers, latent_hw):
        self.grid = choose_grid(layers, latent_hw, self.config.resolution)
        self.prob_layers = frozenset(
            layer.index for layer in layers if layer.is_text_attention and layer.grid == self.grid
        )
        self.report.data["layers"] = [layer.name for layer in layers if layer.index in self.prob_layers]
        self.report.data["grid"] = self.grid

    def wants_step(self, step):
        return bool(self.active)

    def begin_step(self, step):
        self.active = [i for i, w in enumerate(self.windows) if step.within(w)]

    def on_probs(self, layer, step, probs):
        """``probs``: ``(B, h*w, T)``; keeps only the words' token columns."""
        picked = probs.index_select(-1, self.positions.to(probs.device))
        for i in self.active:
            if self.sums[i] is None:
                self.sums[i] = picked.clone()
            else:
                self.sums[i] += picked
            self.counts[i] += 1

    def finish(self):
        h, w = self.grid or (0, 0)
        windows = []
        for window, total, count in zip(self.windows, self.sums, self.counts):
            if total is None:
                self.report.warnings.append(
                    f"no step fell in the window {window[0]:g}-{window[1]:g} of this {self.run.report.steps}-step run;"
                    " no maps for it"
                )
                windows.append({"window": window, "maps": {}, "raw": {}})
                continue
            mean = (total / count).cpu()
            raw = {q: mean[..., cols].sum(-1).reshape(-1, h, w) for q, cols in self.columns.items()}
            maps = {q: m / m.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12) for q, m in raw.items()}
            windows.append({"window": window, "maps": maps, "raw": raw})
        first = windows[0]
        self.report.maps = first["maps"]
        self.report.data["raw"] = first["raw"]
        self.report.data["windows"] = windows
        self.report.data["positions"] = {q: list(span.positions) for q, span in self.spans.items()}


class Observe(Method):
    """Record per-word cross-attention maps; changes nothing. See :class:`ObserveConfig` for the options.

    Example::

        result = attnkit.generate(pipe, "a red car and a bird", [Observe(words=["car", "bird"])], seed=0)
        result.report["observe"].maps["car"]  # (1, 16, 16) at 512 px on SD 1.5, sums to 1
    """

    id = "observe"
    title = "Attention maps (observe)"
    attention = frozenset({"read"})
    config_class = ObserveConfig
    controller_class = ObserveController
    #: the options users see: labels, kinds, ranges (this method's rows of the field table)
    fields = (
        Field("observe", "words", "Words", "words", None,
              "words or phrases to map; empty: the picked words, or every word when none is picked"),
        Field("observe", "resolution", "Map resolution", "grid", None,
              "the grid the maps are averaged at; auto: the coarsest grid that still localises"),
        Field("observe", "steps", "Map steps", "windows", [(0.0, 1.0)],
              "one set of maps per part of the run, as from-to fractions: 0-1 the whole run, 0-0.5, 0.5-1 two halves",
              advanced=True, limit=8),
    )
