"""The panel's Edit tab: edit a photo by editing its caption (:func:`attnkit.edit`).

Upload, source caption, target prompt, the words to make dynamic (picked from the caption), the edit type and its
knobs; the result shows input / reconstruction / edit side by side, and the per-word maps, the background mask and
the blend mask as pictures. Gradio is imported by the caller (:func:`attnkit.ui.panel.build_app`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from ..editing import DPL_NULL_TEXT, parse_scales, parse_window
from ..errors import AttnKitError, Interrupted

logger = logging.getLogger("attnkit")

PHASES = {"invert": "inverting", "optimise": "optimising tokens and null text", "edit": "editing"}


def edit_knobs(edit_type, reweight, blend_words, blend_threshold, cross_replace, self_replace, token_iterations,
               null_iterations, dpl_null_text, dynamic: bool = False) -> dict[str, Any]:
    """:func:`attnkit.edit` keyword arguments from the tab's widgets. ``dynamic``: DPL words are picked; then
    ``dpl_null_text`` leaves the null text to DPL's official setting (51 fixed iterations, each step from "")."""
    knobs: dict[str, Any] = {
        "edit": edit_type or "replace",
        "cross_replace": parse_window(cross_replace, "Cross-attention injection"),
        "self_replace": parse_window(self_replace, "Self-attention injection"),
        "blend_threshold": float(blend_threshold),
        "token_iterations": int(token_iterations),
    }
    if dynamic and dpl_null_text:
        knobs.update(DPL_NULL_TEXT)
    else:
        knobs.update(null_iterations=int(null_iterations), null_early_stop=True, null_start="previous")
    scales = parse_scales(reweight, "Reweight")
    if scales:
        knobs["reweight"] = scales
    words = [w.strip() for w in (blend_words or "").split(",") if w.strip()]
    if words:
        knobs["blend_words"] = words
    return knobs


#: what the Paper settings button says it does
PAPER_TIP = ("DPL's DPL.sh and Prompt-to-Prompt's notebooks: injection 0-0.8 / 0-0.4, blend threshold 0.3, 21 token "
             "updates, DPL's null text (51 fixed updates from \"\"), k-means seed 1, 50 DDIM steps, CFG 7.5")


def paper_values() -> list:
    """The tab's widgets at the papers' settings (:attr:`attnkit.methods.P2P.paper`, :attr:`attnkit.methods.DPL.paper`,
    their runs), in the order of the Paper settings button's outputs."""
    from ..methods import DPL, P2P

    def window(w):
        return f"{w[0]:g}-{w[1]:g}"

    return [window(P2P.paper["cross_replace"]), window(P2P.paper["self_replace"]), P2P.paper["blend_threshold"],
            DPL.paper["token_iterations"], 10, True, 1, DPL.paper_run["steps"], DPL.paper_run["guidance_scale"]]


def phase_weights(knobs: dict[str, Any], dynamic: bool) -> dict[str, float]:
    """The cost of one step of each phase, in denoiser passes (a gradient pass counts three): inversion one pass,
    optimisation one plus three per null-text (and DPL token) update, the edit one pass of a batch of four."""
    nulls = knobs["null_iterations"] + (knobs["token_iterations"] if dynamic else 0)
    return {"invert": 1.0, "optimise": 1.0 + 3.0 * nulls, "edit": 3.0}


def overall(weights: dict[str, float], phase: str, done: int, total: int) -> float:
    """The fraction of the whole edit done at step ``done`` of ``total`` of ``phase`` (phases run in order)."""
    whole = sum(weights.values())
    before = sum(w for p, w in weights.items() if list(weights).index(p) < list(weights).index(phase))
    return min((before + weights[phase] * done / max(total, 1)) / whole, 1.0)


def psnr_text(psnr: float) -> str:
    """The reconstruction quality in words."""
    verdict = ("close to the photo" if psnr >= 30 else "recognisably the photo" if psnr >= 20
               else "far from the photo, so the edit starts from a different picture")
    return (f"The inversion reproduces the photo at {psnr:.1f} dB PSNR: {verdict} (30 dB and up is close; the "
            "built-in random-weight models cannot reproduce photos).")


def edit_png_info(settings: dict[str, Any], model: str):
    """PNG text chunks of an edited image: A1111-style ``parameters`` and the full settings (``attnkit-edit``)."""
    from PIL.PngImagePlugin import PngInfo

    p2p = settings.get("p2p") or {}
    pairs = [f"Steps: {settings['num_inference_steps']}", f"CFG scale: {settings['guidance_scale']:g}",
             f"Seed: {settings['seed']}", f"Edit: {p2p.get('edit', 'replace')}",
             f"Source caption: {settings['source_prompt']}"]
    if settings.get("words"):
        pairs.append(f"Dynamic words: {' + '.join(settings['words'])}")
    if model:
        pairs.append(f"Model: {model}")
    info = PngInfo()
    info.add_text("parameters", f"{settings['target_prompt']}\n{', '.join(pairs)}")
    info.add_text("attnkit-edit", json.dumps(settings, default=str))
    return info


