"""Region voting (SPEC K.5): majority and mean votes, minimum area, smaller regions win overlaps,
pixels outside every region keep their label, the result independent of region order."""

import itertools

import numpy as np
import pytest
import torch

from fiftyone_cass.core.regions import (Region, RegionSums, paint_order, region, regions_from_id_map, vote)


def _full(mask):
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return Region(int(y0), int(x0), mask[y0:y1, x0:x1].copy())


def test_majority_vote_paints_each_region_with_its_most_frequent_label():
    lm = np.zeros((10, 10), np.uint8)
    lm[:, 5:] = 2
    lm[0:4, 0:3] = 1  # 12 pixels of 1 inside the left region of 50
    m = np.zeros((10, 10), bool)
    m[:, :6] = True  # 60 pixels: 10 of label 2, 12 of 1, 38 of 0
    out, n = vote(lm, [_full(m)])
    assert n == 1
    assert (out[:, :6] == 0).all()
    assert (out[:, 6:] == 2).all()  # outside every region: kept


def test_majority_ties_go_to_the_smallest_id():
    lm = np.array([[3, 3, 1, 1]], np.uint8)
    out, _ = vote(lm, [Region(0, 0, np.ones((1, 4), bool))])
    assert (out == 1).all()


def test_background_votes_like_any_other_label():
    lm = np.array([[0, 0, 0, 4]], np.uint8)
    out, _ = vote(lm, [Region(0, 0, np.ones((1, 4), bool))])
    assert (out == 0).all()


def test_smaller_regions_win_overlaps_and_votes_use_the_map_before_painting():
    lm = np.zeros((8, 8), np.uint8)
    lm[2:6, 2:6] = 5  # 16 pixels of 5 in the big region of 64
    big = Region(0, 0, np.ones((8, 8), bool))
    small = Region(2, 2, np.ones((4, 4), bool))
    for regs in ([big, small], [small, big]):
        out, n = vote(lm, regs)
        assert n == 2
        assert (out[2:6, 2:6] == 5).all() and out.sum() == 5 * 16


def test_min_area_ignores_small_regions_and_empty_ones():
    lm = np.zeros((6, 6), np.uint8)
    lm[0, 0] = 7
    tiny = Region(0, 0, np.array([[True, True]]))  # area 2: 7 and 0 tie -> 0
    empty = Region(3, 3, np.zeros((2, 2), bool))
    out, n = vote(lm, [tiny, empty], min_area=3)
    assert n == 0 and (out == lm).all()
    out, n = vote(lm, [tiny, empty], min_area=2)
    assert n == 1 and out[0, 0] == 0


def test_result_independent_of_region_order_with_equal_areas():
    rng = np.random.default_rng(0)
    lm = rng.integers(0, 4, (12, 12)).astype(np.uint8)
    regs = []
    for y, x in ((0, 0), (2, 3), (4, 1), (3, 3)):  # equal-area overlapping squares
        regs.append(Region(y, x, np.ones((5, 5), bool)))
    regs.append(Region(1, 1, rng.random((6, 6)) > 0.4))
    ref, _ = vote(lm, regs)
    for perm in itertools.permutations(range(len(regs))):
        out, _ = vote(lm, [regs[i] for i in perm])
        assert (out == ref).all(), perm
    # and painting order is larger first
    order = paint_order(regs)
    areas = [regs[i].area for i in order]
    assert areas == sorted(areas, reverse=True)


def test_mean_vote_is_the_argmax_of_mean_probabilities():
    # 3 pixels: majority says 1 (two pixels barely), mean says 2 (one very sure pixel)
    lm = np.array([[1, 1, 2]], np.uint8)
    probs = np.array([  # (L=3, 1, 3)
        [[0.0, 0.0, 0.0]],
        [[0.5, 0.5, 0.0]],
        [[0.45, 0.45, 1.0]],
    ])
    r = Region(0, 0, np.ones((1, 3), bool))
    sums = RegionSums([r], 3)
    sums.add(probs, (0, 1))
    assert vote(lm, [r], "majority")[0].tolist() == [[1, 1, 1]]
    assert vote(lm, [r], "mean", class_sums=sums.sums)[0].tolist() == [[2, 2, 2]]
    # with a background threshold above the region's mean top probability: background
    assert vote(lm, [r], "mean", class_sums=sums.sums, threshold=0.7, background=0)[0].tolist() == [[0, 0, 0]]


def test_region_sums_are_the_same_over_any_bands_and_for_torch():
    rng = np.random.default_rng(1)
    probs = rng.random((4, 20, 9))
    regs = [Region(2, 1, rng.random((15, 7)) > 0.3), Region(0, 0, np.ones((20, 9), bool))]
    whole = RegionSums(regs, 4)
    whole.add(probs, (0, 20))
    for cuts in ([0, 3, 11, 20], [0, 1, 2, 19, 20]):
        banded = RegionSums(regs, 4)
        for a, b in zip(cuts[:-1], cuts[1:]):
            banded.add(torch.from_numpy(probs[:, a:b]), (a, b))
        np.testing.assert_allclose(banded.sums, whole.sums, rtol=1e-5)
    np.testing.assert_allclose(whole.sums[1], probs.sum((1, 2)))


