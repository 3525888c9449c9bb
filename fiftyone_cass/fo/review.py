"""Which labels to look at first: views of the least confident samples (the review queue) and
per-class confidence figures, from the confidence fields a labelling run writes
(``<field>_confidence`` and ``<field>_confidence_per_class``, :mod:`fiftyone_cass.fo.outputs`).

* :func:`review_queue` -- the ``n`` least confident samples, overall or among those containing a
  class (by that class's confidence), least confident first; optionally tagged (``needs_review``)
  and saved as a saved view;
* :func:`class_confidence` -- per class, the mean over samples of its per-sample confidence and the
  number of samples containing it (what the IoU panel shows beside each class's IoU).
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from fiftyone import ViewField as F

from fiftyone_cass.errors import InvalidInputError, SettingError

REVIEW_TAG = "needs_review"


def per_class_field(confidence_field: str) -> str:
    return f"{confidence_field}_per_class"


def _check(collection, confidence_field: str, class_name: Optional[str]) -> None:
    ds = collection._root_dataset
    need = per_class_field(confidence_field) if class_name else confidence_field
    if not ds.has_sample_field(need):
        raise InvalidInputError(
            f"dataset {ds.name!r} has no field {need!r}: label it first (auto_label / fiftyone_cass.apply write "
            f"{confidence_field!r} and {per_class_field(confidence_field)!r} by default)")


def class_view(collection, class_name: str, confidence_field: str = "cass_confidence"):
    """The samples containing ``class_name`` (it got pixels), least confident in it first."""
    pc = per_class_field(confidence_field)
    own = F(f"{pc}.classifications").filter(F("label") == class_name)
    return collection.match(own.length() > 0).sort_by(own.map(F("confidence")).min())


def review_queue(collection, n: int = 50, confidence_field: str = "cass_confidence",
                 class_name: Optional[str] = None, tag: Optional[str] = None,
                 saved_view: Optional[str] = None):
    """A view of the ``n`` least confident samples of ``collection``, least confident first:
    overall (by ``confidence_field``) or, with ``class_name``, among the samples containing that
    class (by the class's own confidence in ``<confidence_field>_per_class``). ``tag`` (e.g.
    ``"needs_review"``): tags those samples. ``saved_view``: saves the view on the dataset under
    that name (replacing one of the same name). Samples without confidence are left out."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SettingError("n", n, "a whole number of samples, at least 1")
    _check(collection, confidence_field, class_name)
    if class_name:
        view = class_view(collection, class_name, confidence_field).limit(int(n))
    else:
        view = collection.exists(confidence_field).sort_by(confidence_field).limit(int(n))
    if tag:
        view.tag_samples(tag)
    if saved_view:
        collection._root_dataset.save_view(saved_view, view, overwrite=True)
    return view


def confidence_field_of(label_field: str) -> str:
    """The confidence field a labelling run with the default settings writes for ``label_field``."""
    from fiftyone_cass.config.settings import LabelSettings, format_field

    return format_field(LabelSettings.confidence_field, label_field)


def class_confidence(collection, confidence_field: Optional[str] = "cass_confidence",
                     label_field: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """``{class: {"confidence": mean over samples of the class's confidence, "samples": n}}``
    over the samples of ``collection`` that contain each class (an empty dict without the
    per-class field). ``label_field``: take the default confidence field of that label field
    (what the IoU panel has: ``class_confidence(view, label_field=pred_field)``)."""
    if label_field:
        confidence_field = confidence_field_of(label_field)
    pc = per_class_field(confidence_field)
    if not collection._root_dataset.has_sample_field(pc):
        return {}
    labels, confs = collection.values([f"{pc}.classifications.label", f"{pc}.classifications.confidence"])
    sums: Dict[str, list] = {}
    for ls, cs in zip(labels, confs):
        for label, c in zip(ls or [], cs or []):
            if c is not None:
                acc = sums.setdefault(label, [0.0, 0])
                acc[0] += float(c)
                acc[1] += 1
    return {k: {"confidence": s / m, "samples": m} for k, (s, m) in sorted(sums.items())}


__all__ = ["REVIEW_TAG", "class_confidence", "confidence_field_of", "class_view", "per_class_field", "review_queue"]
