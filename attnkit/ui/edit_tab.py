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

from ..editing import parse_scales, parse_window
from ..errors import AttnKitError, Interrupted

logger = logging.getLogger("attnkit")

PHASES = {"invert": "inverting", "optimise": "optimising tokens and null text", "edit": "editing"}


def edit_knobs(edit_type, reweight, blend_words, blend_threshold, cross_replace, self_replace, token_iterations,
               null_iterations, dpl_null_text) -> dict[str, Any]:
    """:func:`attnkit.edit` keyword arguments from the tab's widgets."""
    knobs: dict[str, Any] = {
        "edit": edit_type or "replace",
        "cross_replace": parse_window(cross_replace, "Cross-attention injection"),
        "self_replace": parse_window(self_replace, "Self-attention injection"),
        "blend_threshold": float(blend_threshold),
        "token_iterations": int(token_iterations),
        "null_iterations": int(null_iterations),
    }
    scales = parse_scales(reweight, "Reweight")
    if scales:
        knobs["reweight"] = scales
    words = [w.strip() for w in (blend_words or "").split(",") if w.strip()]
    if words:
        knobs["blend_words"] = words
    if dpl_null_text:
        knobs.update(null_iterations=max(int(null_iterations), 51), null_early_stop=False)
    return knobs


def build_edit_tab(gr, state):
    """The Edit tab's widgets and events (inside a ``gr.Tab``); ``state`` is the app's :class:`AppState`."""
    from ..editing import edit
    from ..errors import one_line
    from .panel import error_text, session_of, takes_request, words_update

    with gr.Row():
        with gr.Column(scale=3):
            photo = gr.Image(label="Photo", type="pil", elem_id="ak-edit-image")
            source = gr.Textbox(label="Caption of the photo", placeholder="a cat and a dog", elem_id="ak-edit-source")
            target = gr.Textbox(label="Edited caption", placeholder="a cat and a fox", elem_id="ak-edit-target")
            picker = gr.CheckboxGroup(label="Words to make dynamic (DPL; none: null-text inversion only)",
                                      choices=[], elem_id="ak-edit-words")
            picked = gr.Textbox(visible=False, elem_id="ak-edit-picked")
            with gr.Row():
                edit_type = gr.Dropdown(["replace", "refine", "reweight"], value="replace", label="Edit",
                                        info="replace: swap words; refine: add or remove words; reweight: "
                                             "strengthen or weaken words", elem_id="ak-edit-type")
                reweight = gr.Textbox(label="Reweight", placeholder="red=2, blue=0.5", elem_id="ak-edit-reweight")
            with gr.Row():
                blend_words = gr.Textbox(label="Local blend words", placeholder="dog, fox",
                                         info="only the region of these words may change", elem_id="ak-edit-blend")
                blend_threshold = gr.Slider(0.05, 0.95, value=0.3, step=0.05, label="Blend threshold",
                                            elem_id="ak-edit-blend-threshold")
            with gr.Row():
                cross_replace = gr.Textbox(value="0, 0.8", label="Cross-attention injection (start, stop)",
                                           elem_id="ak-edit-cross")
                self_replace = gr.Textbox(value="0, 0.4", label="Self-attention injection (start, stop)",
                                          elem_id="ak-edit-self")
            with gr.Accordion("Inversion and dynamic tokens", open=False, elem_id="ak-acc-edit-advanced"):
                with gr.Row():
                    token_iterations = gr.Slider(0, 50, value=21, step=1, label="Token updates per step (DPL)",
                                                 elem_id="ak-edit-token-iterations")
                    null_iterations = gr.Slider(1, 100, value=10, step=1, label="Null-text updates per step",
                                                elem_id="ak-edit-null-iterations")
                dpl_null_text = gr.Checkbox(label="DPL's null-text setting (51 updates, no early stop; slower)",
                                            value=False, elem_id="ak-edit-dpl-null")
            with gr.Row():
                seed = gr.Number(label="Seed", value=1, precision=0, minimum=0, elem_id="ak-edit-seed")
                steps = gr.Slider(4, 100, value=50, step=1, label="Steps", elem_id="ak-edit-steps")
                cfg = gr.Slider(1, 20, value=7.5, step=0.5, label="CFG scale", elem_id="ak-edit-cfg")
        with gr.Column(scale=2):
            with gr.Row():
                run_button = gr.Button("Edit", variant="primary", elem_id="ak-edit-run")
                stop_button = gr.Button("Stop", elem_id="ak-edit-stop")
            views = gr.Gallery(label="Input / reconstruction / edit", columns=3, elem_id="ak-edit-views")
            maps = gr.Gallery(label="Word maps and masks", columns=3, elem_id="ak-edit-maps")
            report_file = gr.File(label="Report (JSON)", elem_id="ak-edit-report")
            status = gr.Markdown(elem_id="ak-edit-status")

    def update_words(model_name, text, current):
        return words_update(gr, state, model_name, text, current,
                            "Words to make dynamic (DPL; none: null-text inversion only)")

    def run_edit(model_name, image, src, tgt, words, kind, scales, blend, threshold, cross, self_window, tokens,
                 nulls, dpl_null, seed_value, n_steps, scale, request: gr.Request = None, progress=gr.Progress()):
        session = session_of(request)
        stop = state.begin(session)
        try:
            if image is None:
                raise AttnKitError("upload a photo first")
            knobs = edit_knobs(kind, scales, blend, threshold, cross, self_window, tokens, nulls, dpl_null)
            chosen = [w.strip() for w in (words or "").split(",") if w.strip()]
            pipe, lock = state.pipe(model_name)

            def on_progress(phase, done, total):
                progress((done, total), desc=f"{PHASES.get(phase, phase)} {done}/{total}")

            with lock:
                result = edit(pipe, image, src, tgt, words=chosen, seed=int(seed_value),
                              num_inference_steps=int(n_steps), guidance_scale=float(scale),
                              on_progress=on_progress, stop=stop, **knobs)
            report = result.report
            views_out = [(result.source, "input"), (result.reconstruction, "reconstruction"),
                         (result.images[0], "edited")]
            maps_out = []
            from ..viz import overlay

            for word, m in report.maps.items():
                maps_out.append((overlay(result.source, m), f"{word} (inversion)"))
            if report.background is not None:
                maps_out.append((overlay(result.source, report.background.float()), "background"))
            if report.blend is not None:
                maps_out.append((overlay(result.source, report.blend.float()), "blend mask"))
            path = Path(tempfile.mkdtemp(prefix="attnkit-edit-")) / "edit-report.json"
            path.write_text(json.dumps({
                "settings": report.settings, "timings": report.timings, "psnr": report.psnr,
                "warnings": report.warnings, "null_text": report.null_text, "dpl_losses": report.dpl_losses,
            }, indent=1, default=str))
            message = (f"Done in {report.timings['total']:.1f} s. Reconstruction PSNR "
                       f"{report.psnr['input']:.2f} dB against the photo.")
            message += "".join(f"\n- {w}" for w in report.warnings)
            return views_out, maps_out, str(path), message
        except Interrupted:
            return gr.update(), gr.update(), gr.update(), "Stopped; the pipeline is restored."
        except AttnKitError as exc:
            return gr.update(), gr.update(), gr.update(), error_text(str(exc))
        except Exception as exc:  # a readable message, never a trace in the UI
            logger.exception("attnkit edit failed")
            return gr.update(), gr.update(), gr.update(), error_text(f"edit failed: {one_line(exc, 200)}")
        finally:
            state.end(session)

    takes_request(gr, run_edit)
    return {
        "photo": photo, "source": source, "target": target, "picker": picker, "picked": picked,
        "inputs": [photo, source, target, picked, edit_type, reweight, blend_words, blend_threshold, cross_replace,
                   self_replace, token_iterations, null_iterations, dpl_null_text, seed, steps, cfg],
        "outputs": [views, maps, report_file, status], "run": run_edit, "run_button": run_button,
        "stop_button": stop_button, "update_words": update_words, "status": status,
    }
