"""The Gradio panel: generation controls, one accordion per method built from the field table, a word picker,
presets, heatmaps. Used by the standalone app (``python extension.py``) and, later, by the webui script.

Gradio is imported inside the functions, so ``attnkit`` imports without it.
"""

from __future__ import annotations

import logging
import random
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.steps import Progress, shown_step, work_text
from ..errors import AttnKitError, Interrupted, one_line
from ..lab.world import WORDS
from ..methods import REGISTRY, get_method
from ..methods.fields import Field, fields_for
from ..models import DEFAULT_MODEL
from ..presets import Preset, PresetError, check_settings, delete_preset, prompts_of_image, user_presets

logger = logging.getLogger("attnkit")

#: the methods' titles, as each class declares it
METHOD_TITLES = {method_id: cls.title for method_id, cls in REGISTRY.items()}
#: what the built-in shapes model understands, and the prompt the app starts with on it
SHAPES_WORDS = ", ".join(WORDS)
SHAPES_PROMPT = "a red circle and a blue square"


@dataclass
class AppState:
    """What one app instance holds: loaded pipelines (one lock each, so requests on a pipeline queue) and stop flags.
    Nothing here is module-level: two apps in one process do not share it.

    With ``lock_model`` the model box cannot load anything but the launch model (for ``--listen``/``--share``)."""

    default_model: str
    loader: Any
    lock_model: bool = False
    pipes: dict[str, Any] = field(default_factory=dict)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    loading: dict[str, threading.Lock] = field(default_factory=dict)
    stops: dict[str, threading.Event] = field(default_factory=dict)
    #: runs in progress per browser session (generate and edit)
    running: dict[str, int] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def pipe(self, model: str):
        model = (model or self.default_model).strip()
        if self.lock_model and model != self.default_model:
            raise AttnKitError(f"this app serves only {self.default_model!r}; the model cannot be changed here")
        with self.guard:  # short: the slow load below holds only this model's loading lock
            if model in self.pipes:
                return self.pipes[model], self.locks[model]
            loading = self.loading.setdefault(model, threading.Lock())
        with loading:
            with self.guard:
                if model in self.pipes:
                    return self.pipes[model], self.locks[model]
            pipe = self.loader(model)
            with self.guard:
                self.pipes[model] = pipe
                self.locks[model] = threading.Lock()
                return pipe, self.locks[model]

    def stop_event(self, session: str) -> threading.Event:
        with self.guard:
            return self.stops.setdefault(session or "-", threading.Event())

    def begin(self, session: str) -> threading.Event:
        """A run of ``session`` starts: its stop flag, cleared (a Stop pressed before it does not carry over)."""
        event = self.stop_event(session)
        with self.guard:
            self.running[session or "-"] = self.running.get(session or "-", 0) + 1
        event.clear()
        return event

    def end(self, session: str) -> None:
        with self.guard:
            left = self.running.get(session or "-", 1) - 1
            if left > 0:
                self.running[session or "-"] = left
            else:
                self.running.pop(session or "-", None)

    def request_stop(self, request=None) -> str:
        """The Stop buttons: flag the requesting browser session's run to stop (when it has one)."""
        session = session_of(request)
        with self.guard:
            busy = self.running.get(session or "-", 0) > 0
        if not busy:
            return "Nothing is running."
        self.stop_event(session).set()
        return "Stopping..."


#: the app's names of the generation settings, for messages
_LABELS = {"steps": "Steps", "guidance_scale": "CFG scale", "seed": "Seed", "width": "Width", "height": "Height"}


def _whole(value, label: str) -> int:
    """A number box's value as a whole number (Gradio hands floats), or a message naming the box."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AttnKitError(f"{label}: type a whole number") from None
    if number != number or number in (float("inf"), float("-inf")) or number != int(number):
        raise AttnKitError(f"{label}: type a whole number, got {value!r}")
    return int(number)


#: said under a failed or stopped run: the results still on screen are not this run's
STALE = "Any images shown are from an earlier run."


def section_label(title: str, on: bool) -> str:
    """A method section's header: its title, marked when the method is on."""
    return f"{title} (on)" if on else title


def error_text(message: str) -> str:
    """How an error reads in the status line (it stays until the next action)."""
    return f"**Error:** {message}"


