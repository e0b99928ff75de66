"""attnkit in the webui family: SD.Next, Forge and A1111.

Host objects come in as arguments (the job's ``p``, SD.Next's options and step callback, A1111's callback
registry); nothing here imports a host. The single ``scripts/attnkit_webui.py`` file is glue around this module:

- :func:`detect_host` tells the hosts apart by the model object they hand to the job: a diffusers pipeline (SD.Next),
  ``forge_objects`` (Forge), an ldm ``model.diffusion_model`` (A1111).
- :class:`SDNextJob` attaches the diffusers runtime (:class:`attnkit.Run`) to ``p.sd_model`` for one pipeline call,
  chaining SD.Next's own step callback first (progress, interrupt, NaN checks keep working); every method runs.
- :class:`ForgeJob` clones ``forge_objects.unet`` and installs the attention patches of :mod:`attnkit.hostkernel`
  on the clone; :class:`A1111Job` swaps the ``forward`` of each ``attn2`` module instance for the same kernel while
  sampling runs. Both run ``observe`` and ``structured``; a latent-optimising method is reported and left out.
- Infotext: one compact ``AttnKit`` key (the preset's share code) plus readable mirror keys; :func:`expand_infotext`
  turns them back into one value per control for "PNG Info -> Send to txt2img".

Every job restores what it changed in :meth:`Job.restore` (idempotent), called at the end of sampling, in the
script's ``postprocess``, at the start of the next job and on script unload, so a failed job never leaves a patched
model behind.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import AttnKitError, UnsupportedModelError
from .hostkernel import PATCH_METHODS, HostRun, install_patches, strip_weights, unet_block_keys, unet_blocks
from .methods import REGISTRY
from .presets import Preset, PresetError
from .ui.fields import FIELDS, Field

logger = logging.getLogger(__name__)

TITLE = "AttnKit"
INFOTEXT_KEY = "AttnKit"
HOST_NAMES = {"sdnext": "SD.Next", "forge": "Forge", "a1111": "A1111"}


# ------------------------------------------------------------------------------------------------- controls


@dataclass(frozen=True)
class Control:
    """One webui control: its name in the script's argument list and its infotext key.

    ``field`` is the method option it edits (``None`` for the job-level controls and the method toggles).
    """

    name: str
    key: str
    kind: str
    field: Field | None = None
    method: str | None = None


def panel_rows() -> list[Field]:
    return [f for f in FIELDS if f.panel]


def controls() -> list[Control]:
    """The script's controls, in the order of its argument list."""
    out = [
        Control("enabled", INFOTEXT_KEY, "bool"),
        Control("words", "AttnKit words", "text"),
        Control("exact_tokens", "AttnKit exact tokens", "bool"),
        Control("hires", "AttnKit hires", "bool"),
        Control("adetailer", "AttnKit adetailer", "bool"),
    ]
    out += [Control(f"{m}_enabled", f"AttnKit {m}", "bool", method=m) for m in REGISTRY]
    out += [Control(f.key, f"AttnKit {f.method} {f.name}", f.kind, f, f.method) for f in panel_rows()]
    return out


@dataclass
class JobOptions:
    """Job-level switches.

    Attributes:
        exact_tokens: SD.Next: use its ``fixed`` prompt parser for this job, so the pipeline encodes the prompt
            string itself and token positions are exact (the user's parser setting is restored afterwards).
        hires: Forge/A1111: act in the hires-fix pass too.
        adetailer: Forge: act in ADetailer's inner passes too.
    """

    exact_tokens: bool = True
    hires: bool = False
    adetailer: bool = False


