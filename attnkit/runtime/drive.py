"""Driving a pipeline call with a run: :func:`attach` (one pipeline call, everything restored after) and
:func:`generate` (seed, step callback, the first step's latent update, progress, Stop)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from ..core.steps import StepInfo
from ..errors import AttnKitError, shown
from ..methods.base import Method
from ..models import denoiser_of
from .calls import Captured
from .claims import claim, release
from .contract import Report
from .run import Run, check_methods


@contextlib.contextmanager
def attach(
    pipe,
    methods: Iterable[Method] = (),
    prompt: str | None = None,
    max_sequence_length: int | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    prompt_2: str | None = None,
    target_prompt: str | None = None,
    on_work: Callable[[StepInfo, str, int, int], None] | None = None,
    stop=None,
) -> Iterator[Run]:
    """Attach attnkit to ``pipe`` for one pipeline call; restore every processor afterwards, whatever happens.

    Wire the run into the pipeline call with ``**run.call_kwargs()`` (its step callback, chained with yours if you
    pass one, and the callback tensors latent-optimising methods need)::

        with attnkit.attach(pipe, [Observe(words=["car"])], prompt=prompt) as run:
            image = pipe(prompt, **run.call_kwargs()).images[0]
        maps = run.report["observe"].maps

    Raises:
        AlreadyAttachedError: attnkit is already attached to this pipeline.
        WordNotFoundError: a method's word is not in ``prompt``.
    """
    owner = object()
    denoiser = denoiser_of(pipe)
    claim(denoiser, owner)  # before anything reads or encodes with the pipeline a running call is using
    try:
        run = Run(pipe, methods, prompt=prompt, max_sequence_length=max_sequence_length, on_step=on_step,
                  prompt_2=prompt_2, target_prompt=target_prompt, on_work=on_work, stop=stop)
        run._owner = owner
        run.install()
    except BaseException:
        release(denoiser, owner)
        raise
    try:
        yield run
    finally:
        try:
            run.uninstall()
        finally:
            release(denoiser, owner)
    run.finish()


@dataclass
class Result:
    """What :func:`generate` returns.

    Attributes:
        images: the generated PIL images.
        report: the run's :class:`Report` (per-method maps, losses, warnings, timings).
        prompt: the prompt.
        seed: the seed used (``None`` when none was given).
    """

    images: list
    report: Report
    prompt: str
    seed: int | None = None

    def heatmaps(self, method: str = "observe", index: int = 0):
        """A labelled grid of the image and each word's heatmap over it (see :func:`attnkit.viz.heatmap_grid`)."""
        from ..viz import heatmap_grid

        report = self.report[method]
        if not report.maps:
            raise AttnKitError(f"{method} recorded no maps in this run (see report warnings)")
        return heatmap_grid(self.images[index], {w: m[index] for w, m in report.maps.items()})


def generate(
    pipe,
    prompt: str,
    methods: Iterable[Method] = (),
    seed: int | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_work: Callable[[StepInfo, str, int, int], None] | None = None,
    stop=None,
    settings: str | None = None,
    **pipe_kwargs,
) -> Result:
    """Generate with attnkit methods active.

    Args:
        pipe: an SD 1.x/2.x, SDXL or Flux diffusers pipeline.
        prompt: the prompt (one string).
        methods: configured methods, e.g. ``[Observe(words=["car", "bird"])]``; empty gives the plain pipeline.
        seed: makes the run reproducible (a CPU ``torch.Generator`` seeded with it, so results match across
            devices); ignored when ``generator`` is passed in ``pipe_kwargs``.
        on_step: called with each finished :class:`StepInfo`.
        on_work: called as ``on_work(step, what, done, total)`` before each pass of a method's loop inside a step
            (Attend-and-Excite's refinement tries, A-STAR's iterations): sub-progress for long steps.
        stop: a ``threading.Event`` (or a callable returning ``True``): when set, the call raises
            :class:`~attnkit.errors.Interrupted` at the next step end or inner pass; the pipeline is left as it was.
        settings: ``"paper"``: each method at its paper's settings (:attr:`~attnkit.methods.Method.paper`; options
            set on the method object win) and the call's steps, guidance and sampler at the paper's where
            ``pipe_kwargs`` gives none.
        **pipe_kwargs: passed to the pipeline (``num_inference_steps``, ``guidance_scale``, ``height``...). A
            ``callback_on_step_end`` of yours is called after attnkit's.

    Returns:
        :class:`Result` with ``.images`` and ``.report``.
    """
    if "prompt" in pipe_kwargs:
        raise AttnKitError("pass the prompt once, as generate(pipe, prompt, ...)")
    sampler = None
    if settings is not None:
        methods, sampler = at_paper_settings(methods, settings, pipe_kwargs)
    check_call(pipe_kwargs)
    if seed is not None and "generator" not in pipe_kwargs:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise AttnKitError(f"seed must be an integer from 0 to 2**64 - 1, got {shown(seed)}")
        pipe_kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
    user_callback = pipe_kwargs.pop("callback_on_step_end", None)
    user_inputs = pipe_kwargs.pop("callback_on_step_end_tensor_inputs", None)
    from ..samplers import using_sampler

    with using_sampler(pipe, sampler), \
            attach(pipe, methods, prompt=prompt, max_sequence_length=pipe_kwargs.get("max_sequence_length"),
                   on_step=on_step, prompt_2=pipe_kwargs.get("prompt_2"), on_work=on_work, stop=stop) as run:
        wiring = run.call_kwargs(user_callback)
        if user_inputs:
            wiring["callback_on_step_end_tensor_inputs"] = sorted(
                set(user_inputs) | set(wiring.get("callback_on_step_end_tensor_inputs", []))
            )
        if run._updaters:
            pipe_kwargs["latents"] = first_step_latents(run, prompt, pipe_kwargs)
        output = pipe(prompt=prompt, **wiring, **pipe_kwargs)
    return Result(images=list(output.images), report=run.report, prompt=prompt, seed=seed)


