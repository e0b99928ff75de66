"""Every method end to end on a GPU at the real models' widths (random weights): finite images, time and peak memory
against stock, side by side in one run, with the targets of the "one attention engine" issue.

    python benchmarks/gpu_smoke.py                      # CUDA: SD 1.5 fp16 512 px, SDXL fp16 1024 px, Flux bf16 512 px
    python benchmarks/gpu_smoke.py --families sd15 --steps 10
    python benchmarks/gpu_smoke.py --tiny --device cpu  # the wiring on the tiny pipelines (no real widths)

Pipelines: the built-in tiny pipelines with their denoiser (and, for SD/SDXL, text encoders) replaced by modules of
the released models' widths: SD 1.5's UNet (block widths 320-1280, 768-wide text), SDXL's (320-1280, transformer
depths 1/2/10, 2048-wide text), Flux's transformer at full width (3072, 24 heads) with ``--flux-blocks`` double and
single blocks. Weights are random and deterministic, so images are noise; what is measured is cost and numerics.
Each case runs ``--repeats`` times after a warm-up; the median time and the largest peak are reported.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import attnkit  # noqa: E402
from attnkit.methods import AStar, AttendExcite, Observe, StructuredGuidance  # noqa: E402

PROMPT = "a red car and a white sheep on a green meadow"
WORDS = ["car", "sheep"]
#: target ratios against stock (whole image), from the issue
TARGETS = {"idle": 1.02, "observe": 1.10, "structured": 1.05}
FLUX_TARGETS = {"idle": 1.02, "observe": 1.3}


def text_encoder(width: int, layers: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                            num_attention_heads=width // 64, num_hidden_layers=layers, max_position_embeddings=77,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=width)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def build(family: str, tiny: bool, flux_blocks: int):
    """The pipeline of ``family`` at the real widths (or the tiny one), float32 on the CPU."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    pipe = attnkit.tiny_pipeline({"sd15": "sd15", "sdxl": "sdxl", "flux": "flux"}[family])
    if tiny:
        return pipe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if family == "sd15":
            pipe.unet = UNet2DConditionModel(
                sample_size=64, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                attention_head_dim=8, layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).eval()
            pipe.text_encoder = text_encoder(768, 12)
        elif family == "sdxl":
            pipe.unet = UNet2DConditionModel(
                sample_size=128, block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, layers_per_block=2).eval()
            pipe.text_encoder = text_encoder(768, 12)
            pipe.text_encoder_2 = text_encoder(1280, 32, projection=True)
        else:
            old = pipe.transformer.config
            pipe.transformer = FluxTransformer2DModel(
                patch_size=1, in_channels=old.in_channels, num_layers=flux_blocks, num_single_layers=flux_blocks,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=old.joint_attention_dim,
                pooled_projection_dim=old.pooled_projection_dim, guidance_embeds=old.guidance_embeds,
                axes_dims_rope=(16, 56, 56)).eval()
    return pipe


def call_settings(family: str, tiny: bool, steps: int) -> dict:
    if tiny:
        return {"num_inference_steps": steps, "height": 128 if family != "flux" else 64,
                "width": 128 if family != "flux" else 64}
    side = {"sd15": 512, "sdxl": 1024, "flux": 512}[family]
    return {"num_inference_steps": steps, "height": side, "width": side}


def cases(family: str) -> dict:
    out = {"stock": None, "idle": [], "observe": [Observe(words=WORDS)]}
    if family != "flux":
        out.update(structured=[StructuredGuidance()], attend_excite=[AttendExcite(words=WORDS)],
                   a_star=[AStar(words=WORDS)])
    return out


class Meter:
    def __init__(self, device: str):
        self.device = device

    def sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def start(self):
        self.sync()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, float]:
        self.sync()
        seconds = time.perf_counter() - self.t0
        peak = (torch.cuda.max_memory_allocated() - self.base) / 2**30 if self.device.startswith("cuda") else 0.0
        return seconds, peak


