"""The field table: every user-facing option of every method, once. Each method's rows live on its class, beside its
config (``Method.fields``); this module defines a row and gathers them (:func:`fields_for`, ``FIELDS``).

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
        host_model: offered by ComfyUI's nodes (see the attribute).
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
    #: offered where a host runs the model itself (ComfyUI's nodes); ``False`` for options only the diffusers runtime
    #: honours, so no node shows a setting that could only be refused
    host_model: bool = True

    @property
    def key(self) -> str:
        """The infotext / node input key, e.g. ``attend_excite_scale_factor``."""
        return f"{self.method}_{self.name}"


def _table() -> tuple[Field, ...]:
    from . import REGISTRY

    return tuple(f for method in REGISTRY.values() for f in method.fields)


def __getattr__(name):
    """``FIELDS``: every row of every registered method, in registry order (each method's rows live on its class,
    beside its config, as ``Method.fields``)."""
    if name == "FIELDS":
        return _table()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: largest side of a layout mask accepted in a preset
MAX_MASK_SIDE = 256


def fields_for(method_id: str) -> list[Field]:
    """The table rows of one method, in order (``Method.fields`` of the registered method; none for methods that
    are not in presets and the panel, such as ``p2p``)."""
    from . import REGISTRY

    method = REGISTRY.get(method_id)
    return list(method.fields) if method is not None else []
