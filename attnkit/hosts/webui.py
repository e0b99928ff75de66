"""attnkit in the webui family: SD.Next, Forge and A1111.

Host objects come in as arguments (the job's ``p``, SD.Next's options and step callback, A1111's callback
registry); nothing here imports a host. The single ``scripts/attnkit_webui.py`` file is glue around this module:

- :func:`detect_host` tells the hosts apart by the model object they hand to the job: a diffusers pipeline (SD.Next),
  ``forge_objects`` (Forge), an ldm ``model.diffusion_model`` (A1111).
- :class:`SDNextJob` attaches the diffusers runtime (:class:`attnkit.Run`) to ``p.sd_model`` for one pipeline call,
  chaining SD.Next's own step callback first (progress, interrupt, NaN checks keep working); every method runs.
- :class:`ForgeJob` clones ``forge_objects.unet`` and installs the attention patches of :mod:`attnkit.hosts.kernel`
  on the clone; :class:`A1111Job` swaps the ``forward`` of each ``attn2`` module instance for the same kernel while
  sampling runs. Both run ``observe`` and ``structured``; a latent-optimising method is reported and left out.
- Infotext: one compact ``AttnKit`` key (the preset's share code) plus readable mirror keys; :func:`expand_infotext`
  turns them back into one value per control for "PNG Info -> Send to txt2img".

Every job restores what it changed in :meth:`Job.restore` (idempotent), called at the end of sampling, in the
script's ``postprocess``, at the start of the next job and on script unload, so a failed job never leaves a patched
model behind. Forge and A1111 runs are made with ``on_error``: an error inside the host's sampling ends as one note
under the image (:meth:`Job.fail`), attnkit stops acting and the host finishes the image; the job's infotext keys
are dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import AttnKitError, UnsupportedModelError, one_line
from ..methods import REGISTRY
from ..methods.fields import FIELDS, Field
from ..presets import Preset, PresetError
from .kernel import HostRun, install_patches, runs_on_patches, strip_weights, unet_block_keys, unet_blocks

logger = logging.getLogger(__name__)

TITLE = "AttnKit"
INFOTEXT_KEY = "AttnKit"
#: the enabled box's paste key: set by :func:`expand_infotext` on every paste (a plain string: SD.Next lower-cases
#: every key of ``infotext_fields``, so a callable key breaks its paste button)
ENABLED_KEY = "AttnKit enabled"
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
        Control("enabled", ENABLED_KEY, "bool"),
        Control("words", "AttnKit words", "text"),
        Control("exact_tokens", "AttnKit exact tokens", "bool"),
        Control("hires", "AttnKit hires", "bool"),
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
        hires: Forge/A1111: act in the hires-fix pass too (a run of its own, at the pass's size and prompt).

    ADetailer's inner passes are never acted in: ADetailer runs only the scripts a user allow-lists, and those share
    the outer job's script instance, so the script ignores them (see ``scripts/attnkit_webui.py``).
    """

    exact_tokens: bool = True
    hires: bool = False


def read_args(args) -> tuple[bool, list, JobOptions, list[str]]:
    """``(enabled, methods, options, words)`` from the script's positional arguments.

    The arguments are the control values in :func:`controls` order. API callers may instead pass a preset (share
    code or JSON) first and optionally the words second: ``"alwayson_scripts": {"AttnKit": {"args": ["ak1...",
    "car, sheep"]}}``.
    """
    from ..ui.panel import methods_from_controls

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
    options = JobOptions(bool(values["exact_tokens"]), bool(values["hires"]))
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
    return out


def expand_infotext(params: dict[str, Any]) -> None:
    """``on_infotext_pasted`` handler: turn the compact ``AttnKit`` entry into one key per control (in place).

    The enabled box's key is always set: ``"True"`` with a valid ``AttnKit`` entry, ``"False"`` without one (pasting
    an image made without attnkit turns it off). A broken share code is logged and leaves attnkit off instead of
    raising into the host's paste handler.
    """
    params[ENABLED_KEY] = "False"
    code = params.get(INFOTEXT_KEY)
    if not code:
        return
    try:
        preset = Preset.from_share_code(str(code).strip())
    except PresetError as exc:
        logger.warning("AttnKit: the pasted %s entry was not restored: %s", INFOTEXT_KEY, exc)
        params.pop(INFOTEXT_KEY, None)
        return
    params[ENABLED_KEY] = str(bool(preset.methods))
    from ..ui.panel import param_to_widget_value

    chosen = dict(preset.methods)
    for c in controls():
        if c.name in ("enabled", "hires", "exact_tokens", "words"):
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