def run_case(pipe, methods, call: dict, meter: Meter, repeats: int, peer=None) -> dict:
    times, peaks, finite = [], [], True
    for attempt in range(repeats + 1):  # the first is a warm-up
        meter.start()
        if peer is not None:
            images = peer(PROMPT, token_indices=[3, 7], output_type="np", generator=torch.Generator().manual_seed(3),
                          **call).images
            array = np.asarray(images[0], dtype=np.float32)
        elif methods is None:
            images = pipe(PROMPT, output_type="np", generator=torch.Generator().manual_seed(3), **call).images
            array = np.asarray(images[0], dtype=np.float32)
        else:
            result = attnkit.generate(pipe, PROMPT, methods, seed=3, **call)
            array = np.asarray(result.images[0], dtype=np.float32)
        seconds, peak = meter.stop()
        finite = finite and bool(np.isfinite(array).all())
        if attempt:
            times.append(seconds)
            peaks.append(peak)
    return {"s": statistics.median(times), "peak": max(peaks), "finite": finite}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd15,sdxl,flux")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny pipelines (a wiring check, e.g. on CPU)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--flux-blocks", type=int, default=6)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; run it on a GPU machine, or pass --tiny --device cpu for the wiring")
        return 2
    meter = Meter(args.device)
    failed = 0
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        dtype = torch.float32 if args.device == "cpu" else (torch.bfloat16 if family == "flux" else torch.float16)
        pipe = build(family, args.tiny, args.flux_blocks).to(args.device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        call = call_settings(family, args.tiny, args.steps)
        rows = {}
        for name, methods in cases(family).items():
            try:
                rows[name] = run_case(pipe, methods, call, meter, args.repeats)
            except Exception as exc:  # a row that says what broke, the others still measured
                rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
        if family == "sd15":  # Attend-and-Excite: attnkit against diffusers' pipeline at its defaults
            from diffusers import StableDiffusionAttendAndExcitePipeline

            peer = StableDiffusionAttendAndExcitePipeline(
                **{k: v for k, v in pipe.components.items() if k != "image_encoder"}, requires_safety_checker=False)
            peer.set_progress_bar_config(disable=True)
            try:
                rows["diffusers A&E"] = run_case(pipe, None, call, meter, args.repeats, peer=peer)
            except Exception as exc:
                rows["diffusers A&E"] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
        stock = rows["stock"]
        targets = FLUX_TARGETS if family == "flux" else TARGETS
        print(f"\n{family} ({str(dtype).split('.')[-1]}, {call['height']} px, {call['num_inference_steps']} steps, "
              f"{args.device}{', tiny' if args.tiny else ''})")
        print(f"{'case':<15}{'s/image':>9}{'x stock':>9}{'peak GiB':>10}{'x stock':>9}{'finite':>8}{'target':>9}")
        for name, row in rows.items():
            if "error" in row:
                failed += 1
                print(f"{name:<15} failed: {row['error']}")
                continue
            failed += not row["finite"]
            ratio = row["s"] / stock["s"] if "s" in stock else math.nan
            mem = row["peak"] / stock["peak"] if stock.get("peak") else math.nan
            target = targets.get(name)
            print(f"{name:<15}{row['s']:>9.3f}{ratio:>8.2f}x{row['peak']:>10.2f}{mem:>8.2f}x{str(row['finite']):>8}"
                  f"{('<= %.2fx' % target) if target else '':>9}")
        if "diffusers A&E" in rows and "s" in rows["diffusers A&E"] and "s" in rows.get("attend_excite", {}):
            ours, theirs = rows["attend_excite"], rows["diffusers A&E"]
            print(f"attend_excite vs diffusers' pipeline: time {ours['s'] / theirs['s']:.2f}x, peak memory "
                  f"{ours['peak'] / theirs['peak'] if theirs['peak'] else math.nan:.2f}x (target <= 0.5x each)")
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
