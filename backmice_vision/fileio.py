"""Atomic file writing: every output goes to a temporary name in its folder, then ``os.replace``.

A reader therefore sees a file whole or not at all, and a killed writer leaves only a
:func:`temporary_path` file behind (``.<name>.<pid>.tmp``), which :func:`remove_stale_temporaries` deletes.
No dependency beyond the standard library: any module (export, render, batch, node, phantoms, model) may
use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import BackmiceError

_TEMPORARY_RE = re.compile(r"\..+\.[0-9]+\.tmp")


def temporary_path(path: Path) -> Path:
    """The name a file is written under before ``os.replace`` puts it at ``path``: ``.<name>.<pid>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the :func:`temporary_path` files directly in ``folder`` (left by a killed writer; call it
    only where no other process is writing); returns what was deleted."""
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TEMPORARY_RE.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_atomic(path: Path, write: Callable[[Path], object], what: str = "file") -> Path:
    """Call ``write(temporary)`` to write the file, then ``os.replace`` it to ``path``; the temporary is
    removed on any failure. :class:`BackmiceError` ("cannot write <what>") on an OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackmiceError(f"cannot write {what} ({exc.strerror or exc})", path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_atomic(ds: Any, path: Path) -> Path:
    """Write the pydicom Dataset ``ds`` as a DICOM file (``save_as(..., enforce_file_format=True)``)
    atomically (:func:`write_atomic`); :class:`BackmiceError` on failure."""
    try:
        return write_atomic(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True), "DICOM file")
    except BackmiceError:
        raise
    except Exception as exc:  # a value pydicom cannot encode
        raise BackmiceError(f"cannot encode DICOM file ({type(exc).__name__})", path) from exc


def write_text_atomic(text: str | bytes, path: Path) -> Path:
    """Write text (UTF-8) or bytes to ``path`` atomically (:func:`write_atomic`)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))
