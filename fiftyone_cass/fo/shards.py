"""One shard key for every entry point: a sample belongs to shard ``shard_index(filepath, N)``.

The CLI's ``--shard i/N`` (directory import and labelling), :func:`fiftyone_cass.apply`'s
``shard=(i, N)`` and the delegated ``auto_label`` operations all split by the image's file path:
a stable hash, the same in every process and on every machine that sees the file at the same
path, and known before a sample exists (so a worker can import its share of a folder)."""

from __future__ import annotations

import hashlib
import os

from fiftyone_cass.config.settings import validate_shard  # noqa: F401 - the shard setting's check, re-exported


def shard_index(filepath: str, num_shards: int) -> int:
    """The shard (``0..num_shards-1``) of a file path."""
    return int(hashlib.md5(os.fsencode(filepath)).hexdigest()[:12], 16) % int(num_shards)
