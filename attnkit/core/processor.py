"""The attention processor attnkit installs: a thin router around each layer's own processor.

A :class:`LayerProcessor` wraps the processor a layer already has (SDPA, xformers, IP-Adapter, a LoRA or custom
processor). On a call that no active method touches it delegates untouched, so an attached-but-idle pipeline gives
bit-identical images. Where a method reads probabilities (only on the layers and steps it asked for) the run
computes them on the side from the same inputs, and the layer output still comes from the original processor.
Where a method changes the attention itself (keys, values), the run calls that method for the layer's output.
"""

from __future__ import annotations

import inspect


class LayerProcessor:
    """Routes one attention layer's calls for one :class:`~attnkit.runtime.Run`.

    Args:
        inner: the layer's original processor; every call is delegated to it.
        layer: the layer's :class:`~attnkit.core.layers.LayerInfo`.
        run: the run whose methods may read this layer.
    """

    def __init__(self, inner, layer, run):
        self.inner = inner
        self.layer = layer
        self.run = run
        # diffusers' Attention.forward keeps only the cross_attention_kwargs that `processor.__call__` names, so
        # expose the wrapped processor's signature; calls still go through the class's __call__ below.
        signature = inspect.signature(inner.__call__)

        def _signature(*args, **kwargs):  # pragma: no cover - only inspected, never called
            return self(*args, **kwargs)

        _signature.__signature__ = signature
        self.__call__ = _signature

    def __call__(self, attn, hidden_states, *args, **kwargs):
        route = self.run.routes[self.layer.index]
        if route is None:
            return self.inner(attn, hidden_states, *args, **kwargs)
        return self.run.routed_call(route, self, attn, hidden_states, args, kwargs)

    def __repr__(self) -> str:
        return f"LayerProcessor({self.layer.name}, inner={type(self.inner).__name__})"
