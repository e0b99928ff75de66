"""The attention-control methods, one file each, and the registry of their stable ids."""

from __future__ import annotations

from .a_star import AStar, AStarConfig
from .attend_excite import AttendExcite, AttendExciteConfig
from .base import Controller, Method, MethodReport
from .dpl import DPL, DPLConfig
from .observe import Observe, ObserveConfig
from .p2p import P2P, P2PConfig
from .pka import PKA, PKAConfig
from .structured import StructuredConfig, StructuredGuidance

#: method id -> Method class of the methods that act on one generation (attnkit.generate, the panel, hosts).
#: Ids are stable and never renamed once released. The editing methods (``p2p``, ``dpl``) run through
#: attnkit.prompt_to_prompt / attnkit.edit, which take two prompts; ``pka`` takes condition images, so it is given
#: to attnkit.generate directly (not a preset, not a host control).
REGISTRY: dict[str, type[Method]] = {cls.id: cls for cls in (Observe, StructuredGuidance, AStar, AttendExcite)}


def get_method(method_id: str) -> type[Method]:
    """The Method class registered under ``method_id``."""
    from ..errors import AttnKitError

    try:
        return REGISTRY[method_id]
    except KeyError:
        raise AttnKitError(f"unknown method {method_id!r}; available: {', '.join(sorted(REGISTRY))}") from None


__all__ = [
    "AStar", "AStarConfig", "AttendExcite", "AttendExciteConfig", "Controller", "DPL", "DPLConfig", "Method",
    "MethodReport", "Observe", "ObserveConfig", "P2P", "P2PConfig", "PKA", "PKAConfig", "REGISTRY", "StructuredConfig",
    "StructuredGuidance", "get_method",
]
