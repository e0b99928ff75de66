"""User-input errors.

Every error a user can cause derives from :class:`AttnKitError` (a ``ValueError``), so hosts, the CLI and the UI
catch them in one place and show the message as one readable line. Messages say what was wrong, which value, and
how to fix it.
"""

from __future__ import annotations


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
    """The user stopped a long run (editing, inversion); the pipeline is left as it was."""
