"""Confidence outputs of the Segmenter: computed in the same row bands as the labels, labels unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fiftyone_cass.core.presence import merge_synonyms
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.models.segmenter import Segmenter


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (640, 500, 3), dtype=np.uint8)
    small = rng.integers(0, 255, (120, 150, 3), dtype=np.uint8)
    return [big, small]


def _seg(**kw):
    kw = {"prob_thd": 0.2, **kw}
    return Segmenter(classes=["dog, puppy", "cat", "frisbee"], backbone="tiny", device="cpu", method="cass",
                     background="default", **kw)


def test_confidence_keeps_the_labels_and_is_band_independent(images):
    plain = _seg(full_res_budget=2**20)
    banded = _seg(full_res_budget=2**20)
    whole = _seg(full_res_budget=None)
    for s in (banded, whole):
        s.return_confidence = True
        s.uncertainty = "margin"
        s.probability_maps = (1, 3)
    ref = plain.segment_arrays(images)
    got_b = banded.segment_arrays(images)
    got_w = whole.segment_arrays(images)
    for r, b, w, img in zip(ref, got_b, got_w, images):
        assert r.confidence is None and r.uncertainty is None and r.probabilities is None
        assert np.array_equal(r.label_map, b.label_map) and np.array_equal(r.label_map, w.label_map)
        cb, cw = b.confidence, w.confidence
        for v in (cb.mean, cb.margin, cb.removed):
            assert 0.0 <= v <= 1.0
        assert cb.margin <= cb.mean
        assert math.isclose(cb.mean, cw.mean, rel_tol=1e-9) and math.isclose(cb.removed, cw.removed, rel_tol=1e-9)
        assert b.uncertainty.shape == img.shape[:2] and b.uncertainty.dtype == np.float32
        assert np.array_equal(b.uncertainty, w.uncertainty)
        assert b.uncertainty.min() >= 0 and b.uncertainty.max() <= 1
        for c in (1, 3):
            assert b.probabilities[c].shape == img.shape[:2]
            assert np.array_equal(b.probabilities[c], w.probabilities[c])
        # per-class mean top-1 probability: pixels of a label, NaN for labels without pixels
        present = np.bincount(b.label_map.ravel(), minlength=plain.num_labels) > 0
        assert np.array_equal(np.isfinite(cb.per_class), present)
        assert np.all(cb.per_class[present] > 0) and np.all(cb.per_class[present] <= 1)


def test_uncertainty_and_probability_agree_with_materialised_probabilities():
    # small image: the whole image at once; recompute class probabilities from the logits' path
    seg = _seg(full_res_budget=None, prob_thd=0.0)
    seg.return_confidence = True
    seg.uncertainty = "entropy"
    seg.probability_maps = tuple(range(seg.num_labels))
    img = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    r = seg.segment_arrays([img])[0]
    probs = np.stack([r.probabilities[c] for c in range(seg.num_labels)])
    # the label is the argmax of the class probabilities, its top-1 probability their max
    top = probs.max(0)
    assert np.array_equal(probs.argmax(0), r.label_map)
    assert math.isclose(float(top.mean()), r.confidence.mean, rel_tol=1e-5)
    srt = np.sort(probs, 0)
    assert math.isclose(float((srt[-1] - srt[-2]).mean()), r.confidence.margin, rel_tol=1e-4, abs_tol=1e-6)
    assert r.confidence.removed == 0.0  # no threshold
    assert 0 <= r.uncertainty.min() and r.uncertainty.max() <= 1


def test_bad_confidence_requests_are_refused():
    seg = _seg()
    img = np.zeros((40, 40, 3), np.uint8)
    seg.uncertainty = "variance"
    with pytest.raises(InvalidInputError, match="uncertainty"):
        seg.segment_arrays([img])
    seg.uncertainty = None
    seg.probability_maps = (seg.num_labels,)
    with pytest.raises(InvalidInputError, match="probability_maps"):
        seg.segment_arrays([img])
