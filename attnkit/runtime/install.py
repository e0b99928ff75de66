"""Attaching and restoring: the processors attnkit puts on a denoiser, and the very same objects put back."""

from __future__ import annotations

from typing import Any, Callable


class Installation:
    """What one run put on ``denoiser``: wrapped processors and a forward pre-hook, and what was there before."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        #: the processors the denoiser had before (``None`` while not installed)
        self.saved: dict[str, Any] | None = None
        self._hook = None

    @property
    def active(self) -> bool:
        return self.saved is not None

    def put_on(self, wrappers: Callable[[dict], dict], on_call: Callable) -> None:
        """Set ``wrappers(current processors)`` on the denoiser and ``on_call`` as its forward pre-hook (with
        kwargs); on any failure the denoiser is left as it was."""
        current = self.denoiser.attn_processors
        saved = dict(current)
        self.denoiser.set_attn_processor(wrappers(current))
        try:
            self._hook = self.denoiser.register_forward_pre_hook(on_call, with_kwargs=True)
        except BaseException:
            self.denoiser.set_attn_processor(saved)
            raise
        self.saved = saved

    def take_off(self) -> bool:
        """Remove the hook and put back the very same processor objects; returns whether anything was installed."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.saved is None:
            return False
        self.denoiser.set_attn_processor(self.saved)
        self.saved = None
        return True
