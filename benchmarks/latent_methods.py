"""attnkit's ``attend_excite`` (and ``a_star``) against diffusers' ``StableDiffusionAttendAndExcitePipeline``.

Per-image time and peak memory at identical settings, side by side in one run, on:

1. the tiny SD 1.5 pipeline (default: 20 steps at 128 px, diffusers' default thresholds and max_iter_to_alter);
2. a full-size SD 1.5-config UNet with random weights (default: 3 steps at 512 px, gradient step at every step,
   no refinement, so both do the same work: one conditional forward+backward and one CFG forward per step).

Each variant runs in its own process (so one's freed memory does not hide the next one's peak). Peak memory is the
process's peak resident set during the call on CPU (``peak``), and that peak minus the resident set just before the
call, with the models already loaded (``work``); on CUDA, ``torch.cuda.max_memory_allocated``.

    python benchmarks/latent_methods.py
    python benchmarks/latent_methods.py --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import attnkit  # noqa: E402
from attnkit.methods import AStar, AttendExcite  # noqa: E402
from fullsize import sd15_text_encoder, sd15_unet  # noqa: E402

PROMPT = "a cat and a frog"
WORDS = ["cat", "frog"]
INDICES = [2, 5]  # "cat" and "frog" with BOS at 0
VARIANTS = ("peer", "attend_excite", "a_star")


def build(setting: str, device: str, dtype: torch.dtype):
    pipe = attnkit.tiny_pipeline("sd15")
    if setting == "full":
        pipe.unet, pipe.text_encoder = sd15_unet(), sd15_text_encoder()
    if device != "cpu" or dtype != torch.float32:
        pipe = pipe.to(device, dtype=dtype)
    return pipe


def settings_for(setting: str, args) -> tuple[dict, dict]:
    """(pipeline call settings, method settings) shared by every variant."""
    if setting == "full":  # 16x16 maps at 512 px, as on SD 1.5
        call = dict(num_inference_steps=args.full_steps, height=512, width=512)
        method = dict(thresholds={}, max_iter_to_alter=args.full_steps + 1, attn_res=(16, 16))
    else:  # the tiny UNet has cross-attention at 16x16 and 8x8 for 128 px; attnkit's default picks 8x8
        call = dict(num_inference_steps=args.tiny_steps, height=128, width=128)
        method = dict(attn_res=(8, 8))
    return call, method


def run_child(setting: str, variant: str, args) -> dict:
    dtype = getattr(torch, args.dtype)
    pipe = build(setting, args.device, dtype)
    call, method = settings_for(setting, args)
    if variant == "peer":
        from diffusers import StableDiffusionAttendAndExcitePipeline

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peer = StableDiffusionAttendAndExcitePipeline(
                **{k: v for k, v in pipe.components.items() if k != "image_encoder"}, requires_safety_checker=False
            )
        peer.set_progress_bar_config(disable=True)

        def fn():
            peer(PROMPT, token_indices=INDICES, generator=torch.Generator("cpu").manual_seed(0), **call, **method)
            return None
    else:
        if variant == "attend_excite":
            m = AttendExcite(words=WORDS, **method)
        else:
            m = AStar(words=WORDS, attn_res=method["attn_res"])

        def fn():
            return attnkit.generate(pipe, PROMPT, [m], seed=0, **call)

    # Warm-up: the same call once (tiny), or a 1-step run (full-size; a whole image twice is too long on a CPU),
    # so first-touch allocation of the large activations is not timed.
    if setting == "tiny":
        fn()
    else:
        call["num_inference_steps"], steps = 1, call["num_inference_steps"]
        fn()
        call["num_inference_steps"] = steps
    from overhead import PeakMemory  # noqa: E402  (same folder)

    base = _current(args.device)
    with PeakMemory(args.device) as mem:
        t0 = time.perf_counter()
        result = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    out = {"time": seconds, "peak": mem.peak, "work": mem.peak - base}
    if result is not None:
        report = result.report[variant]
        optimised = len({r["step"] for r in report.losses})
        out["per_step"] = report.timings.get("update_s", 0.0) / max(optimised, 1)
        out["optimised_steps"] = optimised
    return out


def _current(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    import psutil

    return psutil.Process().memory_info().rss


def table(title: str, rows: dict[str, dict]) -> str:
    peer = rows["peer"]
    lines = [f"\n{title}",
             f"{'variant':<15}{'time':>10}{'x peer':>8}{'peak MiB':>10}{'x peer':>8}{'work MiB':>10}{'x peer':>8}"
             f"{'s/optimised step':>18}"]
    for name, r in rows.items():
        per_step = f"{r['per_step']:>18.3f}" if "per_step" in r else f"{'':>18}"
        lines.append(
            f"{name:<15}{r['time']:>9.2f}s{r['time'] / peer['time']:>8.3f}{r['peak'] / 2**20:>10.0f}"
            f"{r['peak'] / peer['peak']:>8.3f}{r['work'] / 2**20:>10.0f}{r['work'] / max(peer['work'], 1):>8.3f}"
            f"{per_step}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--full-steps", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child[0], args.child[1], args)))
        return 0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, {args.dtype}")
    settings = ["tiny"] + ([] if args.skip_full else ["full"])
    passthrough = ["--device", args.device, "--dtype", args.dtype, "--tiny-steps", str(args.tiny_steps),
                   "--full-steps", str(args.full_steps)]
    for setting in settings:
        rows = {}
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--child", setting, variant, *passthrough],
                                  capture_output=True, text=True, cwd=Path(__file__).parent)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            rows[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        call, method = settings_for(setting, args)
        what = "a gradient step every step, no refinement" if setting == "full" else "diffusers' defaults"
        title = (f"{setting}: {call['num_inference_steps']} steps at {call['height']} px, per image ({what}); "
                 "peer = diffusers' StableDiffusionAttendAndExcitePipeline")
        print(table(title, rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
