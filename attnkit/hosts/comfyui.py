"""attnkit in ComfyUI, host-free: targets from ComfyUI's CLIP, patching a cloned MODEL, the sampler wrapper.

ComfyUI objects come in as arguments (the MODEL's ``ModelPatcher``, the ``CLIP``, ``calc_cond_batch``, the
``SAMPLER_SAMPLE`` wrapper type); only ``nodes/`` imports ``comfy``.

- :func:`targets` finds the picked words in the prompt with the CLIP tokenizer ComfyUI encodes with, and checks the
  positions against ComfyUI's own tokenisation of the first 77-token chunk.
- :func:`apply` clones the MODEL and installs, on the clone only: ``attn2_patch``/``attn2_replace`` on every
  transformer block (a replace another pack put there is wrapped and still computes that block's output), and a
  ``SAMPLER_SAMPLE`` wrapper that gives every sampling run a fresh :class:`~attnkit.hosts.kernel.HostRun`.
- Latent-optimising methods (``attend_excite``, ``a_star``): the wrapper hands the sampler a proxy of its model
  function that, at each step's own model call (:class:`_Stepper`: not a 2nd-order sampler's extra calls), leaves
  inference mode, runs the methods' gradient passes through ComfyUI's own conditional forward, and writes the
  updated latent into the sampler's latent in place, so the step proceeds from it (the paper's
  ``z_t <- z_t - a_t grad L``). The loss is taken with respect to the DDPM-scaled latent ``z = x / sqrt(1 + sigma^2)``,
  so step sizes mean what they mean in the paper and in diffusers. ComfyUI loads weights as inference tensors;
  :func:`autograd_weights` lends the pass storage-sharing ordinary views of them (no copy).
- A :class:`Session` is shared by every copy of the patched MODEL (``clone()`` deep-copies the patches), and
  :func:`check_graph` checks at the Apply node what the API graph already tells (image sizes, encoded prompts).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core.steps import StepInfo
from ..core.tokens import TokenMap
from ..errors import AttnKitError, UnsupportedModelError
from .kernel import HostRun, install_patches, sdpa_heads, strip_weights, unet_blocks

logger = logging.getLogger(__name__)

#: ComfyUI model classes (``comfy.model_base``) by family
FAMILIES = {"BaseModel": "sd", "SD21UNCLIP": "sd", "SDXL": "sdxl", "SDXLRefiner": "sdxl"}


@dataclass
class Targets:
    """What the AttnKit Words node passes on: the prompt as ComfyUI tokenises it, and the picked words.

    Attributes:
        prompt: the prompt text the positions refer to (weights and ``BREAK`` stripped).
        words: the picked words (``"car"``, ``"red car"``, ``"dog#2"``).
        tokenizer: the CLIP tokenizer (``transformers``).
        encode: ``text -> (1, T, C)`` conditioning by ComfyUI's CLIP (for ``structured``).
        positions: ``{word: token positions}`` in the first 77-token chunk.
        text: the prompt exactly as typed into the Words node (weights included), to check the sampler's
            conditioning against.
    """

    prompt: str
    words: list[str]
    tokenizer: Any
    encode: Callable[[str], torch.Tensor]
    positions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    text: str | None = None
    _encoding: Any = field(default=None, repr=False, compare=False)

    def encoding(self) -> torch.Tensor | None:
        """ComfyUI's CLIP encoding of :attr:`text` ``(1, T, C)``, as CLIP Text Encode makes it (computed once)."""
        if self._encoding is None and self.text is not None:
            out = self.encode(self.text)
            self._encoding = out[0] if isinstance(out, (tuple, list)) else out
        return self._encoding


#: the CLIP tokenizers of ComfyUI's CLIP objects, in the order their positions are read: SD 1.x ``clip_l``, SD 2.x
#: ``clip_h`` (OpenCLIP ViT-H, same BPE), SDXL ``clip_l`` whose positions ``clip_g`` shares
CLIP_NAMES = ("l", "h", "g")


