"""Atomic file writes: a reader never sees a half-written file.

Each write goes to a temporary file in the target's folder, is flushed to disk, and
is renamed over the target: a process killed at any point leaves the old file or
the new one. (File locks and cache checksums live in :mod:`lavise._cache`.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import numpy as np


def _atomic(path: Path, mode: str, write: Callable[[IO], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name does
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file and an atomic rename."""
    return _atomic(Path(path), "w", lambda f: f.write(text))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Writes ``obj`` as JSON to ``path`` atomically."""
    return _atomic(Path(path), "w", lambda f: json.dump(obj, f, indent=1))


def save_npy_atomic(path: str | Path, arr: np.ndarray) -> Path:
    """Saves ``arr`` as ``.npy`` to ``path`` atomically."""
    return _atomic(Path(path), "wb", lambda f: np.save(f, arr, allow_pickle=False))
