"""AttnKit for SD.Next, Forge and A1111: an always-visible accordion that applies attnkit to each job.

Glue only: the controls come from attnkit's field table (attnkit.ui.accordion), the work from attnkit.hosts.webui. Nothing is
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

from attnkit.errors import AttnKitError  # noqa: E402
from attnkit.hosts import webui  # noqa: E402

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


def _inner_pass(p) -> bool:
    """ADetailer's inner passes (``p._ad_inner``): it calls allow-listed scripts' hooks on its own ``p`` with this
    same script instance, which must not end or replace the outer job; attnkit does not act in them."""
    return bool(getattr(p, "_ad_inner", False))


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
        # string keys only: SD.Next lower-cases every key (modules/generation_parameters_copypaste.py); the enabled
        # box's key is filled in by webui.expand_infotext on every paste
        self.infotext_fields = [(c, s.key) for c, s in zip(components, specs)]
        self.paste_field_names = [s.key for s in specs]
        return components

    def process(self, p, *args):
        if _inner_pass(p):
            return
        _restore_all()
        self.job = None
        try:
            enabled, methods, options, _ = webui.read_args(args)
            if not enabled:
                return
            opts, host_callback = _sdnext_hooks() if webui.detect_host(p) == "sdnext" else (None, None)
            job = webui.start_job(p, methods, options, opts=opts, host_callback=host_callback,
                                  callbacks=script_callbacks)
            _JOBS.append(job)
            job.prepare()
        except Exception as exc:  # never a traceback into the host's job: one note, the image is made without
            _restore_all()
            webui.note(p, f"{webui.failure_message(exc)} (this image was made without AttnKit)")
            return
        self.job = job
        self._infotext = webui.infotext_params(methods, options)

    def _apply(self, p, **kwargs):
        job = getattr(self, "job", None)
        if job is None or job.error is not None:
            return
        try:
            job.apply(**kwargs)
        except Exception as exc:
            job.error = exc
            try:
                job.restore()
            except Exception:
                logger.warning("AttnKit: restoring the model after a failed start did not finish")
            webui.drop_infotext(p)
            webui.note(p, f"{webui.failure_message(exc)} (this image was made without AttnKit)")
            return
        if job.active:  # the keys say what really ran: written only once a pass has attnkit on
            p.extra_generation_params.update(self._infotext)

    def process_batch(self, p, *args, **kwargs):
        job = getattr(self, "job", None)
        if _inner_pass(p) or job is None:
            return
        if job.host == "sdnext":
            self._apply(p, prompts=kwargs.get("prompts"))
        elif job.host == "a1111":
            self._apply(p)

    def process_before_every_sampling(self, p, *args, **kwargs):  # Forge only
        job = getattr(self, "job", None)
        if not _inner_pass(p) and job is not None and job.host == "forge":
            self._apply(p)

    def postprocess_batch(self, p, *args, **kwargs):
        job = getattr(self, "job", None)
        # the batch is sampled: its runs end here, so their notes reach the host's comments for this job
        if not _inner_pass(p) and job is not None and job.host in ("a1111", "forge"):
            job.restore()

    def postprocess(self, p, processed, *args):
        job = getattr(self, "job", None)
        if _inner_pass(p) or job is None:
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