def read_args(args) -> tuple[bool, list, JobOptions, list[str]]:
    """``(enabled, methods, options, words)`` from the script's positional arguments.

    The arguments are the control values in :func:`controls` order. API callers may instead pass a preset (share
    code or JSON) first and optionally the words second: ``"alwayson_scripts": {"AttnKit": {"args": ["ak1...",
    "car, sheep"]}}``.
    """
    from .ui.panel import methods_from_controls

    args = list(args)
    if args and isinstance(args[0], (str, dict)) and not isinstance(args[0], bool):
        first = args[0]
        if isinstance(first, dict):
            preset = Preset.from_dict(first)
        elif first.strip().startswith("{"):
            preset = Preset.from_json(first)
        elif first.strip().startswith("ak"):
            preset = Preset.from_share_code(first.strip())
        else:
            raise PresetError("the first AttnKit argument must be the enabled flag, a preset share code or JSON")
        words = _words(args[1] if len(args) > 1 else "")
        return bool(preset.methods), preset.to_methods(words or None), JobOptions(), words
    specs = controls()
    if len(args) < len(specs):
        raise AttnKitError(
            f"AttnKit got {len(args)} arguments but has {len(specs)} controls; pass them all in order, or a preset "
            "share code as the only argument"
        )
    values = dict(zip((c.name for c in specs), args))
    options = JobOptions(bool(values["exact_tokens"]), bool(values["hires"]), bool(values["adetailer"]))
    words = _words(values["words"])
    if not values["enabled"]:
        return False, [], options, words
    enabled = {m: bool(values[f"{m}_enabled"]) for m in REGISTRY}
    per = {m: {} for m in REGISTRY}
    for c in specs:
        if c.field is not None:
            per[c.method][c.field.name] = values[c.name]
    return any(enabled.values()), methods_from_controls(enabled, per, words), options, words


def _words(text) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(w).strip() for w in text if str(w).strip()]
    return [w.strip() for w in str(text or "").split(",") if w.strip()]


# ------------------------------------------------------------------------------------------------- infotext


def infotext_params(methods, options: JobOptions | None = None) -> dict[str, str]:
    """What an enabled job writes into ``p.extra_generation_params``: the compact ``AttnKit`` share code and
    readable mirror keys (ignored on paste: the share code is the source of truth)."""
    preset = Preset.from_methods(methods)
    out = {INFOTEXT_KEY: preset.to_share_code(), "AttnKit methods": "+".join(m.id for m in methods)}
    words = sorted({w for m in methods for w in (getattr(m.config, "words", None) or [])})
    if words:
        out["AttnKit targets"] = "+".join(words)
    if options is not None:
        out["AttnKit exact tokens"] = str(bool(options.exact_tokens))
        out["AttnKit hires"] = str(bool(options.hires))
        out["AttnKit adetailer"] = str(bool(options.adetailer))
    return out


def expand_infotext(params: dict[str, Any]) -> None:
    """``on_infotext_pasted`` handler: turn the compact ``AttnKit`` entry into one key per control (in place).

    Without an ``AttnKit`` entry nothing is added, and the enabled control's mapping turns attnkit off.
    A broken share code is logged and leaves attnkit off instead of raising into the host's paste handler.
    """
    code = params.get(INFOTEXT_KEY)
    if not code:
        return
    try:
        preset = Preset.from_share_code(str(code).strip())
    except PresetError as exc:
        logger.warning("AttnKit: the pasted %s entry was not restored: %s", INFOTEXT_KEY, exc)
        params.pop(INFOTEXT_KEY, None)
        return
    from .ui.panel import param_to_widget_value

    chosen = dict(preset.methods)
    for c in controls():
        if c.name in ("enabled", "hires", "adetailer", "exact_tokens", "words"):
            continue
        if c.field is None:
            params[c.key] = str(c.method in chosen)
            continue
        value = chosen.get(c.method, {}).get(c.field.name, c.field.default)
        shown = param_to_widget_value(c.field, value)
        params[c.key] = str(shown) if c.field.kind != "bool" else str(bool(shown))
    # the picked words live in each method's own words control (restored above): the shared box starts empty
    params["AttnKit words"] = ""
    defaults = JobOptions()
    params.setdefault("AttnKit exact tokens", str(defaults.exact_tokens))
    params.setdefault("AttnKit hires", str(defaults.hires))
    params.setdefault("AttnKit adetailer", str(defaults.adetailer))


def enabled_from_params(params: dict[str, Any]) -> bool:
    """The enabled control's paste mapping: on exactly when the pasted text carries an ``AttnKit`` entry."""
    return bool(params.get(INFOTEXT_KEY))


# ------------------------------------------------------------------------------------------------- hosts


