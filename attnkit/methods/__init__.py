"""The attention-control methods, one file each, and the registry of their stable ids."""

from __future__ import annotations

from .base import Controller, Method, MethodReport
from .a_star import AStar, AStarConfig
from .attend_excite import AttendExcite, AttendExciteConfig
from .observe import Observe, ObserveConfig
from .structured import StructuredConfig, StructuredGuidance

#: method id -> Method class. Ids are stable and never renamed once released.
REGISTRY: dict[str, type[Method]] = {cls.id: cls for cls in (Observe, StructuredGuidance, AStar, AttendExcite)}


def get_method(method_id: str) -> type[Method]:
    """The Method class registered under ``method_id``."""
    from ..errors import AttnKitError

    try:
        return REGISTRY[method_id]
    except KeyError:
        raise AttnKitError(f"unknown method {method_id!r}; available: {', '.join(sorted(REGISTRY))}") from None


__all__ = [
    "AStar", "AStarConfig", "AttendExcite", "AttendExciteConfig", "Controller", "Method", "MethodReport", "Observe", "ObserveConfig", "REGISTRY", "StructuredConfig",
    "StructuredGuidance", "get_method",
]