def test_mean_vote_needs_sums_and_unknown_vote_is_refused():
    r = Region(0, 0, np.ones((1, 1), bool))
    with pytest.raises(ValueError, match="mean vote needs"):
        vote(np.zeros((1, 1), np.uint8), [r], "mean")
    with pytest.raises(ValueError, match="'median' is not allowed"):
        vote(np.zeros((1, 1), np.uint8), [r], "median")


def test_regions_from_id_map_and_checked_regions():
    ids = np.array([[0, 1, 1], [2, 2, 0]])
    regs = regions_from_id_map(ids)
    assert [(r.y0, r.x0, r.mask.tolist()) for r in regs] == [(0, 1, [[True, True]]), (1, 0, [[True, True]])]
    with pytest.raises(ValueError, match="outside the 3x2 image"):
        region(1, 2, np.ones((1, 2)), (2, 3), "detection 4")
    with pytest.raises(ValueError, match="detection 0: its mask has 3 dimensions"):
        region(0, 0, np.ones((1, 1, 1)), (2, 3), "detection 0")


def test_input_label_map_is_not_modified():
    lm = np.array([[1, 2, 2]], np.uint8)
    vote(lm, [Region(0, 0, np.ones((1, 3), bool))])
    assert lm.tolist() == [[1, 2, 2]]


def test_regions_of_fiftyone_labels_and_their_per_sample_reasons():
    import fiftyone as fo

    from fiftyone_cass.fo.regions import RegionsError, regions_of_label

    ids = np.zeros((4, 6), np.uint8)
    ids[:, :3] = 5
    ids[1:3, 4:] = 9
    regs = regions_of_label(fo.Segmentation(mask=ids), (4, 6), "sam")
    assert [(r.y0, r.x0, r.area) for r in regs] == [(0, 0, 12), (1, 4, 4)]
    assert regions_of_label(None, (4, 6), "sam") is None
    assert regions_of_label(fo.Detections(detections=[]), (4, 6), "sam") is None  # no regions: not voted
    det = fo.Detection(label="a", bounding_box=[0.5, 0.25, 0.5, 0.5], mask=np.ones((2, 3), bool))
    (r,) = regions_of_label(fo.Detections(detections=[det]), (4, 6), "sam")
    assert (r.y0, r.x0, r.mask.shape) == (1, 3, (2, 3))
    bad = {
        "is empty": fo.Detection(bounding_box=[0, 0, 0.5, 0.5], mask=np.zeros((2, 3), bool)),
        "does not fit its 3x2-pixel box": fo.Detection(bounding_box=[0, 0, 0.5, 0.5], mask=np.ones((4, 6), bool)),
        "outside the 6x4 image": fo.Detection(bounding_box=[0.7, 0, 0.5, 0.5], mask=np.ones((2, 3), bool)),
        "has no instance mask": fo.Detection(bounding_box=[0, 0, 0.5, 0.5]),
    }
    for reason, d in bad.items():
        with pytest.raises(RegionsError, match=f"regions field 'sam', detection 1.*{reason}"):
            regions_of_label(fo.Detections(detections=[det, d]), (4, 6), "sam")
    with pytest.raises(RegionsError, match="its mask is 6x4, the image 5x4"):
        regions_of_label(fo.Segmentation(mask=ids), (4, 5), "sam")
    with pytest.raises(RegionsError, match="holds Classification"):
        regions_of_label(fo.Classification(label="x"), (4, 6), "sam")


def _slow_region_sums(probs: np.ndarray, regions) -> np.ndarray:
    """The definition: each region's masked sum of every label's probabilities, region by region."""
    out = np.zeros((len(regions), probs.shape[0]), np.float64)
    for i, r in enumerate(regions):
        y0, y1, x0, x1 = r.box
        out[i] = probs[:, y0:y1, x0:x1][:, r.mask].astype(np.float64).sum(1)
    return out


def test_region_sums_equal_the_definition_over_any_bands_with_overlaps():
    rng = np.random.default_rng(5)
    H, W, L = 57, 83, 7
    probs = rng.random((L, H, W)).astype(np.float32)
    regs = []
    for _ in range(40):  # overlapping, nested, identical and empty regions
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 40))
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        regs.append(Region(y0, x0, rng.random((h, w)) > 0.4))
    regs += [regs[3], Region(0, 0, np.zeros((4, 4), bool)), Region(0, 0, np.ones((H, W), bool))]
    ref = _slow_region_sums(probs, regs)
    for cuts, as_torch in (([0, H], False), ([0, 5, 6, 31, 50, H], True), (list(range(0, H, 4)) + [H], False)):
        got = RegionSums(regs, L)
        for a, b in zip(cuts[:-1], cuts[1:]):
            got.add(torch.from_numpy(probs[:, a:b]) if as_torch else probs[:, a:b], (a, b))
        np.testing.assert_allclose(got.sums, ref, rtol=1e-5, atol=1e-9)  # float32 products, float64 sums
        lm = rng.integers(0, L, (H, W)).astype(np.uint8)
        for thr in (0.0, 0.6):
            fast = vote(lm, regs, "mean", class_sums=got.sums, threshold=thr, background=0)
            slow = vote(lm, regs, "mean", class_sums=ref, threshold=thr, background=0)
            np.testing.assert_array_equal(fast[0], slow[0])
            assert fast[1] == slow[1]
    assert not RegionSums(regs, L).sums.any()  # nothing added: zero sums