def clip_tokenizer(clip):
    """The ``transformers`` CLIP tokenizer of a ComfyUI ``CLIP`` (``comfy/sd1_clip.py``'s ``SD1Tokenizer`` holds it
    as ``clip_<name>``; see :data:`CLIP_NAMES`)."""
    tok = getattr(clip, "tokenizer", None)
    for name in (f"clip_{n}" for n in CLIP_NAMES):
        inner = getattr(getattr(tok, name, None), "tokenizer", None)
        if inner is not None:
            return inner
    raise UnsupportedModelError("AttnKit Words needs a CLIP text encoder (SD 1.x/2.x or SDXL); this CLIP has none")


def targets(clip, text: str, words: str | list[str]) -> Targets:
    """Resolve ``words`` in ``text`` for ComfyUI's CLIP; raises a one-line error for a word not in the prompt."""
    picked = [w.strip() for w in (words.split(",") if isinstance(words, str) else words) if w and w.strip()]
    prompt = strip_weights(text)
    tokenizer = clip_tokenizer(clip)
    tmap = TokenMap(prompt, tokenizer, 77)
    positions = {w: tmap.find(w).positions for w in picked}
    ours = tmap.ids[:77]
    theirs = _comfy_ids(clip.tokenize(text))
    if theirs is not None:
        for word, where in positions.items():
            if any(p >= len(theirs) or p >= len(ours) or theirs[p] != ours[p] for p in where):
                raise AttnKitError(
                    f"{word!r} sits at other token positions in ComfyUI's encoding of this prompt (embeddings or "
                    "custom tokens before it?); AttnKit cannot target it there"
                )

    def encode(t: str) -> torch.Tensor:
        with torch.no_grad():
            return clip.encode_from_tokens(clip.tokenize(t))

    return Targets(prompt, picked, tokenizer, encode, positions, text=text)


def _comfy_ids(tokens) -> list[int] | None:
    """Token ids of the first chunk of ``clip.tokenize(...)`` (``{"l": [[(id, weight), ...], ...]}``, ``"h"`` for
    SD 2.x)."""
    try:
        if isinstance(tokens, dict):
            chunk = tokens[next(n for n in CLIP_NAMES if n in tokens)][0]
        else:
            chunk = tokens[0]
        return [int(t[0]) for t in chunk]
    except (KeyError, IndexError, TypeError, ValueError, StopIteration):
        return None


def family_of_model(model) -> str:
    """``"sd"`` or ``"sdxl"`` for a ComfyUI MODEL; a clear error for other model types."""
    name = type(getattr(model, "model", None)).__name__
    family = FAMILIES.get(name)
    if family is None:
        raise UnsupportedModelError(
            f"AttnKit patches the cross-attention of SD 1.x/2.x and SDXL UNets; this MODEL is a {name} "
            "(Flux, SD3 and video models have no such layers)"
        )
    return family


