"""PKA against full concatenate-and-attend: one joint-attention module's time and peak memory, side by side.

FLUX.1 attention dimensions (24 heads x 128, a double-stream block's ``FluxAttention`` with random weights), 512
text tokens, 1024 image tokens (512 px), 1024 tokens per condition, for 1, 2, 4, 8 and 16 conditions:

- ``full``: every token of every group attends to every token (OminiControl / UniCombine's joint attention): the
  projections of all groups, RoPE, one SDPA over the whole sequence, the output projections;
- ``pka``: a step after the first (the conditions' keys and values cached): projections of text and image only,
  position-aligned attention to each spatial condition, keyword-scoped attention to each subject condition (its
  mask covering ``--mask`` of the image), the output projections;
- ``pka step 0``: the first step, which also runs the conditions' own projections and attention and fills the cache.

Conditions are all spatial (``--kinds spatial``, the paper's scaling table) or alternate spatial/subject
(``--kinds mixed``). Each measurement runs in its own process: time is the median of ``--repeats`` calls after one
warm-up; memory is the process's peak resident memory during the timed calls minus the resident memory before them, sampled in
a thread with glibc returning freed buffers at once (CPU), or ``torch.cuda.max_memory_allocated`` above the inputs
(CUDA). Inputs, weights and the condition cache exist before
the measurement; the cache's size is printed beside (it persists between steps).

    python benchmarks/pka.py
    python benchmarks/pka.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from attnkit.core.attention import flux_qkv, rope  # noqa: E402
from attnkit.methods.pka.attention import Pattern, pka_attention, sdpa  # noqa: E402

HEADS, HEAD_DIM, TEXT, GRID = 24, 128, 512, (32, 32)
IMAGE = GRID[0] * GRID[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """The process's largest resident memory while it runs, sampled every 0.2 ms in a thread. The child runs with
    glibc's mmap threshold at 64 KiB, so every tensor buffer is its own mapping, returned to the system when freed:
    resident memory then follows what is allocated (the default allocator keeps freed memory resident)."""

    def __init__(self):
        import threading

        self.peak = rss_bytes()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while not self.done.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.0002)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, rss_bytes())


def child(mode: str, count: int, args) -> dict:
    from diffusers.models.embeddings import FluxPosEmbed
    from diffusers.models.transformers.transformer_flux import FluxAttention

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    dim = HEADS * HEAD_DIM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        attn = FluxAttention(query_dim=dim, added_kv_proj_dim=dim, dim_head=HEAD_DIM, heads=HEADS, out_dim=dim,
                             context_pre_only=False, bias=True, eps=1e-6).to(device, dtype).eval()
    pos = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])
    kinds = ["spatial" if args.kinds == "spatial" or i % 2 == 0 else "subject" for i in range(count)]
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, TEXT, dim, generator=g).to(device, dtype)
    image = torch.randn(1, IMAGE, dim, generator=g).to(device, dtype)
    conds = [torch.randn(1, IMAGE, dim, generator=g).to(device, dtype) for _ in kinds]

    def ids(delta=0):
        h, w = GRID
        grid = torch.zeros(h, w, 3)
        grid[..., 1] = torch.arange(h)[:, None]
        grid[..., 2] = torch.arange(w)[None, :] + delta
        return grid.reshape(-1, 3)

    base_ids = torch.cat([torch.zeros(TEXT, 3), ids()])
    emb = tuple(x.to(device) for x in pos(base_ids))
    cond_emb = [tuple(x.to(device) for x in pos(ids(0 if k == "spatial" else GRID[1]))) for k in kinds]
    masks = [torch.rand(1, IMAGE, generator=g).lt(args.mask).to(device) for k in kinds if k == "subject"]

    def branch(c, e):
        q, k, v = flux_qkv(attn, c)
        return rope(q, e), rope(k, e), v

    cache = None
    if mode == "pka":  # the cache as a previous step left it
        with torch.no_grad():
            cache = [branch(c, e)[1:] for c, e in zip(conds, cond_emb)]

    def call():
        q, k, v = flux_qkv(attn, image, text)
        q, k = rope(q, emb), rope(k, emb)
        if mode == "full":
            parts = [branch(c, e) for c, e in zip(conds, cond_emb)]
            out = sdpa(torch.cat([q] + [p[0] for p in parts], 1), torch.cat([k] + [p[1] for p in parts], 1),
                       torch.cat([v] + [p[2] for p in parts], 1)).flatten(2, 3)
            sizes = [TEXT, IMAGE] + [IMAGE] * len(parts)
            pieces = out.split(sizes, dim=1)
            outs = [attn.to_add_out(pieces[0]), attn.to_out[0](pieces[1])] + [attn.to_out[0](p) for p in pieces[2:]]
            return outs
        if cache is not None:
            kv = cache
        else:  # step 0: the conditions' own attention, and their keys/values for the cache
            kv, outs = [], []
            for c, e in zip(conds, cond_emb):
                cq, ck, cv = branch(c, e)
                outs.append(attn.to_out[0](sdpa(cq, ck, cv).flatten(2, 3)))
                kv.append((ck, cv))
        spatial = [kv[i] for i, kind in enumerate(kinds) if kind == "spatial"]
        subjects = [kv[i] for i, kind in enumerate(kinds) if kind == "subject"]
        out, _ = pka_attention(q, k, v, TEXT, spatial, subjects,
                               Pattern(GRID, subject_masks=masks or None, keyword_keys=[[1, 2]] * len(subjects)))
        out = out.flatten(2, 3)
        return [attn.to_add_out(out[:, :TEXT]), attn.to_out[0](out[:, TEXT:])]

    with torch.no_grad():
        call()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = rss_bytes()
            sampler = RssPeak()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - before
        else:
            peak = sampler.stop() - before
    cache_bytes = sum(x.numel() * x.element_size() for pair in (cache or []) for x in pair)
    return {"time": statistics.median(times), "peak": max(peak, 0), "cache": cache_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--counts", default="1,2,4,8,16")
    parser.add_argument("--kinds", choices=["spatial", "mixed"], default="spatial")
    parser.add_argument("--mask", type=float, default=0.25, help="share of the image a subject's keyword mask covers")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args)))
        return
    counts = [int(c) for c in args.counts.split(",")]
    rows = []
    for count in counts:
        row = {"count": count}
        for mode in ("full", "pka", "pka0"):
            cmd = [sys.executable, __file__, "--device", args.device, "--dtype", args.dtype, "--kinds", args.kinds,
                   "--mask", str(args.mask), "--repeats", str(args.repeats), "--child",
                   "pka" if mode == "pka" else ("pka0" if mode == "pka0" else "full"), str(count)]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
            row[mode] = json.loads(out)
        rows.append(row)
        print(f"measured {count} condition(s)", file=sys.stderr)
    mb = 1 / 2 ** 20
    print(f"\n## one FLUX.1 joint-attention module (24 x 128), {TEXT} text + {IMAGE} image tokens, {IMAGE} per "
          f"condition, {args.kinds} conditions, {args.device} {args.dtype}\n")
    print("| conditions | full s | pka s | speed-up | full MB | pka MB | memory ratio | pka step 0 s | "
          "pka step 0 MB | cache MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, p, p0 = r["full"], r["pka"], r["pka0"]
        print(f"| {r['count']} | {f['time']:.3f} | {p['time']:.3f} | {f['time'] / p['time']:.2f}x | "
              f"{f['peak'] * mb:.0f} | {p['peak'] * mb:.0f} | {f['peak'] / max(p['peak'], 1):.2f}x | "
              f"{p0['time']:.3f} | {p0['peak'] * mb:.0f} | {p['cache'] * mb:.0f} |")


if __name__ == "__main__":
    main()
