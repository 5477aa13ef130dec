"""Exceptions raised by backmice_vision.

Every error a user can trigger with bad input is a :class:`BackmiceError`. Its
message is one line that names the file (never a patient identifier) and what is
wrong, so the CLI can print ``str(exc)`` instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class BackmiceError(Exception):
    """Base class of all errors raised on bad input, models or configuration."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        text = message if path is None else f"{path}: {message}"
        super().__init__(" ".join(text.split()))


class InvalidDicom(BackmiceError):
    """A file is not readable DICOM, or its pixel data cannot be decoded."""


class UnsupportedSeries(BackmiceError):
    """A readable series that this library does not analyse (modality, layout, ...)."""


class InconsistentSeries(BackmiceError):
    """A series whose instances do not form one consistent image stack."""


class ModelError(BackmiceError):
    """A model bundle is missing, corrupt or does not fit the series."""


class ConfigError(BackmiceError):
    """A configuration file or option is invalid."""