class Session:
    """The methods one Apply node put on one cloned MODEL; a fresh :class:`HostRun` per sampling run.

    Attributes:
        last_report: the report of the latest finished sampling run (the Attention Maps node reads it).
    """

    def __init__(self, methods, targets: Targets, family: str, blocks, calc_cond_batch: Callable | None = None,
                 fallback: Callable | None = None, label: str = "AttnKit", interrupted: Callable | None = None,
                 target_prompt: str | None = None):
        self.label = label
        self.target_prompt = target_prompt
        self.interrupted = interrupted
        self.methods = list(methods)
        self.targets = targets
        self.family = family
        self.blocks = blocks
        self.calc_cond_batch = calc_cond_batch
        self.fallback = fallback or sdpa_heads
        self.run: HostRun | None = None
        self.last_report = None
        self.latent = any(m.needs_gradient for m in self.methods)
        if self.latent and calc_cond_batch is None:
            raise UnsupportedModelError("this ComfyUI has no conditional forward for gradient passes")
        # a run made now checks the words and options before any sampling (errors show on the Apply node)
        self.trial_run()

    def trial_run(self) -> HostRun:
        """A run that samples nothing: it checks words and settings, and (``bind_latent``) an image size."""
        return self._make_run(steps=1, schedule=None)

    def _make_run(self, steps, schedule, gradient=None) -> HostRun:
        placeholder = (lambda *a: None) if self.latent and gradient is None else gradient
        return HostRun(self.methods, self.targets.prompt, self.targets.tokenizer, family=self.family, steps=steps,
                       encode=self.targets.encode, schedule=schedule, host="ComfyUI", fallback=self.fallback,
                       blocks=self.blocks, gradient=placeholder, target_prompt=self.target_prompt)

    # --- what install_patches needs
    @property
    def needs_patch(self) -> bool:
        return any("text" in m.attention for m in self.methods)

    @property
    def needs_replace(self) -> bool:
        return True

    @property
    def needs_self(self) -> bool:
        return any("probs" in m.attention for m in self.methods)

    def attn2_patch(self, n, context, value, extra_options):
        run = self.run
        if run is None:  # sampled without our wrapper (an old ComfyUI): nothing to do
            return n, context, value
        return run.attn2_patch(n, context, value, extra_options)

    def replace(self, previous=None, kind="cross"):
        def attn_replace(q, k, v, extra_options):
            run = self.run
            if run is None:
                if previous is not None:
                    return previous(q, k, v, extra_options)
                return self.fallback(q, k, v, extra_options["n_heads"], extra_options)
            return run.attn_replace(q, k, v, extra_options, previous, kind)

        attn_replace.attnkit_previous = previous
        return attn_replace

    def __deepcopy__(self, memo):
        """A session is shared, not copied: ComfyUI's ``ModelPatcher.clone()`` deep-copies ``model_options``, where
        this session's patches are bound methods; every clone of the patched MODEL (a LoRA loader, ModelSampling*,
        another Apply node after this one) must drive this same session, whose run the sampler wrapper sets and
        whose report the Attention Maps node reads."""
        return self

    # --- the sampler wrapper
    def sampler_sample(self, executor, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                       denoise_mask=None, disable_pbar=False):
        """``WrappersMP.SAMPLER_SAMPLE`` wrapper: one :class:`HostRun` per sampling run."""
        schedule = [float(s) for s in sigmas.flatten()]
        model_options = (extra_args or {}).get("model_options", {})
        ksampler = getattr(executor, "class_obj", None)
        sampler_name = getattr(getattr(ksampler, "sampler_function", None), "__name__", "") or ""
        corrector = corrector_at_next_sigma(sampler_name, getattr(ksampler, "extra_options", None))

        def gradient(z, step, image):
            if self.interrupted is not None:  # Cancel in ComfyUI stops between gradient passes, not after the step
                self.interrupted()
            sigma = torch.full((1,), float(step.timestep), device=z.device, dtype=z.dtype)
            x = z * (1 + sigma**2).sqrt()
            self.calc_cond_batch(model_wrap.inner_model, [model_wrap.conds["positive"]], x, sigma, model_options)

        run = self._make_run(len(schedule) - 1, schedule, gradient if self.latent else None)
        self._check_prompt(model_wrap, run)
        stepper = _Stepper(model_wrap, run, schedule, corrector, self.latent)
        if self.latent and (sampler_name in _COPYING_SAMPLERS or denoise_mask is not None):
            what = "a noise mask (inpainting)" if denoise_mask is not None else sampler_name.replace("sample_", "")
            fix = ("" if denoise_mask is not None else
                   "; euler, euler_ancestral, heun, dpmpp_2m or ddim apply it in full")
            run.report.warnings.append(
                f"{what} hands the model a copy of the sampler's latent, so the latent update reaches each step's "
                f"noise prediction but not the sampler's own latent (weaker than the paper's update){fix}"
            )

        def on_step(*args):
            stepper.stepped(args[0] if args else None)
            if callback is not None:
                return callback(*args)

        self.run = run
        ok = False
        try:
            out = executor(stepper, sigmas, extra_args, on_step, noise, latent_image, denoise_mask, disable_pbar)
            ok = True
            return out
        except AttnKitError as e:  # said at the sampler, about settings made at the Apply node: name that node
            message = str(e)
            if not message.startswith(self.label):
                raise type(e)(f"{self.label}: {message}") from e
            raise
        finally:
            self.run = None
            if ok:
                stepper.check()
                self.last_report = run.finish()
                for w in self.last_report.warnings:
                    logger.warning("AttnKit: %s", w)

    def _check_prompt(self, model_wrap, run) -> None:
        """Warn when the positive conditioning was not encoded from the AttnKit Words prompt (its first 77-token
        chunk, where the picked positions are): the picked positions would then name other words."""
        text = self.targets.text
        if text is None:
            return
        conds = [c.get("cross_attn") for c in (getattr(model_wrap, "conds", None) or {}).get("positive", []) or []]
        conds = [c for c in conds if torch.is_tensor(c)]
        if not conds:
            return
        mine = self.targets.encoding()
        if mine is None:
            return
        n = min(77, mine.shape[1])
        for c in conds:
            if c.shape[-1] == mine.shape[-1] and c.shape[1] >= n and torch.allclose(
                    c[:1, :n].float().cpu(), mine[:1, :n].float().cpu(), atol=1e-3, rtol=1e-3):
                return
        run.report.warnings.append(
            f"the positive conditioning was not encoded from the AttnKit Words text {text!r}: the words' token "
            "positions may point at other words. Give CLIP Text Encode and AttnKit Words the same text (convert "
            "the text widget to an input and wire one String node to both)"
        )


