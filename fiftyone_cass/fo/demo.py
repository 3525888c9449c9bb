"""The README demo (``fiftyone-cass demo``): sample images that ship inside scikit-image's wheel
(no download), the classes to label them with, and what is printed about the result."""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Dict, List, Optional

from fiftyone_cass.errors import InvalidInputError, kw
from fiftyone_cass.config.settings import format_field

DEMO_DATASET = "fiftyone-cass-demo"
#: (file in ``skimage.data.data_dir``, sample name) -- images that ship inside scikit-image's wheel
DEMO_IMAGES = (
    ("astronaut.png", "astronaut.png"),
    ("chelsea.png", "chelsea.png"),
    ("coffee.png", "coffee.png"),
    ("rocket.jpg", "rocket.jpg"),
    ("motorcycle_left.png", "motorcycle.png"),
    ("hubble_deep_field.jpg", "hubble_deep_field.jpg"),
)
DEMO_CLASSES = ("person", "cat", "cup", "rocket", "motorcycle", "sky")


def demo_images(dest: str) -> List[str]:
    """Copies the demo images out of scikit-image's package data (no download) into ``dest``
    (atomically; files already there with the right size are kept). Returns their paths."""
    try:
        import skimage.data
    except ImportError:
        raise InvalidInputError("the demo's images come with scikit-image: pip install 'fiftyone_cass[demo]' "
                                "(or pip install scikit-image)") from None

    if os.path.exists(dest) and not os.path.isdir(dest):
        raise InvalidInputError(f"{kw('images_dir')} {dest} is a file, not a directory: choose another {kw('images_dir')} "
                                "(a directory, or a path that does not exist yet)")
    out = []
    try:
        os.makedirs(dest, exist_ok=True)
        for src_name, name in DEMO_IMAGES:
            src = os.path.join(skimage.data.data_dir, src_name)
            dst = os.path.join(dest, name)
            if not os.path.isfile(src):
                raise InvalidInputError(f"scikit-image's sample image {src} is missing (reinstall scikit-image)")
            if not (os.path.isfile(dst) and os.path.getsize(dst) == os.path.getsize(src)):
                tmp = f"{dst}.{uuid.uuid4().hex[:8]}.tmp"
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            out.append(dst)
    except OSError as exc:  # e.g. a file on the way, no permission, a full disk
        where = exc.filename or dest
        raise InvalidInputError(f"cannot copy the demo images into {kw('images_dir')} {dest} ({where}: "
                                f"{exc.strerror or exc}): choose another {kw('images_dir')}") from None
    return out


def pixel_shares(view, label_field: str) -> Dict[str, float]:
    """Share of all labelled pixels per class name (reads every mask: for small collections)."""
    import numpy as np

    ds = view._root_dataset
    targets = {int(k): v for k, v in (ds.mask_targets.get(label_field) or {}).items()}
    counts: Dict[int, int] = {}
    for label in view.exists(label_field).values(label_field):
        mask = label.get_mask()
        ids, n = np.unique(np.asarray(mask), return_counts=True)
        for i, c in zip(ids.tolist(), n.tolist()):
            counts[i] = counts.get(i, 0) + c
    total = sum(counts.values()) or 1
    return {targets.get(i, str(i)): c / total for i, c in sorted(counts.items(), key=lambda x: -x[1])}


def describe(view, label_field: str, presence_field: Optional[str], tag_prefix: Optional[str],
             threshold: float, shares: Dict[str, float]) -> str:
    """The demo's printout: classes by share of pixels, then per image its presence tags and the
    class scoring highest (``presence_field``/``tag_prefix`` may hold ``{label_field}``)."""
    lines = [f"\nclasses by share of pixels ({label_field}): "
             + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items())]
    if presence_field:
        pf = format_field(presence_field, label_field)
        prefix = format_field(tag_prefix or "", label_field)
        lines.append(f"per image (tags = classes with presence >= {threshold}):")
        for s in view.select_fields([pf]).sort_by("filepath"):
            tags = [t for t in s.tags if prefix and t.startswith(prefix + ":")]
            top = ""
            if s[pf] is not None and s[pf].classifications:
                best = max(s[pf].classifications, key=lambda c: c.confidence)
                top = f"  (top: {best.label} {best.confidence:.2f})"
            lines.append(f"  {os.path.basename(s.filepath):24s} {' '.join(tags) or '-'}{top}")
    return "\n".join(lines)


def prepare_demo(dataset: str = DEMO_DATASET, images_dir: Optional[str] = None):
    """Copies the demo images into ``images_dir`` (default ``<FiftyOne's default_dataset_dir>/
    <dataset>/images``) and imports them into the persistent dataset ``dataset``. Returns the
    :class:`~fiftyone_cass.fo.folders.ImportReport` and the view of the demo images."""
    import fiftyone as fo

    from fiftyone_cass.fo.folders import directory_view, import_directory

    images_dir = images_dir or os.path.join(fo.config.default_dataset_dir, dataset, "images")
    demo_images(images_dir)
    imported = import_directory(images_dir, dataset)
    return imported, directory_view(imported.dataset, images_dir)
