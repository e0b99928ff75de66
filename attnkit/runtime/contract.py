"""The one contract every runtime implements and every controller is typed against.

A controller asks its run only what :class:`RunContext` names: the library's :class:`~attnkit.runtime.Run` (diffusers
pipelines) and the hosts' :class:`~attnkit.hosts.kernel.HostRun` (ComfyUI, Forge, A1111) both provide it, so a method
written against it runs in both. Methods that need a diffusers pipeline itself (they replace whole layers or train
adapters: ``replace`` in ``Method.attention``) may also use :class:`PipelineContext`, which only ``Run`` provides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..core.layers import LayerInfo
    from ..core.steps import StepInfo
    from ..core.tokens import PromptTokens
    from ..methods.base import Controller, MethodReport


@dataclass
class Report:
    """Everything a run reports.

    Attributes:
        methods: ``{method id: MethodReport}``; also reachable as ``report["observe"]``.
        steps: number of steps run.
        timings: ``{"total_s": ...}``.
        warnings: warnings of the run and of every method.
        grid: the latent size (UNet) or token grid (Flux) the run saw.
    """

    methods: dict[str, "MethodReport"] = field(default_factory=dict)
    steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    grid: tuple[int, int] | None = None

    def __getitem__(self, method_id: str) -> "MethodReport":
        try:
            return self.methods[method_id]
        except KeyError:
            raise KeyError(f"no report for {method_id!r}; this run had: {', '.join(self.methods) or 'no methods'}") from None

    def __contains__(self, method_id: str) -> bool:
        return method_id in self.methods



@runtime_checkable
class RunContext(Protocol):
    """What a controller may ask of the run it belongs to, in the library and in every host.

    Attributes:
        family: ``"sd"``, ``"sdxl"`` or ``"flux"``.
        prompt: the prompt as the runtime tokenises it; ``target_prompt`` the one it is edited into (or ``None``).
        sequences: ``(source, target)`` text keys of an edit, when given (Prompt-to-Prompt).
        layers: the attention layers, with their query grids once :attr:`latent_hw` is known.
        step: the step in progress (``None`` between steps).
        report: the run's :class:`Report`.
    """

    family: str
    prompt: str | None
    target_prompt: str | None
    sequences: tuple | None
    layers: list["LayerInfo"]
    latent_hw: tuple[int, int] | None
    step: "StepInfo | None"
    report: Report

    @property
    def tokens(self) -> "PromptTokens":
        """Token maps of the prompt."""

    def tokens_of(self, text: str) -> "PromptTokens":
        """Token maps of another text, as the runtime tokenises it (the target prompt of an edit)."""

    def encode_text(self, text: str) -> torch.Tensor:
        """The runtime's own prompt embedding of ``text``, ``(1, T, C)``."""

    def text_encoders(self) -> list[tuple[str, Any, slice]]:
        """``(token map name, tokenizer, feature slice)`` for each text encoder."""

    def gradient_maps(self, controller: "Controller", latent: torch.Tensor, step: "StepInfo", image: int = 0,
                      early_stop: bool = True, scale_input: bool = True) -> dict[int, torch.Tensor]:
        """Per-head text-attention probabilities of ``controller.prob_layers`` as functions of ``latent``
        (``scale_input``: the denoiser sees the latent as the step's own call does)."""

    def work(self, step: "StepInfo", what: str, done: int, total: int) -> None:
        """A method's inner loop is about to run pass ``done`` of ``total`` (progress, Stop)."""


@runtime_checkable
class PipelineContext(RunContext, Protocol):
    """What only the diffusers runtime offers: the pipeline, its denoiser and the call in progress."""

    pipe: Any
    denoiser: torch.nn.Module
    call_inputs: dict[str, Any]
    max_sequence_length: int | None

    @property
    def text_length(self) -> int | None:
        """Text tokens of the denoiser call in progress (Flux: where the image tokens start)."""

    def original_processor(self, layer: "LayerInfo"):
        """The processor ``layer`` had before attnkit was attached."""
