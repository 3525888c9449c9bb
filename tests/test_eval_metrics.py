"""mIoU / pixel accuracy (mmseg IoUMetric semantics) against hand-computed confusion matrices."""

import math

import numpy as np
import pytest

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.metrics import (
    IoUAccumulator,
    LabelMapper,
    confusion_histogram,
    format_table,
    metrics_from_histogram,
    resize_nearest,
    sample_scores,
)

# 3 classes; two GT pixels are 255 and their predictions (0 and 2) must not count anywhere.
GT = np.array(
    [
        [0, 0, 1, 255],
        [1, 1, 1, 255],
        [0, 2, 2, 2],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 0],
        [1, 1, 0, 2],
        [0, 2, 1, 2],
    ],
    dtype=np.uint8,
)
# rows = GT class, cols = predicted class, counted by hand from the 10 non-ignored pixels
HAND_CM = np.array(
    [
        [2, 1, 0],
        [1, 3, 0],
        [0, 1, 2],
    ]
)


def test_histogram_matches_hand_confusion_and_ignores_255():
    h = confusion_histogram(PRED, GT, LabelMapper.contiguous(3))
    assert h.shape == (3, 4)
    np.testing.assert_array_equal(h[:, :3], HAND_CM)
    assert h[:, 3].sum() == 0
    assert h.sum() == 10  # 12 pixels - 2 ignored


def test_scores_hand_computed():
    m = metrics_from_histogram(HAND_CM)
    # intersect = diag = [2, 3, 2]; area_label = row sums [3, 4, 3]; area_pred = col sums [3, 5, 2]
    np.testing.assert_array_equal(m.intersect, [2, 3, 2])
    np.testing.assert_array_equal(m.union, [4, 6, 3])
    np.testing.assert_allclose(m.iou, [2 / 4, 3 / 6, 2 / 3])
    np.testing.assert_allclose(m.acc, [2 / 3, 3 / 4, 2 / 3])
    assert m.mIoU == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert m.mAcc == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)
    assert m.aAcc == pytest.approx(7 / 10)


def test_ignored_prediction_would_change_result_if_counted():
    # Sanity of the test data: counting the 255 pixels as class 0/2 GT changes mIoU.
    gt2 = GT.copy()
    gt2[0, 3], gt2[1, 3] = 0, 2
    a = metrics_from_histogram(confusion_histogram(PRED, GT, LabelMapper.contiguous(3))).mIoU
    b = metrics_from_histogram(confusion_histogram(PRED, gt2, LabelMapper.contiguous(3))).mIoU
    assert a != pytest.approx(b)


def test_absent_class_is_nan_and_excluded_but_false_positive_class_counts():
    # 5 classes: class 3 appears nowhere (NaN, excluded); class 4 only predicted (IoU 0, included)
    gt = np.array([[0, 0], [1, 1]], dtype=np.uint8)
    pred = np.array([[0, 4], [1, 1]], dtype=np.uint8)
    m = metrics_from_histogram(confusion_histogram(pred, gt, LabelMapper.contiguous(5)))
    # class 0: I=1, U=2 ; class 1: I=2, U=2 ; class 2: absent (NaN) ; class 3: NaN ; class 4: I=0, U=1
    assert m.iou[0] == pytest.approx(0.5) and m.iou[1] == 1.0 and m.iou[4] == 0.0
    assert math.isnan(m.iou[2]) and math.isnan(m.iou[3])
    assert m.mIoU == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # Acc is NaN for classes without GT pixels (2, 3, 4)
    assert m.mAcc == pytest.approx((0.5 + 1.0) / 2)
    assert m.aAcc == pytest.approx(3 / 4)


def test_dataset_level_accumulation_is_not_mean_of_images():
    acc = IoUAccumulator(num_classes=2)
    # image 1: large, perfect for class 0 ; image 2: small, class 1 entirely wrong
    acc.update(np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8))
    gt2 = np.ones((1, 2), np.uint8)
    h2 = acc.update(np.zeros((1, 2), np.uint8), gt2)
    m = acc.compute()
    # class 0: I=100, area_label=100, area_pred=102 -> 100/102 ; class 1: I=0, U=2 -> 0
    np.testing.assert_allclose(m.iou, [100 / 102, 0.0])
    assert m.mIoU == pytest.approx(50 / 102)
    assert m.aAcc == pytest.approx(100 / 102)
    # per-image score of image 2: class 0 I=0,U=2 ; class 1 I=0,U=2 -> 0
    assert sample_scores(h2) == {"iou": 0.0, "pixel_acc": 0.0}
    assert acc.num_images == 2


def _mmseg_style_reference(preds, gts, C, ignore=255):
    """Independent per-class boolean-mask formulation (as mmseg's intersect_and_union)."""
    ai = np.zeros(C)
    ap = np.zeros(C)
    al = np.zeros(C)
    for p, g in zip(preds, gts):
        keep = g != ignore
        p, g = p[keep], g[keep]
        for c in range(C):
            ai[c] += np.sum((p == c) & (g == c))
            ap[c] += np.sum(p == c)
            al[c] += np.sum(g == c)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = ai / (ap + al - ai)
        acc = ai / al
    return np.nanmean(iou), np.nanmean(acc), ai.sum() / al.sum(), iou


