"""Evaluation compares classes by name: predictions whose mask_targets give the same classes other
ids are mapped to the ground truth's ids; unmatched names are reported; ids at the ignore value
are refused (real MongoDB)."""

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.metrics import match_classes_by_name, normalize_class_name
from fiftyone_cass.fo.evaluation import evaluate_iou

GT_TARGETS = {0: "background", 1: "dog", 2: "cat", 3: "grass", 255: "ignore"}
GTS = [
    np.array([[0, 1, 1, 255], [2, 2, 3, 3], [0, 0, 3, 1]], np.uint8),
    np.array([[3, 3, 2], [1, 0, 255]], np.uint8),
]


def _write(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture
def make_dataset(fo_dataset, tmp_path):
    def make(pred_targets, pred_of_gt):
        """Predictions = ``pred_of_gt[gt value]`` pixel by pixel (255 -> 0)."""
        ds = fo_dataset("names")
        samples = []
        for i, g in enumerate(GTS):
            p = np.vectorize(lambda v: pred_of_gt.get(int(v), 0))(g).astype(np.uint8)
            samples.append(fo.Sample(
                filepath=_write(tmp_path / f"img{i}.png", np.zeros(g.shape + (3,), np.uint8)),
                ground_truth=fo.Segmentation(mask_path=_write(tmp_path / f"gt{i}.png", g)),
                predictions=fo.Segmentation(mask_path=_write(tmp_path / f"pred{i}.png", p)),
            ))
        ds.add_samples(samples)
        targets = {"ground_truth": GT_TARGETS}
        if pred_targets is not None:
            targets["predictions"] = pred_targets
        ds.mask_targets = targets
        ds.save()
        return ds

    return make


def test_swapped_ids_with_the_same_names_score_100_percent(make_dataset):
    # a perfect prediction stored with other ids for the same names (case and spaces differ too)
    pred_targets = {0: "Background", 1: " CAT", 2: "grass", 3: "dog"}
    ds = make_dataset(pred_targets, {0: 0, 1: 3, 2: 1, 3: 2})
    r = evaluate_iou(ds, "predictions", "ground_truth", eval_key="ev")
    assert r.mean_iou() == pytest.approx(1.0) and r.iou_metrics().aAcc == pytest.approx(1.0)
    assert r.class_match["mapped_by_name"] is True
    assert r.class_match["pred_to_gt"] == [[0, 0], [1, 2], [2, 3], [3, 1]]
    assert ds.first()["ev_iou"] == pytest.approx(1.0)
    # the mapping is stored with the run
    loaded = ds.load_evaluation_results("ev")
    assert loaded.class_match == r.class_match and loaded.mean_iou() == pytest.approx(1.0)


def test_without_the_mapping_the_same_prediction_would_score_low(make_dataset):
    # the same masks, but the evaluation is told one vocabulary for both: ids are compared
    ds = make_dataset({0: "background", 1: "cat", 2: "grass", 3: "dog"}, {0: 0, 1: 3, 2: 1, 3: 2})
    r = evaluate_iou(ds, "predictions", "ground_truth", mask_targets=GT_TARGETS)
    assert r.class_match is None and r.mean_iou() < 0.5


def test_unmatched_names_are_reported_and_count_as_misses(make_dataset, caplog):
    pred_targets = {0: "background", 1: "dog", 2: "cat", 3: "lawn"}  # "lawn" is not a GT class
    ds = make_dataset(pred_targets, {0: 0, 1: 1, 2: 2, 3: 3})
    with caplog.at_level("WARNING"):
        r = evaluate_iou(ds, "predictions", "ground_truth")
    assert "have no class of that name in 'ground_truth'" in caplog.text and "lawn" in caplog.text
    assert r.class_match["unmatched_pred_classes"] == ["lawn"]
    assert r.class_match["unmatched_gt_classes"] == ["grass"]
    per = r.per_class_iou()
    assert per["dog"] == pytest.approx(1.0) and per["cat"] == pytest.approx(1.0)
    assert per["grass"] == pytest.approx(0.0)  # its pixels were predicted as "lawn": misses
    assert r.missed_pixels[3] == sum(int((g == 3).sum()) for g in GTS)


def test_one_side_without_mask_targets_compares_ids_and_says_so(make_dataset, caplog):
    ds = make_dataset(None, {0: 0, 1: 1, 2: 2, 3: 3})
    with caplog.at_level("WARNING"):
        r = evaluate_iou(ds, "predictions", "ground_truth")
    assert "'predictions' has no mask_targets (class names) but 'ground_truth' has: comparing" in caplog.text
    assert r.class_match is None and r.mean_iou() == pytest.approx(1.0)


def test_same_mask_targets_compare_ids_without_warning(make_dataset, caplog):
    ds = make_dataset(dict(GT_TARGETS), {0: 0, 1: 1, 2: 2, 3: 3})
    with caplog.at_level("WARNING"):
        r = evaluate_iou(ds, "predictions", "ground_truth")
    assert "mask_targets" not in caplog.text and "class of that name" not in caplog.text
    assert r.class_match["mapped_by_name"] is False and r.mean_iou() == pytest.approx(1.0)


def test_a_real_class_at_the_ignore_id_is_refused_or_mapped(make_dataset):
    # a free vocabulary of 255 classes: the last class gets id 255
    many = {0: "background", **{i: f"class {i}" for i in range(1, 255)}, 255: "dog"}
    ds = make_dataset(many, {0: 0, 1: 255, 2: 0, 3: 0})
    # with ground-truth names, predicted id 255 ("dog") is mapped to the GT's "dog" (1)
    r = evaluate_iou(ds, "predictions", "ground_truth")
    assert [255, 1] in r.class_match["pred_to_gt"]
    assert r.per_class_iou()["dog"] == pytest.approx(1.0)
    # compared as ids (no GT names), id 255 would be ignored: refused, naming the class
    gt_less = dict(ds.mask_targets)
    del gt_less["ground_truth"]
    ds.mask_targets = gt_less
    ds.save()
    with pytest.raises(InvalidInputError, match=r"'dog' has id 255, the ignore value"):
        evaluate_iou(ds, "predictions", "ground_truth")
    # a ground truth naming a real class at 255: refused too
    ds.mask_targets = {"ground_truth": {0: "background", 1: "dog", 255: "tree"}}
    ds.save()
    with pytest.raises(InvalidInputError, match=r"ground-truth field 'ground_truth': class 'tree' has id 255"):
        evaluate_iou(ds, "predictions", "ground_truth")


def test_duplicate_names_cannot_be_matched(make_dataset):
    ds = make_dataset({0: "background", 1: "dog", 2: "Dog "}, {0: 0, 1: 1})
    with pytest.raises(InvalidInputError, match="twice"):
        evaluate_iou(ds, "predictions", "ground_truth")


def test_name_normalisation():
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert nfc != nfd and normalize_class_name(nfc) == normalize_class_name(nfd)
    assert normalize_class_name("  Traffic \t Light ") == "traffic light"
    m = match_classes_by_name({0: "a", 1: nfc}, {0: nfd, 1: "A"})
    assert m.pred_to_gt == {0: 1, 1: 0} and not m.identity


def test_operator_result_shows_unmatched_classes_and_explains_the_accuracies(make_dataset):
    """Issue 21 item 4: the CLI warned about unmatched predicted classes, the App's result said only
    "Classes: 4". The operator's result now names them, and says why FiftyOne's Accuracy differs."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ds = make_dataset({0: "background", 1: "dog", 2: "cat", 3: "lawn"}, {0: 0, 1: 1, 2: 2, 3: 3})
    op = foo.get_operator("@fiftyone-cass/cass/evaluate_iou")
    res = foo.execute_operator(op.uri, ctx={"dataset": ds, "params": {
        "pred_field": "predictions", "gt_field": "ground_truth", "eval_key": "ev", "target": "DATASET"}})
    out = res.result
    assert out["unmatched_pred_classes"] == ["lawn"] and out["num_samples"] == 2
    assert "'lawn'" in out["class_mismatch"] and "count as misses" in out["class_mismatch"]
    assert "'grass'" in out["class_mismatch"]  # the ground-truth class never predicted
    assert "FiftyOne's Model Evaluation panel" in out["accuracy_note"]
    # the output form shows the notice as a warning
    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {}, "results": out},
                           operator_uri=op.uri)
    props = op.resolve_output(ctx).to_json()["type"]["properties"]
    assert props["class_mismatch_notice"]["view"]["description"] == out["class_mismatch"]
    # matched classes: no notice
    ds2 = make_dataset(dict(GT_TARGETS), {0: 0, 1: 1, 2: 2, 3: 3})
    out2 = foo.execute_operator(op.uri, ctx={"dataset": ds2, "params": {
        "pred_field": "predictions", "gt_field": "ground_truth", "eval_key": "ev2", "target": "DATASET"}}).result
    assert "class_mismatch" not in out2
