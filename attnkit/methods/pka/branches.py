"""Condition tokens for Flux transformers, OminiControl-style: encoding, position ids, and the condition branch.

A condition image is encoded by the pipeline's VAE (``(z - shift) * scale``), packed 2x2 into tokens like the image
latent, and embedded by the transformer's own ``x_embedder``. Its position ids are the image's (spatial conditions:
each condition token lines up with the image token at the same place) or the image's shifted by ``position_delta``
(subject conditions: default one image width to the right, so they never overlap it). Condition tokens run through
every block with the image branch's modules (norms, projections, feed-forward) but their own timestep embedding
(``condition_timestep``, default 0: a clean image) and, when the condition has one, their own LoRA adapter, active
only while that condition's tokens are computed.

The branch is split around the attention: :func:`branch_qkv` gives a condition's queries, keys and values in a
block, :func:`branch_finish` completes the block from the condition's attention output.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...core.attention import flux_qkv, rope
from ...errors import AttnKitError

KINDS = ("spatial", "subject")


@dataclass
class Condition:
    """One condition of a multi-condition Flux generation.

    Attributes:
        kind: ``"spatial"`` (an aligned map: canny edges, depth, any picture on the image's layout) or
            ``"subject"`` (a reference picture of a subject to put into the image).
        image: a PIL image, a file path or an ``(H, W, 3)`` array; resized (centre-cropped) to the generation size.
        keyword: subject conditions: the word(s) of the prompt naming the subject ("cat"); its attention decides
            which image tokens see the subject (keyword-scoped attention).
        lora: a LoRA adapter for this condition's branch (a ``.safetensors`` file or a folder holding one), loaded
            with peft for the run and removed afterwards; ``None``: the base weights.
        position_delta: subject conditions: ``(rows, columns)`` added to their position ids; ``None``: one image
            width to the right.
    """

    kind: str
    image: Any
    keyword: str | None = None
    lora: str | None = None
    position_delta: tuple[int, int] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise AttnKitError(f"Condition kind={self.kind!r}; use 'spatial' or 'subject'")
        if self.image is None:
            raise AttnKitError(f"a {self.kind} condition needs an image")
        if self.kind == "spatial" and self.keyword is not None:
            raise AttnKitError("a spatial condition takes no keyword (it is aligned by position, not by a word)")
        if self.kind == "spatial" and self.position_delta is not None:
            raise AttnKitError("a spatial condition shares the image's positions; position_delta is for subjects")
        if self.keyword is not None and (not isinstance(self.keyword, str) or not self.keyword.strip()):
            raise AttnKitError(f"Condition keyword must be a word of the prompt, got {self.keyword!r}")
        if self.lora is not None and not Path(self.lora).expanduser().exists():
            raise AttnKitError(f"Condition lora {self.lora!r}: no such file or folder")
        if self.position_delta is not None:
            try:
                self.position_delta = tuple(int(x) for x in self.position_delta)
                assert len(self.position_delta) == 2
            except (TypeError, ValueError, AssertionError):
                raise AttnKitError(f"position_delta must be (rows, columns), got {self.position_delta!r}") from None


# -------------------------------------------------------------------------------------------------- encoding


def encode_condition(pipe, image, grid: tuple[int, int]) -> torch.Tensor:
    """``(1, N, C)`` packed latent tokens of ``image`` on the token ``grid`` ``(h, w)`` of the generation."""
    from ...editing import load_image, pixels

    vae = pipe.vae
    factor = getattr(pipe, "vae_scale_factor", 8) * 2
    x = pixels(load_image(image, (grid[0] * factor, grid[1] * factor)))
    with torch.no_grad():
        z = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()
    z = (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def condition_ids(grid: tuple[int, int], delta: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``(N, 3)`` position ids ``[0, row, column]`` of a token grid, shifted by ``delta``."""
    h, w = grid
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None] + delta[0]
    ids[..., 2] = torch.arange(w)[None, :] + delta[1]
    return ids.reshape(h * w, 3)


# ---------------------------------------------------------------------------------------------------- branch


@dataclass
class BranchStep:
    """What a condition's block needs after the attention (gates, modulation, the MLP branch of single blocks)."""

    residual: torch.Tensor
    parts: tuple


def branch_qkv(block, attn, double: bool, states: torch.Tensor, temb: torch.Tensor, emb):
    """``(q, k, v, BranchStep)`` of a condition's tokens ``states`` ``(B, N, C)`` in ``block``."""
    if double:
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(states, emb=temb)
        parts = (gate_msa, shift_mlp, scale_mlp, gate_mlp)
    else:
        normed, gate = block.norm(states, emb=temb)
        parts = (gate, block.act_mlp(block.proj_mlp(normed)))
    q, k, v = flux_qkv(attn, normed)
    return rope(q, emb), rope(k, emb), v, BranchStep(states, parts)


