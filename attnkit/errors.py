"""User-input errors.

Every error a user can cause derives from :class:`AttnKitError` (a ``ValueError``), so hosts, the CLI and the UI
catch them in one place and show the message as one readable line. Messages say what was wrong, which value, and
how to fix it.
"""

from __future__ import annotations


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters: a library's error for a message a user
    reads (theirs often span many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value, limit: int = 80) -> str:
    """``repr`` of a value a user gave, for a message: short, and safe for integers past Python's digit limit."""
    try:
        text = repr(value)
    except ValueError:
        return "a number too long to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AttnKitError(ValueError):
    """Base class of every error caused by user input (bad argument, unknown word, unsupported model...)."""


class WordNotFoundError(AttnKitError):
    """A word or phrase that a method targets does not occur in the prompt."""


class WordCutOffError(AttnKitError):
    """The word is in the prompt, but past the tokens the model keeps (the prompt is too long)."""


class AlreadyAttachedError(AttnKitError):
    """``attach`` was called on a pipeline that attnkit is already attached to."""


class UnsupportedModelError(AttnKitError):
    """The pipeline or checkpoint is of a family attnkit does not support (or not for this method)."""


class ModelLoadError(AttnKitError):
    """A model source could not be loaded (missing path, unknown file, hub unreachable...)."""


class StepCallbackError(AttnKitError):
    """The pipeline ran steps without telling attnkit (its step callback was not passed to the pipeline)."""


class Interrupted(AttnKitError):
    """The user stopped a long run (generation, editing, inversion); the pipeline is left as it was."""


def check_stop(stop) -> None:
    """Raise :class:`Interrupted` when ``stop`` (a ``threading.Event`` or a callable) says so."""
    if stop is None:
        return
    flag = stop.is_set() if hasattr(stop, "is_set") else stop()
    if flag:
        raise Interrupted("stopped by the user; the pipeline is left as it was")