def detect_host(p) -> str:
    """``"sdnext"``, ``"forge"`` or ``"a1111"``, from the model object the job carries."""
    model = getattr(p, "sd_model", None)
    if model is None:
        raise AttnKitError("the job has no model loaded (p.sd_model is None); load a checkpoint first")
    if getattr(model, "forge_objects", None) is not None:
        return "forge"
    if hasattr(model, "components") and (hasattr(model, "unet") or hasattr(model, "transformer")):
        return "sdnext"
    if getattr(getattr(model, "model", None), "diffusion_model", None) is not None:
        return "a1111"
    raise UnsupportedModelError(
        f"AttnKit does not recognise this host's model ({type(model).__name__}); it supports SD.Next, Forge and A1111"
    )


def note(p, message: str) -> None:
    """A message the user sees under the result (``p.comment`` in A1111/Forge, the job's comments elsewhere)."""
    logger.warning("AttnKit: %s", message)
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(f"AttnKit: {message}")
        return
    comments = getattr(p, "comments", None)
    if isinstance(comments, dict):
        comments[f"AttnKit: {message}"] = 1


def _family(model) -> str:
    if getattr(model, "is_sdxl", False):
        return "sdxl"
    if getattr(model, "is_sd1", False) or getattr(model, "is_sd2", False):
        return "sd"
    kind = type(model).__name__
    raise UnsupportedModelError(
        f"AttnKit's attention patches work on SD 1.x/2.x and SDXL here; this is a {kind} model (Flux and SD3 "
        "have no cross-attention patch points in this host; use SD.Next or ComfyUI for Flux)"
    )


def find_tokenizer(model):
    """The CLIP tokenizer of a Forge/A1111 model (the first encoder's; SDXL's two share token positions)."""
    paths = (
        ("text_processing_engine", "tokenizer"),  # Forge 2.x SD 1.x/2.x
        ("text_processing_engine_l", "tokenizer"),  # Forge 2.x SDXL
        ("cond_stage_model", "wrapped", "tokenizer"),  # A1111 SD 1.x (FrozenCLIPEmbedderWithCustomWords)
        ("cond_stage_model", "tokenizer"),
        ("conditioner", "embedders", 0, "tokenizer"),  # A1111 SDXL (sgm GeneralConditioner)
        ("conditioner", "embedders", 0, "wrapped", "tokenizer"),
    )
    for path in paths:
        obj = model
        for part in path:
            try:
                obj = obj[part] if isinstance(part, int) else getattr(obj, part)
            except (AttributeError, IndexError, KeyError, TypeError):
                obj = None
                break
        if obj is not None and callable(obj):
            return obj
    raise UnsupportedModelError("AttnKit found no CLIP tokenizer on this model; it needs one to find your words")


def _job_prompt(p, hires: bool = False) -> str:
    prompts = (getattr(p, "hr_prompts", None) if hires else None) or getattr(p, "prompts", None) or [p.prompt]
    prompts = list(prompts)
    if len(set(prompts)) > 1:
        raise AttnKitError("AttnKit needs one prompt per batch; turn off per-image prompts (wildcards, prompt "
                           "matrix) or run them as separate jobs")
    return prompts[0]


class Job:
    """attnkit applied to one webui job. Subclasses: :class:`SDNextJob`, :class:`ForgeJob`, :class:`A1111Job`."""

    host = ""

    def __init__(self, p, methods, options: JobOptions):
        self.p = p
        self.options = options
        self.methods = list(methods)
        self.reports: list = []
        self.messages: list[str] = []
        self._undo: list[Callable[[], None]] = []
        self.active = False

    def prepare(self) -> None:
        """Called in the script's ``process``, before the host encodes prompts."""

    def _say(self, message: str) -> None:
        self.messages.append(message)
        note(self.p, message)

    def restore(self) -> None:
        """Undo everything this job changed, newest first; safe to call more than once."""
        errors = []
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # keep restoring the rest
                errors.append(exc)
        self.active = False
        if errors:
            raise errors[0]

    def heatmaps(self, images) -> list:
        """Labelled heatmap grids of the ``observe`` maps over ``images`` (one per image, first report)."""
        from .viz import heatmap_grid

        out = []
        for report in self.reports:
            if "observe" not in report or not report["observe"].maps:
                continue
            maps = report["observe"].maps
            for i, image in enumerate(images):
                if all(m.shape[0] > i for m in maps.values()):
                    out.append(heatmap_grid(image, {w: m[i] for w, m in maps.items()}))
            break
        return out


