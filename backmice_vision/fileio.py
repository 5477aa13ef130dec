"""Atomic file writing: every output goes to a temporary name in its folder, then ``os.replace``.

A reader therefore sees a file whole or not at all, and a killed writer leaves only a
:func:`temporary_path` file behind (``.<name>.<pid>.tmp``), which :func:`remove_stale_temporaries` deletes.
No dependency beyond the standard library: any module (export, render, batch, node, phantoms, model) may
use it.
"""

from __future__ import annotations

import os
import re
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


def save_atomic(ds: Any, path: Path) -> Path:
    """Write the pydicom Dataset ``ds`` as a DICOM file (``save_as(..., enforce_file_format=True)``)
    through a temporary file in the same folder and ``os.replace``; :class:`BackmiceError` on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackmiceError(f"cannot write DICOM file ({exc.strerror or exc})", path) from exc
    except Exception as exc:  # a value pydicom cannot encode
        tmp.unlink(missing_ok=True)
        raise BackmiceError(f"cannot encode DICOM file ({type(exc).__name__})", path) from exc
    return path


def write_text_atomic(text: str | bytes, path: Path) -> Path:
    """Write text (UTF-8) or bytes to ``path`` through a temporary file in the same folder and
    ``os.replace``; :class:`BackmiceError` on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackmiceError(f"cannot write file ({exc.strerror or exc})", path) from exc
    return path
