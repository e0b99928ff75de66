"""What attnkit adds, counted rather than timed: torch operations dispatched, attached vs stock diffusers.

A CPU-measurable proxy that noisy machines cannot blur: every aten operation dispatched is counted
(``TorchDispatchMode``) during whole pipeline calls on the built-in tiny SD 1.5, SDXL and Flux pipelines.

- **per denoiser call**: operations inside the pipeline's own denoiser calls (attnkit's forward hook and attention
  processors included), divided by the number of calls. Idle should add none; observe and structured only what
  their math needs.
- **per step, whole call**: everything the call dispatched (step callbacks, latent updates and the gradient passes of
  Attend-and-Excite and A-STAR included), divided by the steps asked for.

    python benchmarks/opcount.py                # every family and method
    python benchmarks/opcount.py --families sd15
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import attnkit  # noqa: E402
from attnkit.methods import AStar, AttendExcite, Observe, StructuredGuidance  # noqa: E402
from attnkit.models import denoiser_of  # noqa: E402

PROMPT = "a red car and a white sheep"
WORDS = ["car", "sheep"]


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten operations: all of them, and those inside the denoiser's own calls."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.inside = 0
        self.calls = 0
        self.depth = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        if self.depth:
            self.inside += 1
        return func(*args, **(kwargs or {}))

    def watch(self, module):
        """Count the calls of ``module`` and the operations inside them (hooks registered first, so attnkit's own
        pre-hook, registered later, is counted inside the call)."""
        def enter(*_):
            self.depth += 1
            self.calls += 1

        def leave(*_):
            self.depth -= 1

        return module.register_forward_pre_hook(enter), module.register_forward_hook(leave)


def variants(family: str) -> dict:
    out = {"stock": None, "idle": [], "observe": [Observe(words=WORDS)]}
    if family != "flux":
        out.update({"structured": [StructuredGuidance()], "attend_excite": [AttendExcite(words=WORDS)],
                    "a_star": [AStar(words=WORDS)]})
    return out


def count(pipe, methods, steps: int, size: int) -> OpCounter:
    counter = OpCounter()
    handles = counter.watch(denoiser_of(pipe))
    kwargs = dict(num_inference_steps=steps, height=size, width=size, output_type="latent")
    try:
        with counter:
            if methods is None:
                pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(0), **kwargs)
            else:
                attnkit.generate(pipe, PROMPT, methods, seed=0, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return counter


def family_table(name: str, steps: int, size: int) -> str:
    pipe = attnkit.load_pipeline(f"tiny-{name}", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    family = "flux" if name == "flux" else "sd"
    results = {label: count(pipe, methods, steps, size) for label, methods in variants(family).items()}
    stock = results["stock"]
    per_call_stock = stock.inside / stock.calls
    per_step_stock = stock.total / steps
    lines = [f"tiny {name}, {steps} steps at {size} px: torch operations dispatched",
             f"{'variant':<15}{'per call':>10}{'added':>8}{'x stock':>9}{'per step':>10}{'x stock':>9}"]
    for label, c in results.items():
        per_call = c.inside / c.calls
        lines.append(f"{label:<15}{per_call:>10.1f}{per_call - per_call_stock:>+8.1f}"
                     f"{per_call / per_call_stock:>9.3f}{c.total / steps:>10.1f}{c.total / steps / per_step_stock:>9.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["sd15", "sdxl", "flux"], choices=["sd15", "sdxl", "flux"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}")
    for name in args.families:
        print(family_table(name, args.steps, args.size) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