#: torch's out-of-memory error (``torch.OutOfMemoryError`` from torch 2.5, ``torch.cuda.OutOfMemoryError`` before)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
#: ComfyUI samplers whose model calls get a copy of the sampler's latent (``comfy/extra_samplers/uni_pc.py``
#: rescales it before each call), not the latent itself
_COPYING_SAMPLERS = {"sample_unipc", "sample_unipc_bh2"}
#: k-diffusion samplers (``comfy/k_diffusion/sampling.py``) that, after a step's callback, evaluate the model once
#: more at the *next* step's noise level before the next step's own call: Heun's corrector, and the midpoint of the
#: ancestral DPM2 / DPM++ 2S samplers, which at ``eta`` 1 is exactly the next noise level
#: (``sqrt(sigma * sigma_down)`` with ``sigma_down = sigma_next**2 / sigma``)
_CORRECTOR_AT_NEXT_SIGMA = {"sample_heun", "sample_heunpp2"}
_MIDPOINT_AT_NEXT_SIGMA_IF_ETA_1 = {"sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral"}


def corrector_at_next_sigma(sampler_name: str, extra_options: dict | None) -> bool:
    """Whether this ComfyUI sampler calls the model at the next step's noise level between a step's callback and
    the next step's own call."""
    eta = float((extra_options or {}).get("eta", 1.0))
    return sampler_name in _CORRECTOR_AT_NEXT_SIGMA or (sampler_name in _MIDPOINT_AT_NEXT_SIGMA_IF_ETA_1 and eta == 1.0)


def _same_sigma(sigma: float, scheduled: float) -> bool:
    """Whether a model call's noise level is the schedule's (up to the float32 rounding samplers apply)."""
    return abs(sigma - scheduled) <= 1e-4 * scheduled + 1e-6


