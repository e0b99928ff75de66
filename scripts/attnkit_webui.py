"""AttnKit for SD.Next, Forge and A1111: an always-visible accordion that applies attnkit to each job.

Glue only: the controls come from attnkit's field table (attnkit.ui.accordion), the work from attnkit.webui. Nothing is
patched at import; each job patches what it uses and restores it at the end of sampling, in postprocess, at the start
of the next job, or on script unload, whichever comes first.
"""

import logging
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # the extension folder holds the attnkit package
    sys.path.insert(0, _ROOT)

import gradio as gr  # noqa: E402
from modules import script_callbacks, scripts  # noqa: E402

from attnkit import webui  # noqa: E402
from attnkit.errors import AttnKitError  # noqa: E402

logger = logging.getLogger("attnkit")
_JOBS = []  # jobs not yet restored, across the txt2img and img2img instances


def _restore_all():
    while _JOBS:
        job = _JOBS.pop()
        try:
            job.restore()
        except Exception:  # a restore problem must not block the next job
            logger.exception("AttnKit: restoring the previous job failed")


def _sdnext_hooks():
    try:
        from modules import processing_callbacks, shared
    except ImportError:
        return None, None
    return getattr(shared, "opts", None), getattr(processing_callbacks, "diffusers_callback", None)


class AttnKitScript(scripts.Script):
    def title(self):
        return webui.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from attnkit.ui.accordion import build_controls

        tab = "img2img" if is_img2img else "txt2img"
        components = build_controls(gr, f"attnkit-{tab}")
        specs = webui.controls()
        self.infotext_fields = [(components[0], webui.enabled_from_params)]
        self.infotext_fields += [(c, s.key) for c, s in zip(components[1:], specs[1:])]
        self.paste_field_names = [s.key for s in specs]
        return components

    def process(self, p, *args):
        _restore_all()
        self.job = None
        try:
            enabled, methods, options, _ = webui.read_args(args)
            if not enabled:
                return
            opts, host_callback = _sdnext_hooks()
            job = webui.start_job(p, methods, options, opts=opts, host_callback=host_callback,
                                  callbacks=script_callbacks)
        except AttnKitError as exc:
            webui.note(p, f"{exc} (this image was made without AttnKit)")
            return
        self.job = job
        _JOBS.append(job)
        job.prepare()
        p.extra_generation_params.update(webui.infotext_params(methods, options))

    def _apply(self, p, **kwargs):
        job = getattr(self, "job", None)
        if job is None:
            return
        try:
            with webui.restoring(job):
                job.apply(**kwargs)
        except AttnKitError as exc:
            webui.note(p, f"{exc} (this pass ran without AttnKit)")

    def process_batch(self, p, *args, **kwargs):
        job = getattr(self, "job", None)
        if job is not None and job.host == "sdnext":
            self._apply(p, prompts=kwargs.get("prompts"))
        elif job is not None and job.host == "a1111":
            self._apply(p)

    def process_before_every_sampling(self, p, *args, **kwargs):  # Forge only
        job = getattr(self, "job", None)
        if job is not None and job.host == "forge":
            self._apply(p)

    def postprocess_batch(self, p, *args, **kwargs):
        job = getattr(self, "job", None)
        if job is not None and job.host == "a1111":
            job.restore()

    def postprocess(self, p, processed, *args):
        job = getattr(self, "job", None)
        if job is None:
            return
        _restore_all()
        self.job = None
        self.last_job = job  # its reports, for API users and tests
        first = getattr(processed, "index_of_first_image", 0)
        grids = job.heatmaps(list(processed.images[first:]))
        for grid in grids:
            processed.images.append(grid)
            if getattr(processed, "infotexts", None):
                processed.infotexts.append(processed.infotexts[0])


script_callbacks.on_infotext_pasted(lambda infotext, params: webui.expand_infotext(params))
script_callbacks.on_script_unloaded(_restore_all)
