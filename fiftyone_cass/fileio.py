"""Atomic file writes: a whole file or none, whatever interrupts the writer."""

from __future__ import annotations

import os
import uuid
from typing import IO, Callable


def atomic_write(path: str, write: Callable[[IO], None], mode: str = "wb", **open_kwargs) -> None:
    """Writes ``path`` through ``write(file)`` into a hidden temp file in the same directory
    (created if missing), flushed and fsynced, then ``os.replace``-d over ``path``. Readers see
    the old file or the new one, never a partial one; on failure the temp file is removed and
    the error re-raised."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