class SDNextJob(Job):
    """SD.Next: the diffusers runtime on ``p.sd_model`` for one pipeline call.

    Args:
        opts: SD.Next's ``shared.opts`` (for the prompt parser switch), or ``None``.
        host_callback: SD.Next's ``processing_callbacks.diffusers_callback``; called before attnkit's at each step.
    """

    host = "sdnext"

    def __init__(self, p, methods, options: JobOptions, opts=None, host_callback=None):
        super().__init__(p, methods, options)
        self.opts = opts
        self.host_callback = host_callback
        self.run = None

    def prepare(self) -> None:
        """Switch SD.Next to its ``fixed`` prompt parser for this job when exact token positions are asked for."""
        data = getattr(self.opts, "data", None)
        if self.options.exact_tokens and isinstance(data, dict) and data.get("prompt_attention") != "fixed":
            saved = data.get("prompt_attention")
            data["prompt_attention"] = "fixed"
            self._undo.insert(0, lambda: data.__setitem__("prompt_attention", saved))

    def apply(self, prompts=None) -> None:
        from .runtime import Run

        p, pipe = self.p, self.p.sd_model
        if self.run is not None and self.run._saved is not None:  # the previous batch's call did not finish
            self.run.uninstall()
        data = getattr(self.opts, "data", None)
        fixed = isinstance(data, dict) and data.get("prompt_attention") == "fixed"
        prompt = _job_prompt(p) if prompts is None else _one(prompts)
        if not fixed:
            prompt = strip_weights(prompt)
            message = ("SD.Next's prompt parser encodes the prompt, so token positions follow its plain text; turn on "
                       "exact tokens for exact positions")
            if message not in self.messages:
                self._say(message)
        run = Run(pipe, self.methods, prompt=prompt)
        run.install()
        self.run = run
        self._undo.append(run.uninstall)
        args = p.task_args
        before = {k: args[k] for k in ("callback_on_step_end", "callback_on_step_end_tensor_inputs") if k in args}
        host_cb = args.get("callback_on_step_end") or self.host_callback
        ours = run.chained_callback(host_cb)
        count_seen = {"done": False}

        def callback(pipe_, step_index, timestep, kwargs):
            if count_seen["done"]:  # a later pass of the same job (hires, refiner): SD.Next's callback only
                return host_cb(pipe_, step_index, timestep, kwargs) if host_cb else kwargs
            try:
                out = ours(pipe_, step_index, timestep, kwargs)
            except BaseException:
                self.restore()
                raise
            if step_index + 1 >= run._count():
                count_seen["done"] = True
                self.finish()
            return {**kwargs, **out} if host_cb is None else out

        def after_forward(module, args, kwargs, output):
            # the denoiser raised (out of memory, interrupted...): put everything back now. attnkit's own gradient
            # passes end early by raising too; those are not failures.
            if output is None and run._grad is None and not run._capture:
                self.restore()

        hook = run.denoiser.register_forward_hook(after_forward, with_kwargs=True, always_call=True)
        self._undo.append(hook.remove)

        inputs = list(args.get("callback_on_step_end_tensor_inputs") or getattr(pipe, "_callback_tensor_inputs", None)
                      or ["latents"])
        if "latents" not in inputs:
            inputs.append("latents")
        args["callback_on_step_end"] = callback
        args["callback_on_step_end_tensor_inputs"] = inputs

        def put_back():
            for k in ("callback_on_step_end", "callback_on_step_end_tensor_inputs"):
                args.pop(k, None)
            args.update(before)

        self._undo.append(put_back)
        self.active = True

    def finish(self) -> None:
        """The pipeline call ended its last step: take the processors off and keep the report."""
        if self.run is not None and self.run._saved is not None:
            self.run.uninstall()
            self.reports.append(self.run.finish())
            for w in self.run.report.warnings:
                self._say(w)


def _one(prompts) -> str:
    prompts = list(prompts)
    if len(set(prompts)) > 1:
        raise AttnKitError("AttnKit needs one prompt per batch; turn off per-image prompts or run them separately")
    return prompts[0]


def _encoder(model) -> Callable[[str], torch.Tensor]:
    def encode(text: str) -> torch.Tensor:
        with torch.no_grad():
            out = model.get_learned_conditioning([text])
        return out["crossattn"] if isinstance(out, dict) else out

    return encode