def labelled(picture, label: str):
    """``picture`` with ``label`` written under it (a map or mask says what it is also when saved)."""
    from ..viz import labelled_grid

    side = max(picture.width, picture.height, 384)  # room for the label's words
    return labelled_grid([(label, picture.convert("RGB").resize((side, side)))], side, 1)


def build_edit_tab(gr, state):
    """The Edit tab's widgets and events (inside a ``gr.Tab``); ``state`` is the app's :class:`AppState`."""
    from ..core.steps import Progress
    from ..editing import edit
    from ..errors import one_line
    from ..viz import overlay
    from .panel import STALE, _whole, error_text, session_of, takes_request, words_update

    note = gr.Markdown(elem_id="ak-edit-note")
    with gr.Row():
        with gr.Column(scale=3):
            photo = gr.Image(label="Photo", type="pil", elem_id="ak-edit-image")
            source = gr.Textbox("", label="Caption of the photo", placeholder="a cat and a dog", elem_id="ak-edit-source")
            target = gr.Textbox("", label="Edited caption", placeholder="a cat and a fox", elem_id="ak-edit-target")
            picker = gr.CheckboxGroup(label="Words to make dynamic (DPL; none: null-text inversion only)",
                                      choices=[], elem_id="ak-edit-words")
            picked = gr.Textbox("", visible=False, elem_id="ak-edit-picked")
            with gr.Row():
                edit_type = gr.Dropdown(["replace", "refine", "reweight"], value="replace", label="Edit",
                                        info="replace: swap words; refine: add or remove words; reweight: "
                                             "strengthen or weaken words", elem_id="ak-edit-type")
                reweight = gr.Textbox("", label="Reweight", placeholder="red=2, blue=0.5", elem_id="ak-edit-reweight")
            with gr.Row():
                blend_words = gr.Textbox("", label="Local blend words", placeholder="dog, fox",
                                         info="only the region of these words may change", elem_id="ak-edit-blend")
                blend_threshold = gr.Slider(0.05, 0.95, value=0.3, step=0.05, label="Blend threshold",
                                            elem_id="ak-edit-blend-threshold")
            with gr.Row():
                cross_replace = gr.Textbox(value="0-0.8", label="Cross-attention injection",
                                           info="the part of the run that keeps the photo's word layout, as "
                                                "from-to fractions", elem_id="ak-edit-cross")
                self_replace = gr.Textbox(value="0-0.4", label="Self-attention injection",
                                          info="the part of the run that keeps the photo's structure",
                                          elem_id="ak-edit-self")
            with gr.Accordion("Inversion and dynamic tokens", open=False, elem_id="ak-acc-edit-advanced"):
                with gr.Row():
                    token_iterations = gr.Slider(0, 50, value=21, step=1, label="Token updates per step (DPL)",
                                                 elem_id="ak-edit-token-iterations")
                    null_iterations = gr.Slider(1, 100, value=10, step=1, label="Null-text updates per step",
                                                elem_id="ak-edit-null-iterations")
                dpl_null_text = gr.Checkbox(label="With DPL words: DPL's null-text setting (51 updates from \"\" at "
                                                  "every step, no early stop; the paper's). Off: the slider above",
                                            value=True, elem_id="ak-edit-dpl-null")
            with gr.Row():
                seed = gr.Number(label="Seed", value=1, precision=0, minimum=0, elem_id="ak-edit-seed")
                steps = gr.Slider(4, 100, value=50, step=1, label="Steps", elem_id="ak-edit-steps")
                cfg = gr.Slider(1, 20, value=7.5, step=0.5, label="CFG scale", elem_id="ak-edit-cfg")
        with gr.Column(scale=2):
            with gr.Row():
                run_button = gr.Button("Edit", variant="primary", elem_id="ak-edit-run")
                stop_button = gr.Button("Stop", elem_id="ak-edit-stop")
                paper_button = gr.Button("Paper settings", elem_id="ak-edit-paper")
            views = gr.Gallery(label="Input / reconstruction / edit", columns=3, elem_id="ak-edit-views")
            maps = gr.Gallery(label="Word maps and masks", columns=3, object_fit="contain", elem_id="ak-edit-maps")
            png_file = gr.File(label="Edited PNG with its settings", elem_id="ak-edit-png")
            report_file = gr.File(label="Report (JSON: settings, timings, losses)", elem_id="ak-edit-report")
            status = gr.Markdown(elem_id="ak-edit-status")

    def update_words(model_name, text, current):
        return words_update(gr, state, model_name, text, current,
                            "Words to make dynamic (DPL; none: null-text inversion only)")

    # the parameter names are the /edit API's
    def run_edit(model, photo, caption, edited_caption, words="", edit_type="replace", reweight="", blend_words="",
                 blend_threshold=0.3, cross_replace="0-0.8", self_replace="0-0.4", token_iterations=21,
                 null_iterations=10, dpl_null_text=True, seed=1, steps=50, cfg_scale=7.5,
                 request: gr.Request = None, progress=gr.Progress()):
        """Edit a photo by editing its caption (Prompt-to-Prompt on a null-text inversion; with words, Dynamic
        Prompt Learning first). Returns the input/reconstruction/edit views, the maps and masks, the edited PNG
        with its settings, the report (JSON) and a message."""
        session = session_of(request)
        stop = state.begin(session)
        keep = [gr.update() for _ in range(4)]
        try:
            if photo is None:
                raise AttnKitError("upload a photo first")
            chosen = [w.strip() for w in (words or "").split(",") if w.strip()]
            knobs = edit_knobs(edit_type, reweight, blend_words, blend_threshold, cross_replace, self_replace,
                               token_iterations, null_iterations, dpl_null_text, dynamic=bool(chosen))
            pipe, lock = state.pipe(model)
            weights = phase_weights(knobs, bool(chosen))
            clock = Progress(int(steps))

            def on_progress(phase, done, total):
                fraction = overall(weights, phase, done, total)
                progress(fraction, desc=f"{PHASES.get(phase, phase)}: step {done}/{total} (part "
                                        f"{list(weights).index(phase) + 1} of 3){clock.describe(fraction)}")

            progress(0.0, desc="starting")
            with lock:
                result = edit(pipe, photo, caption, edited_caption, words=chosen, seed=_whole(seed, "Seed"),
                              num_inference_steps=int(steps), guidance_scale=float(cfg_scale),
                              on_progress=on_progress, stop=stop, **knobs)
            report = result.report
            views_out = [(result.source, "input"), (result.reconstruction, "reconstruction"),
                         (result.images[0], "edited")]
            maps_out = [(labelled(overlay(result.source, m), f"{w}: where the photo attends to it"),
                         f"{w} (inversion)") for w, m in report.maps.items()]
            if report.background is not None:
                maps_out.append((labelled(overlay(result.source, report.background.float()),
                                          "background: kept out of the words"), "background"))
            if report.blend is not None:
                maps_out.append((labelled(overlay(result.source, report.blend.float()),
                                          "blend mask: the only part that may change"), "blend mask"))
            folder = Path(tempfile.mkdtemp(prefix="attnkit-edit-"))
            (folder / "edit-report.json").write_text(json.dumps({
                "settings": report.settings, "timings": report.timings, "psnr": report.psnr,
                "warnings": report.warnings, "null_text": report.null_text, "dpl_losses": report.dpl_losses,
            }, indent=1, default=str))
            png = folder / "edited.png"
            result.images[0].save(png, format="PNG", pnginfo=edit_png_info(report.settings, model))
            message = f"Done in {report.timings['total']:.1f} s. {psnr_text(report.psnr['input'])}"
            message += "".join(f"\n- {w}" for w in report.warnings)
            return views_out, maps_out, str(png), str(folder / "edit-report.json"), message
        except Interrupted:
            return [*keep, f"Stopped; the pipeline is restored. {STALE}"]
        except AttnKitError as exc:
            return [*keep, f"{error_text(str(exc))}\n\n{STALE}"]
        except Exception as exc:  # a readable message, never a trace in the UI
            logger.exception("attnkit edit failed")
            return [*keep, f"{error_text(f'edit failed: {one_line(exc, 200)}')}\n\n{STALE}"]
        finally:
            state.end(session)

    takes_request(gr, run_edit)
    paper_button.click(lambda: [*paper_values(), f"Paper settings: {PAPER_TIP}."], None,
                       [cross_replace, self_replace, blend_threshold, token_iterations, null_iterations, dpl_null_text,
                        seed, steps, cfg, status])
    return {
        "photo": photo, "source": source, "target": target, "picker": picker, "picked": picked,
        "inputs": [photo, source, target, picked, edit_type, reweight, blend_words, blend_threshold, cross_replace,
                   self_replace, token_iterations, null_iterations, dpl_null_text, seed, steps, cfg],
        "outputs": [views, maps, png_file, report_file, status], "run": run_edit, "run_button": run_button,
        "stop_button": stop_button, "update_words": update_words, "status": status, "note": note, "steps": steps,
    }
