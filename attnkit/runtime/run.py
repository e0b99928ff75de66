"""The library's runtime for diffusers pipelines: :class:`Run`.

A :class:`Run` is made for one generation call and owns all of its state: the token map of the prompt, the layers
with their query grids, the step clock, the methods' controllers and their reports. Nothing lives at module or class
level, so two generations on two pipelines in two threads cannot interfere. Its parts, one job each: attaching and
restoring (:mod:`.install`, :mod:`.claims`), the step clock shared with the hosts (:mod:`.clock`), the CFG rows of
each call (:mod:`.calls`), routing each layer call to one attention event (:mod:`attnkit.core.engine`, read by the
processor in :mod:`attnkit.core.processor`), gradient passes (:mod:`.gradients`); :mod:`.drive` drives a pipeline
call with it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterable, Iterator

import torch

from ..core import engine
from ..core.engine import Event, GradPass
from ..core.layers import LayerInfo, discover_layers, grid_for
from ..core.processor import PLAIN_PROCESSORS, LayerProcessor, call_arg
from ..core.steps import StepInfo
from ..core.tokens import PromptTokens, prompt_tokens
from ..errors import AttnKitError, StepCallbackError, UnsupportedModelError, check_stop
from ..methods.base import Controller, Method
from ..models import denoiser_of, family_of
from .calls import Call, Captured, describe_call
from .claims import claim, release
from .clock import Steps
from .contract import Report
from .gradients import gradient_pass
from .install import Installation

logger = logging.getLogger("attnkit")


class Run:
    """State of one generation call with attnkit attached.

    Args:
        pipe: a Stable Diffusion 1.x/2.x, SDXL or Flux diffusers pipeline.
        methods: configured methods (:mod:`attnkit.methods`); none is allowed (attached-but-idle).
        prompt: the prompt the pipeline will be called with; required when a method targets words.
        max_sequence_length: Flux's T5 length, if not the pipeline default (512).
        on_step: called with each finished :class:`StepInfo` (progress bars).
        prompt_2: SDXL's second prompt, if the call passes one (words are then refused unless it equals prompt).
        target_prompt: the prompt the first one is edited into (Prompt-to-Prompt: the call's batch holds both).
        sequences: ``(source, target)`` :class:`~attnkit.methods.p2p.Keys` describing the text keys of the two
            prompts, when they are not the tokenizer's plain encoding (DPL's dynamic tokens); built from
            ``prompt``/``target_prompt`` otherwise.
        cfg: whether the denoiser's batch is ``[unconditional; conditional]``; ``None`` asks the pipeline (its
            ``do_classifier_free_guidance``). Loops that call the denoiser themselves say it.
        num_steps: the number of steps of the run, for loops that call the denoiser themselves (default: the
            pipeline's scheduler).
        on_work: called as ``on_work(step, what, done, total)`` inside a step's own loops (a latent-optimising
            method's refinement tries or iterations), before each pass: sub-progress for long steps.
        stop: a ``threading.Event`` (or a callable returning ``True``); when set, the run raises
            :class:`~attnkit.errors.Interrupted` at the next step end or inner iteration, whichever comes first.
    """

    def __init__(
        self,
        pipe,
        methods: Iterable[Method] = (),
        prompt: str | None = None,
        max_sequence_length: int | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        prompt_2: str | None = None,
        target_prompt: str | None = None,
        sequences: tuple | None = None,
        cfg: bool | None = None,
        num_steps: int | None = None,
        on_work: Callable[[StepInfo, str, int, int], None] | None = None,
        stop=None,
    ):
        self.pipe = pipe
        self.on_work = on_work
        self.stop = stop
        #: who holds the pipeline's claim for this run (``attach`` claims before the run is built)
        self._owner: object = self
        self.prompt_2 = prompt_2
        if target_prompt is not None and not isinstance(target_prompt, str):
            raise AttnKitError(f"target_prompt must be a string, got {type(target_prompt).__name__}")
        self.target_prompt = target_prompt
        self.sequences = sequences
        self.cfg = cfg
        self.num_steps = num_steps
        self._bypass = False
        self._grid_of_tokens: tuple[int, tuple[int, int]] | None = None  # Flux: token count -> latent grid
        #: the denoiser call in progress: ``{"args": ..., "kwargs": ...}`` as the denoiser received them (methods that
        #: need the call's timestep, guidance or pooled text embedding read them here).
        self.call_inputs: dict[str, Any] = {}
        self.family = family_of(pipe)
        self.denoiser = denoiser_of(pipe)
        self.prompt = prompt
        if isinstance(prompt, (list, tuple)):
            raise AttnKitError(
                f"attnkit takes one prompt per call, got a list of {len(prompt)}; call once per prompt and use "
                "num_images_per_prompt for several images"
            )
        self.methods = check_methods(methods)
        ids = [m.id for m in self.methods]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise AttnKitError(f"method {', '.join(dupes)} is given twice; give each method once")
        self.max_sequence_length = max_sequence_length
        self._tokens: PromptTokens | None = None
        self.layers: list[LayerInfo] = discover_layers(self.denoiser)
        self.latent_hw: tuple[int, int] | None = None
        self.on_step = on_step
        self.report = Report()
        self.controllers: list[Controller] = [m.controller(self) for m in self.methods]
        #: per layer index, what the current denoiser call does there (``None``: delegate untouched).
        self.routes: list[Event | None] = [None] * len(self.layers)
        #: the step clock (shared with the hosts' runs)
        self.clock = Steps(self.controllers)
        self._call: Call | None = None
        self._cond_key: list = [None]  # Flux: the conditional call's text
        #: the processors put on the denoiser and the ones to put back
        self.installation = Installation(self.denoiser)
        self._t0 = 0.0
        self._grad: GradPass | None = None
        self._cond_inputs: dict[str, Any] | None = None  # the conditional branch's denoiser inputs, for gradients
        self._capture = False  # generate()'s dry call: stop at the first denoiser call
        self._updaters = [c for c in self.controllers if c.updates_latents]
        self._blenders = [c for c in self.controllers if c.edits_step_latents]

    @property
    def step(self) -> StepInfo | None:
        """The step in progress (``None`` between steps)."""
        return self.clock.step

    # ------------------------------------------------------------------------------------------------ tokens

    @property
    def tokens(self) -> PromptTokens:
        """Token maps of the prompt (built on first use)."""
        if self._tokens is None:
            if self.prompt is None:
                raise AttnKitError("this method targets words of the prompt: pass prompt=... to attach()")
            if self.prompt_2 not in (None, "", self.prompt) and self.family == "sdxl":
                raise AttnKitError(
                    "prompt_2 differs from prompt: SDXL's attention keys then mix two token sequences and a word "
                    "has no single position; leave prompt_2 unset (or equal to prompt) when a method targets words"
                )
            self._tokens = prompt_tokens(self.pipe, self.prompt, self.family, self.max_sequence_length)
        return self._tokens

    def tokens_of(self, text: str) -> PromptTokens:
        """Token maps of ``text`` as this pipeline tokenises it."""
        return prompt_tokens(self.pipe, text, self.family, self.max_sequence_length)

    def encode_text(self, text: str) -> torch.Tensor:
        """The pipeline's own prompt embedding of ``text`` (``(1, T, C)``), as its encoder produces it."""
        pipe = self.pipe
        return pipe.encode_prompt(prompt=text, device=pipe._execution_device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=False)[0]

    def text_encoders(self) -> list[tuple[str, Any, slice]]:
        """``(token map name, tokenizer, feature slice)``: which tokenizer's positions apply to which features of
        the prompt embedding (SDXL concatenates its two encoders' features)."""
        pipe = self.pipe
        if self.family == "sdxl":
            first = pipe.text_encoder.config.hidden_size if pipe.text_encoder is not None else 0
            parts = []
            if pipe.text_encoder is not None:
                parts.append(("tokenizer", pipe.tokenizer, slice(0, first)))
            parts.append(("tokenizer_2", pipe.tokenizer_2, slice(first, None)))
            return parts
        return [("tokenizer", pipe.tokenizer, slice(None))]

    # ----------------------------------------------------------------------------------------- install/remove

    def install(self) -> None:
        """Wrap every attention processor and hook the denoiser. Raises if attnkit is already attached (the check
        and the claim are one atomic step: of two threads installing on one pipeline, exactly one proceeds)."""
        claim(self.denoiser, self._owner)
        try:
            self.installation.put_on(
                lambda current: {info.name: LayerProcessor(current[info.name], info, self) for info in self.layers},
                self._on_denoiser_call)
        except BaseException:
            release(self.denoiser, self._owner)
            raise
        self._t0 = time.perf_counter()

    def uninstall(self) -> None:
        """Put back the very same processor objects that were there before :meth:`install`; let every method undo
        what it added to the model."""
        errors = []
        for c in self.controllers:
            try:
                c.release()
            except Exception as exc:  # restore the processors first, then report
                errors.append(exc)
        if self.installation.take_off():
            release(self.denoiser, self._owner)
        if errors:
            raise errors[0]

    def finish(self) -> Report:
        """Let every controller write its report; called after a successful pipeline call."""
        self.report.timings["total_s"] = time.perf_counter() - self._t0
        self.report.steps = self.clock.next_index
        self.report.grid = self.latent_hw
        for c in self.controllers:
            c.finish()
            self.report.methods[c.method.id] = c.report
            self.report.warnings.extend(f"{c.method.id}: {w}" for w in c.report.warnings)
        for w in self.report.warnings:
            logger.warning(w)
        return self.report

    # ---------------------------------------------------------------------------------------------- steps

    def callback(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """The pipeline's ``callback_on_step_end``: ends the current step.

        Returns ``{}``, or ``{"latents": ...}`` when a latent-optimising method updated the latents for the next step
        (that needs ``callback_on_step_end_tensor_inputs=["latents"]``, see :meth:`call_kwargs`).
        """
        if self.step is None or self.step.index != step_index:
            raise StepCallbackError(
                f"the pipeline reported the end of step {step_index} but attnkit saw no denoiser call for it; "
                "pass run.callback as callback_on_step_end to the same pipeline call"
            )
        step = self.clock.end()
        self.routes = [None] * len(self.layers)
        if self.on_step is not None:
            self.on_step(step)
        check_stop(self.stop)
        count = step.count
        following = self.clock.next_index
        out: dict[str, Any] = {}
        needs_latents = self._blenders or (self._updaters and following < count)
        if needs_latents and "latents" not in callback_kwargs:
            raise StepCallbackError(
                "a method that changes the latents (latent optimisation, local blend) needs the latents at each step "
                "end: call the pipeline with "
                "**run.call_kwargs() (or callback_on_step_end_tensor_inputs=['latents'])"
            )
        if self._blenders:
            latents = callback_kwargs["latents"]
            for c in self._blenders:
                latents = c.step_latents(latents, step)
            out["latents"] = latents
        if self._updaters and following < count:
            timesteps = self.pipe.scheduler.timesteps
            nxt = StepInfo(following, count, float(timesteps[following]))
            latents = out.get("latents", callback_kwargs["latents"])
            out["latents"] = self.update_latents(latents, nxt, timesteps[following])
        return out

    # ------------------------------------------------------------------------------ for loops driven by hand

    def end_step(self, latents: torch.Tensor | None = None) -> torch.Tensor | None:
        """End the step the last denoiser call began, in a loop that calls the denoiser itself (inversion, editing,
        training), as a pipeline's step callback would; returns ``latents`` as the methods left them for the next
        step (a latent-optimising or blending method may change them)."""
        if self.step is None:
            raise StepCallbackError("end_step() was called with no denoiser call in the step; call the denoiser first")
        out = self.callback(self.pipe, self.step.index, self.step.timestep,
                            {"latents": latents} if latents is not None else {})
        return out.get("latents", latents)

    @property
    def installed(self) -> bool:
        """Whether attnkit's processors are on the denoiser now."""
        return self.installation.active

    @property
    def step_count(self) -> int:
        """The run's number of steps (the pipeline's denoiser steps; ``num_steps`` when given)."""
        return self._count()

    @property
    def in_own_pass(self) -> bool:
        """Whether the denoiser is running one of attnkit's own passes (a gradient pass, generate()'s dry call),
        which end early by design: a host watching for failed denoiser calls ignores those."""
        return self._grad is not None or self._capture

    @property
    def text_length(self) -> int | None:
        """Text tokens of the denoiser call in progress (Flux's joint sequence: where the image tokens start)."""
        return self._call.text_len if self._call is not None else None

    def denoiser_called(self, module, args, kwargs) -> None:
        """Tell the run of a denoiser call it did not see (a host that installs at the first call, inside it)."""
        self._on_denoiser_call(module, args, kwargs)

    def call_kwargs(self, user_callback=None) -> dict:
        """Keyword arguments that wire this run into a pipeline call: ``pipe(prompt, **run.call_kwargs())``."""
        kwargs: dict[str, Any] = {"callback_on_step_end": self.chained_callback(user_callback)}
        inputs = list(getattr(user_callback, "tensor_inputs", None) or [])
        if (self._updaters or self._blenders) and "latents" not in inputs:
            inputs.append("latents")
        if inputs:
            kwargs["callback_on_step_end_tensor_inputs"] = inputs
        return kwargs

    def work(self, step: StepInfo, what: str, done: int, total: int) -> None:
        """A method's inner loop is about to run pass ``done`` (0-based) of at most ``total`` at ``step``: stop if
        asked (:class:`~attnkit.errors.Interrupted`), then tell ``on_work``."""
        check_stop(self.stop)
        if self.on_work is not None:
            self.on_work(step, what, done, total)

    def update_latents(self, latents: torch.Tensor, step: StepInfo, timestep) -> torch.Tensor:
        """Let every latent-optimising method update ``latents`` before ``step`` runs."""
        if self._cond_inputs is None:
            raise AttnKitError("no conditional denoiser call was seen yet; cannot optimise the latents")
        self._cond_inputs["timestep"] = timestep
        for c in self._updaters:
            with c.timed("update_s"):
                latents = c.update_latents(latents, step)
        return latents

    def gradient_maps(self, controller: Controller, latent: torch.Tensor, step: StepInfo, image: int = 0,
                      early_stop: bool = True, text: torch.Tensor | None = None,
                      timestep=None, scale_input: bool = True) -> dict[int, torch.Tensor]:
        """Text-attention probabilities of ``controller.prob_layers`` as functions of ``latent``, with gradients.

        Runs the denoiser on ``latent`` (``(1, C, h, w)``, part of the caller's autograd graph) with the conditional
        embeddings of image ``image``, at ``step``. The forward stops after the last layer the loss reads
        (``early_stop``); the gradient is the same as with the full forward. Call under ``torch.enable_grad()``
        (and outside inference mode).

        ``text`` (``(1, T, C)``, possibly part of the graph: gradients to prompt embeddings) and ``timestep`` replace
        the conditioning of the last conditional denoiser call; loops that call the denoiser themselves give both
        (and ``scale_input=False`` when their sampler does not scale the denoiser's input, as DDIM).

        Returns:
            ``{layer index: (1, heads, N, T) probabilities}``.
        """
        inputs = self._cond_inputs
        if inputs is None and (text is None or timestep is None):
            raise AttnKitError("no conditional denoiser call was seen yet; cannot compute attention gradients")
        inputs = inputs or {"added": None, "cross_attention_kwargs": None}
        rows = slice(image, image + 1)
        text = inputs["text"][rows].clone() if text is None else text
        added = {k: v[rows].clone() for k, v in inputs["added"].items()} if inputs["added"] else None
        t = inputs["timestep"] if timestep is None else timestep
        t = t.clone() if torch.is_tensor(t) else t
        scheduler = self.pipe.scheduler
        sample = scheduler.scale_model_input(latent, t) if scale_input and hasattr(scheduler, "scale_model_input") \
            else latent
        return gradient_pass(self, GradPass(controller, step, set(controller.prob_layers), early_stop),
                             lambda: self.denoiser(sample, t, encoder_hidden_states=text, added_cond_kwargs=added,
                                                   cross_attention_kwargs=inputs["cross_attention_kwargs"],
                                                   return_dict=False))

    def chained_callback(self, user_callback=None):
        """``callback_on_step_end`` that calls ``user_callback`` (if any), then ends the step with what it returned
        (so latent-optimising methods update the latents the next step will really use); returns both dicts merged."""
        if user_callback is None:
            return self.callback

        def callback(pipe, step_index, timestep, callback_kwargs):
            theirs = user_callback(pipe, step_index, timestep, callback_kwargs) or {}
            ours = self.callback(pipe, step_index, timestep, {**callback_kwargs, **theirs})
            return {**theirs, **ours}

        return callback

    @contextlib.contextmanager
    def bypass(self) -> Iterator[None]:
        """Denoiser calls inside go straight to the original processors and are no step of the run (loops that
        call the denoiser for their own purposes while attached, e.g. null-text optimisation)."""
        saved, self._bypass = self._bypass, True
        routes, self.routes = self.routes, [None] * len(self.layers)
        try:
            yield
        finally:
            self._bypass = saved
            self.routes = routes

    def _count(self) -> int:
        if self.num_steps:
            return int(self.num_steps)
        count = getattr(self.pipe, "_num_timesteps", None)
        if not count:
            count = len(getattr(self.pipe.scheduler, "timesteps", ()) or ())
        return int(count or 1)

    def _flux_grid(self, sample, img_ids) -> tuple[int, int]:
        """The latent grid of a Flux call, read from its position ids once per token count (not every call)."""
        tokens = int(sample.shape[1])
        if self._grid_of_tokens is not None and self._grid_of_tokens[0] == tokens:
            return self._grid_of_tokens[1]
        if img_ids is not None:
            ids = img_ids[0] if img_ids.ndim == 3 else img_ids
            grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        else:
            side = int(round(tokens ** 0.5))
            grid = (side, tokens // side)
        self._grid_of_tokens = (tokens, grid)
        return grid

    def _on_denoiser_call(self, module, args, kwargs):
        if self._bypass and self._grad is None:
            return None
        if self._grad is not None:
            self._route_grad(call_arg(args, kwargs, "encoder_hidden_states", 2))
            return None
        if self.family == "flux":
            sample = call_arg(args, kwargs, "hidden_states", 0)
            text = call_arg(args, kwargs, "encoder_hidden_states", 1)
            timestep = call_arg(args, kwargs, "timestep", 3)
            latent_hw = self._flux_grid(sample, kwargs.get("img_ids"))
        else:
            sample = call_arg(args, kwargs, "sample", 0)
            timestep = call_arg(args, kwargs, "timestep", 1)
            text = call_arg(args, kwargs, "encoder_hidden_states", 2)
            latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        # one dispatched operation (the scalar read) is all an idle run adds to a denoiser call
        if not torch.is_tensor(timestep):
            t = float(timestep)
        else:
            t = timestep.item() if timestep.ndim == 0 else timestep[(0,) * timestep.ndim].item()

        if self._capture:
            self._capture_first_call(sample, text, timestep, kwargs)
        if self.latent_hw is None:
            self._bind(latent_hw)
        elif latent_hw != self.latent_hw:
            raise AttnKitError(
                f"the latent size changed within one run ({self.latent_hw} -> {latent_hw}); run attnkit once per "
                "resolution (e.g. separately for a hires-fix pass)"
            )

        if self.step is None:
            self.clock.begin(self.clock.next_index, self._count(), t)
        elif t != self.step.timestep:
            raise StepCallbackError(
                "the pipeline moved to a new timestep without calling attnkit's step callback; call the pipeline "
                "with **run.call_kwargs() inside `with attnkit.attach(...) as run` (callback_on_step_end=run.callback)"
            )

        self._call = describe_call(self.family, self._cfg(), sample, text, self._cond_key)
        self.call_inputs = {"args": args, "kwargs": kwargs}
        if self._updaters and self._call.cond_rows is not None:
            self._keep_cond_inputs(sample, text, timestep, kwargs)
        self._route()
        return None

    def _keep_cond_inputs(self, sample, text, timestep, kwargs) -> None:
        """Remember the conditional branch's inputs, for the gradient passes of latent-optimising methods."""
        rows = self._call.cond_rows
        added = kwargs.get("added_cond_kwargs") or {}
        self._cond_inputs = {
            "text": text[rows].detach(), "timestep": timestep, "latent_shape": tuple(sample[rows].shape),
            "dtype": sample.dtype, "device": sample.device,
            "added": {k: v[rows].detach() for k, v in added.items() if torch.is_tensor(v)},
            "cross_attention_kwargs": kwargs.get("cross_attention_kwargs"),
        }

    def _capture_first_call(self, sample, text, timestep, kwargs) -> None:
        self._call = describe_call(self.family, self._cfg(), sample, text, self._cond_key)
        self._keep_cond_inputs(sample, text, timestep, kwargs)
        raise Captured

    def _route_grad(self, text) -> None:
        """Routes of a gradient pass: the other methods' text, probability and replace hooks act as in any call; the
        pass's method reads its layers through the pass (no reader is called)."""
        grad = self._grad
        others = [c for c in self.controllers if c is not grad.controller]
        touches = [c.layers_at(grad.step)._replace(read=frozenset()) for c in others]
        routes = engine.events(others, touches, len(self.layers), True)
        for index in grad.controller.prob_layers:
            if routes[index] is None:
                routes[index] = Event()
        self.routes = routes
        self._call = Call(slice(0, 1), int(text.shape[1]))

    def _cfg(self) -> bool:
        return self.cfg if self.cfg is not None else bool(getattr(self.pipe, "do_classifier_free_guidance", False))

    def bind(self, latent_hw: tuple[int, int]) -> None:
        """Tell the run its latent size before any denoiser call (loops that start with gradient passes)."""
        if self.latent_hw is None:
            self._bind(tuple(int(x) for x in latent_hw))
        elif tuple(latent_hw) != self.latent_hw:
            raise AttnKitError(f"the run is bound to a {self.latent_hw} latent, not {tuple(latent_hw)}")

    def _bind(self, latent_hw: tuple[int, int]) -> None:
        self.latent_hw = latent_hw
        self.layers = [info.with_grid(grid_for(info, latent_hw)) for info in self.layers]
        for c in self.controllers:
            c.bind(self.layers, latent_hw)
        engine.claim_layers(self.controllers)
        for c in self.controllers:  # layers this adapter computes itself must run a processor it reproduces
            for index in sorted(c.text_layers | c.edit_layers):
                layer = self.layers[index]
                name = type(self.installation.saved[layer.name]).__name__ if self.installation.active else "AttnProcessor2_0"
                if name not in PLAIN_PROCESSORS:
                    raise UnsupportedModelError(
                        f"{c.method.id} changes the attention of {layer.module}, which has a {name} processor "
                        "(IP-Adapter or custom) whose work it would drop; remove that processor or turn "
                        f"{c.method.id} off"
                    )
                if index in c.text_layers and self.denoiser.get_submodule(layer.module).norm_cross:
                    raise UnsupportedModelError(
                        f"{c.method.id} rewrites the text keys/values, but {layer.module} normalises the text first"
                    )

    def original_processor(self, layer: LayerInfo):
        """The processor ``layer`` had before attnkit was attached."""
        if not self.installation.active:
            raise AttnKitError("the run is not attached")
        return self.installation.saved[layer.name]

    def _route(self) -> None:
        conditional = self._call.cond_rows is not None
        touches = [c.layers_at(self.step) if (conditional or c.attends_every_call) else engine.Touch()
                   for c in self.controllers]
        self.routes = engine.events(self.controllers, touches, len(self.layers), conditional)


def check_methods(methods) -> list:
    """``methods`` as a list of configured methods, or a clear error (a single method, a class, a string...)."""
    if isinstance(methods, Method):
        raise AttnKitError(f"methods is a list: pass [{type(methods).__name__}(...)], not {type(methods).__name__}(...)")
    if isinstance(methods, (str, bytes, dict)) or not hasattr(methods, "__iter__"):
        raise AttnKitError(f"methods must be a list of attnkit.methods objects, got {type(methods).__name__}")
    methods = list(methods)
    for m in methods:
        if not isinstance(m, Method):
            hint = " (call it: Observe(), not Observe)" if isinstance(m, type) and issubclass(m, Method) else ""
            raise AttnKitError(f"methods must be attnkit.methods objects such as Observe(...), got "
                               f"{type(m).__name__}{hint}")
    return methods