def _skip_pass(job: Job, p, hires: bool) -> bool:
    if hires and not job.options.hires:
        return True
    if getattr(p, "_ad_inner", False) and not job.options.adetailer:
        return True
    return False


def _patchable(job: Job) -> list:
    keep = [m for m in job.methods if m.id in PATCH_METHODS]
    dropped = [m.id for m in job.methods if m.id not in PATCH_METHODS]
    if dropped:
        job._say(
            f"{', '.join(dropped)} cannot run in {HOST_NAMES[job.host]} (it optimises the latent through the "
            "host's sampler); this image was made without it. Use SD.Next, ComfyUI or the attnkit app for it."
        )
    return keep


class ForgeJob(Job):
    """Forge: patches on a clone of ``p.sd_model.forge_objects.unet`` for each sampling pass.

    Args:
        callbacks: Forge's ``modules.script_callbacks``: its ``on_cfg_denoiser`` gives the step index (else the
            steps follow the noise level the patches receive).
    """

    host = "forge"

    def __init__(self, p, methods, options: JobOptions, callbacks=None):
        super().__init__(p, methods, options)
        self.callbacks = callbacks

    def apply(self) -> None:
        p = self.p
        hires = bool(getattr(p, "is_hr_pass", False))
        if _skip_pass(self, p, hires):
            return
        methods = _patchable(self)
        if not methods:
            return
        model = p.sd_model
        family = _family(model)
        steps = int((getattr(p, "hr_second_pass_steps", 0) or p.steps) if hires else p.steps)
        original = model.forge_objects.unet
        dm = original.model.diffusion_model
        run = HostRun(methods, _job_prompt(p, hires), find_tokenizer(model), family=family, steps=steps,
                      encode=_encoder(model), host="Forge", blocks=unet_blocks(dm))
        unet = original.clone()
        install_patches(run, unet, unet_block_keys(dm))
        model.forge_objects.unet = unet
        if self.callbacks is not None:
            def on_cfg(params):
                run.set_step(params.sampling_step, params.total_sampling_steps)

            self.callbacks.on_cfg_denoiser(on_cfg)
            self._undo.append(lambda: self.callbacks.remove_callbacks_for_function(on_cfg))

        def put_back():
            if model.forge_objects.unet is unet:
                model.forge_objects.unet = original
            self.reports.append(run.finish())

        self._undo.append(put_back)
        self.active = True


class A1111Job(Job):
    """A1111: the ``forward`` of every ``attn2`` module instance swapped for the kernel while sampling runs.

    Args:
        callbacks: A1111's ``modules.script_callbacks`` (step index and the unconditional text come from its
            ``on_cfg_denoiser``; the callback is removed again on restore).
    """

    host = "a1111"

    def __init__(self, p, methods, options: JobOptions, callbacks=None):
        super().__init__(p, methods, options)
        self.callbacks = callbacks
        self._state: dict[str, Any] = {}

    def apply(self) -> None:
        p = self.p
        methods = _patchable(self)
        if not methods:
            return
        model = p.sd_model
        family = _family(model)
        dm = model.model.diffusion_model
        run = HostRun(methods, _job_prompt(p), find_tokenizer(model), family=family, steps=int(p.steps),
                      encode=_encoder(model), host="A1111", blocks=unet_blocks(dm))
        state = self._state
        state.update(uncond=None, cond_rows=None, shape=None)
        modules = [(name, m) for name, m in dm.named_modules() if name.endswith("attn2") and hasattr(m, "to_q")]
        if not modules:
            raise UnsupportedModelError("AttnKit found no attn2 cross-attention modules in this model")
        job = self

        def on_cfg(params):
            run.set_step(params.sampling_step, params.total_sampling_steps)
            uncond = params.text_uncond
            state["uncond"] = uncond["crossattn"] if isinstance(uncond, dict) else uncond

        def pre_hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("x")
            context = args[2] if len(args) > 2 else kwargs.get("context")
            state["shape"] = tuple(x.shape)
            state["cond_rows"] = _cond_rows(context, state["uncond"])

        theirs = 0
        for name, module in modules:
            own = module.__dict__.get("forward")  # another extension's instance-level forward: ours wraps it
            inner = own if own is not None else module.forward
            theirs += own is not None
            module.forward = _swapped_forward(module, inner, run, state, job, _block_of(name), own is not None)
            self._undo.append(_putter(module, own))
        if theirs and run.needs_patch:
            self._say(f"another extension replaced the cross-attention of {theirs} layers; Structured Diffusion "
                      "Guidance computes those layers itself while this image is made (theirs is back afterwards)")
        hook = dm.register_forward_pre_hook(pre_hook, with_kwargs=True)
        self._undo.append(hook.remove)
        if self.callbacks is not None:
            self.callbacks.on_cfg_denoiser(on_cfg)
            self._undo.append(lambda: self.callbacks.remove_callbacks_for_function(on_cfg))
        sample = p.__dict__.get("sample")
        original_sample = p.sample

        def guarded_sample(*args, **kwargs):
            try:
                return original_sample(*args, **kwargs)
            finally:
                job.restore()

        p.sample = guarded_sample

        def put_sample_back():
            if sample is None:
                p.__dict__.pop("sample", None)
            else:
                p.sample = sample
            self.reports.append(run.finish())

        self._undo.insert(0, put_sample_back)
        self.active = True