class _Stepper:
    """The sampler's model function, with the step clock and the latent-optimising methods' update.

    A step's own model call is the first call at that step's noise level after the sampler reported the previous
    step (its callback): the extra calls of 2nd-order samplers (DPM2 and DPM++ SDE at a midpoint noise level; Heun,
    and ancestral DPM2/DPM++ 2S at eta 1, at exactly the next step's) are not mistaken for the next step. At that
    call the run learns the step index, and the latent-optimising methods update the sampler's latent in place
    (``z_t <- z_t - a_t grad L`` on the DDPM-scaled latent), so the step proceeds from the updated one.
    """

    def __init__(self, inner, run: HostRun, schedule: list[float], corrector: bool, optimise: bool):
        self.inner = inner
        self.run = run
        self.schedule = schedule
        self.count = max(len(schedule) - 1, 1)
        self.optimise = optimise and bool(run.updaters)
        self.corrector = corrector
        self.step = 0  # the step whose own call comes next
        self.pending = True
        self.skip = False
        self.reported = False
        self.updated: list[int] = []
        run.set_step(0, self.count)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stepped(self, index) -> None:
        """The sampler finished step ``index`` (its callback)."""
        i = int(index) if index is not None else self.step
        self.reported = True
        self.step = i + 1
        self.pending = True
        self.skip = self.corrector and self.step < self.count and self.schedule[self.step] > 0

    def _is_own_call(self, sigma: float) -> bool:
        if not self.reported:  # a sampler that reports no steps: follow its noise level through the schedule
            later = [j for j in range(self.step + (0 if self.pending else 1), self.count)
                     if _same_sigma(sigma, self.schedule[j])]
            if later:
                self.step, self.pending = later[0], True
        if not self.pending or self.step >= self.count:
            return False
        if not _same_sigma(sigma, self.schedule[self.step]):
            return False  # a midpoint call (DPM2, DPM++ 2S/SDE) of the step before
        if self.skip:
            self.skip = False
            return False
        return True

    def __call__(self, x, sigma, *args, **kwargs):
        sigma_value = float(torch.as_tensor(sigma).flatten()[0])
        if self._is_own_call(sigma_value):
            self.pending = False
            self.run.set_step(self.step, self.count)
            if self.optimise:
                self._update(x, sigma_value)
        return self.inner(x, sigma, *args, **kwargs)

    def _update(self, x, sigma_value: float) -> None:
        step = StepInfo(self.step, self.count, sigma_value)
        scale = (1.0 + sigma_value**2) ** 0.5
        try:
            with torch.inference_mode(False), torch.enable_grad(), autograd_weights(self.inner.inner_model):
                z = x.detach().clone() / scale
                updated = self.run.update_latents(z, step) * scale
        except (AttnKitError, _OUT_OF_MEMORY):  # ComfyUI reports running out of memory itself
            raise
        except RuntimeError as e:
            names = ", ".join(c.method.id for c in self.run.updaters)
            raise AttnKitError(f"the gradient pass of {names} through ComfyUI's model failed at step "
                               f"{self.step + 1}: {e}") from e  # the sampler wrapper prefixes the Apply node
        with torch.inference_mode(x.is_inference()), torch.no_grad():
            x.copy_(updated.to(x.dtype))  # the sampler's own latent: the step proceeds from the updated one
        self.updated.append(self.step)

    def check(self) -> None:
        """After a finished run: say so when the update never found a step's own model call."""
        if not self.optimise:
            return
        wanted = sorted({i for c in self.run.updaters for i in range(self.count)
                         if getattr(c, "acts_at", c.wants_step)(StepInfo(i, self.count, self.schedule[i]))})
        missed = [i for i in wanted if i not in self.updated]
        if missed:
            self.run.report.warnings.append(
                f"the latent update ran at {len(wanted) - len(missed)} of the {len(wanted)} steps it should have: this "
                "sampler calls the model in a way attnkit could not follow; use euler, heun, dpmpp_2m or ddim"
            )


