"""Exceptions raised by pyanalyzer.

Every mistake a user can make (a bad path, a broken model, an unknown layer, an impossible
parameter) raises a subclass of :class:`UserInputError`; the CLI prints its message on one
line and exits with code 2. Anything else is a bug or an environment failure (exit code 1).
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of a library's error message (onnx, onnxruntime and torch put
    the useful part there), at most ``limit`` characters; the exception's type name when it
    has no message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


class PyanalyzerError(Exception):
    """Base class of all pyanalyzer exceptions."""


class UserInputError(PyanalyzerError, ValueError):
    """The input given by the user cannot be used (CLI exit code 2)."""


class ModelError(UserInputError):
    """The ONNX file is missing, unreadable, invalid or not an image model."""


class LayerNotFoundError(UserInputError, KeyError):
    """A layer name or alias does not exist in the model's layer catalogue."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class PreprocessingError(UserInputError):
    """A preprocessing spec is impossible for the model (wrong channel count, zero std...)."""


class ImageError(UserInputError):
    """An image cannot be read or does not fit the model."""


class GradientUnavailableError(UserInputError):
    """The model could not be converted to torch, so gradient-based methods cannot run."""


class StoreError(PyanalyzerError):
    """The result store is unreadable or an entry is missing."""


class BackendUnavailableError(PyanalyzerError):
    """A compiled backend (``_core`` or ``_core_cuda``) was asked for but is not available."""


class PyanalyzerWarning(UserWarning):
    """Base class of the warnings a user must see (the CLI prints each as one ``warning:``
    line when the command succeeds); other libraries' warnings are only logged."""


class ParityWarning(PyanalyzerWarning):
    """onnxruntime and the torch conversion disagree beyond tolerance on some layer."""
