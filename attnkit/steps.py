"""Where a run is in the denoising loop.

Steps advance from the pipeline's step callback (``callback_on_step_end``), never by counting layer calls. Progress
is ``index / count``: 0 at the first step, ``(count - 1) / count`` at the last. Step windows are fractions
``(start, stop)`` with ``0 <= start < stop <= 1``; step ``i`` is inside when ``start <= i / count < stop``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AttnKitError


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
