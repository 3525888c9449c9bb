"""Atomic file writes: a whole file or none, whatever interrupts the writer; strict JSON files."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import uuid
from typing import IO, Callable, List, Optional

_HOST = re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname()) or "host"
#: ``.<file name>.<host>.<pid>.<8 hex>.tmp``: the temp files of :func:`atomic_write`
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def atomic_write(path: str, write: Callable[[IO], None], mode: str = "wb", **open_kwargs) -> None:
    """Writes ``path`` through ``write(file)`` into a hidden temp file in the same directory
    (created if missing), flushed and fsynced, then ``os.replace``-d over ``path``. Readers see
    the old file or the new one, never a partial one; on failure the temp file is removed and
    the error re-raised."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_orphaned_temp_files(folder: str) -> List[str]:
    """Removes the temp files that :func:`atomic_write` left in ``folder`` when its process was
    killed between writing and renaming: those written on this host by a process that is gone
    (a live writer's temp files, and other hosts', are left alone). Returns the removed paths."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if not m or m.group("host") != _HOST or _pid_alive(int(m.group("pid"))):
            continue
        path = os.path.join(folder, name)
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def json_safe(value):
    """``value`` with NaN/infinite numbers as None (JSON has no NaN) and numpy scalars as Python's."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, data) -> None:
    """Writes ``data`` as strict JSON (undefined figures are null) to ``path``, atomically.
    Raises ``OSError`` when the file cannot be written."""
    text = json.dumps(json_safe(data), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write(os.path.abspath(path), lambda f: f.write(text), "w", encoding="utf-8")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def is_valid_png(path: Optional[str]) -> bool:
    """Cheap check that a mask file is present and complete: PNG signature and IEND trailer."""
    if not path:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head != _PNG_SIGNATURE:
                return False
            f.seek(0, os.SEEK_END)
            if f.tell() < 8 + 25 + 12:
                return False
            f.seek(-12, os.SEEK_END)
            return f.read(12) == _PNG_END
    except OSError:
        return False


def write_mask_png(path: str, label_map) -> None:
    """Writes ``label_map`` (uint8, or uint16 for > 256 labels) to ``path`` atomically
    (:func:`atomic_write`: hidden temp file, fsync, ``os.replace``)."""
    import numpy as np
    from PIL import Image

    arr = np.ascontiguousarray(label_map)
    if arr.dtype not in (np.uint8, np.uint16):
        arr = arr.astype(np.uint16 if int(arr.max(initial=0)) > 255 else np.uint8)
    atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"))
