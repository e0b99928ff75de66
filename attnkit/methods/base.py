"""What every method is made of.

A :class:`Method` is a configured method: it holds a config dataclass and nothing else, so it can be reused across
generations and shared as a preset. For each generation the :class:`~attnkit.runtime.Run` asks it for a
:class:`Controller`, which owns all the state of that one run (stores, masks, losses) and decides what to do with the
attention events the runtime routes to it.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..core.engine import Touch
from ..errors import AttnKitError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    from ..core.layers import LayerInfo
    from ..core.steps import StepInfo
    from ..runtime.contract import RunContext


@dataclass
class MethodReport:
    """What a method reports after a run.

    Attributes:
        method: the method id.
        maps: per-word maps, ``{word: (B, h, w) tensor}`` (methods that record maps).
        losses: per-step loss records (latent-optimising methods).
        warnings: things the user should know (shown in the UI and the CLI).
        timings: seconds spent, by phase.
        data: anything else the method reports (documented by the method).
    """

    method: str
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


class Controller:
    """Per-run state and decisions of one method. Subclasses override the hooks they need.

    The runtime calls, in order: :meth:`bind` once the latent size is known; for every step :meth:`begin_step`,
    then :meth:`on_probs` for each layer in :attr:`prob_layers` while :meth:`wants_step` holds, then
    :meth:`end_step`; finally :meth:`finish`.
    """

    def __init__(self, method: "Method", run: "RunContext"):
        self.method = method
        self.config = method.config
        self.run = run
        self.report = MethodReport(method.id)
        #: indices of the layers whose head-averaged text-attention probabilities this method reads (``read``).
        self.prob_layers: frozenset[int] = frozenset()
        #: indices of the layers whose text keys/values this method rewrites (``text``, :meth:`edit_text`).
        self.text_layers: frozenset[int] = frozenset()
        #: indices of the layers whose probabilities this method rewrites (``probs``, :meth:`edit_probs`).
        self.edit_layers: frozenset[int] = frozenset()
        #: indices of the layers whose attention output this method computes itself (``replace``, :meth:`attend`).
        self.replace_layers: frozenset[int] = frozenset()
        self._seconds = 0.0

    def bind(self, layers: list["LayerInfo"], latent_hw: tuple[int, int]) -> None:
        """Called when the run learns its latent size; ``layers`` carry their query grids."""

    def wants_step(self, step: "StepInfo") -> bool:
        """Whether the method reads attention at this step (default: every step)."""
        return True

    def layers_at(self, step: "StepInfo") -> Touch:
        """The layers this method touches at ``step``, by hook point (:class:`~attnkit.core.engine.Touch`).

        Default: :attr:`prob_layers`, :attr:`text_layers`, :attr:`edit_layers` and :attr:`replace_layers` while
        :meth:`wants_step` holds, nothing otherwise. Methods whose layers change from step to step
        (Prompt-to-Prompt's windows) override it.
        """
        if not self.wants_step(step):
            return Touch()
        return Touch(self.prob_layers, self.text_layers, self.edit_layers, self.replace_layers)

    def begin_step(self, step: "StepInfo") -> None:
        """Called before the denoiser's first call of a step."""

    def on_probs(self, layer: "LayerInfo", step: "StepInfo", probs: torch.Tensor) -> None:
        """Receives ``(B_cond, N_query, N_keys)`` head-averaged probabilities of the conditional branch: over the text
        keys on cross-attention layers, over the layer's own queries (``N_keys = N_query``) on self-attention ones."""

    def edit_text(self, layer: "LayerInfo", step: "StepInfo", keys: torch.Tensor, values: torch.Tensor,
                  rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``text`` hook, on the layers in :attr:`text_layers`: the text the keys and the values are projected from,
        ``(B, T, C_text)`` each, rewritten on the conditional ``rows`` (a slice or a long tensor). Returns one or more key
        texts (several: one attention per key text, averaged) and the value text."""
        raise NotImplementedError

    def edit_probs(self, layer: "LayerInfo", step: "StepInfo", probs: torch.Tensor) -> torch.Tensor:
        """``probs`` hook, on the layers in :attr:`edit_layers`: the conditional rows' probabilities
        ``(B_cond, heads, N, T)`` (float32), rewritten before they weigh the values."""
        raise NotImplementedError

    def attend(self, layer: "LayerInfo", step: "StepInfo", attn, hidden_states: torch.Tensor, *,
               encoder_hidden_states, attention_mask, temb, rows: slice | None, **extra) -> torch.Tensor:
        """``replace`` hook (diffusers only): compute the output of a layer in :attr:`replace_layers` (for the whole
        batch; ``rows`` are the batch rows of the conditional branch, ``None`` on a call without one). ``extra``
        holds the processor's other arguments (Flux: ``image_rotary_emb``). Must return what the layer's processor
        would return."""
        raise NotImplementedError

    #: whether :meth:`attend` also runs on denoiser calls with no conditional rows (Flux's negative branch of true
    #: CFG, the unconditional-only calls): methods that change every call's attention pattern, not the prompt's.
    attends_every_call: bool = False

    #: whether :meth:`update_latents` changes the latents before steps (latent-optimising methods).
    updates_latents: bool = False

    def update_latents(self, latents: torch.Tensor, step: "StepInfo") -> torch.Tensor:
        """Return the latents ``(B, C, h, w)`` to denoise at ``step`` (called before the step's denoiser calls)."""
        return latents

    def end_step(self, step: "StepInfo") -> None:
        """Called from the pipeline's step callback after the step's scheduler update."""

    #: whether :meth:`step_latents` changes the latents after every step (Prompt-to-Prompt's local blend).
    edits_step_latents: bool = False

    def step_latents(self, latents: torch.Tensor, step: "StepInfo") -> torch.Tensor:
        """Return the latents ``(B, C, h, w)`` the scheduler produced at the end of ``step``, possibly changed
        (called after :meth:`end_step`, at every step including the last)."""
        return latents

    def finish(self) -> None:
        """Called after a successful run; fill :attr:`report`."""

    def release(self) -> None:
        """Called when the run is removed from the pipeline, whatever happened: undo what :meth:`bind` put on the
        user's model (adapters, caches)."""

    def timed(self, key: str):
        """Context manager adding the enclosed time to ``report.timings[key]`` (seconds)."""
        return _Timer(self.report.timings, key)


class _Timer:
    __slots__ = ("timings", "key", "t0")

    def __init__(self, timings: dict, key: str):
        self.timings, self.key = timings, key

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.key] = self.timings.get(self.key, 0.0) + time.perf_counter() - self.t0
        return False


#: the hook points of an attention call: ``"read"`` reads the text-attention probabilities, ``"text"`` edits the text
#: keys/values a layer attends to, ``"probs"`` edits the probabilities (or replaces them with another branch's),
#: ``"replace"`` computes the layer's attention itself (extra tokens, masks)
HOOKS = frozenset({"read", "text", "probs", "replace"})


class Method:
    """A configured attention-control method.

    Build it from keyword arguments (``Observe(words=["car"])``) or from a config object
    (``Observe(ObserveConfig(...))``). Unknown arguments and invalid values raise :class:`~attnkit.AttnKitError`.
    """

    #: stable preset id, never renamed once released.
    id: ClassVar[str] = ""
    #: the config dataclass.
    config_class: ClassVar[type] = object
    #: the controller class made for each run.
    controller_class: ClassVar[type[Controller]] = Controller
    #: model families the method supports.
    families: ClassVar[tuple[str, ...]] = ("sd", "sdxl", "flux")
    #: what the method does inside attention, among the hook points a runtime offers (see :data:`HOOKS`).
    attention: ClassVar[frozenset[str]] = frozenset()
    #: it runs gradient passes through the denoiser (latent optimisation, learned tokens): a host must offer a
    #: conditional forward it can differentiate.
    needs_gradient: ClassVar[bool] = False
    #: it acts on the target words (or token positions) its options name, and does nothing without them.
    needs_words: ClassVar[bool] = False
    #: the options users see (rows of the field table, :mod:`attnkit.methods.fields`), beside the config they describe.
    fields: ClassVar[tuple] = ()
    #: the method's name for people (menus, node titles, messages).
    title: ClassVar[str] = ""
    #: the paper's settings of the options (its official code's where the paper is silent): what
    #: ``settings="paper"`` starts from. Empty: the method has no paper configuration (its defaults).
    paper: ClassVar[dict] = {}
    #: the generation settings of the paper's experiments (steps, guidance, sampler), for paper presets and runs.
    paper_run: ClassVar[dict] = {}
    #: where :attr:`paper` comes from, in one line.
    paper_source: ClassVar[str] = ""

    def __init__(self, config=None, settings: str | None = None, **fields):
        if settings not in (None, "paper"):
            raise AttnKitError(f"{type(self).__name__}: settings={settings!r}; the only named settings are 'paper'")
        if settings == "paper":
            if config is not None:
                raise AttnKitError(f"{type(self).__name__}: settings='paper' takes keyword options, not a config object")
            if not self.paper:
                raise AttnKitError(f"{self.id} has no paper settings (its defaults are all there is)")
            fields = {**copy.deepcopy(self.paper), **fields}
        if config is not None and fields:
            raise AttnKitError(f"{type(self).__name__}: pass either a config object or keyword arguments, not both")
        if config is None:
            names = {f.name for f in dataclasses.fields(self.config_class)}
            unknown = sorted(set(fields) - names)
            if unknown:
                raise AttnKitError(
                    f"{type(self).__name__} has no option {', '.join(unknown)}; its options are: {', '.join(sorted(names))}"
                )
            config = self.config_class(**fields)
        elif not isinstance(config, self.config_class):
            raise AttnKitError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        _check_sizes(self.id, config)
        self.config = config

    def controller(self, run: "RunContext") -> Controller:
        """A fresh controller holding this method's state for one run."""
        if run.family not in self.families:
            from ..models import FAMILY_NAMES as names

            raise UnsupportedModelError(
                f"{self.id} does not support {names[run.family]} pipelines; it works with "
                f"{', '.join(names[f] for f in self.families)}"
            )
        return self.controller_class(self, run)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


#: most entries of any list or mapping option (words, token positions, windows, thresholds, conditions...); the field
#: table's ``limit`` is tighter for some. A prompt holds at most 75 tokens, so more cannot mean more subjects; the cap
#: keeps pairwise losses (A-STAR's is quadratic in the words) and per-word work bounded for every entry point.
MAX_ITEMS = 32
#: longest word or phrase in a words option
MAX_WORD_CHARS = 200


def check_ranges(method_id: str, config) -> None:
    """Refuse numbers outside their field row's range: the one place a method's numeric ranges are written (the
    config, presets, the panel's sliders and the nodes all follow the field table)."""
    from .fields import fields_for

    for row in fields_for(method_id):
        value = getattr(config, row.name, None)
        if (row.kind in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool)
                and not row.minimum <= value <= row.maximum):
            raise AttnKitError(f"{method_id}: {row.name} must be from {row.minimum:g} to {row.maximum:g}, got "
                               f"{value!r}"[:300])


def _check_sizes(method_id: str, config) -> None:
    """Refuse options over their caps before any work starts: numbers outside the field table's range (what presets
    are held to, so iteration counts stay bounded), lists and mappings over the table's ``limit`` where the option
    has a row, else :data:`MAX_ITEMS`."""
    from .fields import fields_for

    check_ranges(method_id, config)
    rows = {f.name: f for f in fields_for(method_id)}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        row = rows.get(f.name)
        if not isinstance(value, (list, tuple, dict, set, frozenset)):
            continue
        limit = row.limit if row is not None else MAX_ITEMS
        if len(value) > limit:
            raise AttnKitError(f"{method_id}: {f.name} takes at most {limit} entries, got {len(value)}; "
                               "pick fewer (the same word twice counts twice)")
        texts = value if isinstance(value, (list, tuple, set, frozenset)) else value.keys()
        for item in texts:
            if isinstance(item, str) and len(item) > MAX_WORD_CHARS:
                raise AttnKitError(f"{method_id}: {f.name} has an entry of {len(item)} characters; words and "
                                   f"phrases are at most {MAX_WORD_CHARS}")
