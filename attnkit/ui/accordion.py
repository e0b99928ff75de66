"""The attnkit accordion inside webui-family hosts (SD.Next, Forge, A1111), built from the field table.

Gradio comes from the host (3.x in A1111/SD.Next, 4.x in Forge) and is passed in; only components and arguments
that both majors accept are used.
"""

from __future__ import annotations

from ..hosts.webui import TITLE, controls
from ..methods import REGISTRY
from .panel import METHOD_TITLES, _widget, panel_fields


def build_controls(gr, prefix: str) -> list:
    """Create the controls inside the current Blocks context; returns them in :func:`attnkit.hosts.webui.controls`
    order (the script's argument order). ``prefix`` makes the ``elem_id``\\ s unique per tab."""
    made = {}
    with gr.Accordion(TITLE, open=False, elem_id=f"{prefix}-accordion"):
        made["enabled"] = gr.Checkbox(label="Enable AttnKit", value=False, elem_id=f"{prefix}-enabled")
        made["words"] = gr.Textbox(value="", label="Words (comma-separated, as in the prompt: car, white sheep, dog#2)",
                                   elem_id=f"{prefix}-words")
        with gr.Row():
            made["exact_tokens"] = gr.Checkbox(
                label="Exact token positions (SD.Next: use its fixed prompt parser for this job)", value=True,
                elem_id=f"{prefix}-exact-tokens")
            made["hires"] = gr.Checkbox(label="Also in the hires pass", value=False, elem_id=f"{prefix}-hires")
        for method_id in REGISTRY:
            with gr.Accordion(METHOD_TITLES[method_id], open=False, elem_id=f"{prefix}-acc-{method_id}"):
                made[f"{method_id}_enabled"] = gr.Checkbox(label=f"Enable {METHOD_TITLES[method_id]}", value=False,
                                                           elem_id=f"{prefix}-enable-{method_id}")
                for f in panel_fields(method_id):
                    made[f.key] = _widget(gr, f, prefix)
    return [made[c.name] for c in controls()]
