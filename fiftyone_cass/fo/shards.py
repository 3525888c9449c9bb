"""One shard key for every entry point: a sample belongs to shard ``shard_index(filepath, N)``.

The CLI's ``--shard i/N`` (directory import and labelling), :func:`fiftyone_cass.apply`'s
``shard=(i, N)`` and the delegated ``auto_label`` operations all split by the image's file path:
a stable hash, the same in every process and on every machine that sees the file at the same
path, and known before a sample exists (so a worker can import its share of a folder)."""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Tuple

from fiftyone_cass.errors import InvalidInputError


def shard_index(filepath: str, num_shards: int) -> int:
    """The shard (``0..num_shards-1``) of a file path."""
    return int(hashlib.md5(os.fsencode(filepath)).hexdigest()[:12], 16) % int(num_shards)


def validate_shard(shard) -> Optional[Tuple[int, int]]:
    """``(index, count)`` from a pair, or None; a clear error for anything else."""
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise InvalidInputError(f"shard must be a pair (index, count), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InvalidInputError(f"shard {shard!r}: need count >= 1 and 0 <= index < count")
    return i, n
