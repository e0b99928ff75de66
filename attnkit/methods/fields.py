"""The field table: every user-facing option of every method, once.

The Gradio panel, preset validation, the webui infotext and the ComfyUI node inputs are generated from this table;
a test keeps it and the config dataclasses in agreement in both directions (every config field has a row, every row
names a config field, defaults agree). No UI library is imported here.

Kinds (how a value is typed, validated and shown):

========== ======================================== ==============================
kind       value                                     widget
========== ======================================== ==============================
bool       ``True``/``False``                        checkbox
int        integer in ``[minimum, maximum]``         slider
float      number in ``[minimum, maximum]``          slider
choice     one of ``choices``                        dropdown
words      list of words/phrases of the prompt       word picker
indices    list of token positions                   text (advanced)
window     ``(start, stop)`` progress fractions      text ``0-0.5`` (from-to)
windows    list of windows                           text ``0-0.5, 0.5-1`` (advanced)
grid       ``None`` (auto) or ``(h, w)``             dropdown: auto and common grids
thresholds ``{step: threshold}``                     text ``0: 0.05, 10: 0.5`` (advanced)
masks      ``{word: 0/1 grid}``                      not in the panel (Python and presets)
========== ======================================== ==============================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One option of one method.

    Attributes:
        method: the method id.
        name: the config dataclass field.
        label: what the panel shows.
        kind: see the module docstring.
        default: the config's default (checked by a test).
        help: one line for tooltips and node docs.
        minimum, maximum, step: range of ``int``/``float`` values; also the caps a shared preset is held to.
        choices: values of a ``choice``.
        advanced: shown folded in the panel.
        panel: shown in the panel at all (``masks`` is not).
        limit: most items in a list/dict value (words, windows, masks...).
    """

    method: str
    name: str
    label: str
    kind: str
    default: object
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    #: what the panel shows for each of ``choices`` (same order; empty: the values themselves)
    choice_labels: tuple = ()
    advanced: bool = False
    panel: bool = True
    limit: int = 32

    @property
    def key(self) -> str:
        """The infotext / node input key, e.g. ``attend_excite_scale_factor``."""
        return f"{self.method}_{self.name}"


FIELDS: tuple[Field, ...] = (
    # observe
    Field("observe", "words", "Words", "words", None,
          "words or phrases to map; empty: the picked words, or every word when none is picked"),
    Field("observe", "resolution", "Map resolution", "grid", None,
          "the grid the maps are averaged at; auto: the coarsest grid that still localises"),
    Field("observe", "steps", "Map steps", "windows", [(0.0, 1.0)],
          "one set of maps per part of the run, as from-to fractions: 0-1 the whole run, 0-0.5, 0.5-1 two halves",
          advanced=True, limit=8),
    # structured
    Field("structured", "parser", "Phrase parser", "choice", "rules",
          "how noun phrases are found (stanza and spacy need their models installed)",
          choices=("rules", "stanza", "spacy")),
    Field("structured", "phrases", "Phrases", "words", None,
          "noun phrases to use instead of the parser's, e.g. a red car, a white sheep; empty: the parser finds them"),
    Field("structured", "conjunction", "Conjunction mode", "bool", False,
          "many keys and one value (for 'A and B' prompts) instead of one key and many values"),
    Field("structured", "conjunction_first_key", "Conjunction first key", "choice", "official",
          "which text gives the first key: the official code's (every phrase substituted) or the paper's (the "
          "prompt itself)",
          choices=("official", "prompt"), choice_labels=("as the official code", "as the paper"), advanced=True),
    Field("structured", "steps", "Active steps", "window", (0.0, 1.0),
          "the part of the run in which it acts, as from-to fractions: 0-1 the whole run, 0-0.5 the first half",
          advanced=True),
    # attend_excite
    Field("attend_excite", "words", "Subject words", "words", None, "the subjects that must appear"),
    Field("attend_excite", "token_indices", "Token positions", "indices", None,
          "positions of the subject tokens instead of words, e.g. 2, 5 (the start token is 0, the first word 1)",
          advanced=True, limit=16),
    Field("attend_excite", "max_iter_to_alter", "Optimised steps", "int", 25,
          "the first n steps each nudge the latent once", minimum=0, maximum=200, step=1),
    Field("attend_excite", "thresholds", "Refinement thresholds", "thresholds", {0: 0.05, 10: 0.5, 20: 0.8},
          "step: threshold pairs, e.g. 0: 0.05, 10: 0.5; at those steps it retries until every subject's "
          "attention peak reaches the threshold", advanced=True, limit=16),
    Field("attend_excite", "scale_factor", "Step size", "float", 20.0, "scale of the latent update",
          minimum=0.5, maximum=100.0, step=0.5),
    Field("attend_excite", "attn_res", "Map resolution", "grid", None,
          "the grid of the maps the loss reads; auto: the image's size / 32", advanced=True),
    Field("attend_excite", "smoothing", "Smoothing", "choice", "diffusers",
          "how the maps are blurred before their peaks are read: diffusers' kernel (the reference), a true "
          "Gaussian, or none", choices=("diffusers", "gaussian", "none"), advanced=True),
    Field("attend_excite", "max_refinement_steps", "Refinement tries", "int", 20,
          "at most this many retries at each threshold step",
          minimum=0, maximum=50, step=1, advanced=True),
    # a_star
    Field("a_star", "words", "Concept words", "words", None, "the concepts to keep apart and alive"),
    Field("a_star", "token_indices", "Token positions", "indices", None,
          "positions of the concept tokens instead of words, e.g. 2, 5 (the start token is 0, the first word 1)",
          advanced=True, limit=16),
    Field("a_star", "tau", "Retention threshold", "float", 0.5,
          "fraction of a map's max that counts as the concept's area", minimum=0.05, maximum=0.95, step=0.05),
    Field("a_star", "scale_factor", "Step size", "float", 20.0, "scale of the latent update",
          minimum=0.5, maximum=100.0, step=0.5),
    Field("a_star", "steps", "Optimised steps", "window", (0.0, 1.0),
          "the part of the run that is optimised, as from-to fractions: 0-1 the whole run, 0-0.5 the first half"),
    Field("a_star", "iterations", "Iterations per step", "int", 1, "gradient steps per optimised step",
          minimum=1, maximum=20, step=1, advanced=True),
    Field("a_star", "attn_res", "Map resolution", "grid", None,
          "the grid of the maps the losses read; auto: the image's size / 32", advanced=True),
    Field("a_star", "smoothing", "Smoothing", "choice", "diffusers",
          "how the maps are blurred: diffusers' kernel (the reference), a true Gaussian, or none",
          choices=("diffusers", "gaussian", "none"), advanced=True),
    Field("a_star", "masks", "Layout masks", "masks", None, "one 0/1 grid per word, in place of retention masks",
          panel=False, limit=16),
    Field("a_star", "measure_after_update", "Measure loss after update", "bool", False,
          "one more forward per step, to report the loss after each update", advanced=True),
)

#: largest side of a layout mask accepted in a preset
MAX_MASK_SIDE = 256


def fields_for(method_id: str) -> list[Field]:
    """The table rows of one method, in order."""
    return [f for f in FIELDS if f.method == method_id]