def _putter(module, own):
    def put_back():
        if own is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = own

    return put_back


def _cond_rows(context, uncond) -> list[int] | None:
    if context is None or uncond is None or not torch.is_tensor(context):
        return None
    t = min(context.shape[1], uncond.shape[1])
    rows = []
    for r in range(context.shape[0]):
        if not any(torch.equal(context[r, :t], u[:t].to(context.device, context.dtype)) for u in uncond):
            rows.append(r)
    return rows


def _block_of(name: str):
    """``(block, number, block_index)`` of an ldm module path such as
    ``input_blocks.4.1.transformer_blocks.0.attn2`` (``None`` for an unfamiliar layout)."""
    parts = name.split(".")
    try:
        index = int(parts[parts.index("transformer_blocks") + 1])
        if parts[0] == "middle_block":
            return ("middle", 0, index)
        return ({"input_blocks": "input", "output_blocks": "output"}[parts[0]], int(parts[1]), index)
    except (ValueError, KeyError, IndexError):
        return None


def _reads_only(q, k, v, extra_options):
    """The ``previous`` of a replace that only reads maps (the layer's output comes from elsewhere)."""
    return q


def _swapped_forward(module, inner, run: HostRun, state: dict, job: Job, block, theirs: bool = False):
    """The attn2 forward while a job runs. ``theirs``: ``inner`` is another extension's instance-level forward; when
    attnkit only reads maps, that forward still computes the layer's output."""
    heads = int(module.heads)
    dim_head = module.to_q.out_features // heads

    def forward(x, context=None, mask=None, **kwargs):
        p = job.p
        if context is None or state.get("shape") is None or _skip_pass(job, p, bool(getattr(p, "is_hr_pass", False))):
            return inner(x, context=context, mask=mask, **kwargs)
        extra = {"n_heads": heads, "dim_head": dim_head, "original_shape": state["shape"]}
        if block is not None:
            extra.update(block=block[:2], block_index=block[2])
        if state.get("cond_rows") is not None:
            extra["attnkit_cond_rows"] = state["cond_rows"]
        if theirs and not run.needs_patch:  # observe only: read the maps, let the other extension answer
            run.attn2_replace(module.to_q(x), module.to_k(context), module.to_v(context), extra, _reads_only)
            return inner(x, context=context, mask=mask, **kwargs)
        n, ctx, value = x, context, context
        if run.needs_patch:
            n, ctx, value = run.attn2_patch(n, ctx, value, extra)
        q, k, v = module.to_q(n), module.to_k(ctx), module.to_v(value)
        return module.to_out(run.attn2_replace(q, k, v, extra))

    return forward


def start_job(p, methods, options: JobOptions, *, opts=None, host_callback=None, callbacks=None) -> Job:
    """The job object for ``p``'s host (not applied yet)."""
    host = detect_host(p)
    if host == "sdnext":
        return SDNextJob(p, methods, options, opts=opts, host_callback=host_callback)
    if host == "forge":
        return ForgeJob(p, methods, options, callbacks=callbacks)
    return A1111Job(p, methods, options, callbacks=callbacks)


@contextlib.contextmanager
def restoring(job: Job):
    """Restore ``job`` if the block raises (the host then skips ``postprocess``)."""
    try:
        yield job
    except BaseException:
        job.restore()
        raise