def test_random_images_agree_with_per_class_reference():
    rng = np.random.default_rng(0)
    C = 7
    preds, gts = [], []
    acc = IoUAccumulator(num_classes=C)
    for _ in range(5):
        h, w = rng.integers(5, 20, size=2)
        g = rng.integers(0, C - 1, size=(h, w)).astype(np.uint8)  # class C-1 never in GT
        g[rng.random((h, w)) < 0.2] = 255
        p = rng.integers(0, C - 2, size=(h, w)).astype(np.uint8)  # C-2, C-1 never predicted
        preds.append(p)
        gts.append(g)
        acc.update(p, g)
    miou, macc, aacc, iou = _mmseg_style_reference(preds, gts, C)
    m = acc.compute()
    assert math.isnan(m.iou[C - 1])  # absent from both
    np.testing.assert_allclose(m.iou, iou, equal_nan=True)
    assert m.mIoU == pytest.approx(miou)
    assert m.mAcc == pytest.approx(macc)
    assert m.aAcc == pytest.approx(aacc)


def test_size_mismatch_raises_by_default_naming_the_sample():
    gt = np.zeros((4, 4), np.uint8)
    pred = np.zeros((2, 2), np.uint8)
    with pytest.raises(InvalidInputError, match=r"img_7.*2x2.*4x4.*resize='nearest'"):
        confusion_histogram(pred, gt, LabelMapper.contiguous(2), sample="img_7")


def test_size_mismatch_nearest_resize():
    gt = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [1, 1, 1, 1],
            [1, 1, 0, 0],
        ],
        dtype=np.uint8,
    )
    pred = np.array([[0, 1], [1, 1]], dtype=np.uint8)  # each pixel covers a 2x2 block of the GT
    up = resize_nearest(pred, (4, 4))
    np.testing.assert_array_equal(up, np.kron(pred, np.ones((2, 2), np.uint8)))
    h = confusion_histogram(pred, gt, LabelMapper.contiguous(2), resize="nearest")
    # class 0 GT: 4 pixels top-left predicted 0, 2 bottom-right predicted 1 ; class 1 GT: 10 predicted 1
    np.testing.assert_array_equal(h[:, :2], [[4, 2], [0, 10]])
    # downsampling picks pixel centres
    big = np.arange(36).reshape(6, 6)
    np.testing.assert_array_equal(resize_nearest(big, (3, 3)), big[1::2, 1::2])


def test_unknown_gt_value_is_an_error_unless_not_strict():
    gt = np.array([[0, 7]], np.uint8)
    pred = np.array([[0, 0]], np.uint8)
    with pytest.raises(InvalidInputError, match=r"sample s1.*\[7\]"):
        confusion_histogram(pred, gt, LabelMapper.contiguous(3), sample="s1")
    h = confusion_histogram(pred, gt, LabelMapper.contiguous(3), strict=False)
    assert h.sum() == 1 and h[0, 0] == 1


def test_prediction_outside_classes_is_a_miss():
    gt = np.array([[0, 0, 1]], np.uint8)
    pred = np.array([[0, 255, 1]], np.uint8)  # 255 in a prediction is not "ignore"
    h = confusion_histogram(pred, gt, LabelMapper.contiguous(2))
    np.testing.assert_array_equal(h, [[1, 0, 1], [0, 1, 0]])
    m = metrics_from_histogram(h)
    np.testing.assert_allclose(m.iou, [0.5, 1.0])  # class 0: I=1, label=2, pred=1 -> U=2
    assert m.aAcc == pytest.approx(2 / 3)


def test_label_mapper_non_contiguous_values_and_dtypes():
    mapper = LabelMapper([0, 10, 300], ignore_index=255)
    gt = np.array([[0, 10, 300, 255]], dtype=np.uint16)
    np.testing.assert_array_equal(mapper(gt), [[0, 1, 2, LabelMapper.IGNORED]])
    np.testing.assert_array_equal(mapper(gt.astype(np.int64)), [[0, 1, 2, LabelMapper.IGNORED]])
    np.testing.assert_array_equal(mapper(np.array([[70000, -1]])), [[LabelMapper.UNKNOWN, LabelMapper.UNKNOWN]])
    with pytest.raises(InvalidInputError):
        LabelMapper([0, 255], ignore_index=255)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(InvalidInputError, match="2-D"):
        confusion_histogram(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8), LabelMapper.contiguous(2))
    with pytest.raises(InvalidInputError, match="integer"):
        confusion_histogram(np.full((2, 2), 0.5), np.zeros((2, 2), np.uint8), LabelMapper.contiguous(2))
    with pytest.raises(InvalidInputError, match="resize"):
        IoUAccumulator(2, resize="bilinear")


def test_format_table_percentages():
    m = metrics_from_histogram(HAND_CM, ["a", "b", "c"])
    text = format_table(m, title="t", reference={"paper": 55.5})
    assert "70.00" in text  # aAcc
    assert "55.56" in text  # mIoU
    assert "66.67" in text and "paper: mIoU 55.50" in text