def reports_in_status(gr, what: str, before: int):
    """Decorator for handlers whose last output is the status line and the ``before`` outputs ahead of it are left
    as they are on failure: attnkit's errors as their message, anything else as one line naming what failed
    (logged with its traceback). Nothing is raised to Gradio, so no control turns into an error pill."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except AttnKitError as exc:
                message = str(exc)
            except Exception as exc:
                logger.exception("attnkit: %s failed", what)
                message = f"{what} failed: {one_line(exc, 200)}"
            return [*(gr.update() for _ in range(before)), error_text(message)]

        return handler

    return wrap


def takes_request(gr, fn):
    """Make Gradio hand ``fn`` its ``gr.Request``: Gradio finds the parameter by its annotation, and under
    ``from __future__ import annotations`` that is the string ``"gr.Request"``, which it cannot resolve (``gr`` is not
    a module global here), so ``request`` stayed ``None`` and every browser shared one stop flag."""
    fn.__annotations__["request"] = gr.Request
    return fn


def session_of(request) -> str:
    """The browser session a Gradio request comes from (``"-"`` for API calls without one)."""
    return getattr(request, "session_hash", "-") if request is not None else "-"


def words_update(gr, state: AppState, model_name: str, text: str, current, label: str):
    """A word picker's update for ``text``: the model's words as choices, the still-present picks kept."""
    try:
        pipe, _ = state.pipe(model_name)
        choices = word_choices(pipe, text)
    except AttnKitError as exc:
        return gr.update(choices=[], value=[], label=f"{label} ({exc})")
    keep = [v for v in (current or []) if v in {c[1] for c in choices}]
    return gr.update(choices=choices, value=keep, label=label)


# ------------------------------------------------------------------------------------------ values from widgets


def _split(text) -> list[str] | None:
    if text is None:
        return None
    if isinstance(text, list):
        return [w for w in text if w] or None
    items = [w.strip() for w in str(text).split(",") if w.strip()]
    return items or None


def widget_value_to_param(f: Field, value):
    """Turn a widget's value into the config value (``None`` for empty optional fields)."""
    import json

    if f.kind in ("bool", "choice"):
        return value
    if f.kind == "int":
        return int(value)
    if f.kind == "float":
        return float(value)
    if f.kind == "words":
        return _split(value)
    if f.kind == "indices":
        items = _split(value)
        try:
            return [int(i) for i in items] if items else None
        except ValueError:
            raise AttnKitError(f"{f.label}: write token positions such as 2, 5, got {value!r}") from None
    if f.kind == "window":
        return _range(value, f.label)
    if f.kind == "windows":
        text = str(value or "").strip()
        if text.startswith("["):  # the JSON form earlier versions showed
            try:
                return [tuple(w) for w in json.loads(text)]
            except (ValueError, TypeError):
                raise AttnKitError(f"{f.label}: write from-to ranges such as 0-0.5, 0.5-1, got {value!r}") from None
        parts = [p for p in re.split(r"[,;]", text) if p.strip()]
        return [_range(p, f.label, many=True) for p in parts] or [(0.0, 1.0)]
    if f.kind == "grid":
        if not value or str(value).strip().lower() == "auto":
            return None
        h, _, w = str(value).strip().lower().replace("×", "x").partition("x")
        try:
            return (int(h), int(w or h))
        except ValueError:
            raise AttnKitError(f"{f.label}: choose auto or a grid such as 16x16, got {value!r}") from None
    if f.kind == "thresholds":
        text = str(value or "").strip()
        try:
            if text.startswith("{"):  # the JSON form earlier versions showed
                return {int(k): float(v) for k, v in json.loads(text).items()}
            pairs = [p.replace("=", ":").split(":") for p in re.split(r"[,;]", text) if p.strip()]
            return {int(k): float(v) for k, v in pairs}
        except (ValueError, TypeError, AttributeError):
            raise AttnKitError(f"{f.label}: write step: threshold pairs such as 0: 0.05, 10: 0.5, got {value!r}") \
                from None
    raise AttnKitError(f"{f.key} has no widget")


def param_to_widget_value(f: Field, value):
    if f.kind == "words" or f.kind == "indices":
        return ", ".join(str(v) for v in value) if value else ""
    if f.kind == "window":
        return f"{value[0]:g}-{value[1]:g}"
    if f.kind == "windows":
        return ", ".join(f"{w[0]:g}-{w[1]:g}" for w in value)
    if f.kind == "grid":
        if value is None:
            return "auto"
        h, w = (value, value) if isinstance(value, int) else value
        return f"{h}x{w}"
    if f.kind == "thresholds":
        return ", ".join(f"{k}: {v:g}" for k, v in value.items())
    return value


def _range(text, label: str, many: bool = False) -> tuple[float, float]:
    """A from-to part of the run such as ``0-0.5``; in a list of them (``many``) a comma separates ranges."""
    from ..core.steps import parse_range

    if many:
        return parse_range(text, label, example="0-0.5, 0.5-1", allow_comma=False)
    return parse_range(text, label)


def panel_fields(method_id: str) -> list[Field]:
    return [f for f in fields_for(method_id) if f.panel]


