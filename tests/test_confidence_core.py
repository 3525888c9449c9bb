"""core.confidence against the class probabilities materialised the reference's way (SPEC E.5)."""

import math

import pytest
import torch

from fiftyone_cass.core.confidence import ConfidenceSums, band_sums, pixel_confidence
from fiftyone_cass.core.presence import merge_synonyms


def _brute(scaled, q2c, num_classes):
    probs = torch.softmax(scaled.double(), 0)
    cls = merge_synonyms(probs, q2c, num_classes, dim=0)  # (C, h, w)
    top2 = cls.topk(2, dim=0).values if num_classes > 1 else torch.cat([cls, torch.zeros_like(cls)])
    ent = -(probs * probs.clamp_min(1e-300).log()).sum(0)
    return cls.argmax(0), top2[0], top2[1].clamp_min(0), ent


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("q2c", [[0, 0, 1, 2, 2, 2, 3],  # synonyms: class 0 has 2 queries, class 2 has 3
                                 [0, 1, 2, 3, 4, 5, 6],  # one query per class (the path without a mask)
                                 [2, 0, 3, 2, 0, 1, 2]],  # synonyms in any order (the masked path)
                         ids=["synonyms", "one-query-per-class", "unordered-synonyms"])
def test_pixel_confidence_matches_materialised_class_probabilities(inplace, q2c):
    g = torch.Generator().manual_seed(0)
    q2c = torch.tensor(q2c)
    scaled = 40 * torch.rand(7, 9, 11, generator=g, dtype=torch.float64) - 20
    label, p1, p2, ent = _brute(scaled, q2c, int(q2c.max()) + 1)
    lean = pixel_confidence(scaled.clone(), q2c, inplace=inplace, entropy=False)
    assert lean.entropy is None and torch.equal(lean.p1, pixel_confidence(scaled.clone(), q2c).p1)
    assert torch.allclose(lean.p2, p2, atol=1e-12)
    with pytest.raises(ValueError, match="entropy"):
        lean.normalized_entropy(7)
    conf = pixel_confidence(scaled.clone(), q2c, inplace=inplace)
    assert torch.equal(q2c[conf.query], label)
    assert torch.allclose(conf.p1, p1, atol=1e-12)
    assert torch.allclose(conf.p2, p2, atol=1e-12)
    assert torch.allclose(conf.entropy, ent, atol=1e-10)
    assert (conf.margin >= 0).all() and (conf.margin <= 1).all()
    assert ((conf.normalized_entropy(7) >= 0) & (conf.normalized_entropy(7) <= 1)).all()


def test_single_class_has_zero_second_probability_and_full_margin_in_fp32():
    q2c = torch.tensor([0, 0, 0])
    scaled = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    conf = pixel_confidence(scaled, q2c)
    assert torch.equal(conf.p2, torch.zeros(4, 5))
    assert torch.equal(conf.margin, conf.p1)
    assert float(conf.normalized_entropy(1).abs().max()) == 0.0


def test_band_sums_add_up_to_the_whole_image_and_summarise_in_range():
    g = torch.Generator().manual_seed(2)
    q2c = torch.tensor([0, 1, 1, 2])
    scaled = 10 * torch.randn(4, 12, 6, generator=g, dtype=torch.float64)
    conf = pixel_confidence(scaled.clone(), q2c)
    labels = q2c[conf.query]
    removed = conf.p1 < 0.6
    labels = torch.where(removed, torch.zeros_like(labels), labels)
    whole = band_sums(conf, labels, removed, 3)
    parts = ConfidenceSums.empty(3)
    for a, b in [(0, 5), (5, 6), (6, 12)]:
        c = pixel_confidence(scaled[:, a:b].clone(), q2c)
        parts = parts + band_sums(c, labels[a:b], removed[a:b], 3)
    assert parts.pixels == whole.pixels == 72
    assert parts.removed == whole.removed == int(removed.sum())
    assert math.isclose(parts.top1, whole.top1, rel_tol=1e-12)
    assert torch.equal(parts.class_pixels, whole.class_pixels)
    mean, margin, removed_share, per_class = whole.summary()
    assert 0 <= margin <= mean <= 1 and 0 <= removed_share <= 1
    assert math.isclose(mean, float(conf.p1.mean()), rel_tol=1e-12)
    for c in range(3):
        sel = labels == c
        if sel.any():
            assert math.isclose(float(per_class[c]), float(conf.p1[sel].mean()), rel_tol=1e-12)
        else:
            assert math.isnan(float(per_class[c]))


def test_confidence_is_lower_where_logits_disagree():
    # a confident region (one query far ahead) and an ambiguous one (two classes tied)
    q2c = torch.tensor([0, 1, 2])
    scaled = torch.zeros(3, 2, 4)
    scaled[0, :, :2] = 20.0
    scaled[0, :, 2:] = 5.0
    scaled[1, :, 2:] = 5.0
    conf = pixel_confidence(scaled, q2c)
    assert float(conf.margin[:, :2].min()) > 0.99
    assert float(conf.margin[:, 2:].max()) < 1e-6
    assert float(conf.entropy[:, 2:].min()) > float(conf.entropy[:, :2].max())


def test_class_maps_are_the_reference_class_probabilities():
    g = torch.Generator().manual_seed(3)
    q2c = torch.tensor([0, 1, 1, 2, 2])
    scaled = 8 * torch.randn(5, 6, 7, generator=g, dtype=torch.float64)
    cls = merge_synonyms(torch.softmax(scaled, 0), q2c, 4, dim=0)  # label 3 has no query
    conf = pixel_confidence(scaled.clone(), q2c, inplace=True, classes=(1, 2, 3))
    assert torch.allclose(conf.class_maps[1], cls[1], atol=1e-12)
    assert torch.allclose(conf.class_maps[2], cls[2], atol=1e-12)
    assert torch.equal(conf.class_maps[3], torch.zeros(6, 7, dtype=torch.float64))



@pytest.mark.parametrize("q2c", [[0, 1, 1, 1, 1, 2, 3, 3, 4],  # runs of 1 to 4 queries, singletons between
                                 [0, 0, 0, 1, 2, 3, 4, 4],  # a synonym run first and last
                                 [0, 0, 1, 1, 1, 2, 2]],  # no one-query class
                         ids=["mixed", "runs-at-the-ends", "all-synonyms"])
def test_class_runs_leave_out_the_top_class_exactly_as_the_mask(q2c):
    """With each class's queries one run (the engine's order), the second class probability comes
    from run maxima without a Q x h x w mask: the mask's values bit for bit."""
    g = torch.Generator().manual_seed(3)
    q2c = torch.tensor(q2c)
    scaled = 30 * torch.rand(len(q2c), 13, 17, generator=g) - 15
    conf = pixel_confidence(scaled.clone(), q2c, entropy=False)
    ex = torch.exp(scaled - scaled.max(0).values)
    top_class = q2c[scaled.argmax(0)]
    same = q2c.view(-1, 1, 1) == top_class.unsqueeze(0)
    assert len(torch.unique(top_class)) == int(q2c.max()) + 1  # every class is the top one somewhere
    assert torch.equal(conf.p2, ex.masked_fill(same, 0.0).amax(0) / ex.sum(0))