class OpenClipTokenizer:
    """The tokenizer interface attnkit's token maps read, over the ``tokenize`` of A1111's open_clip text encoder.

    A1111 SD 2.x models encode with ``FrozenOpenCLIPEmbedderWithCustomWords`` (``modules/sd_hijack_open_clip.py``),
    whose ``tokenize(texts)`` returns open_clip's BPE ids without start/end tokens. open_clip's vocabulary, word
    pattern and lower-casing are CLIP's, so the ids, and the positions they take in the 77-token context (start token
    first), are the ones the model sees.

    Args:
        encoder: the host's encoder object (its ``tokenize``, ``id_start`` and ``id_end`` are used).
        bpe: open_clip's ``SimpleTokenizer`` (for ``decoder`` and ``pat``).
    """

    is_fast = False
    model_max_length = 77

    def __init__(self, encoder, bpe):
        self._tokenize = encoder.tokenize
        self.bos, self.eos = int(encoder.id_start), int(encoder.id_end)
        self._decoder = bpe.decoder
        self.pat = bpe.pat

    def __call__(self, text: str, add_special_tokens: bool = True, return_special_tokens_mask: bool = False,
                 **_ignored) -> dict:
        ids = [int(i) for i in self._tokenize([text])[0]]
        special = [0] * len(ids)
        if add_special_tokens:
            ids, special = [self.bos, *ids, self.eos], [1, *special, 1]
        out = {"input_ids": ids}
        if return_special_tokens_mask:
            out["special_tokens_mask"] = special
        return out

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self._decoder.get(int(i), "") for i in ids]


def _open_clip_tokenizer(encoder):
    """An :class:`OpenClipTokenizer` for A1111's open_clip encoder, or ``None`` when ``encoder`` is not one."""
    import sys

    if not callable(getattr(encoder, "tokenize", None)) or not hasattr(encoder, "id_start"):
        return None
    # the hijack module's own ``tokenizer`` global (open_clip's SimpleTokenizer), else open_clip's
    bpe = getattr(sys.modules.get(type(encoder).__module__), "tokenizer", None)
    if not hasattr(bpe, "decoder"):
        try:
            import open_clip.tokenizer as oct
        except ImportError:
            return None
        bpe = oct._tokenizer
    return OpenClipTokenizer(encoder, bpe)


def find_tokenizer(model):
    """The CLIP tokenizer of a Forge/A1111 model (the first encoder's; SDXL's two share token positions).

    A1111 SD 2.x has no CLIP tokenizer: its open_clip encoder's ``tokenize`` is wrapped in an
    :class:`OpenClipTokenizer`.
    """
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
    bpe = _open_clip_tokenizer(getattr(model, "cond_stage_model", None))
    if bpe is not None:
        return bpe
    raise UnsupportedModelError("AttnKit found no CLIP tokenizer on this model; it needs one to find your words")


def _job_prompt(p, hires: bool = False) -> str:
    prompts = (getattr(p, "hr_prompts", None) if hires else None) or getattr(p, "prompts", None) or [p.prompt]
    prompts = list(prompts)
    if len(set(prompts)) > 1:
        raise AttnKitError("AttnKit needs one prompt per batch; turn off per-image prompts (wildcards, prompt "
                           "matrix) or run them as separate jobs")
    return prompts[0]


def failure_message(exc: BaseException, where: str = "") -> str:
    """One line for a note under the image: what failed and what to do.

    attnkit's own errors already say both; anything else is a fault the user can only report.
    """
    if isinstance(exc, AttnKitError):
        return str(exc)
    return (f"stopped by an error{where} ({one_line(exc, 200)}); the image was finished without it. Please report "
            "this with your prompt and AttnKit settings")