def methods_from_controls(enabled: dict[str, bool], values: dict[str, dict[str, Any]], picked: list[str]):
    """Method objects from the panel: picked words go to every enabled method whose own words box is empty."""
    methods = []
    for method_id in REGISTRY:
        if not enabled.get(method_id):
            continue
        params = {}
        for f in panel_fields(method_id):
            params[f.name] = widget_value_to_param(f, values[method_id][f.name])
        if "words" in params and params["words"] is None:  # observe maps every word when none is picked
            params["words"] = list(picked) or None
        if get_method(method_id).needs_words and not params.get("words") and not params.get("token_indices"):
            raise AttnKitError(f"{METHOD_TITLES[method_id]} needs words: pick them in the word picker (in a webui, type them in the Words box)")
        methods.append(get_method(method_id)(**params))
    return methods


def word_choices(pipe, prompt: str) -> list[tuple[str, str]]:
    """The prompt's words as the model tokenises them: ``(label, word)`` pairs, repeated words numbered."""
    from ..core.tokens import prompt_tokens
    from ..models import family_of

    if not prompt or not prompt.strip():
        return []
    tokens = prompt_tokens(pipe, prompt, family_of(pipe)).attention
    counts: dict[str, int] = {}
    lower = [w.text.lower() for w in tokens.words]
    out = []
    for word in tokens.words:
        key = word.text.lower()
        counts[key] = counts.get(key, 0) + 1
        query = f"{word.text}#{counts[key]}" if lower.count(key) > 1 else word.text
        pieces = [tokens.tokens[p].replace("</w>", "").replace("▁", "") for p in word.positions]
        label = query if len(pieces) <= 1 else f"{query} ({'·'.join(pieces)})"
        if word.positions and word.positions[-1] > tokens.last_kept:
            label += " (cut off)"
        out.append((label, query))
    return out


# ---------------------------------------------------------------------------------------------------- the app


def model_note(name: str, pipe, family: str, runs: dict[str, bool], models_folder) -> str:
    """What the note under the model chooser says about the loaded model and the controls it hides."""
    from ..models import FAMILY_NAMES, SHAPES, TINY_NAMES, is_tiny, models_dir

    folder = Path(models_folder).expanduser() if models_folder else models_dir()
    own = (f"For other pictures, choose your own model: put diffusers folders or .safetensors files in `{folder}`, "
           "or type a path and press Enter.")
    if name == SHAPES or getattr(pipe, "name_or_path", None) == SHAPES:
        text = (f"**{SHAPES}** is a built-in model trained on 64 px pictures of one or two coloured shapes on grey. "
                f"It knows the words {SHAPES_WORDS} (\"a red circle and a blue square\"); other words mean nothing "
                f"to it. Two shapes sometimes come out wrong (one missing, colours swapped): what the methods here "
                f"fix. {own}")
    elif name in TINY_NAMES or is_tiny(pipe):
        text = (f"**{name}** is a built-in test model with random weights: it makes noise-like images, fast, so every "
                f"control can be tried. {own}")
    else:
        text = f"**{Path(name).name or name}**: a {FAMILY_NAMES[family]} model."
    hidden = [METHOD_TITLES[m] for m, ok in runs.items() if not ok]
    if hidden:
        text += (f"\n\nHidden for {FAMILY_NAMES[family]} models: {', '.join(hidden)} (they run on SD 1.x/2.x and "
                 "SDXL models).")
    if family != "flux":
        text += "\n\nThe Conditions section is hidden: condition images need a Flux model."
    return text