@contextlib.contextmanager
def autograd_weights(module):
    """Let a gradient pass run through ``module`` whose weights are inference tensors (ComfyUI loads every model
    under ``torch.inference_mode()``; autograd refuses to save such tensors for backward).

    Each inference parameter and buffer is swapped, for the duration, for an ordinary tensor that *shares its
    storage*: no copy, no extra memory; the weights are read-only here and the originals come back on exit. (A
    tensor subclass that cannot share storage this way is cloned instead, and only that one.)
    """
    swapped = []
    with torch.inference_mode(False):
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for name, t in list(store.items()):
                    if t is None or not t.is_inference():
                        continue
                    try:
                        alias = torch.empty(0, dtype=t.dtype, device=t.device).set_(
                            t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
                    except (RuntimeError, TypeError, NotImplementedError):
                        alias = t.clone()
                    if isinstance(t, torch.nn.Parameter):
                        alias = torch.nn.Parameter(alias, requires_grad=False)
                    store[name] = alias
                    swapped.append((store, name, t))
    try:
        yield len(swapped)
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


@dataclass
class Downstream:
    """A sampler node that samples with the MODEL an Apply node outputs, as far as the API-format graph tells.

    Attributes:
        node: the sampler's node id; ``title`` its class type.
        latent_hw: the latent size ``(h, w)`` when its latent comes straight from an empty-latent node with typed
            width and height (``None`` otherwise: an encoded image, a latent from elsewhere).
        text: the text of the CLIP Text Encode feeding its positive input, when typed there (else ``None``).
        text_node: that CLIP Text Encode's node id.
    """

    node: str
    title: str
    latent_hw: tuple[int, int] | None = None
    text: str | None = None
    text_node: str | None = None


#: node types that make an empty latent from typed ``width``/``height`` (``nodes.py``, ``comfy_extras``), with the
#: latent's downscale factor
_EMPTY_LATENTS = {"EmptyLatentImage": 8, "EmptySD3LatentImage": 8}


def downstream(prompt: dict | None, node_id) -> list[Downstream]:
    """The sampler nodes of ``prompt`` (ComfyUI's API-format graph, a node's hidden ``PROMPT`` input) whose
    ``model`` input comes from node ``node_id`` through any chain of MODEL -> MODEL nodes."""
    if not isinstance(prompt, dict) or node_id is None:
        return []
    node_id = str(node_id)

    def link(value):
        return str(value[0]) if isinstance(value, (list, tuple)) and len(value) == 2 else None

    out = []
    for sid, node in prompt.items():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        if not all(k in inputs for k in ("model", "positive", "latent_image")):
            continue
        cur, seen = link(inputs["model"]), set()
        while cur is not None and cur != node_id and cur not in seen:
            seen.add(cur)
            cur = link(prompt.get(cur, {}).get("inputs", {}).get("model"))
        if cur != node_id:
            continue
        found = Downstream(str(sid), str(node.get("class_type", "sampler")))
        source = prompt.get(link(inputs["latent_image"]) or "", {})
        factor = _EMPTY_LATENTS.get(source.get("class_type"))
        w, h = source.get("inputs", {}).get("width"), source.get("inputs", {}).get("height")
        if factor and isinstance(w, int) and isinstance(h, int):
            found.latent_hw = (h // factor, w // factor)
        positive = link(inputs["positive"])
        encoder = prompt.get(positive or "", {})
        if encoder.get("class_type") == "CLIPTextEncode" and isinstance(encoder.get("inputs", {}).get("text"), str):
            found.text, found.text_node = encoder["inputs"]["text"], positive
        out.append(found)
    return out


def check_graph(session: "Session", found: list[Downstream]) -> None:
    """What the graph already tells at the Apply node, checked there rather than at the sampler:

    - the maps' grid (``attn_res``/``resolution``) exists at the image size of each sampler that uses this MODEL;
    - the prompt each sampler encodes puts the picked words where AttnKit Words found them.
    """
    targets = session.targets
    ours = TokenMap(targets.prompt, targets.tokenizer, 77).ids if targets.positions else []
    for d in found:
        if d.latent_hw is not None:
            run = session.trial_run()
            try:
                run.bind_latent(d.latent_hw)
            except AttnKitError as e:
                h, w = d.latent_hw
                raise AttnKitError(f"{session.label}: at the {w * 8}x{h * 8} image of {d.title} (node {d.node}): "
                                   f"{e}") from e
        if d.text is not None and targets.positions:
            theirs = TokenMap(strip_weights(d.text), targets.tokenizer, 77).ids
            wrong = [w for w, where in targets.positions.items()
                     if any(p >= len(theirs) or theirs[p] != ours[p] for p in where)]
            if wrong:
                raise AttnKitError(
                    f"{session.label}: {d.title} (node {d.node}) samples the prompt of CLIP Text Encode (node "
                    f"{d.text_node}), {d.text!r}, where {', '.join(map(repr, wrong))} are not at the positions AttnKit "
                    f"Words found in {targets.text if targets.text is not None else targets.prompt!r}: give both "
                    "nodes the same text"
                )


def apply(model, targets: Targets, methods, *, sampler_wrapper_type=None, calc_cond_batch=None, label="AttnKit",
          prompt: dict | None = None, node_id=None, attention: Callable | None = None,
          interrupted: Callable | None = None) -> tuple[Any, Session]:
    """A patched clone of ``model`` (a ComfyUI ``ModelPatcher``) running ``methods``; ``model`` is untouched.

    Args:
        sampler_wrapper_type: ``comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE``.
        calc_cond_batch: ``comfy.samplers.calc_cond_batch`` (gradient passes of latent-optimising methods).
        label: how messages name the Apply node (``"AttnKit Apply Attend-and-Excite (node 5)"``).
        prompt, node_id: the node's hidden ``PROMPT`` and ``UNIQUE_ID`` inputs: the graph, to check what it tells
            (image sizes, encoded prompts) here instead of at the sampler (see :func:`check_graph`).
        attention: ComfyUI's own attention ``(q, k, v, heads, extra_options) -> out``, used wherever no method
            changes the result, so that those layers compute exactly what ComfyUI computes without the pack.
        interrupted: ``comfy.model_management.throw_exception_if_processing_interrupted``, called before each
            gradient pass so that Cancel stops a latent-optimising step at once.
    """
    if not methods:
        raise AttnKitError("no method to apply")
    family = family_of_model(model)
    blocks = unet_blocks(model.model.diffusion_model)
    session = Session(methods, targets, family, blocks, calc_cond_batch=calc_cond_batch, label=label,
                      fallback=attention, interrupted=interrupted)
    check_graph(session, downstream(prompt, node_id))
    clone = model.clone()
    install_patches(session, clone, [key for key, _ in blocks])
    if sampler_wrapper_type is None:
        raise UnsupportedModelError("AttnKit needs a ComfyUI with sampler wrappers (comfy.patcher_extension)")
    clone.add_wrapper_with_key(sampler_wrapper_type, "attnkit", session.sampler_sample)
    return clone, session


@dataclass
class Edit:
    """What the AttnKit Prompt-to-Prompt node hands the sampler: a MODEL that edits, the conditioning of both
    prompts as one batch of two, and a latent of two rows that get the same noise."""

    model: Any
    session: Session
    positive: list
    latent: dict


def prompt_to_prompt(model, clip, source: str, target: str, latent: dict, method, *, sampler_wrapper_type=None,
                     label="AttnKit Prompt-to-Prompt", attention: Callable | None = None) -> Edit:
    """Prompt-to-Prompt in a ComfyUI graph: ``source`` and ``target`` sampled side by side from the same noise, the
    target's attention rewritten from the source's by ``method`` (a :class:`~attnkit.methods.P2P`) through the same
    attention patches as every method.

    - the positive conditioning is ComfyUI's CLIP encoding of both prompts as one batch ``[source; target]``
      (ComfyUI keeps a conditioning whose batch equals the latent's as it is, row for row);
    - the latent is the input latent's first image twice, both rows with its noise index, so ComfyUI's
      ``prepare_noise`` draws the same noise for both;
    - the MODEL is a patched clone (``model`` is untouched) whose run finds the conditional rows ``[source, target]``
      in each model call.

    Sampled images come out as ``[source, edited]``. The local blend is refused (it needs control of the latents
    after each step, which ComfyUI's samplers do not give).
    """
    if not isinstance(source, str) or not source.strip() or not isinstance(target, str) or not target.strip():
        raise AttnKitError(f"{label}: give both a source and a target prompt")
    family = family_of_model(model)
    blocks = unet_blocks(model.model.diffusion_model)
    found = targets(clip, source, [])
    if strip_weights(target) != target.strip() or strip_weights(source) != source.strip():
        raise AttnKitError(f"{label}: write the prompts without weights or BREAK; Prompt-to-Prompt maps their words "
                           "one to one (use the reweight option to strengthen a word)")
    conds = [clip.encode_from_tokens(clip.tokenize(text), return_pooled=True) for text in (source, target)]
    if conds[0][0].shape != conds[1][0].shape or conds[0][0].shape[1] > 77:
        raise AttnKitError(f"{label}: each prompt must fit one 77-token chunk (75 words' tokens); shorten the longer one")
    samples = latent["samples"]
    if samples.shape[0] != 1:
        raise AttnKitError(f"{label}: the latent holds {samples.shape[0]} images; give a latent of batch 1 (the node "
                           "makes the source and the edited image from it)")
    try:  # the run made now checks the words and settings against both prompts
        session = Session([method], found, family, blocks, label=label, fallback=attention, target_prompt=target)
    except AttnKitError as e:
        raise type(e)(f"{label}: {e}") from None
    clone = model.clone()
    install_patches(session, clone, [key for key, _ in blocks])
    if sampler_wrapper_type is None:
        raise UnsupportedModelError("AttnKit needs a ComfyUI with sampler wrappers (comfy.patcher_extension)")
    clone.add_wrapper_with_key(sampler_wrapper_type, "attnkit", session.sampler_sample)
    extra = {}
    pooled = [c[1] for c in conds]
    if all(torch.is_tensor(p) for p in pooled):
        extra["pooled_output"] = torch.cat(pooled)
    positive = [[torch.cat([conds[0][0], conds[1][0]]), extra]]
    index = int((latent.get("batch_index") or [0])[0])
    edited = {k: v for k, v in latent.items() if k not in ("samples", "batch_index", "noise_mask")}
    edited.update(samples=samples.repeat(2, 1, 1, 1), batch_index=[index, index])
    return Edit(clone, session, positive, edited)
