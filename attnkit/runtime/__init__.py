"""The runtimes: the library's :class:`Run` for diffusers pipelines, :func:`attach` and :func:`generate`, and the
contract (:class:`RunContext`) that the hosts' runs implement too.

Lifecycle of a library run:

1. :func:`attach` wraps every attention processor of the denoiser in a :class:`~attnkit.core.processor.LayerProcessor`
   and registers a forward pre-hook on the denoiser (to read the timestep, latent size and CFG layout of each
   denoiser call). It restores the very same processor objects in ``finally``, whatever happens.
2. A step begins at the first denoiser call after the run starts or after the previous step's callback. It ends in
   :meth:`Run.callback`, which the pipeline calls as ``callback_on_step_end`` (loops that call the denoiser
   themselves call :meth:`Run.end_step`). Steps are never inferred from layer calls.
3. On each denoiser call the run decides, per layer, the attention event of each method that touches it
   (:mod:`attnkit.core.engine`); every other layer call goes straight to the original processor.
"""

from ..core.processor import LayerProcessor
from .claims import claim, release
from .contract import PipelineContext, Report, RunContext
from .drive import MAX_STEPS, Result, attach, check_call, first_step_latents, generate
from .gradients import gradient_pass
from .run import Run, check_methods

__all__ = [
    "LayerProcessor", "MAX_STEPS", "PipelineContext", "Report", "Result", "Run", "RunContext", "attach", "check_call",
    "check_methods", "claim", "first_step_latents", "gradient_pass", "generate", "release",
]