def drop_infotext(p) -> None:
    """Take attnkit's keys out of ``p.extra_generation_params`` (for a job it did not apply, or stopped applying)."""
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        for key in [k for k in params if str(k).startswith(INFOTEXT_KEY)]:
            params.pop(key, None)


def host_step(params) -> tuple[int, int]:
    """``(step index, step count)`` of the denoiser call an A1111/Forge ``on_cfg_denoiser`` announces.

    ``params.sampling_step`` is ``shared.state.sampling_step``, which the sampler's step callback sets after each
    step: it lags one step behind the call (steps 0 and 1 both read 0). The CFG denoiser passed along
    (``modules/sd_samplers_cfg_denoiser.py``) counts its calls in ``step`` (reset per pass, incremented after each
    call) and knows the pass's ``steps`` and ``total_steps`` (calls per pass: ``2 * steps`` for second-order samplers,
    ``modules/sd_samplers_common.py`` ``launch_sampling``), which give the exact step for first- and second-order
    samplers alike. Hosts without them fall back to the callback's own numbers.
    """
    denoiser = getattr(params, "denoiser", None)
    call, steps, total = (getattr(denoiser, a, None) for a in ("step", "steps", "total_steps"))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (call, steps, total)) and steps > 0 and total > 0:
        return min(call * steps // total, steps - 1), steps
    return int(params.sampling_step), int(params.total_sampling_steps)


class Job:
    """attnkit applied to one webui job. Subclasses: :class:`SDNextJob`, :class:`ForgeJob`, :class:`A1111Job`.

    ``passes`` holds one ``((iteration, hires), report)`` per sampling pass that ran with attnkit, in order:
    ``iteration`` is the host's batch number (``p.iteration``), ``hires`` whether it was the hires-fix pass.
    """

    host = ""

    def __init__(self, p, methods, options: JobOptions):
        self.p = p
        self.options = options
        self.methods = list(methods)
        self.passes: list[tuple[tuple[int, bool], Any]] = []
        self.messages: list[str] = []
        self._undo: list[Callable[[], None]] = []
        self.active = False
        #: the error that stopped attnkit inside the host's sampling (the image was finished without it)
        self.error: BaseException | None = None

    @property
    def reports(self) -> list:
        return [report for _, report in self.passes]

    def _pass_key(self, hires: bool = False) -> tuple[int, bool]:
        return int(getattr(self.p, "iteration", 0) or 0), bool(hires)

    def _record(self, key: tuple[int, bool], report) -> None:
        self.passes.append((key, report))
        self.passes.sort(key=lambda item: item[0])  # a batch's hires pass may end before its first pass
        if self.error is None:  # a failed run's own warnings only repeat the failure
            for warning in getattr(report, "warnings", ()):
                self._say(warning)

    def prepare(self) -> None:
        """Called in the script's ``process``, before the host encodes prompts."""

    def _say(self, message: str) -> None:
        if message in self.messages:  # once per job, however many batches and passes
            return
        self.messages.append(message)
        note(self.p, message)

    def fail(self, exc: BaseException) -> None:
        """A run stopped inside the host's sampling: one note, no attnkit infotext for this job."""
        if self.error is None:
            self.error = exc
            logger.debug("AttnKit: the run failed", exc_info=exc)
        self._say(failure_message(exc, " while the image was sampled"))
        drop_infotext(self.p)

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
        """Labelled heatmap grids of the ``observe`` maps over ``images`` (the job's images in order).

        Each batch's images get the maps of that batch's last pass (the hires pass when it ran with attnkit): batch
        ``i`` holds images ``i * rows`` to ``(i + 1) * rows - 1``, ``rows`` being the maps' batch rows.
        """
        from ..viz import heatmap_grid

        last: dict[int, Any] = {}
        for (iteration, _), report in sorted(self.passes, key=lambda item: item[0]):
            if "observe" in report and report["observe"].maps:
                last[iteration] = report
        out = []
        for iteration, report in sorted(last.items()):
            maps = report["observe"].maps
            rows = min(m.shape[0] for m in maps.values())
            for i in range(rows):
                index = iteration * rows + i
                if index < len(images):
                    out.append(heatmap_grid(images[index], {w: m[i] for w, m in maps.items()}))
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
        from ..runtime import Run

        p, pipe = self.p, self.p.sd_model
        if self.run is not None and self.run.installed:  # the previous batch's call did not finish
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
        self.run = run
        self._undo.append(run.uninstall)

        def install_at_first_call(module, args, kwargs):
            # SD.Next's process_pre (IP-Adapter, PAG, attention settings) may set the denoiser's processors after
            # the scripts' process_batch: attnkit wraps what the denoiser has when it is first called, and
            # uninstall puts exactly that back.
            first.remove()
            if not run.installed:
                run.install()
                run.denoiser_called(module, args, kwargs)

        first = run.denoiser.register_forward_pre_hook(install_at_first_call, with_kwargs=True, prepend=True)
        self._undo.append(first.remove)
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
            if step_index + 1 >= run.step_count:
                count_seen["done"] = True
                self.finish()
            return {**kwargs, **out} if host_cb is None else out

        def after_forward(module, args, kwargs, output):
            # the denoiser raised (out of memory, interrupted...): put everything back now. attnkit's own gradient
            # passes end early by raising too; those are not failures.
            if output is None and not run.in_own_pass:
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
        if self.run is not None and self.run.installed:
            self.run.uninstall()
            self._record(self._pass_key(), self.run.finish())


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


def _skip_pass(job: Job, hires: bool) -> bool:
    return hires and not job.options.hires


def _patchable(job: Job) -> list:
    keep = [m for m in job.methods if runs_on_patches(m)]
    dropped = [m.id for m in job.methods if not runs_on_patches(m)]
    if dropped:
        job._say(
            f"{', '.join(dropped)} cannot run in {HOST_NAMES[job.host]} (it optimises the latent through the "
            "host's sampler); this image was made without it. Use SD.Next, ComfyUI or the attnkit app for it."
        )
    return keep


def _pass_prompt_steps(p, hires: bool) -> tuple[str, int]:
    steps = int((getattr(p, "hr_second_pass_steps", 0) or p.steps) if hires else p.steps)
    return _job_prompt(p, hires), steps


class ForgeJob(Job):
    """Forge: patches on a clone of ``p.sd_model.forge_objects.unet`` for each sampling pass.

    Forge calls ``process_before_every_sampling`` once before each pass, and twice before a hires pass
    (``modules/processing.py`` ``sample_hr_pass``: before and after it resets ``forge_objects`` from
    ``forge_objects_after_applying_lora``); a second call for the same pass replaces the first's clone, which Forge
    has thrown away, without a report or a second note.

    Args:
        callbacks: Forge's ``modules.script_callbacks``: its ``on_cfg_denoiser`` gives the step (:func:`host_step`;
            else the steps follow the noise level the patches receive).
    """

    host = "forge"

    def __init__(self, p, methods, options: JobOptions, callbacks=None):
        super().__init__(p, methods, options)
        self.callbacks = callbacks
        self.run: HostRun | None = None
        self._pass: tuple[tuple[int, bool], Callable[[], None]] | None = None

    def _on_cfg(self, params) -> None:
        if self.run is not None:
            self.run.set_step(*host_step(params))

    def apply(self) -> None:
        p = self.p
        hires = bool(getattr(p, "is_hr_pass", False))
        key = self._pass_key(hires)
        if self._pass is not None and self._pass[0] == key:
            self._pass[1]()  # the same pass again: Forge discarded the clone made for it
        self._pass = None
        self.run = None
        if _skip_pass(self, hires):
            return
        methods = _patchable(self)
        if not methods:
            return
        model = p.sd_model
        family = _family(model)
        prompt, steps = _pass_prompt_steps(p, hires)
        original = model.forge_objects.unet
        dm = original.model.diffusion_model
        run = HostRun(methods, prompt, find_tokenizer(model), family=family, steps=steps, encode=_encoder(model),
                      host="Forge", blocks=unet_blocks(dm), on_error=self.fail)
        unet = original.clone()
        install_patches(run, unet, unet_block_keys(dm))
        model.forge_objects.unet = unet
        if self.callbacks is not None and self._remove_on_cfg not in self._undo:  # once per job
            self.callbacks.on_cfg_denoiser(self._on_cfg)
            self._undo.insert(0, self._remove_on_cfg)
        self.run = run
        record = {"report": True}

        def put_back():
            if model.forge_objects.unet is unet:
                model.forge_objects.unet = original
            if record["report"]:
                record["report"] = False
                self._record(key, run.finish())

        def discard():
            record["report"] = False
            put_back()
            if put_back in self._undo:
                self._undo.remove(put_back)

        self._undo.append(put_back)
        self._pass = (key, discard)
        self.active = True

    def _remove_on_cfg(self) -> None:
        self.callbacks.remove_callbacks_for_function(self._on_cfg)


class A1111Job(Job):
    """A1111: the ``forward`` of every ``attn2`` module instance swapped for the kernel while sampling runs.

    One :class:`HostRun` per sampling pass: the hires-fix pass (inside the same ``p.sample`` call, with
    ``p.is_hr_pass`` set; ``modules/processing.py`` ``sample_hr_pass``) gets a run of its own, at its latent size,
    with the hires prompt and step count, when "Also in the hires pass" is ticked; otherwise its layers compute as
    the host's.

    Args:
        callbacks: A1111's ``modules.script_callbacks`` (the step, :func:`host_step`, and the unconditional text come
            from its ``on_cfg_denoiser``; the callback is removed again on restore).
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
        tokenizer, encode, blocks = find_tokenizer(model), _encoder(model), unet_blocks(dm)
        job = self

        def new_run(hires: bool) -> HostRun:
            prompt, steps = _pass_prompt_steps(p, hires)
            return HostRun(methods, prompt, tokenizer, family=family, steps=steps, encode=encode, host="A1111",
                           blocks=blocks, on_error=job.fail)

        first = new_run(False)
        state = self._state
        state.clear()
        state.update(uncond=None, cond_rows=None, shape=None, run=first, key=self._pass_key(False))

        def end_pass():
            run, state["run"] = state["run"], None
            if run is not None:
                job._record(state["key"], run.finish())

        def current() -> HostRun | None:
            """The run of the pass the host is in now (a new one when a hires pass starts)."""
            hires = bool(getattr(p, "is_hr_pass", False))
            key = job._pass_key(hires)
            if key == state["key"]:
                return state["run"]
            end_pass()
            state.update(key=key, shape=None)
            if job.error is None and not _skip_pass(job, hires):
                try:
                    state["run"] = new_run(hires)
                except AttnKitError as exc:  # e.g. a word missing from the hires prompt: that pass runs without
                    job.fail(exc)
            return state["run"]

        modules = [(name, m) for name, m in dm.named_modules() if name.endswith("attn2") and hasattr(m, "to_q")]
        if not modules:
            raise UnsupportedModelError("AttnKit found no attn2 cross-attention modules in this model")

        def on_cfg(params):
            run = current()
            if run is not None:
                run.set_step(*host_step(params))
            uncond = params.text_uncond
            state["uncond"] = uncond["crossattn"] if isinstance(uncond, dict) else uncond

        def pre_hook(module, args, kwargs):
            current()
            x = args[0] if args else kwargs.get("x")
            context = args[2] if len(args) > 2 else kwargs.get("context")
            state["shape"] = tuple(x.shape)
            state["cond_rows"] = _cond_rows(context, state["uncond"])

        theirs = 0
        for name, module in modules:
            own = module.__dict__.get("forward")  # another extension's instance-level forward: ours wraps it
            inner = own if own is not None else module.forward
            theirs += own is not None
            module.forward = _swapped_forward(module, inner, state, _block_of(name), own is not None)
            self._undo.append(_putter(module, own))
        if theirs and first.needs_patch:
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
            end_pass()

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


def _swapped_forward(module, inner, state: dict, block, theirs: bool = False):
    """The attn2 forward while a job runs: the kernel of the current pass's run (``state["run"]``), or the layer's
    own forward when that pass runs without attnkit. ``theirs``: ``inner`` is another extension's instance-level
    forward; when attnkit only reads maps, that forward still computes the layer's output."""
    heads = int(module.heads)
    dim_head = module.to_q.out_features // heads

    def forward(x, context=None, mask=None, **kwargs):
        run = state.get("run")
        if run is None or run.failed is not None or context is None or state.get("shape") is None:
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
