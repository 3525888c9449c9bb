"""The Segmenter's speed-ups must not change results: the label computation that skips the
full-resolution probability tensors, and the image loading that runs ahead of the compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_cass.core.presence import labels_from_probabilities, merge_synonyms
from fiftyone_cass.errors import ImageLoadError
from fiftyone_cass.models.segmenter import Segmenter


@pytest.fixture(scope="module")
def seg():
    # synonyms (", ") make several queries per class, so the class merge is exercised
    return Segmenter(classes=["dog, puppy", "cat", "car, automobile, truck"], backbone="tiny", method="cass",
                     device="cpu", background="default")


def _plain_labels(seg, logits, thr):
    probs = torch.softmax(seg.options.logit_scale * logits, dim=0)
    class_probs = merge_synonyms(probs, seg.query_to_class, seg.num_labels, dim=0)
    return labels_from_probabilities(class_probs, thr, seg.background_id or 0, dim=0)


@pytest.mark.parametrize("thr", [0.0, 0.05, 0.2, 0.5])
def test_labels_equal_the_probability_path(seg, thr):
    g = torch.Generator().manual_seed(int(thr * 100))
    q = len(seg.queries)
    logits = torch.randn(q, 60, 70, generator=g) * 0.05
    logits[3] = logits[4]  # exact ties between queries of different classes / synonyms
    logits[:, :5, :5] = 0.0  # all queries tied
    fast = seg._labels(logits, thr)
    plain = _plain_labels(seg, logits, thr)
    assert torch.equal(fast, plain)
    if thr >= 0.2:
        assert (plain == 0).any() and (plain != 0).any()  # the threshold did something


def _write(tmp_path, name, seed, size=(150, 110)):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1] // 10, size[0] // 10, 3)) * 255).astype(np.uint8)
    path = tmp_path / name
    Image.fromarray(arr).resize(size, Image.BILINEAR).save(path)
    return str(path)


def test_loading_ahead_keeps_order_and_results(seg, tmp_path):
    paths = [_write(tmp_path, f"im{i}.png", i, (150 + 10 * i, 110)) for i in range(5)]
    seg.batch_size = 2  # 3 chunks: two are loaded in the background
    try:
        ahead = seg(paths)
        one_by_one = [seg([p])[0] for p in paths]
    finally:
        seg.batch_size = 4
    assert [r.name for r in ahead] == paths
    for a, b in zip(ahead, one_by_one):
        assert a.label_map.shape == b.label_map.shape
        np.testing.assert_array_equal(a.label_map, b.label_map)


def test_loading_ahead_reports_the_unreadable_image(seg, tmp_path):
    good = [_write(tmp_path, f"ok{i}.png", i) for i in range(3)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    seg.batch_size = 1
    try:
        with pytest.raises(ImageLoadError, match="broken.jpg"):
            seg(good[:2] + [str(bad)] + good[2:])
    finally:
        seg.batch_size = 4
