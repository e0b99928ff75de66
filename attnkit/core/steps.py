"""Where a run is in the denoising loop.

Steps advance from the pipeline's step callback (``callback_on_step_end``), never by counting layer calls. Progress
is ``index / count``: 0 at the first step, ``(count - 1) / count`` at the last. Step windows are fractions
``(start, stop)`` with ``0 <= start < stop <= 1``; step ``i`` is inside when ``start <= i / count < stop``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AttnKitError


@dataclass(frozen=True)
class StepInfo:
    """One denoising step.

    Attributes:
        index: 0-based step index.
        count: number of steps of the run.
        timestep: the scheduler's timestep for this step (as given to the denoiser).
    """

    index: int
    count: int
    timestep: float

    @property
    def progress(self) -> float:
        """``index / count`` in [0, 1)."""
        return self.index / max(self.count, 1)

    def within(self, window: tuple[float, float]) -> bool:
        """Whether this step falls inside the ``(start, stop)`` progress window."""
        return window[0] <= self.progress < window[1]


def check_window(window, name: str = "steps") -> tuple[float, float]:
    """Validate a progress window given by a user; returns it as a tuple of floats."""
    try:
        start, stop = (float(x) for x in window)
    except (TypeError, ValueError):
        raise AttnKitError(f"{name}={window!r} must be a pair (start, stop) of fractions, e.g. (0.0, 0.5)") from None
    if not 0.0 <= start < stop <= 1.0:
        raise AttnKitError(f"{name}={window!r} must satisfy 0 <= start < stop <= 1 (fractions of the run's steps)")
    return start, stop


def parse_range(text, label: str, example: str = "0-1 (the whole run) or 0-0.5 (the first half)",
                allow_comma: bool = True) -> tuple[float, float]:
    """A part of the run typed as from-to fractions, ``"0-0.5"`` (also ``"0 to 0.5"``; with ``allow_comma``
    ``"0, 0.5"``) -> ``(0.0, 0.5)``; a one-line error naming ``label`` otherwise."""
    import re

    number = r"\s*(\d*\.?\d+)\s*"
    separator = r"(?:-|–|to|,|;)" if allow_comma else r"(?:-|–|to)"
    match = re.fullmatch(number + separator + number, str(text or ""))
    if not match:
        raise AttnKitError(f"{label}: write from-to fractions of the run such as {example}, got {str(text)!r}")
    return (float(match.group(1)), float(match.group(2)))


def shown_step(step: StepInfo, requested: int) -> int:
    """The 1-based step to show a user who asked for ``requested`` steps when ``step`` has just finished.

    Some samplers make more denoiser steps than asked (PNDM: 21 for 20, its first step is taken twice); progress
    counts in the user's steps, so it never reads "step 21/20" or "/21"."""
    if requested <= 0 or step.count == requested:
        return step.index + 1
    return min(requested, max(1, round((step.index + 1) * requested / step.count)))


def work_text(what: str, done: int, total: int) -> str:
    """A method's inner pass in words: ``"refining, try 3 of at most 20"``, ``"optimising 2/5"``, ``"optimising"``."""
    if what == "refining":
        return f"refining, try {done + 1} of at most {total}"
    return f"{what} {done + 1}/{total}" if total > 1 else what


class Progress:
    """Overall progress of a job of ``passes`` runs of ``requested`` steps each, with an estimate of the time left.

    ``fraction(pass_no, step, part)`` is how much of the whole job is done when ``part`` (0..1) of ``step`` of pass
    ``pass_no`` is; ``eta(fraction)`` is the time left at the rate so far (``None`` before there is a rate)."""

    def __init__(self, requested: int, passes: int = 1, clock=None):
        import time

        self.requested, self.passes = int(requested), max(int(passes), 1)
        self._clock = clock or time.perf_counter
        self._start = self._clock()

    def fraction(self, pass_no: int, step: StepInfo, part: float = 1.0) -> float:
        within = (step.index + min(max(part, 0.0), 1.0)) / max(step.count, 1)
        return min((pass_no + within) / self.passes, 1.0)

    def eta(self, fraction: float) -> float | None:
        elapsed = self._clock() - self._start
        if fraction <= 0 or elapsed <= 0:
            return None
        return elapsed * (1 - fraction) / fraction

    def describe(self, fraction: float) -> str:
        """``" · about 12 s left"`` (or ``""`` with no estimate yet)."""
        left = self.eta(fraction)
        if left is None:
            return ""
        if left >= 90:
            return f" · about {left / 60:.0f} min left"
        return f" · about {max(left, 1):.0f} s left"
