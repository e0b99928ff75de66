"""``pka``: Position-aligned and Keyword-scoped Attention for multi-condition Flux.

Zhou, Wei, Chen, Zhou, Yu, "Efficient Multi-Condition Control of Diffusion Transformers via Position-Aligned and
Keyword-Scoped Attention", arXiv 2602.06850 (Feb 2026). No code was released: this follows the reconstruction in the
project's method notes (what is not in the abstract is marked there as a reconstruction).

Conditions (canny, depth, a subject photo...) enter a Flux transformer as extra token groups, OminiControl-style
(:mod:`attnkit.methods.pka.branches`). With ``mode="full"`` every token attends to every token (the "concatenate and
attend" baseline: its cost grows with the square of the conditions' tokens). With ``mode="pka"``
(:mod:`attnkit.methods.pka.attention`):

- text and image tokens attend to each other as in Flux;
- **position-aligned attention**: an image token sees, of each spatial condition, only the token(s) at its own
  position (``window`` x ``window``, default 1), inside the same softmax; ``residual=True`` adds the aligned value
  instead (the paper's Eq. 2 read literally);
- **keyword-scoped attention**: an image token sees a subject condition only where the subject's keyword attends:
  the image tokens' attention mass on the keyword tokens, averaged over heads and every block of a step, scaled to
  [0, 1] (min to max) and thresholded at ``epsilon`` (0.2), is the mask of the next step; the first step attends
  everywhere;
- condition tokens attend only within their own group, so their keys and values do not change from step to step:
  they are computed at the first step and cached (``cache=True``), and later steps run no condition branch at all.

With no condition the layers compute exactly what Flux's own processor computes (bit-identical images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...core.attention import flux_qkv, rope
from ...errors import AttnKitError, UnsupportedModelError
from ..base import Controller, Method
from .attention import Pattern, pka_attention, sdpa
from .branches import (
    Condition,
    ConditionAdapters,
    branch_finish,
    branch_qkv,
    condition_ids,
    condition_temb,
    encode_condition,
)

MODES = ("pka", "full")
MAX_CONDITIONS = 32  # [ours] a bound for shared settings


@dataclass
class PKAConfig:
    """Settings of ``pka``.

    Attributes:
        conditions: the :class:`~attnkit.Condition` s (spatial maps and subject photos).
        mode: ``"pka"`` (position-aligned + keyword-scoped, cached conditions) or ``"full"`` (every token attends
            to every token: the baseline).
        window: side of the position-aligned neighbourhood (odd; 1: only the aligned token).
        residual: the residual reading of position-aligned attention (aligned values added, not attended).
        epsilon: keyword-mask threshold on the [0, 1]-scaled keyword attention (the paper studies 0.2-0.8).
        cache: cache the conditions' keys and values after the first step (pka mode).
        condition_timestep: the timestep of the condition tokens (0: a clean image, as OminiControl).
    """

    conditions: list[Condition] = field(default_factory=list)
    mode: str = "pka"
    window: int = 1
    residual: bool = False
    epsilon: float = 0.2
    cache: bool = True
    condition_timestep: float = 0.0

    def __post_init__(self):
        if isinstance(self.conditions, Condition):
            self.conditions = [self.conditions]
        self.conditions = list(self.conditions or [])
        if not all(isinstance(c, Condition) for c in self.conditions):
            raise AttnKitError("pka: conditions must be attnkit.Condition(kind=..., image=...) objects")
        if len(self.conditions) > MAX_CONDITIONS:
            raise AttnKitError(f"pka: at most {MAX_CONDITIONS} conditions, got {len(self.conditions)}")
        if self.mode not in MODES:
            raise AttnKitError(f"pka: mode={self.mode!r}; use 'pka' or 'full'")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1 or self.window % 2 == 0 \
                or self.window > 15:
            raise AttnKitError(f"pka: window={self.window!r} must be an odd number from 1 to 15")
        if isinstance(self.epsilon, bool) or not 0.0 <= float(self.epsilon) < 1.0:
            raise AttnKitError(f"pka: epsilon={self.epsilon!r} must be in [0, 1)")
        if isinstance(self.condition_timestep, bool) or not 0.0 <= float(self.condition_timestep) <= 1.0:
            raise AttnKitError(f"pka: condition_timestep={self.condition_timestep!r} must be in [0, 1]")
        for c in self.conditions:
            if c.kind == "subject" and self.mode == "pka" and not c.keyword:
                raise AttnKitError(
                    "pka: a subject condition needs keyword= (the prompt word naming the subject): keyword-scoped "
                    "attention shows the subject where that word attends"
                )


@dataclass
class _CallState:
    """One denoiser call's condition branch: states per condition, their timestep embedding and RoPE."""

    states: list[torch.Tensor]
    temb: torch.Tensor
    emb: list


