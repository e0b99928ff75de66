"""Null-text inversion: the original early stop (default) against DPL's fixed 51 iterations, side by side.

1. Tiny SD 1.5 pipeline, 128 px, ``--steps`` DDIM steps (default 50), guidance 7.5, one picture: DDIM inversion, then
   null-text inversion with each setting from the same inverted latents. Time of the null-text phase, the
   iterations it took, and the reconstruction error: latent MSE against ``z*_0`` and its PSNR (peak ``|z*_0|``);
   plain DDIM inversion (no null-text) for reference.
2. Full-size SD 1.5-config UNet (random weights), 512 px, one step: the cost of one null-text iteration as attnkit
   runs it (the conditional prediction once per step, then per iteration the unconditional branch forward and a
   backward to the embedding only) against the official DPL code's iteration (a batch of two forward and a
   backward that also fills the weights' gradients), each timed over ``--full-iterations`` iterations.

    python benchmarks/inversion.py
    python benchmarks/inversion.py --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

import attnkit  # noqa: E402
from attnkit import editing  # noqa: E402
from attnkit.editing.inversion import DDIM, NullTextConfig, cfg_step, ddim_invert, denoise, null_text_step  # noqa: E402
from fullsize import sd15_unet  # noqa: E402

CAPTION = "a cat and a dog"


def picture(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    array = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x) * np.cos(5 * y)], -1)
    return Image.fromarray((array * 255).astype(np.uint8))


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def tiny(args) -> None:
    pipe = attnkit.tiny_pipeline("sd15").to(args.device)
    ddim = DDIM(pipe, args.steps)
    z0 = editing._encode_image(pipe, picture(128))
    cond, null0 = editing._embed(pipe, CAPTION), editing._embed(pipe, "")
    t0 = time.perf_counter()
    inversion = ddim_invert(pipe, ddim, z0, cond)
    invert_s = time.perf_counter() - t0
    peak = float(z0.abs().max())

    def errors(z):
        mse = float(((z - z0) ** 2).mean())
        return mse, 10 * math.log10(peak ** 2 / mse)

    rows = []
    z = inversion.latents[-1]
    t0 = time.perf_counter()
    for i in range(args.steps):
        z = cfg_step(pipe, ddim, i, z, cond, null0, args.guidance)
    rows.append(("DDIM inversion only", time.perf_counter() - t0, 0, 0, *errors(z)))
    for name, config in (("null-text, early stop (default)", NullTextConfig()),
                         ("null-text, 51 fixed (DPL)", NullTextConfig(null_iterations=51, null_early_stop=False))):
        z, null, iterations, stopped = inversion.latents[-1], null0, 0, 0
        sync(args.device)
        t0 = time.perf_counter()
        for i in range(args.steps):
            null, record, eps = null_text_step(pipe, ddim, config, i, z, cond, null,
                                               inversion.latents[args.steps - i - 1], args.guidance)
            iterations += record["iterations"]
            stopped += config.null_early_stop and record["iterations"] < config.null_iterations
            z = cfg_step(pipe, ddim, i, z, cond, null, args.guidance, eps)
        sync(args.device)
        rows.append((name, time.perf_counter() - t0, iterations, stopped, *errors(z)))
    print(f"\n## tiny SD 1.5, 128 px, {args.steps} steps, guidance {args.guidance} "
          f"(DDIM inversion itself: {invert_s:.2f} s)\n")
    print("| setting | time (s) | iterations | steps stopped early | latent MSE | latent PSNR (dB) |")
    print("|---|---|---|---|---|---|")
    for name, seconds, iterations, stopped, mse, db in rows:
        print(f"| {name} | {seconds:.2f} | {iterations} | {stopped} | {mse:.4g} | {db:.2f} |")
    early, fixed = rows[1], rows[2]
    print(f"\nearly stop / fixed: time {early[1] / fixed[1]:.3f}x, latent MSE {early[4] / fixed[4]:.3g}x")


def full(args) -> None:
    dtype = getattr(torch, args.dtype)
    pipe = attnkit.tiny_pipeline("sd15")
    pipe.unet = sd15_unet().to(args.device, dtype)
    ddim = DDIM(pipe, 50)
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 64, 64, generator=g).to(args.device)
    target = torch.randn(1, 4, 64, 64, generator=g).to(args.device)
    cond = torch.randn(1, 77, 768, generator=g).to(args.device)
    null = torch.randn(1, 77, 768, generator=g).to(args.device)
    config = NullTextConfig(null_iterations=args.full_iterations, null_early_stop=False)
    null_text_step(pipe, ddim, NullTextConfig(null_iterations=1), 0, latent, cond, null, target, 7.5)  # warm-up
    sync(args.device)
    t0 = time.perf_counter()
    null_text_step(pipe, ddim, config, 0, latent, cond, null, target, 7.5)
    sync(args.device)
    ours = (time.perf_counter() - t0) / args.full_iterations

    t = ddim.timesteps[0]
    param = null.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([param], lr=1e-2)
    sync(args.device)
    t0 = time.perf_counter()
    for _ in range(args.full_iterations):  # the official formulation: [null; cond] each iteration, loss.backward()
        out = denoise(pipe, torch.cat([latent, latent]), t, torch.cat([param, cond]))
        eps = out[:1] + 7.5 * (out[1:] - out[:1])
        loss = F.mse_loss(ddim.step(eps, t, latent), target)
        optimiser.zero_grad()
        pipe.unet.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    sync(args.device)
    official = (time.perf_counter() - t0) / args.full_iterations
    print(f"\n## full-size SD 1.5 UNet config, 512 px, one step, {args.device} {args.dtype}\n")
    print("| null-text iteration | seconds | x official |")
    print("|---|---|---|")
    print(f"| official (batch 2, backward into the weights) | {official:.2f} | 1.000 |")
    print(f"| attnkit (cond once per step, uncond only, grads to the embedding) | {ours:.2f} | {ours / official:.3f} |")
    print(f"\nper step with 10 early-stopped iterations at most vs 51 fixed (official): at most "
          f"{10 * ours:.1f} s vs {51 * official:.1f} s ({10 * ours / (51 * official):.3f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--full-iterations", type=int, default=2)
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    tiny(args)
    if not args.skip_full:
        full(args)


if __name__ == "__main__":
    main()
