"""Samplers by the names webui users know: "Euler a", "DPM++ 2M Karras"...

A sampler is a diffusers scheduler made from the pipeline's own scheduler config (so the model's noise schedule and
prediction type carry over). :func:`using_sampler` swaps it in for one call and puts the pipeline's own scheduler
object back afterwards, also when the call fails. Flux samples with its flow-matching scheduler only.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .errors import AttnKitError, shown

#: the pipeline's own scheduler, unchanged
DEFAULT = "default"

#: name -> (diffusers scheduler class, extra config)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
}


def sampler_names(family: str | None = None) -> list[str]:
    """The samplers a model family can use, the model's own first."""
    return [DEFAULT] if family == "flux" else [DEFAULT, *SAMPLERS]


def check_sampler(name, family: str | None = None) -> str:
    """``name`` as a known sampler for ``family`` (``""``/``None`` is the model's own), or a one-line error."""
    if name is None or str(name).strip() in ("", DEFAULT):
        return DEFAULT
    if not isinstance(name, str):
        raise AttnKitError(f"sampler must be a name such as 'Euler a', got {shown(name)}")
    known = {k.lower(): k for k in SAMPLERS}
    found = known.get(name.strip().lower())
    if found is None:
        raise AttnKitError(f"unknown sampler {shown(name)}; choose one of: {DEFAULT}, {', '.join(SAMPLERS)}")
    if family == "flux":
        raise AttnKitError(f"Flux models sample with their own flow-matching scheduler; choose {DEFAULT!r} "
                           f"instead of {found!r}")
    return found


@contextlib.contextmanager
def using_sampler(pipe, name: str | None) -> Iterator[str]:
    """Sample with ``name`` inside the block; the pipeline's own scheduler object is back afterwards."""
    import diffusers

    from .models import family_of

    name = check_sampler(name, family_of(pipe))
    if name == DEFAULT:
        yield name
        return
    cls_name, extra = SAMPLERS[name]
    own = pipe.scheduler
    config = {k: v for k, v in dict(own.config).items() if not k.startswith("_")}
    pipe.scheduler = getattr(diffusers, cls_name).from_config(config, **extra)
    try:
        yield name
    finally:
        pipe.scheduler = own
