"""What attnkit costs: stock diffusers vs attached-idle, ``observe`` and ``structured``, side by side in one run.

Two settings:

1. the tiny SD 1.5 pipeline, whole images (default 20 steps at 128 px);
2. one forward of a full-size SD 1.5-config UNet with random weights (batch 2 = CFG, 64x64 latent, 77 text
   tokens), the cost that dominates real generation.

Variants run interleaved, ``--repeats`` times each after a warm-up, and the median is reported. Peak memory is the
peak resident set size sampled during the call on CPU, or ``torch.cuda.max_memory_allocated`` on CUDA.

    python benchmarks/overhead.py                 # both settings, CPU
    python benchmarks/overhead.py --device cuda --dtype float16
    python benchmarks/overhead.py --skip-full     # tiny pipeline only (seconds)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import attnkit  # noqa: E402
from attnkit.methods import Observe, StructuredGuidance  # noqa: E402
from attnkit.runtime import Run  # noqa: E402
from fullsize import sd15_text_encoder, sd15_unet  # noqa: E402

PROMPT = "a red car and a white sheep on a green meadow"
WORDS = ["red car", "white sheep", "meadow"]


def method_variants():
    """The attached variants every table compares with stock diffusers."""
    return {
        "idle": [],
        "observe": [Observe(words=WORDS)],
        "structured": [StructuredGuidance()],
        "structured-conj": [StructuredGuidance(conjunction=True)],
    }


class PeakMemory:
    """Peak memory of the enclosed block: CUDA allocator peak, or sampled process RSS on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            self._proc = psutil.Process()
            self.peak = self._proc.memory_info().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._proc.memory_info().rss)
        return False


def measure(variants: dict, repeats: int, device: str) -> dict[str, tuple[float, int]]:
    """Run each variant once to warm up, then ``repeats`` times interleaved, the order rotating every round so no
    variant always runs first; median seconds and max peak bytes."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, int] = {name: 0 for name in variants}
    names = list(variants)
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            fn = variants[name]
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                fn()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], mem.peak)
    return {name: (statistics.median(times[name]), peaks[name]) for name in variants}


def table(title: str, results: dict[str, tuple[float, int]]) -> str:
    base_t, base_m = results["stock"]
    lines = [f"\n{title}", f"{'variant':<16}{'time':>11}{'x stock':>9}{'peak MiB':>11}{'x stock':>9}"]
    for name, (t, m) in results.items():
        lines.append(f"{name:<16}{t:>10.4f}s{t / base_t:>9.3f}{m / 2**20:>11.0f}{m / base_m:>9.3f}")
    return "\n".join(lines)


def tiny_pipeline_bench(args) -> str:
    pipe = attnkit.tiny_pipeline("sd15")
    if args.device != "cpu" or args.dtype != "float32":
        pipe = pipe.to(args.device, dtype=getattr(torch, args.dtype))
    kwargs = dict(num_inference_steps=args.steps, height=args.size, width=args.size, output_type="pil")

    def stock():
        pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(0), **kwargs)

    def attached(methods):
        return lambda: attnkit.generate(pipe, PROMPT, methods, seed=0, **kwargs)

    variants = {"stock": stock, **{name: attached(m) for name, m in method_variants().items()}}
    results = measure(variants, args.repeats_tiny, args.device)
    return table(f"tiny SD 1.5 pipeline, {args.steps} steps at {args.size}px, per image ({args.device}, {args.dtype})",
                 results)


def full_unet_bench(args) -> str:
    dtype = getattr(torch, args.dtype)
    unet = sd15_unet().to(args.device, dtype=dtype)
    # A real SD pipeline object around the full-size UNet: only the UNet runs in the timed calls; a one-layer,
    # 768-wide CLIP text encoder gives structured its phrase encodings (once per prompt, as in a real run).
    pipe = attnkit.tiny_pipeline("sd15")
    pipe.unet = unet
    pipe.text_encoder = sd15_text_encoder().to(args.device, dtype=dtype)
    pipe._guidance_scale = 7.5  # the pipeline's CFG layout: batch = [uncond; cond]
    pipe._num_timesteps = 50
    g = torch.Generator("cpu").manual_seed(0)
    sample = torch.randn(2, 4, 64, 64, generator=g).to(args.device, dtype)
    text = torch.randn(2, 77, 768, generator=g).to(args.device, dtype)
    t = torch.tensor(500, device=args.device)

    def forward():
        with torch.inference_mode():
            unet(sample, t, encoder_hidden_states=text, return_dict=False)

    def attached(methods):
        def fn():
            run = Run(pipe, methods, prompt=PROMPT)
            run.install()
            try:
                forward()
            finally:
                run.uninstall()
        return fn

    variants = {"stock": forward, **{name: attached(m) for name, m in method_variants().items()}}
    results = measure(variants, args.repeats_full, args.device)
    return table(f"full-size SD 1.5 UNet, one forward, batch 2, 64x64 latent ({args.device}, {args.dtype})", results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats-tiny", type=int, default=5)
    parser.add_argument("--repeats-full", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    if not args.skip_tiny:
        print(tiny_pipeline_bench(args), flush=True)
    if not args.skip_full:
        print(full_unet_bench(args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
