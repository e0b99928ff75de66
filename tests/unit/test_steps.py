"""What a user sees of progress: the step count asked for, inner passes in words, time left."""

from attnkit.core.steps import Progress, StepInfo, shown_step, work_text


def test_shown_step_counts_in_the_steps_asked_for():
    # PNDM takes 21 denoiser steps for 20: the user sees 1..20, never 21
    shown = [shown_step(StepInfo(i, 21, 0.0), 20) for i in range(21)]
    assert shown[0] == 1 and shown[-1] == 20 and max(shown) == 20
    assert all(b - a in (0, 1) for a, b in zip(shown, shown[1:]))
    assert [shown_step(StepInfo(i, 20, 0.0), 20) for i in range(20)] == list(range(1, 21))


def test_work_text():
    assert work_text("refining", 2, 20) == "refining, try 3 of at most 20"
    assert work_text("optimising", 1, 5) == "optimising 2/5"
    assert work_text("optimising", 0, 1) == "optimising"


def test_progress_spans_every_pass_and_estimates_time_left():
    now = [0.0]
    clock = Progress(10, passes=2, clock=lambda: now[0])
    assert clock.eta(0.0) is None and clock.describe(0.0) == ""
    half = clock.fraction(0, StepInfo(9, 10, 0.0))
    assert half == 0.5 and clock.fraction(1, StepInfo(9, 10, 0.0)) == 1.0
    assert clock.fraction(0, StepInfo(4, 10, 0.0), part=0.5) == 0.225
    now[0] = 30.0
    assert clock.eta(half) == 30.0 and clock.describe(half) == " · about 30 s left"
    now[0] = 300.0
    assert clock.describe(half) == " · about 5 min left"
