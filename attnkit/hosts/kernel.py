"""attnkit inside hosts that patch attention through projected q/k/v: Forge and ComfyUI, and A1111 through an
instance-level swap of its cross-attention modules that calls the same two functions.

The patch contract these hosts share (ComfyUI ``comfy/ldm/modules/attention.py``, Forge ``backend/nn/unet.py``),
per transformer block and per denoiser call:

- ``attn2_patch(n, context, value, extra_options) -> (n, context, value)`` runs before the projections: ``n`` is the
  normalised image tokens ``(B, N, C)``, ``context``/``value`` the text the keys/values are projected from
  ``(B, T, C_text)``.
- ``attn2_replace(q, k, v, extra_options) -> out``: ``q`` ``(B, N, H*D)``, ``k``/``v`` ``(B, T, H*D)`` already
  projected; returns ``(B, N, H*D)`` before ``to_out``. It is keyed by ``(block, number, block_index)`` (the
  block index being the transformer block's position inside its SpatialTransformer), or by ``(block, number)``
  for every transformer block of that UNet block.
- ``extra_options``: ``n_heads``, ``dim_head``, ``block`` (``("input", 1)``...), ``block_index`` (as in the key),
  ``transformer_index`` (a counter over the whole UNet's SpatialTransformers: not part of the key),
  ``original_shape`` (the latent ``[B, C, H, W]``), ``cond_or_uncond`` (one entry per equal batch chunk, ``0`` for a
  conditional chunk, ``1`` for an unconditional one) and ``sigmas`` (the current noise level, one per row).

:class:`HostRun` runs the methods that need nothing but these patches (``observe`` and ``structured``) with the same
controllers, the same token maps and the same arithmetic as the diffusers runtime, so a host job and
:func:`attnkit.generate` on the same model and prompt give the same maps and images. Latent-optimising methods need
gradient passes through the host's own denoiser and control of its sampler's latents; the webui adapters run them
on SD.Next's diffusers pipelines, and the ComfyUI nodes through their own sampler.

Steps: the host's step index when it has one (A1111's ``on_cfg_denoiser``), else the position of the current sigma
in the sampler's schedule (ComfyUI's ``sample_sigmas``), else a new step whenever the sigma changes; never by
counting layer calls.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from ..core.layers import LayerInfo, grid_for
from ..core.steps import StepInfo
from ..core.tokens import PromptTokens, TokenMap
from ..errors import AttnKitError, UnsupportedModelError
from ..methods.base import Controller, Method
from ..core import engine
from ..core.engine import GradPass
from ..runtime.clock import Steps
from ..runtime.contract import Report
from ..runtime.gradients import gradient_pass

logger = logging.getLogger(__name__)

#: the hook points (``Method.attention``) the hosts' attention patches honour
PATCH_HOOKS = frozenset({"read", "text", "probs"})


def runs_on_patches(method) -> bool:
    """Whether ``method`` runs through a host's attention patches alone (no gradient pass, only hooks they honour);
    the others need a sampler wrapper with a conditional forward (see :class:`HostRun`) or cannot run in a host."""
    return not method.needs_gradient and method.attention <= PATCH_HOOKS
#: query-grid downsample factors of the cross-attention layers of the released UNets of each family (used when
#: the adapter cannot read them from the model, see :func:`unet_factors`)
UNET_FACTORS = {"sd": (1, 2, 4, 8), "sdxl": (2, 4)}

_EMPHASIS = re.compile(r"\\[()\[\]\\]|:\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*\)|[()\[\]]|[^\\()\[\]:]+|[\\:]")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def strip_weights(prompt: str) -> str:
    """The text of the first 77-token chunk a webui/ComfyUI prompt parser tokenises.

    Emphasis brackets and weights go (``"a (red car:1.2) and [sheep]"`` -> ``"a red car and sheep"``), escaped
    brackets stay as characters, and what follows the first ``BREAK`` is dropped (the host encodes it as a later
    chunk, whose positions no method addresses).
    """
    if not isinstance(prompt, str):
        raise AttnKitError(f"prompt must be a string, got {type(prompt).__name__}")
    first = _BREAK.split(prompt, maxsplit=1)[0]
    out = []
    for m in _EMPHASIS.finditer(first):
        piece = m.group(0)
        if piece.startswith("\\") and len(piece) == 2:
            out.append(piece[1])
        elif piece in "()[]" or piece.startswith(":") and piece.endswith(")"):
            continue
        else:
            out.append(piece)
    return re.sub(r"\s+", " ", "".join(out)).strip()


def sdpa_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, extra_options=None) -> torch.Tensor:
    """Plain attention on projected ``(B, N, H*D)`` tensors, the way the hosts' default attention computes it
    (``extra_options``, the host's patch options, is not needed here)."""
    b, n, inner = q.shape
    d = inner // heads
    split = [t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*split)
    return out.transpose(1, 2).reshape(b, n, inner)


class StepClock:
    """Step index of each denoiser call from the host's noise level.

    Args:
        count: the number of steps of the sampling pass.
        schedule: the sampler's sigmas (``count + 1`` values, the last 0) when the host exposes them.
    """

    def __init__(self, count: int, schedule: Iterable[float] | None = None):
        self.count = max(int(count), 1)
        self.schedule = [float(s) for s in schedule] if schedule is not None else None
        self.index = -1
        self.marker: float | None = None

    def at(self, marker: float) -> int:
        if self.schedule:
            diffs = [abs(s - marker) for s in self.schedule[: max(len(self.schedule) - 1, 1)]]
            self.index = min(range(len(diffs)), key=diffs.__getitem__)
        elif self.marker is None or marker != self.marker:
            self.index += 1
        self.marker = marker
        return self.index


class HostRun:
    """State of one host sampling pass with attnkit methods active through attention patches.

    Args:
        methods: configured methods. ``observe`` and ``structured`` need only the patches; the latent-optimising
            ``attend_excite``/``a_star`` also need ``gradient`` (and a sampler wrapper that applies their updates).
        prompt: the prompt as the user typed it (weights and ``BREAK`` are stripped, see :func:`strip_weights`).
        tokenizer: the host's CLIP tokenizer (a ``transformers`` tokenizer), used for token positions.
        family: ``"sd"`` (1.x/2.x) or ``"sdxl"``.
        steps: steps of the sampling pass.
        encode: ``text -> (1, T, C)`` prompt embedding by the host's own text encoder (``structured`` needs it).
        schedule: the sampler's sigmas, when the host exposes them (for step indices).
        host: the host's name, for messages.
        fallback: ``(q, k, v, heads, extra_options) -> out`` attention used where no method reads (the host's own,
            so that what attnkit does not change comes out bit-identical).
        blocks: ``[((block, number, block_index), downsample), ...]`` of the model (:func:`unet_blocks`);
            default: one stand-in per query-grid factor of the family's released models.
        gradient: ``(z, step, image) -> None``: runs the host's denoiser on the conditional branch of ``image`` for
            the scaled latent ``z`` (``(1, C, h, w)``, DDPM scaling) at ``step``, with these patches active (the
            sampler wrapper of a host that supports latent-optimising methods provides it).
        on_error: ``exception -> None``. Without it an error inside a patch propagates into the host's sampler
            (ComfyUI shows it on the node). With it the error is handed over once, the run stops acting (its
            patches pass everything through, the host's own or another extension's attention computing each layer)
            and the host's sampling goes on: what the webui family needs, where an extension's exception would end
            the user's whole job.

    A run is its own deep copy: hosts deep-copy patch options on clone (Forge's ``UnetPatcher.clone``, ComfyUI's
    ``ModelPatcher.clone``), and the patches installed there are bound to this run, which must keep receiving the
    calls (a copy would act on nothing and report nothing).
    """

    def __init__(self, methods: Iterable[Method], prompt: str, tokenizer, *, family: str, steps: int,
                 encode: Callable[[str], torch.Tensor] | None = None, schedule=None, host: str = "this host",
                 fallback: Callable | None = None, blocks=None, gradient: Callable | None = None,
                 on_error: Callable[[BaseException], None] | None = None, target_prompt: str | None = None):
        if family not in UNET_FACTORS:
            raise UnsupportedModelError(
                f"attnkit's attention patches work on SD 1.x/2.x and SDXL UNets; {host} runs a {family} model here"
            )
        self.methods = list(methods)
        foreign = [m.id for m in self.methods if not m.attention <= PATCH_HOOKS]
        if foreign:
            raise UnsupportedModelError(
                f"{', '.join(foreign)} cannot run through {host}'s attention patches (it changes attention in ways "
                "they do not offer); use it in the attnkit app or Python"
            )
        raw = [m.id for m in self.methods if getattr(m.config, "scale_input", True) is False]
        if raw:
            raise UnsupportedModelError(
                f"{', '.join(raw)}: scale_input off (the reference pipeline's raw latent) exists only in the attnkit "
                f"app and Python; {host}'s model always scales its input: turn it back on"
            )
        other = [m.id for m in self.methods if m.needs_gradient]
        if other and gradient is None:
            raise UnsupportedModelError(
                f"{', '.join(other)} cannot run through {host}'s attention patches (it optimises the latent with "
                "gradient passes); use it in SD.Next, ComfyUI, the attnkit app or Python"
            )
        self.family = family
        self.host = host
        self.prompt = strip_weights(prompt)
        self.pipe = None
        self._encode = encode
        self._gradient = gradient
        self.on_error = on_error
        #: ``on_work(step, what, done, total)`` before each pass of a method's inner loop (hosts check their own
        #: interrupt flag here, so a cancel acts within one pass)
        self.on_work: Callable | None = None
        #: the error that stopped this run (only with ``on_error``); the patches pass through from then on
        self.failed: BaseException | None = None
        self._tokenizer = tokenizer
        self._tokens = self.tokens_of(self.prompt)
        #: the prompt the first one is edited into (Prompt-to-Prompt: the conditional rows are [source, target])
        self.target_prompt = strip_weights(target_prompt) if target_prompt is not None else None
        self.sequences = None
        self.report = Report()
        self.schedule = StepClock(steps, schedule)
        self.fallback = fallback or sdpa_heads
        self._host_step: int | None = None
        self.latent_hw: tuple[int, int] | None = None
        if blocks is None:
            blocks = [(("grid", f, 0), f) for f in UNET_FACTORS[family]]
        names = {"input": "down", "middle": "mid", "output": "up"}
        # the cross-attention (attn2) of every transformer block, then its self-attention (attn1)
        self._specs = [
            LayerInfo(i + offset, ".".join(str(x) for x in key) + f".{attn}", ".".join(str(x) for x in key), kind,
                      names.get(key[0], key[0]), int(key[1]), 1, 1, int(factor))
            for offset, kind, attn in ((0, "cross", "attn2"), (len(blocks), "self", "attn1"))
            for i, (key, factor) in enumerate(blocks)
        ]
        self._by_key = {(kind, tuple(key)): i + offset for offset, kind in ((0, "cross"), (len(blocks), "self"))
                        for i, (key, _) in enumerate(blocks)}
        self.layers: list[LayerInfo] = []
        self._grad: GradPass | None = None
        self._t0 = time.perf_counter()
        self._finished = False
        self.controllers: list[Controller] = [m.controller(self) for m in self.methods]
        #: the step clock (shared with the library's runs); ``schedule`` places a call's noise level in it
        self.clock = Steps(self.controllers)
        self.updaters = [c for c in self.controllers if c.updates_latents]
        blenders = [c.method.id for c in self.controllers if c.edits_step_latents]
        if blenders:
            raise UnsupportedModelError(
                f"{', '.join(blenders)} changes the latents after every step (local blend), which {host}'s sampler "
                "does not let attnkit do; leave the blend words empty here"
            )
        #: per layer, the event of the current step (``None``: untouched)
        self.routes: list[engine.Event | None] = []

    def __deepcopy__(self, memo):
        return self

    @property
    def step(self) -> StepInfo | None:
        """The step in progress."""
        return self.clock.step

    def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            self.on_error(exc)

    # --- what controllers ask of a run
    @property
    def tokens(self) -> PromptTokens:
        return self._tokens

    def tokens_of(self, text: str) -> PromptTokens:
        """Token maps of ``text`` (weights and ``BREAK`` stripped) by the host's tokenizer."""
        return PromptTokens({"tokenizer": TokenMap(strip_weights(text), self._tokenizer, 77)}, "tokenizer", 77)

    def encode_text(self, text: str) -> torch.Tensor:
        if self._encode is None:
            raise AttnKitError(f"structured needs the text encoder, which {self.host} did not provide")
        out = self._encode(text)
        if isinstance(out, dict):
            out = out["crossattn"]
        return out[:1] if out.ndim == 3 else out.unsqueeze(0)

    def text_encoders(self):
        return [("tokenizer", self._tokenizer, slice(None))]

    def gradient_maps(self, controller: Controller, latent: torch.Tensor, step: StepInfo, image: int = 0,
                      early_stop: bool = True, scale_input: bool = True) -> dict[int, torch.Tensor]:
        """Per-head text-attention probabilities ``{layer index: (1, heads, N, T)}`` of ``controller.prob_layers``
        as functions of ``latent`` (as :meth:`attnkit.Run.gradient_maps`), through the host's denoiser."""
        return gradient_pass(self, GradPass(controller, step, set(controller.prob_layers), early_stop),
                             lambda: self._gradient(latent, step, image))

    def work(self, step: StepInfo, what: str, done: int, total: int) -> None:
        """A method's inner loop is about to run pass ``done`` of at most ``total`` (as :meth:`attnkit.Run.work`)."""
        if self.on_work is not None:
            self.on_work(step, what, done, total)

    def update_latents(self, latents: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """Let every latent-optimising method update the DDPM-scaled ``latents`` before ``step``."""
        if self.latent_hw is None:
            self._bind({"original_shape": list(latents.shape)})
        for c in self.updaters:
            with c.timed("update_s"):
                latents = c.update_latents(latents, step)
        return latents

    def step_at(self, sigma: float) -> StepInfo:
        """The step a sampler is at for noise level ``sigma`` (from the schedule)."""
        index = self.schedule.at(float(sigma))
        return StepInfo(index, self.schedule.count, float(sigma))

    # --- what the adapters install
    @property
    def needs_replace(self) -> bool:
        """Whether ``attn2_replace`` must be installed (every method reads, edits or computes there)."""
        return bool(self.methods)

    @property
    def needs_patch(self) -> bool:
        """Whether ``attn2_patch`` must be installed (a method rewrites the keys'/values' text)."""
        return any("text" in m.attention for m in self.methods)

    @property
    def needs_self(self) -> bool:
        """Whether ``attn1_replace`` must be installed (a method may rewrite self-attention probabilities)."""
        return any("probs" in m.attention for m in self.methods)

    def set_step(self, index: int, count: int) -> None:
        """The host's own step index and step count (A1111's and Forge's ``on_cfg_denoiser``); preferred over
        the noise-level clock, which cannot tell a second model call within one step (Heun, DPM2) from a new step."""
        self._host_step = int(index)
        self.schedule.count = max(int(count), 1)

    def _advance(self, extra_options: dict) -> StepInfo:
        if self._grad is not None:
            return self.step
        if self._host_step is not None:
            index = self._host_step
            marker = float(index)
        else:
            sigmas = extra_options.get("sigmas")
            marker = float(sigmas.flatten()[0]) if torch.is_tensor(sigmas) else float(sigmas if sigmas is not None else 0)
            index = self.schedule.at(marker)
        if self.latent_hw is None:
            self._bind(extra_options)
        step, began = self.clock.at(index, self.schedule.count, marker)
        if began:
            self.routes = engine.events(self.controllers, [c.layers_at(step) for c in self.controllers],
                                        len(self.layers), True)
        return step

    def bind_latent(self, latent_hw: tuple[int, int]) -> None:
        """Place the layers on a ``(h, w)`` latent now (what the first denoiser call does): raises the methods'
        errors for this size (a map resolution the image cannot serve) before any sampling."""
        self._bind({"original_shape": [1, 4, int(latent_hw[0]), int(latent_hw[1])]})

    def _bind(self, extra_options: dict) -> None:
        shape = extra_options.get("original_shape")
        if shape is None:
            raise AttnKitError(f"{self.host} gave no latent shape to the attention patch; cannot place the maps")
        self.latent_hw = (int(shape[-2]), int(shape[-1]))
        self.layers = [layer.with_grid(grid_for(layer, self.latent_hw)) for layer in self._specs]
        for c in self.controllers:
            c.bind(self.layers, self.latent_hw)
        engine.claim_layers(self.controllers)
        self.routes = [None] * len(self.layers)

    def _layer(self, extra_options: dict, tokens: int, kind: str = "cross") -> LayerInfo | None:
        block = extra_options.get("block")
        if block is not None:
            index = self._by_key.get((kind, (block[0], block[1], extra_options.get("block_index", 0) or 0)))
            if index is not None:
                return self.layers[index]
        return next((layer for layer in self.layers if layer.kind == kind and layer.grid[0] * layer.grid[1] == tokens),
                    None)

    @staticmethod
    def cond_rows(batch: int, extra_options: dict) -> torch.Tensor:
        """Batch rows of conditional chunks."""
        if "attnkit_cond_rows" in extra_options:
            return torch.as_tensor(extra_options["attnkit_cond_rows"], dtype=torch.long)
        chunks = extra_options.get("cond_or_uncond")
        if not chunks:
            return torch.arange(batch)
        size = batch // len(chunks)
        return torch.cat([torch.arange(i * size, (i + 1) * size) for i, c in enumerate(chunks) if c == 0] or
                         [torch.zeros(0, dtype=torch.long)])

    # --- the patches
    def attn2_patch(self, n, context, value, extra_options):
        """Rewrite the text the keys/values come from (``structured``) on conditional rows."""
        if self.failed is not None:
            return n, context, value
        if self.on_error is None:
            return self._attn2_patch(n, context, value, extra_options)
        try:
            return self._attn2_patch(n, context, value, extra_options)
        except Exception as exc:
            self._fail(exc)
            extra_options.pop("attnkit_groups", None)
            return n, context, value

    def _attn2_patch(self, n, context, value, extra_options):
        step = self._advance(extra_options)
        if value is None:
            value = context
        layer = self._layer(extra_options, n.shape[1])
        event = self.routes[layer.index] if layer is not None else None
        if event is None or event.text is None:
            return n, context, value
        rows = self.cond_rows(context.shape[0], extra_options).to(context.device)
        keys, value = engine.edit_text(event, layer, step, context, value, rows)
        if len(keys) == 1:
            return n, keys[0], value
        extra_options["attnkit_groups"] = len(keys)  # the host projects keys and values alike: repeat the values
        return n, torch.cat(keys, dim=1), value.repeat(1, len(keys), 1)

    def replace(self, previous: Callable | None = None, kind: str = "cross") -> Callable:
        """An ``attn2_replace`` (``kind="self"``: an ``attn1_replace``) for one block; ``previous`` is a replace
        another extension installed there, which still computes the block's output."""

        def attn_replace(q, k, v, extra_options):
            return self.attn_replace(q, k, v, extra_options, previous, kind)

        attn_replace.attnkit_previous = previous
        return attn_replace

    def attn2_replace(self, q, k, v, extra_options, previous=None):
        return self.attn_replace(q, k, v, extra_options, previous, "cross")

    def attn_replace(self, q, k, v, extra_options, previous=None, kind="cross"):
        if self.failed is None and self.on_error is None:
            return self._attn_replace(q, k, v, extra_options, previous, kind)
        if self.failed is None:
            try:
                return self._attn_replace(q, k, v, extra_options, previous, kind)
            except Exception as exc:
                self._fail(exc)
        groups = int(extra_options.pop("attnkit_groups", 1))  # grouped keys of a patch that ran before the error
        if groups > 1:
            k, v = k[:, :k.shape[1] // groups], v[:, :v.shape[1] // groups]
        if previous is not None:
            return previous(q, k, v, extra_options)
        return self.fallback(q, k, v, int(extra_options["n_heads"]), extra_options)

    def _attn_replace(self, q, k, v, extra_options, previous, kind):
        step = self._advance(extra_options)
        heads = int(extra_options["n_heads"])

        def host(q_, k_, v_):
            if previous is not None:
                return previous(q_, k_, v_, extra_options)
            return self.fallback(q_, k_, v_, heads, extra_options)

        groups = int(extra_options.pop("attnkit_groups", 1)) if kind == "cross" else 1
        layer = self._layer(extra_options, q.shape[1], kind)
        event = self.routes[layer.index] if layer is not None else None
        grad = self._grad
        taken = grad is not None and layer is not None and layer.index in grad.remaining
        if groups == 1 and (event is None or not (event.readers or event.editors)) and not taken:
            return host(q, k, v)
        b, n, inner = q.shape
        t = k.shape[1] // groups

        def split(x):  # (B, L, H*D) -> (B, H, L, D)
            return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

        def merge(x):
            return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

        def fast(q_, k_, v_, mask):
            return split(host(merge(q_), merge(k_), merge(v_)))

        keys = [split(k[:, g * t:(g + 1) * t]) for g in range(groups)]
        rows = self.cond_rows(b, extra_options).to(q.device)
        out = engine.attend(event, layer, step, split(q), keys, split(v[:, :t]), scale=(inner // heads) ** -0.5,
                            rows=rows, fast=fast, grad=grad)
        return merge(out)

    # --- the end
    def finish(self) -> Report:
        """End the last step and let every controller write its report (idempotent)."""
        if self._finished:
            return self.report
        self._finished = True
        if self.step is not None:
            self.clock.end()
        self.report.steps = self.clock.last_index + 1
        self.report.grid = self.latent_hw
        self.report.timings["total_s"] = time.perf_counter() - self._t0
        for c in self.controllers:
            c.finish()
            self.report.methods[c.method.id] = c.report
            self.report.warnings.extend(f"{c.method.id}: {w}" for w in c.report.warnings)
        return self.report


def unet_blocks(diffusion_model) -> list[tuple[tuple[str, int, int], int]]:
    """``((block, number, block_index), downsample)`` for every transformer block of an ldm-layout UNet
    (``input_blocks``, ``middle_block``, ``output_blocks``: A1111's, Forge's and ComfyUI's UNets). The key is what
    ``set_model_attn2_replace`` takes; ``downsample`` is the block's query grid factor, followed through the
    ``Downsample``/``Upsample`` modules."""
    out = []
    factor = 1

    def transformers(block):
        for module in block if hasattr(block, "__iter__") else [block]:
            inner = getattr(module, "transformer_blocks", None)
            if inner is not None:
                yield len(inner)

    def has(block, name):
        return any(type(m).__name__ == name for m in (block if hasattr(block, "__iter__") else [block]))

    for number, block in enumerate(getattr(diffusion_model, "input_blocks", None) or []):
        if has(block, "Downsample"):
            factor *= 2
        for count in transformers(block):
            out.extend((("input", number, i), factor) for i in range(count))
    middle = getattr(diffusion_model, "middle_block", None)
    if middle is not None:
        for count in transformers(middle):
            out.extend((("middle", 0, i), factor) for i in range(count))
    for number, block in enumerate(getattr(diffusion_model, "output_blocks", None) or []):
        for count in transformers(block):
            out.extend((("output", number, i), factor) for i in range(count))
        if has(block, "Upsample"):
            factor //= 2
    if not out:
        raise UnsupportedModelError("this model has no UNet transformer blocks (input_blocks/output_blocks) to patch")
    return out


def unet_block_keys(diffusion_model) -> list[tuple[str, int, int]]:
    """The ``(block, number, block_index)`` keys of :func:`unet_blocks`."""
    return [key for key, _ in unet_blocks(diffusion_model)]


def unet_factors(diffusion_model) -> tuple[int, ...]:
    """The distinct query-grid factors of the transformer blocks of :func:`unet_blocks`."""
    return tuple(sorted({f for _, f in unet_blocks(diffusion_model)}))


def install_patches(run, patcher, keys: list[tuple[str, int, int]]) -> dict[str, Any]:
    """Install ``run``'s patches on a cloned ComfyUI/Forge ModelPatcher; returns what was installed.

    A replace another extension already put on a block is wrapped: it still computes that block's output. The host
    looks a block's replace up by ``(block, number, index)`` first, then by ``(block, number)``; a replace another
    extension keyed either way is the one the block would have run, so that one is wrapped.
    """
    installed = {"patch": False, "replace": 0, "self_replace": 0, "wrapped": 0}
    if run.needs_patch:
        patcher.set_model_attn2_patch(run.attn2_patch)
        installed["patch"] = True
    options = patcher.model_options.get("transformer_options", {})
    for attn, kind, wanted in (("attn2", "cross", run.needs_replace), ("attn1", "self", run.needs_self)):
        if not wanted:
            continue
        setter = getattr(patcher, f"set_model_{attn}_replace")
        existing = options.get("patches_replace", {}).get(attn, {})
        for block, number, index in keys:
            previous = existing.get((block, number, index), existing.get((block, number)))
            setter(run.replace(previous, kind), block, number, index)
            installed["replace" if kind == "cross" else "self_replace"] += 1
            installed["wrapped"] += previous is not None
    return installed