def build_app(loader=None, default_model: str = DEFAULT_MODEL, preset_dir: str | None = None,
              lock_model: bool = False, models_folder: str | None = None):
    """The standalone Gradio app.

    Args:
        loader: ``model name -> pipeline`` (default :func:`attnkit.load_pipeline`).
        default_model: what the model chooser starts with.
        preset_dir: folder of user presets (default :func:`attnkit.presets.user_dir`).
        lock_model: serve only ``default_model`` (the model chooser cannot load other paths or hub ids).
        models_folder: the folder whose diffusers folders and checkpoints the model chooser lists (default
            :func:`attnkit.models.models_dir`).
    """
    import gradio as gr

    from ..models import (
        FAMILY_NAMES,
        SHAPES,
        TINY_IMAGE_SIZE,
        builtin_size,
        family_of,
        is_builtin,
        load_pipeline,
        model_choices,
    )
    from ..runtime import generate
    from ..samplers import DEFAULT as OWN_SAMPLER
    from ..samplers import check_sampler, sampler_names, using_sampler
    from .conditions import build_conditions, pka_from_controls
    from .edit_tab import build_edit_tab

    state = AppState(default_model, loader or load_pipeline, lock_model)

    def fallback_side(model_name) -> int:
        """The image side an API call without one gets: the built-in model's own, else the tiny models'."""
        return builtin_size((model_name or state.default_model).strip()) or TINY_IMAGE_SIZE
    method_ids = list(REGISTRY)
    controls: dict[str, dict[str, Any]] = {}
    toggles: dict[str, Any] = {}
    sections: dict[str, Any] = {}

    def preset_names():
        return list(Preset.builtins()) + [n for n in user_presets(preset_dir) if n not in Preset.builtins()]

    with gr.Blocks(title="attnkit") as demo:
        gr.Markdown("## attnkit: cross-attention control")
        listed = model_choices(models_folder)
        if default_model not in [source for _, source in listed]:
            listed.insert(0, (default_model, default_model))
        model = gr.Dropdown(
            choices=listed, value=default_model, label="Model", allow_custom_value=not lock_model,
            interactive=not lock_model, elem_id="ak-model",
            info="this app's only model" if lock_model else
            "a built-in model, one from your models folder, or type a diffusers folder, a .safetensors file or a "
            "hub id and press Enter")
        note = gr.Markdown(elem_id="ak-model-note")
        with gr.Tab("Generate", elem_id="ak-tab-generate"):
            with gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(SHAPES_PROMPT if default_model == SHAPES else "", label="Prompt", lines=2,
                                        elem_id="ak-prompt")
                    negative = gr.Textbox(label="Negative prompt", elem_id="ak-negative")
                    picker = gr.CheckboxGroup(label="Words (pick the subjects the methods act on)", choices=[],
                                              elem_id="ak-words")
                    # the picked words as text: what generation reads (API callers pass it directly)
                    picked = gr.Textbox(visible=False, elem_id="ak-picked")
                    with gr.Row():
                        seed = gr.Number(label="Seed (-1: random)", value=0, precision=0, minimum=-1,
                                         maximum=2**32 - 1,
                                         elem_id="ak-seed")
                        dice = gr.Button("\U0001F3B2", elem_id="ak-seed-random", scale=0, min_width=40)
                        steps = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id="ak-steps")
                        cfg = gr.Slider(0, 20, value=7.5, step=0.5, label="CFG scale", elem_id="ak-cfg")
                    with gr.Row():
                        side = builtin_size(default_model) or TINY_IMAGE_SIZE
                        width = gr.Slider(64, 2048, value=side, step=8, label="Width", elem_id="ak-width")
                        height = gr.Slider(64, 2048, value=side, step=8, label="Height", elem_id="ak-height")
                        sampler = gr.Dropdown(sampler_names(), value=OWN_SAMPLER, label="Sampler",
                                              info="default: the model's own scheduler", elem_id="ak-sampler")
                    compare = gr.Checkbox(label="Compare with baseline (same seed, no attnkit)", value=False,
                                          elem_id="ak-compare")
                    condition_inputs, keyword_pickers, conditions = build_conditions(gr)
                    for method_id in method_ids:
                        with gr.Accordion(METHOD_TITLES[method_id], open=False,
                                          elem_id=f"ak-acc-{method_id}") as sections[method_id]:
                            toggles[method_id] = gr.Checkbox(label=f"Enable {METHOD_TITLES[method_id]}", value=False,
                                                             elem_id=f"ak-enable-{method_id}")
                            controls[method_id] = {}
                            for f in panel_fields(method_id):
                                controls[method_id][f.name] = _widget(gr, f)
                    with gr.Accordion("Presets", open=False, elem_id="ak-acc-presets"):
                        preset_choice = gr.Dropdown(label="Preset", choices=preset_names(), elem_id="ak-preset")
                        with gr.Row():
                            load_button = gr.Button("Load", elem_id="ak-preset-load")
                            delete_button = gr.Button("Delete", elem_id="ak-preset-delete")
                        preset_name = gr.Textbox(label="Save as", elem_id="ak-preset-name")
                        save_button = gr.Button("Save", elem_id="ak-preset-save")
                        share = gr.Textbox(label="Share code (paste one and press Import)", elem_id="ak-share",
                                           buttons=["copy"])
                        with gr.Row():
                            export_button = gr.Button("Export share code", elem_id="ak-export")
                            import_button = gr.Button("Import", elem_id="ak-import")
                        png = gr.File(label="Import from a PNG or preset file", file_types=[".png", ".json"],
                                      elem_id="ak-import-file")
                with gr.Column(scale=2):
                    with gr.Row():
                        run_button = gr.Button("Generate", variant="primary", elem_id="ak-generate")
                        stop_button = gr.Button("Stop", elem_id="ak-stop")
                    images = gr.Gallery(label="Result", columns=2, elem_id="ak-images")
                    heatmaps = gr.Gallery(label="Attention heatmaps", columns=3, elem_id="ak-heatmaps")
                    download = gr.File(label="PNG with settings", elem_id="ak-download")
                    status = gr.Markdown(elem_id="ak-status")
        with gr.Tab("Edit a photo", elem_id="ak-tab-edit"):
            edit_tab = build_edit_tab(gr, state)

        flat = [(m, f) for m in method_ids for f in panel_fields(m)]
        widgets = [controls[m][f.name] for m, f in flat]
        toggle_list = [toggles[m] for m in method_ids]

        def read_controls(values):
            enabled = dict(zip(method_ids, values[: len(method_ids)]))
            per: dict[str, dict[str, Any]] = {m: {} for m in method_ids}
            for (m, f), v in zip(flat, values[len(method_ids):]):
                per[m][f.name] = v
            return enabled, per

        def update_words(model_name, text, current):
            return words_update(gr, state, model_name, text, current, "Words (pick the subjects the methods act on)")

        prompt.change(update_words, [model, prompt, picker], picker)
        picker.change(lambda chosen: ", ".join(chosen or []), picker, picked)

        def make_images(session, model_name, text, neg, methods, picked_words, seed_value, n_steps, scale, w, h,
                        sampler_name, baseline, progress):
            """One generation (and its baseline) for a browser session: ``(gallery, maps, png path, message)``.
            Raises attnkit's errors (``Interrupted`` when the session's Stop was pressed)."""
            stop = state.begin(session)
            try:
                if not text or not text.strip():
                    raise AttnKitError("type a prompt first")
                seed_number = _whole(seed_value, "Seed")
                if seed_number == -1:  # A1111's habit: -1 is a new random seed, shown and saved with the image
                    seed_number = random.randrange(2**32)
                settings = check_settings({"steps": _whole(n_steps, "Steps"), "guidance_scale": float(scale),
                                           "seed": seed_number, "width": _whole(w, "Width"),
                                           "height": _whole(h, "Height")}, _LABELS)
                pipe, lock = state.pipe(model_name)
                chosen_sampler = check_sampler(sampler_name, family_of(pipe))
                if chosen_sampler != OWN_SAMPLER:
                    settings["sampler"] = chosen_sampler
                kwargs = dict(num_inference_steps=settings["steps"], guidance_scale=settings["guidance_scale"],
                              width=settings["width"], height=settings["height"])
                if neg:
                    kwargs["negative_prompt"] = neg
                passes = 2 if baseline else 1
                clock = Progress(settings["steps"], passes)

                def reporter(pass_no: int, label: str):
                    """Progress callbacks of one pass: the user's step count, inner passes, time left overall."""
                    def on_step(step):
                        done = clock.fraction(pass_no, step)
                        progress(done, desc=f"{label}step {shown_step(step, clock.requested)}/{clock.requested}"
                                            f"{clock.describe(done)}")

                    def on_work(step, what, done_passes, total):
                        done = clock.fraction(pass_no, step, done_passes / max(total, 1))
                        shown = shown_step(step, clock.requested)  # the step these passes prepare
                        progress(done, desc=f"{label}step {shown}/{clock.requested}: "
                                            f"{work_text(what, done_passes, total)}{clock.describe(done)}")

                    return {"on_step": on_step, "on_work": on_work}

                progress(0.0, desc="starting")
                with lock, using_sampler(pipe, chosen_sampler):
                    result = generate(pipe, text, methods, seed=settings["seed"], stop=stop,
                                      **reporter(0, "attnkit "), **kwargs)
                    base = None
                    if baseline:
                        base = generate(pipe, text, [], seed=settings["seed"], stop=stop,
                                        **reporter(1, "baseline "), **kwargs)
            finally:
                state.end(session)
            gallery = [(result.images[0], "attnkit")]
            if base is not None:
                gallery.append((base.images[0], "baseline"))
            from ..viz import overlay

            maps = [(overlay(result.images[0], m[0]), f"{method_id}: {word}")
                    for method_id, report in result.report.methods.items() for word, m in report.maps.items()]
            # presets carry the methods of the field table; condition images (pka) are not preset data
            presettable = [m for m in methods if m.id in REGISTRY]
            notes = list(result.report.warnings)
            if picked_words and not any(hasattr(m.config, "words") for m in methods):
                notes.insert(0, "no method that acts on words is on, so the picked words were not used: enable "
                                "observe, Attend-and-Excite or A-STAR")
            if _whole(seed_value, "Seed") == -1:
                notes.insert(0, f"random seed: {settings['seed']}")
            out = Path(tempfile.mkdtemp(prefix="attnkit-")) / "attnkit.png"
            try:
                info = Preset.from_methods(presettable, settings=settings).png_info(
                    prompt=text, negative_prompt=neg or "", model=model_name)
            except PresetError as exc:  # the image is kept whatever happens to its settings
                info = None
                notes.append(f"the PNG is saved without its settings ({exc})")
            result.images[0].save(out, format="PNG", pnginfo=info)
            return gallery, maps, str(out), "Done." + "".join(f"\n- {n}" for n in notes)

        # Gradio fills in only positional parameters before ``*values``: the request (a session's own stop flag)
        # first, the progress tracker after the fixed inputs
        def run(request: gr.Request, model_name, text, neg, words, seed_value, n_steps, scale, w, h, sampler_name,
                baseline, progress=gr.Progress(), *values):
            try:
                enabled, per = read_controls(values)
                methods = methods_from_controls(enabled, per, _split(words) or [])
                pka = pka_from_controls(values[len(method_ids) + len(flat):])
                if pka is not None:
                    methods.append(pka)
                return make_images(session_of(request), model_name, text, neg, methods, _split(words), seed_value,
                                   n_steps, scale, w, h, sampler_name, baseline, progress)
            except Interrupted:
                return gr.update(), gr.update(), gr.update(), f"Stopped; the pipeline is restored. {STALE}"
            # a failed run: the message stays in the status line, the last results stay up, marked as old
            except AttnKitError as exc:
                return gr.update(), gr.update(), gr.update(), f"{error_text(str(exc))}\n\n{STALE}"
            except Exception as exc:  # a readable message, never a trace in the UI
                logger.exception("attnkit generation failed")
                return (gr.update(), gr.update(), gr.update(),
                        f"{error_text(f'generation failed: {one_line(exc, 200)}')}\n\n{STALE}")

        def generate_api(prompt: str, preset: str = "", words: str = "", negative_prompt: str = "",
                         seed: float = -1, steps: float = 0, cfg_scale: float = -1, width: float = 0,
                         height: float = 0, sampler: str = "", model: str = "", baseline: bool = False,
                         request: gr.Request = None, progress=gr.Progress()):
            """Generate with a preset's methods acting on the given words.

            prompt: the prompt. preset: a preset's name (built-in or saved here), a share code (ak1...) or preset
            JSON; empty: no method. words: the prompt's words the methods act on, comma-separated ("car, sheep").
            seed: -1 for a random seed. steps, cfg_scale, width, height, sampler: 0, -1, 0, 0 and "" take the
            preset's settings, else the app's defaults. model: empty for the app's model. baseline: also return the
            same seed without attnkit. Returns the images, the heatmaps, the PNG with its settings and a message.
            """
            try:
                chosen = preset_of(preset)
                listed = _split(words) or []
                methods = chosen.to_methods(listed or None)
                s = chosen.settings
                return make_images(
                    session_of(request), model or state.default_model, prompt, negative_prompt or
                    s.get("negative_prompt", ""), methods, listed, seed if seed != -1 else s.get("seed", -1),
                    steps or s.get("steps", 20), cfg_scale if cfg_scale >= 0 else s.get("guidance_scale", 7.5),
                    width or s.get("width", fallback_side(model)), height or s.get("height", fallback_side(model)),
                    sampler or s.get("sampler", OWN_SAMPLER), baseline, progress)
            except Interrupted:
                raise gr.Error("stopped by the user") from None
            except AttnKitError as exc:
                raise gr.Error(str(exc)) from None
            except Exception as exc:
                logger.exception("attnkit generation failed")
                raise gr.Error(f"generation failed: {one_line(exc, 200)}") from None

        def preset_of(text: str) -> Preset:
            """A preset from an API caller: a name, a share code or JSON (empty: no method)."""
            text = (text or "").strip()
            if not text:
                return Preset.from_methods([])
            if text.startswith("{"):
                return Preset.from_json(text)
            if text.startswith("ak") and "." in text:
                return Preset.from_share_code(text)
            return Preset.load(text, preset_dir)

        # a section's header says when its method is on (a loaded preset may turn methods on)
        for method_id in method_ids:
            def relabel(on, title=METHOD_TITLES[method_id]):
                return gr.update(label=section_label(title, on))

            toggles[method_id].change(relabel, toggles[method_id], sections[method_id], queue=False)

        dice.click(lambda: -1, None, seed, queue=False)  # A1111's dice: a new random seed for the next run

        takes_request(gr, run)
        event = run_button.click(
            run, [model, prompt, negative, picked, seed, steps, cfg, width, height, sampler, compare, *toggle_list,
                  *widgets, *condition_inputs],
            [images, heatmaps, download, status], concurrency_limit=1,
        )

        # the named API endpoint /generate: hidden components whose names are generate_api's parameters
        with gr.Group(visible=False):
            api_inputs = [gr.Textbox(""), gr.Textbox(""), gr.Textbox(""), gr.Textbox(""), gr.Number(-1),
                          gr.Number(0), gr.Number(-1), gr.Number(0), gr.Number(0), gr.Textbox(""), gr.Textbox(""),
                          gr.Checkbox(False)]
            api_outputs = [gr.Gallery(), gr.Gallery(), gr.File(), gr.Textbox()]
            api_button = gr.Button()
        takes_request(gr, generate_api)
        api_button.click(generate_api, api_inputs, api_outputs, api_name="generate", concurrency_limit=1)

        def update_keywords(model_name, text, *current):
            updates = [words_update(gr, state, model_name, text, [c] if c else [], "Keyword (subject)")
                       for c in current]
            return [{**u, "value": (u.get("value") or [None])[0]} for u in updates]

        for trigger in (prompt.blur, prompt.submit):  # not per keystroke: the picker is
            trigger(update_keywords, [model, prompt, *keyword_pickers], keyword_pickers)

        def request_stop(request: gr.Request = None):
            return state.request_stop(request)

        takes_request(gr, request_stop)

        stop_button.click(request_stop, None, status, queue=False)

        # the Edit tab -----------------------------------------------------------------------------------------
        edit_tab["source"].change(edit_tab["update_words"], [model, edit_tab["source"], edit_tab["picker"]],
                                  edit_tab["picker"])
        edit_tab["picker"].change(lambda chosen: ", ".join(chosen or []), edit_tab["picker"], edit_tab["picked"])
        edit_tab["run_button"].click(edit_tab["run"], [model, *edit_tab["inputs"]], edit_tab["outputs"],
                                     concurrency_limit=1, api_name="edit")
        edit_tab["stop_button"].click(request_stop, None, edit_tab["status"], queue=False)

        # the model chooser ----------------------------------------------------------------------------------
        section_list = [sections[m] for m in method_ids]

        def on_model(model_name, *on):
            """A model was chosen (or the page opened): load it, say what it is, and hide what it cannot run (a
            hidden method that was on is turned off, and said so)."""
            keep = [gr.update() for _ in range(2 * len(method_ids) + 7)]
            try:
                pipe, _ = state.pipe(model_name)
                family = family_of(pipe)
            except AttnKitError as exc:
                return [error_text(str(exc)), *keep]
            runs = {m: family in get_method(m).families for m in method_ids}
            text = model_note(model_name or state.default_model, pipe, family, runs, models_folder)
            off = [METHOD_TITLES[m] for m, was in zip(method_ids, on) if was and not runs[m]]
            if off:
                text += f"\n\nTurned off: {', '.join(off)}."
            editable = family == "sd"
            quick = is_builtin(pipe)
            edit_note = ("" if not editable else
                         "Built-in model: 20 steps, a quick try (your own models start at 50, as the papers)."
                         if quick else "")
            side = builtin_size(pipe)  # a built-in model draws at its own size; other models keep the sliders
            return [
                text,
                *(gr.update(visible=runs[m]) for m in method_ids),
                *(gr.update(value=False) if was and not runs[m] else gr.update() for m, was in zip(method_ids, on)),
                gr.update(visible=family == "flux"),
                gr.update(choices=sampler_names(family), value=OWN_SAMPLER) if family == "flux"
                else gr.update(choices=sampler_names(family)),
                edit_note if editable else f"Editing a photo needs an SD 1.x/2.x model; this is a "
                                           f"{FAMILY_NAMES[family]} model.",
                gr.update(interactive=editable),
                gr.update(value=20 if quick else 50),
                gr.update(value=side) if side else gr.update(),
                gr.update(value=side) if side else gr.update(),
            ]

        model_outputs = [note, *section_list, *toggle_list, conditions, sampler, edit_tab["note"],
                         edit_tab["run_button"], edit_tab["steps"], width, height]
        # the chooser's value changes when a model is picked, or a typed one is confirmed (Enter or leaving the
        # box), never per keystroke: each read may load a model
        (model.change(on_model, [model, *toggle_list], model_outputs)
         .then(update_words, [model, prompt, picker], picker)
         .then(update_keywords, [model, prompt, *keyword_pickers], keyword_pickers)
         .then(edit_tab["update_words"], [model, edit_tab["source"], edit_tab["picker"]], edit_tab["picker"]))
        (demo.load(on_model, [model, *toggle_list], model_outputs)  # a prompt the app starts with gets its words
         .then(update_words, [model, prompt, picker], picker))

        # presets ---------------------------------------------------------------------------------------------

        def apply(preset: Preset, prompts: tuple[str, str] | None = None):
            """Control values for a preset: its methods enabled with their params, others disabled; its settings;
            and ``prompts`` (prompt, negative prompt) when they come with it (an imported image)."""
            chosen = dict(preset.methods)
            updates = [gr.update(value=m in chosen) for m in method_ids]
            for m, f in flat:
                value = chosen.get(m, {}).get(f.name, f.default) if m in chosen else f.default
                updates.append(gr.update(value=param_to_widget_value(f, value)))
            s = preset.settings
            updates += [gr.update(value=s["steps"]) if "steps" in s else gr.update(),
                        gr.update(value=s["guidance_scale"]) if "guidance_scale" in s else gr.update(),
                        gr.update(value=s["seed"]) if "seed" in s else gr.update(),
                        gr.update(value=s["width"]) if "width" in s else gr.update(),
                        gr.update(value=s["height"]) if "height" in s else gr.update(),
                        gr.update(value=s["sampler"]) if "sampler" in s else gr.update()]
            negative_text = prompts[1] if prompts else s.get("negative_prompt")
            updates += [gr.update(value=prompts[0]) if prompts and prompts[0] else gr.update(),
                        gr.update(value=negative_text) if negative_text is not None else gr.update()]
            return updates

        preset_outputs = [*toggle_list, *widgets, steps, cfg, seed, width, height, sampler, prompt, negative]

        # every preset action answers in the status line (the controls are never turned into error pills)
        @reports_in_status(gr, "loading the preset", len(preset_outputs))
        def load_preset(name):
            if not name:
                raise AttnKitError("choose a preset first")
            return [*apply(Preset.load(name, preset_dir)), f"Loaded preset {name!r}."]

        def current_preset(values, name=""):
            enabled, per = read_controls(values)
            methods = []
            for m in method_ids:
                if enabled.get(m):
                    params = {f.name: widget_value_to_param(f, per[m][f.name]) for f in panel_fields(m)}
                    methods.append((m, params))
            return Preset.from_params(methods, name=name)

        @reports_in_status(gr, "saving the preset", 1)
        def save_preset(name, *values):
            current_preset(values, name).save(preset_dir)
            return gr.update(choices=preset_names(), value=name), f"Saved preset {name!r}."

        @reports_in_status(gr, "deleting the preset", 1)
        def remove_preset(name):
            delete_preset(name, preset_dir)
            return gr.update(choices=preset_names(), value=None), f"Deleted preset {name!r}."

        @reports_in_status(gr, "making the share code", 1)
        def export_code(*values):
            return current_preset(values).to_share_code(), "Share code made: copy it from the box."

        @reports_in_status(gr, "reading the share code", len(preset_outputs))
        def import_code(code):
            return [*apply(Preset.from_share_code(code or "")), "Imported the share code."]

        @reports_in_status(gr, "reading the preset file", len(preset_outputs))
        def import_file(upload):
            if upload is None:
                return [*(gr.update() for _ in preset_outputs), gr.update()]
            path = upload if isinstance(upload, str) else upload.name
            preset = Preset.from_file(path)
            prompts = prompts_of_image(path) if not path.lower().endswith(".json") else None
            said = "its prompt, settings and methods" if prompts else "its settings and methods"
            return [*apply(preset, prompts), f"Imported {said} from {Path(path).name}."]

        # the saved presets as they are on disk now, at every page load (a reload lists what was saved before it)
        demo.load(lambda: gr.update(choices=preset_names()), None, preset_choice, queue=False)
        load_button.click(load_preset, preset_choice, [*preset_outputs, status])
        save_button.click(save_preset, [preset_name, *toggle_list, *widgets], [preset_choice, status])
        delete_button.click(remove_preset, preset_choice, [preset_choice, status])
        export_button.click(export_code, [*toggle_list, *widgets], [share, status])
        import_button.click(import_code, share, [*preset_outputs, status])
        png.upload(import_file, png, [*preset_outputs, status])
        # the API page shows the two endpoints meant for scripts; the controls' own events stay callable, unlisted
        for fn in demo.fns.values():
            if fn.api_name not in ("generate", "edit"):
                fn.api_visibility = "undocumented"
        demo.attnkit_state = state  # for tests and hosts
        demo.attnkit_event = event
    return demo