class PKAController(Controller):
    """Runs the condition branch and the PKA (or full) attention in every joint-attention layer."""

    attends_every_call = True

    def __init__(self, method, run):
        super().__init__(method, run)
        config: PKAConfig = self.config
        self.conditions = config.conditions
        self.kinds = [c.kind for c in self.conditions]
        self.subject_index = [i for i, c in enumerate(self.conditions) if c.kind == "subject"]
        self.spatial_index = [i for i, c in enumerate(self.conditions) if c.kind == "spatial"]
        self.keyword_positions: list[list[int]] = []
        if config.mode == "pka":
            for i in self.subject_index:
                span = run.tokens.find(self.conditions[i].keyword)
                self.keyword_positions.append(list(span.positions))
        self.masks: list[torch.Tensor] | None = None
        self.adapters: ConditionAdapters | None = None
        self.packed: list[torch.Tensor] = []
        self.cache: dict[tuple, dict[int, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self._complete: set[tuple] = set()
        self._call_ref = None
        self._key: tuple = ()
        self._state: _CallState | None = None
        self._writing: dict | None = None
        self._mass: torch.Tensor | None = None
        self._mass_count = 0
        self.report.data.update(mode=config.mode, conditions=[c.kind for c in self.conditions])

    # ------------------------------------------------------------------------------------------ lifecycle

    def bind(self, layers, latent_hw):
        self.grid = latent_hw
        self.layers = layers
        self.replace_layers = frozenset(layer.index for layer in layers if layer.kind == "joint")
        transformer = self.run.denoiser
        for index in self.replace_layers:
            processor = self.run.original_processor(layers[index])
            if type(processor).__name__ != "FluxAttnProcessor":
                raise UnsupportedModelError(
                    f"pka computes Flux's joint attention itself, but {layers[index].name} runs "
                    f"{type(processor).__name__} (an adapter or custom processor); unload it for multi-condition runs"
                )
        self.first_layer = min(self.replace_layers)
        self.packed = [encode_condition(self.run.pipe, c.image, latent_hw) for c in self.conditions]
        self.ids = []
        for c in self.conditions:
            delta = (0, 0) if c.kind == "spatial" else (c.position_delta or (0, latent_hw[1]))
            self.ids.append(condition_ids(latent_hw, delta))
        self.adapters = ConditionAdapters.load(transformer, self.conditions)
        self.report.data["grid"] = latent_hw

    def begin_step(self, step):
        self._mass, self._mass_count = None, 0

    def end_step(self, step):
        if self._mass is not None and self._mass_count:
            mass = self._mass / self._mass_count  # (B, N, subjects)
            lo = mass.amin(dim=1, keepdim=True)
            hi = mass.amax(dim=1, keepdim=True)
            scaled = (mass - lo) / (hi - lo).clamp_min(1e-12)
            self.masks = [scaled[..., s] > self.config.epsilon for s in range(scaled.shape[-1])]
            self.report.data["keyword_mass"] = mass.detach().cpu()  # the last step's, (B, N, subjects)
            self.report.data.setdefault("mask_fraction", []).append(
                [float(m.float().mean()) for m in self.masks]
            )
        self._commit()

    def finish(self):
        if self.masks is not None:
            self.report.maps.update({
                self.conditions[i].keyword: m.float().view(m.shape[0], *self.grid).cpu()
                for i, m in zip(self.subject_index, self.masks)
            })

    def release(self):
        if self.adapters is not None:
            self.adapters.remove()
            self.adapters = None
        self.cache.clear()

    # -------------------------------------------------------------------------------------------- the call

    def _block(self, layer):
        blocks = self.run.denoiser.transformer_blocks if layer.block == "double" else \
            self.run.denoiser.single_transformer_blocks
        return blocks[layer.block_index]

    def _cache_key(self) -> tuple:
        """What the condition branch depends on besides the conditions: the call's pooled text embedding and
        guidance (the tensor's identity and a checksum of its values, so a new tensor at a reused address misses)."""
        kwargs = self.run.call_inputs.get("kwargs", {})
        parts = []
        for name in ("pooled_projections", "guidance"):
            x = kwargs.get(name)
            parts.append((x.data_ptr(), tuple(x.shape), float(x.detach().float().sum())) if torch.is_tensor(x) else None)
        return tuple(parts)

    def _cached(self) -> bool:
        return self.config.mode == "pka" and self.config.cache and self._key in self._complete

    def _new_call(self, like: torch.Tensor) -> None:
        transformer = self.run.denoiser
        kwargs = self.run.call_inputs.get("kwargs", {})
        batch = like.shape[0]
        dtype = like.dtype
        states = []
        for i, packed in enumerate(self.packed):
            with self.adapters.active(i):
                states.append(transformer.x_embedder(packed.to(like.device, dtype)).expand(batch, -1, -1))
        temb = condition_temb(transformer, kwargs, self.config.condition_timestep, like).to(dtype)
        emb = [transformer.pos_embed(ids.to(like.device)) for ids in self.ids]
        self._state = _CallState(states, temb, emb)
        self._commit()
        if self.config.mode == "pka" and self.config.cache and not self._cached():
            self._writing = {"key": self._key, "layers": {}}

    def _commit(self) -> None:
        """Keep the keys and values the last call wrote, once it wrote every layer's."""
        if self._writing is not None and len(self._writing["layers"]) == len(self.replace_layers):
            self.cache[self._writing["key"]] = self._writing["layers"]
            self._complete.add(self._writing["key"])
        self._writing = None

    def attend(self, layer, step, attn, hidden_states, *, encoder_hidden_states, attention_mask, temb, rows,
               image_rotary_emb=None, **extra):
        if attention_mask is not None:
            raise UnsupportedModelError("pka does not take an attention mask over the joint sequence")
        double = encoder_hidden_states is not None
        q, k, v = flux_qkv(attn, hidden_states, encoder_hidden_states)
        q, k = rope(q, image_rotary_emb), rope(k, image_rotary_emb)
        text_len = encoder_hidden_states.shape[1] if double else self.run.text_length
        if not self.conditions:
            out = sdpa(q, k, v)
            return self._outputs(attn, out, hidden_states, encoder_hidden_states)
        if self.run.call_inputs is not self._call_ref:
            self._call_ref = self.run.call_inputs
            self._key = self._cache_key()
            self._state = None
            if not self._cached():
                self._new_call(hidden_states)
        block = self._block(layer)
        if self.config.mode == "full":
            out = self._full(block, attn, double, q, k, v)
        else:
            out = self._pka(layer, block, attn, double, q, k, v, text_len, rows)
        return self._outputs(attn, out, hidden_states, encoder_hidden_states)

    def _branches(self, block, attn, double):
        """``(q, k, v, step)`` of every condition in this block (its LoRA active while computed)."""
        out = []
        for i, states in enumerate(self._state.states):
            with self.adapters.active(i):
                out.append(branch_qkv(block, attn, double, states, self._state.temb, self._state.emb[i]))
        return out

    def _finish(self, block, attn, double, branches, outputs):
        states = []
        for i, ((_, _, _, step), o) in enumerate(zip(branches, outputs)):
            with self.adapters.active(i):
                states.append(branch_finish(block, attn, double, o, step))
        self._state.states = states

    def _full(self, block, attn, double, q, k, v):
        branches = self._branches(block, attn, double)
        sizes = [q.shape[1]] + [b[0].shape[1] for b in branches]
        qa = torch.cat([q] + [b[0] for b in branches], dim=1)
        ka = torch.cat([k] + [b[1] for b in branches], dim=1)
        va = torch.cat([v] + [b[2] for b in branches], dim=1)
        parts = sdpa(qa, ka, va).split(sizes, dim=1)
        self._finish(block, attn, double, branches, parts[1:])
        return parts[0]

    def _pka(self, layer, block, attn, double, q, k, v, text_len, rows):
        if self._cached():
            kv = self.cache[self._key][layer.index]
        else:
            branches = self._branches(block, attn, double)
            outputs = [sdpa(bq, bk, bv) for bq, bk, bv, _ in branches]  # each condition attends to itself
            self._finish(block, attn, double, branches, outputs)
            kv = [(bk, bv) for _, bk, bv, _ in branches]
            if self._writing is not None:
                self._writing["layers"][layer.index] = [(bk.detach(), bv.detach()) for bk, bv in kv]
        batch = q.shape[0]
        kv = [(kk.expand(batch, -1, -1, -1), vv.expand(batch, -1, -1, -1)) for kk, vv in kv]
        conditional = rows is not None
        masks = self.masks
        if masks is not None and masks[0].shape[0] != batch:
            masks = [m[:1].expand(batch, -1) for m in masks]
        pattern = Pattern(self.grid, self.config.window, self.config.residual, masks,
                          self.keyword_positions if conditional and self.keyword_positions else None)
        out, mass = pka_attention(q, k, v, text_len, [kv[i] for i in self.spatial_index],
                                  [kv[i] for i in self.subject_index], pattern)
        if mass is not None:
            self._mass = mass if self._mass is None else self._mass + mass
            self._mass_count += 1
        return out

    @staticmethod
    def _outputs(attn, out, hidden_states, encoder_hidden_states):
        """What FluxAttnProcessor returns, from ``(B, L, H, D)`` attention output."""
        out = out.flatten(2, 3)
        if encoder_hidden_states is None:
            return out
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]],
                                           dim=1)
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        return image, attn.to_add_out(text.contiguous())


class PKA(Method):
    """Multi-condition Flux with position-aligned and keyword-scoped attention. See :class:`PKAConfig`.

    Example::

        cond = [attnkit.Condition(kind="spatial", image="canny.png"),
                attnkit.Condition(kind="subject", image="cat.png", keyword="cat")]
        attnkit.generate(flux, "a cat on a sofa", [PKA(conditions=cond)], seed=0)
    """

    id = "pka"
    title = "PKA (position-aligned, keyword-scoped attention)"
    config_class = PKAConfig
    controller_class = PKAController
    families = ("flux",)
    attention = frozenset({"replace"})
