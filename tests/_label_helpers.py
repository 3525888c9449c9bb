"""Shared data for tests/test_apply.py and tests/test_plugin.py: small images, bad image files and
the reference (library) output of the Segmenter for them."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

# tiny random-weight backbone, small "whole" inference, no background threshold (a random model's
# entropy threshold would make every pixel background): fast and non-trivial label maps
OPTS = dict(backbone="tiny", device="cpu", mode="whole", short_side=64, long_side=128, bg_rule="none")
CLASSES = ["dog", "frisbee", "cat"]
BATCH = 3


def make_images(root: Path, n: int = 6) -> List[str]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        h, w = (40 + 4 * i, 56 + 3 * i)
        a = np.zeros((h, w, 3), np.uint8)
        a[:, : w // 2] = rng.integers(0, 255, 3)
        a[:, w // 2 :] = rng.integers(0, 255, 3)
        a[:: 5 + i] = rng.integers(0, 255, 3)
        p = root / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(a).save(p)
        paths.append(str(p))
    return paths


def make_bad_files(root: Path) -> Dict[str, str]:
    """Three unreadable images: garbage bytes, an empty file, a missing file."""
    root.mkdir(parents=True, exist_ok=True)
    garbage = root / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    empty = root / "empty.png"
    empty.write_bytes(b"")
    return {"garbage": str(garbage), "empty": str(empty), "missing": str(root / "missing.png")}


class Reference:
    """Library output (Segmenter called directly) per (vocabulary, options, path), memoised."""

    def __init__(self):
        self._cache: Dict[Tuple, object] = {}

    def __call__(self, paths, classes=CLASSES, **extra):
        from fiftyone_cass import Segmenter

        opts = {**OPTS, **extra}
        key = (tuple(classes), tuple(sorted((k, repr(v)) for k, v in opts.items())))
        missing = [p for p in paths if (key, p) not in self._cache]
        if missing:
            seg = Segmenter(classes=list(classes), batch_size=BATCH, **opts)
            for p, r in zip(missing, seg(missing)):
                self._cache[(key, p)] = r
        return [self._cache[(key, p)] for p in paths]


def add_samples(ds, paths, **fields):
    import fiftyone as fo

    ds.add_samples([fo.Sample(filepath=p, **fields) for p in paths])
    return ds


def read_mask(label):
    """The mask of a Segmentation, from the database or its PNG file (as written, no conversion)."""
    if label.mask is not None:
        return np.asarray(label.mask)
    with Image.open(label.mask_path) as im:
        return np.asarray(im)


def all_scores(presence) -> Dict[str, float]:
    """Every class's stored presence score (``all_labels``/``all_scores`` of a presence label);
    classes without a score (an empty background line) are left out."""
    return {n: s for n, s in zip(presence.all_labels, presence.all_scores) if s is not None}


def strict_json(path: Path):
    """The JSON file ``path``, refusing NaN and infinities (which are not JSON)."""
    import json

    def no_constant(c):
        raise AssertionError(f"{path} holds {c}, which is not JSON")

    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=no_constant)