#: the most denoising steps a call may ask for (the schedulers' training schedule has 1000)
MAX_STEPS = 1000


def check_call(kwargs: dict) -> None:
    """The pipeline arguments a user types, checked before anything runs: steps a whole number from 1 to
    :data:`MAX_STEPS`, height and width whole multiples of 8 from 8 up, guidance a finite number."""
    steps = kwargs.get("num_inference_steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS):
        raise AttnKitError(f"num_inference_steps must be a whole number from 1 to {MAX_STEPS}, got {shown(steps)}")
    for name in ("height", "width"):
        value = kwargs.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 8 or value % 8:
            raise AttnKitError(f"{name} must be a positive multiple of 8 (pixels), got {shown(value)}")
    scale = kwargs.get("guidance_scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale
                              or abs(scale) == float("inf")):
        raise AttnKitError(f"guidance_scale must be a finite number, got {shown(scale)}")


def first_step_latents(run: Run, prompt: str, pipe_kwargs: dict) -> torch.Tensor:
    """The latents of step 0, already updated by the latent-optimising methods (what :func:`generate` passes
    as ``latents=``, divided by the scheduler's initial noise sigma).

    The step callback updates the latents of every later step; step 0 comes before any callback. So a dry call
    of the pipeline (with a copy of the generator) stops at its first denoiser call to learn the conditioning and
    the first timestep; the initial noise is then drawn exactly as the pipeline draws it (same function, shape,
    generator state), updated, and handed to the real call, which draws nothing more for it.
    """
    from diffusers.utils.torch_utils import randn_tensor

    generator = pipe_kwargs.get("generator")
    dry = dict(pipe_kwargs)
    if isinstance(generator, torch.Generator):
        dry["generator"] = torch.Generator(generator.device).set_state(generator.get_state())
    run._capture = True
    try:
        run.pipe(prompt=prompt, **dry)
    except Captured:
        pass
    finally:
        run._capture = False
    inputs = run._cond_inputs
    if inputs is None:
        raise AttnKitError("the pipeline made no conditional denoiser call; nothing to optimise")
    noise = pipe_kwargs.get("latents")
    if noise is None:
        noise = randn_tensor(inputs["latent_shape"], generator=generator, device=inputs["device"],
                             dtype=inputs["dtype"])
    if run.latent_hw is None:
        run._bind(tuple(int(x) for x in inputs["latent_shape"][-2:]))
    scheduler = run.pipe.scheduler
    sigma = scheduler.init_noise_sigma
    latents = noise.to(inputs["device"]) * sigma
    t0 = scheduler.timesteps[0]
    latents = run.update_latents(latents, StepInfo(0, len(scheduler.timesteps), float(t0)), t0)
    return latents / sigma


def at_paper_settings(methods, settings: str, pipe_kwargs: dict) -> tuple[list, str | None]:
    """``methods`` at their papers' settings (an option set on a method to other than its default wins over the
    paper's) and the call's steps and guidance at the papers' where ``pipe_kwargs`` gives none; returns
    ``(methods, the paper's sampler or None)``."""
    import dataclasses

    if settings != "paper":
        raise AttnKitError(f"settings={settings!r}; the only named settings are 'paper'")
    out, run = [], {}
    for m in check_methods(methods):
        if not m.paper:
            out.append(m)
            continue
        given = {}
        for f in dataclasses.fields(m.config):
            value = getattr(m.config, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if value != default:
                given[f.name] = value
        out.append(type(m)(settings="paper", **given))
        for key, value in m.paper_run.items():
            run.setdefault(key, value)
    if "steps" in run:
        pipe_kwargs.setdefault("num_inference_steps", run["steps"])
    if "guidance_scale" in run:
        pipe_kwargs.setdefault("guidance_scale", run["guidance_scale"])
    return out, run.get("sampler")
