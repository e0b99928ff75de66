"""The step clock shared by every runtime: which step the denoiser calls belong to, and the controllers told when
one begins and ends. The library's run begins a step at the first denoiser call after the previous step's callback
and ends it in the callback; a host's run moves to the index its sampler reports (:meth:`Steps.at`)."""

from __future__ import annotations

from ..core.steps import StepInfo


class Steps:
    """The current step of a run and the controllers that follow it.

    Attributes:
        step: the step in progress, ``None`` between steps.
        next_index: the index the next step gets when it begins by itself.
        last_index: the highest index begun so far (-1: none).
    """

    def __init__(self, controllers):
        self.controllers = controllers
        self.step: StepInfo | None = None
        self.next_index = 0
        self.last_index = -1

    def begin(self, index: int, count: int, timestep: float) -> StepInfo:
        """Begin step ``index`` of ``count``: every controller's ``begin_step``."""
        self.step = StepInfo(index, count, timestep)
        self.last_index = max(self.last_index, index)
        for c in self.controllers:
            c.begin_step(self.step)
        return self.step

    def end(self) -> StepInfo:
        """End the step in progress: every controller's ``end_step``; the next step gets the following index."""
        step = self.step
        for c in self.controllers:
            c.end_step(step)
        self.step = None
        self.next_index = step.index + 1
        return step

    def at(self, index: int, count: int, timestep: float) -> tuple[StepInfo, bool]:
        """The step of a denoiser call a host places at ``index``: ends the previous step and begins this one when the
        index changes. Returns ``(step, whether it began now)``."""
        if self.step is not None and self.step.index == index:
            return self.step, False
        if self.step is not None:
            self.end()
        return self.begin(index, count, timestep), True