def branch_finish(block, attn, double: bool, out: torch.Tensor, step: BranchStep) -> torch.Tensor:
    """The condition's tokens after ``block``, from their attention output ``out`` ``(B, N, H, D)``."""
    out = out.flatten(2, 3).to(step.residual.dtype)
    if double:
        gate_msa, shift_mlp, scale_mlp, gate_mlp = step.parts
        h = step.residual + gate_msa.unsqueeze(1) * attn.to_out[1](attn.to_out[0](out))
        normed = block.norm2(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return h + gate_mlp.unsqueeze(1) * block.ff(normed)
    gate, mlp = step.parts
    h = step.residual + gate.unsqueeze(1) * block.proj_out(torch.cat([out, mlp], dim=2))
    return h.clip(-65504, 65504) if h.dtype == torch.float16 else h  # as the single block does in half precision


def condition_temb(transformer, call_kwargs: dict, timestep: float, like: torch.Tensor) -> torch.Tensor:
    """The timestep embedding of condition tokens for the denoiser call ``call_kwargs`` (its guidance and pooled text
    embedding, the condition's own timestep), as the transformer's forward builds the image's."""
    pooled = call_kwargs.get("pooled_projections")
    t = torch.full((like.shape[0],), float(timestep), device=like.device, dtype=like.dtype) * 1000
    guidance = call_kwargs.get("guidance")
    if guidance is None:
        return transformer.time_text_embed(t, pooled)
    return transformer.time_text_embed(t, guidance.to(like.dtype) * 1000, pooled)


# ------------------------------------------------------------------------------------------------------ LoRA


@dataclass
class ConditionAdapters:
    """Per-condition LoRA adapters on a transformer, each active only inside its condition's branch.

    Everywhere else the transformer's LoRA layers are as they were before (the user's own adapters active, ours
    not): text and image tokens never see a condition's adapter. :meth:`remove` deletes the adapters loaded here and
    puts back every layer's active adapters, enabled state and gradient flags.
    """

    transformer: Any
    names: dict[int, str] = field(default_factory=dict)  # condition index -> adapter name
    owned: list[str] = field(default_factory=list)  # adapters loaded here (removed afterwards)
    trainable: bool = False  # keep our adapters' parameters trainable whatever switching does to their flags
    _layers: list = field(default_factory=list)
    _before: dict = field(default_factory=dict)  # id(layer) -> (active adapters, disabled, [(param, flag)])
    _ours: list = field(default_factory=list)  # our adapters' parameters

    @classmethod
    def load(cls, transformer, conditions: list[Condition]) -> "ConditionAdapters":
        adapters = cls(transformer)
        wanted = [(i, c.lora) for i, c in enumerate(conditions) if c.lora]
        if not wanted:
            return adapters
        try:
            import peft  # noqa: F401
        except ImportError:
            raise AttnKitError("a Condition lora needs the peft package: pip install peft") from None
        adapters.snapshot()
        try:
            for i, path in wanted:
                name = f"attnkit_condition_{i}"
                state = _read_lora(path)
                prefix = "transformer" if any(k.startswith("transformer.") for k in state) else None
                transformer.load_lora_adapter(state, adapter_name=name, prefix=prefix)
                adapters.owned.append(name)
                adapters.names[i] = name
        except Exception as exc:
            adapters.adopt(switch=False)
            adapters.remove()
            if isinstance(exc, AttnKitError):
                raise
            raise AttnKitError(f"could not load the LoRA of condition {i} ({path}): {exc}") from None
        adapters.adopt()
        return adapters

    def snapshot(self) -> None:
        """Remember the LoRA layers' state before this run adds adapters."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for layer in self.transformer.modules():
            if isinstance(layer, BaseTunerLayer):
                flags = [(p, p.requires_grad) for p in layer.parameters()]
                self._before[id(layer)] = (list(layer.active_adapters), bool(layer.disable_adapters), flags)

    def adopt(self, switch: bool = True) -> None:
        """Take the transformer's LoRA layers (after our adapters were added) and switch ours off."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._layers = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]
        ours = set(self.names.values()) | set(self.owned)
        self._ours = [p for n, p in self.transformer.named_parameters() if any(f".{a}." in n for a in ours)]
        if switch:
            self.switch(None)

    def switch(self, name: str | None) -> None:
        """Make ``name`` the only adapter acting (``None``: the layers as they were before, ours off). The user's
        adapters keep their gradient flags whatever peft's switching does to them."""
        ours = set(self.names.values()) | set(self.owned)
        for layer in self._layers:
            before = self._before.get(id(layer))
            if name is not None and name in layer.lora_A:
                layer.set_adapter([name])
                layer.enable_adapters(True)
            else:
                active, disabled, _ = before or ([], False, [])
                keep = [a for a in active if a not in ours and a in layer.lora_A]
                if keep and not disabled:
                    layer.set_adapter(keep)
                    layer.enable_adapters(True)
                else:
                    layer.enable_adapters(False)
            if before is not None:
                for p, flag in before[2]:
                    p.requires_grad_(flag)
        if self.trainable:
            for p in self._ours:
                p.requires_grad_(True)

    @contextlib.contextmanager
    def active(self, condition: int):
        """Inside: the adapter of ``condition`` (if it has one) acts; outside, none of ours does."""
        name = self.names.get(condition)
        if name is None:
            yield
            return
        self.switch(name)
        try:
            yield
        finally:
            self.switch(None)

    def remove(self) -> None:
        """Delete the adapters loaded here and put the LoRA layers back as they were (layers that exist only
        because of ours go back to peft's default: adapters enabled)."""
        if self.owned:
            self.transformer.delete_adapters(list(self.owned))
            self.owned.clear()
        for layer in self._layers:
            before = self._before.get(id(layer))
            if before is None:
                layer.enable_adapters(True)
                continue
            active, disabled, flags = before
            present = [a for a in active if a in layer.lora_A]
            if present:
                layer.set_adapter(present)
            layer.enable_adapters(not disabled)
            for p, flag in flags:
                p.requires_grad_(flag)
        self._layers = []


def _read_lora(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise AttnKitError(f"the LoRA folder {str(path)!r} has no .safetensors file")
        path = files[0]
    try:
        return load_file(str(path))
    except Exception as exc:
        raise AttnKitError(f"cannot read the LoRA file {str(path)!r}: {exc}") from None
