"""The panel's Conditions section: condition images for multi-condition Flux (:class:`~attnkit.methods.PKA`).

A few slots, each a picture, its kind (spatial: an aligned map such as edges or depth; subject: a reference photo)
and, for a subject, the prompt word naming it (picked from the prompt's words); then the attention mode and its
knobs. Gradio is imported by the caller.
"""

from __future__ import annotations

from ..errors import AttnKitError

SLOTS = 4


def build_conditions(gr):
    """The section's widgets (inside the caller's layout); returns ``(inputs, keyword pickers, the accordion)``."""
    images, kinds, keywords = [], [], []
    with gr.Accordion("Conditions (Flux: position-aligned, keyword-scoped attention)", open=False,
                      elem_id="ak-acc-conditions") as section:
        gr.Markdown("Condition images for Flux models: **spatial** maps (edges, depth, any picture on the image's "
                    "layout) and **subject** photos (pick the prompt word naming the subject).")
        for i in range(SLOTS):
            with gr.Row():
                images.append(gr.Image(label=f"Condition {i + 1}", type="pil", height=160,
                                       elem_id=f"ak-cond-image-{i}"))
                with gr.Column():
                    kinds.append(gr.Radio(["spatial", "subject"], value="spatial", label="Kind",
                                          elem_id=f"ak-cond-kind-{i}"))
                    keywords.append(gr.Dropdown(choices=[], value=None, label="Keyword (subject)",
                                                allow_custom_value=True, elem_id=f"ak-cond-keyword-{i}"))
        with gr.Row():
            mode = gr.Dropdown(["pka", "full"], value="pka", label="Attention",
                               info="pka: aligned and keyword-scoped (fast); full: every token to every token",
                               elem_id="ak-cond-mode")
            window = gr.Slider(1, 7, value=1, step=2, label="Aligned window", elem_id="ak-cond-window")
            epsilon = gr.Slider(0.0, 0.95, value=0.2, step=0.05, label="Keyword mask threshold",
                                elem_id="ak-cond-epsilon")
            residual = gr.Checkbox(label="Residual reading", value=False, elem_id="ak-cond-residual")
    inputs = [x for slot in zip(images, kinds, keywords) for x in slot] + [mode, window, epsilon, residual]
    return inputs, keywords, section


def pka_from_controls(values):
    """The :class:`~attnkit.methods.PKA` of the section's values (``None`` when no condition image was given)."""
    from ..methods import PKA
    from ..methods.pka.branches import Condition

    slots, (mode, window, epsilon, residual) = values[: 3 * SLOTS], values[3 * SLOTS:]
    conditions = []
    for i in range(SLOTS):
        image, kind, keyword = slots[3 * i: 3 * i + 3]
        if image is None:
            continue
        keyword = (keyword or "").split("#")[0].strip() or None if kind == "subject" else None
        if kind == "subject" and keyword is None:
            raise AttnKitError(f"Condition {i + 1} is a subject: pick the prompt word that names it")
        conditions.append(Condition(kind=kind, image=image, keyword=keyword))
    if not conditions:
        return None
    return PKA(conditions=conditions, mode=mode or "pka", window=int(window), epsilon=float(epsilon),
               residual=bool(residual))