#: the map grids the Map resolution boxes offer (any other HxW can be typed)
GRIDS = ("auto", "8x8", "16x16", "32x32", "64x64")


def _widget(gr, f: Field, prefix: str = "ak"):
    """A Gradio component for a field row (``elem_id`` = ``<prefix>-<field key>``)."""
    elem = f"{prefix}-{f.key}"
    value = param_to_widget_value(f, f.default)
    label = f.label
    if f.kind == "bool":
        return gr.Checkbox(label=label, value=value, info=f.help, elem_id=elem)
    if f.kind in ("int", "float"):
        return gr.Slider(f.minimum, f.maximum, value=value, step=f.step, label=label, info=f.help, elem_id=elem)
    if f.kind == "choice":
        # (label, value) choices need Gradio 4 (Gradio 3, in A1111 and SD.Next, shows the tuple as text)
        labelled = f.choice_labels and int(str(getattr(gr, "__version__", "4")).split(".")[0]) >= 4
        choices = list(zip(f.choice_labels, f.choices)) if labelled else list(f.choices)
        return gr.Dropdown(choices=choices, value=value, label=label, info=f.help, elem_id=elem)
    if f.kind == "grid":
        return gr.Dropdown(choices=list(GRIDS), value=value, label=label, info=f.help, allow_custom_value=True,
                           elem_id=elem)
    placeholder = {"words": "empty: the picked words", "indices": "e.g. 2, 5", "window": "e.g. 0-1",
                   "windows": "e.g. 0-0.5, 0.5-1", "thresholds": "e.g. 0: 0.05, 10: 0.5"}.get(f.kind, "")
    if f.key == "structured_phrases":
        placeholder = "empty: the parser finds them"
    elif f.key == "observe_words":
        placeholder = "empty: the picked words (or every word)"
    return gr.Textbox(value=value, label=label, info=f.help, placeholder=placeholder, elem_id=elem)
