"""mIoU evaluation on real FiftyOne datasets (real MongoDB, plugin discovered from the repo root)."""

import math

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo
import fiftyone.operators as foo

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.metrics import IoUAccumulator, LabelMapper
from fiftyone_cass.fo.evaluation import (
    MEAN_IOU_METRIC,
    IoUSegmentationResults,
    evaluate_iou,
)

EVALUATE_URI = "@fiftyone-cass/cass/evaluate_iou"

# 3 classes (+255 ignore) over three images; ids as in a reduce_zero_label protocol
GTS = [
    np.array([[0, 0, 1, 255], [1, 1, 1, 255], [0, 2, 2, 2]], np.uint8),
    np.array([[2, 2], [2, 0]], np.uint8),
    np.array([[1, 1, 1], [255, 0, 0]], np.uint8),
]
PREDS = [
    np.array([[0, 1, 1, 0], [1, 1, 0, 2], [0, 2, 1, 2]], np.uint8),
    np.array([[2, 2], [0, 0]], np.uint8),
    np.array([[1, 1, 1], [1, 1, 1]], np.uint8),  # image 3 is the worst on its own
]
TARGETS = {0: "wall", 1: "building", 2: "sky"}


def _expected():
    acc = IoUAccumulator(mapper=LabelMapper([0, 1, 2]), class_names=list(TARGETS.values()))
    hs = [acc.update(p, g) for p, g in zip(PREDS, GTS)]
    return acc.compute(), hs


def _write(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture
def seg_dataset(fo_dataset, tmp_path):
    ds = fo_dataset("iou")
    samples = []
    for i, (g, p) in enumerate(zip(GTS, PREDS)):
        img = _write(tmp_path / f"img{i}.png", np.zeros(g.shape + (3,), np.uint8))
        samples.append(
            fo.Sample(
                filepath=img,
                ground_truth=fo.Segmentation(mask_path=_write(tmp_path / f"gt{i}.png", g)),
                predictions=fo.Segmentation(mask_path=_write(tmp_path / f"pred{i}.png", p)),
            )
        )
    ds.add_samples(samples)
    ds.mask_targets = {"ground_truth": TARGETS, "predictions": TARGETS}
    ds.save()
    return ds


def test_plugin_operators_are_discovered():
    assert foo.get_operator(EVALUATE_URI).config.name == "evaluate_iou"
    metric = foo.get_operator(MEAN_IOU_METRIC)
    assert isinstance(metric, foo.EvaluationMetric)
    assert metric.config.eval_types == ["segmentation"]


def test_evaluate_iou_operator_stores_loadable_results(seg_dataset):
    expected, hists = _expected()
    res = foo.execute_operator(
        EVALUATE_URI,
        ctx={
            "dataset": seg_dataset,
            "params": {"pred_field": "predictions", "gt_field": "ground_truth", "eval_key": "ev", "target": "DATASET"},
        },
    )
    assert res.result["mIoU"] == pytest.approx(100 * expected.mIoU, abs=0.005)  # percent, as the CLI prints

    assert "ev" in seg_dataset.list_evaluations()
    loaded = seg_dataset.load_evaluation_results("ev")
    assert isinstance(loaded, IoUSegmentationResults)
    assert loaded.mean_iou() == pytest.approx(expected.mIoU)
    np.testing.assert_array_equal(loaded.pixel_confusion_matrix, sum(h[:, :3] for h in hists))
    metrics = loaded.metrics()
    assert metrics["mIoU"] == pytest.approx(expected.mIoU)
    assert metrics["aAcc"] == pytest.approx(expected.aAcc)
    assert metrics["mAcc"] == pytest.approx(expected.mAcc)
    # the custom metric is attached, so the Model Evaluation panel's summary shows mIoU
    assert loaded.custom_metrics[MEAN_IOU_METRIC]["value"] == pytest.approx(expected.mIoU)
    assert loaded.custom_metrics[MEAN_IOU_METRIC]["lower_is_better"] is False
    per_class = loaded.per_class_iou()
    assert set(per_class) == {"wall", "building", "sky"}
    assert per_class["sky"] == pytest.approx(float(expected.iou[2]))

    # per-sample fields, sortable: the worst sample first
    assert seg_dataset.has_sample_field("ev_iou") and seg_dataset.has_sample_field("ev_pixel_acc")
    worst = seg_dataset.sort_by("ev_iou").first()
    assert worst.filepath.endswith("img2.png")
    from fiftyone_cass.fo.metrics import sample_scores

    for s, h in zip(seg_dataset, hists):
        assert s["ev_iou"] == pytest.approx(sample_scores(h)["iou"])
    assert seg_dataset.get_evaluation_info("ev").config.method == "mmseg_iou"

    # deleting the run removes its fields
    seg_dataset.delete_evaluation("ev")
    assert not seg_dataset.has_sample_field("ev_iou")


def test_operator_on_a_view_evaluates_only_the_view(seg_dataset):
    view = seg_dataset.limit(2)
    foo.execute_operator(
        EVALUATE_URI,
        ctx={
            "view": view,
            "params": {"pred_field": "predictions", "gt_field": "ground_truth", "eval_key": "ev2", "target": "CURRENT_VIEW"},
        },
    )
    acc = IoUAccumulator(num_classes=3)
    for p, g in zip(PREDS[:2], GTS[:2]):
        acc.update(p, g)
    assert seg_dataset.load_evaluation_results("ev2").mean_iou() == pytest.approx(acc.compute().mIoU)


def test_an_empty_view_is_an_error_that_keeps_the_stored_evaluation(seg_dataset):
    first = evaluate_iou(seg_dataset, "predictions", eval_key="kept").mean_iou()
    with pytest.raises(InvalidInputError, match="no samples to evaluate"):
        evaluate_iou(seg_dataset.match_tags("no-such-tag"), "predictions", eval_key="kept", overwrite=True)
    assert seg_dataset.load_evaluation_results("kept").mean_iou() == pytest.approx(first)
    with pytest.raises(InvalidInputError, match="eval_key 'a b' is not a valid evaluation key"):
        evaluate_iou(seg_dataset, "predictions", eval_key="a b")
    assert seg_dataset.list_evaluations() == ["kept"]


def test_size_mismatch_is_an_error_unless_resize(seg_dataset, tmp_path):
    s = seg_dataset.last()
    s["predictions"] = fo.Segmentation(mask_path=_write(tmp_path / "small.png", np.ones((1, 1), np.uint8)))
    s.save()
    with pytest.raises(InvalidInputError, match=r"img2\.png.*1x1.*2x3"):
        evaluate_iou(seg_dataset, "predictions", eval_key=None)
    r = evaluate_iou(seg_dataset, "predictions", resize="nearest")
    acc = IoUAccumulator(num_classes=3)
    for p, g in zip(PREDS[:2] + [np.ones((2, 3), np.uint8)], GTS):
        acc.update(p, g)
    assert r.mean_iou() == pytest.approx(acc.compute().mIoU)


def test_missing_prediction_is_an_error_unless_skipped(seg_dataset):
    s = seg_dataset.first()
    s["predictions"] = None
    s.save()
    with pytest.raises(InvalidInputError, match="no prediction mask"):
        evaluate_iou(seg_dataset, "predictions")
    with pytest.warns(UserWarning, match="Skipping"):
        r = evaluate_iou(seg_dataset, "predictions", skip_missing=True)
    acc = IoUAccumulator(num_classes=3)
    for p, g in zip(PREDS[1:], GTS[1:]):
        acc.update(p, g)
    assert r.mean_iou() == pytest.approx(acc.compute().mIoU)


def test_mean_iou_custom_metric_on_fiftyone_simple_backend(seg_dataset):
    expected, hists = _expected()
    # FiftyOne's own backend: 255 is dropped because it is not in mask_targets
    results = seg_dataset.evaluate_segmentations(
        "predictions",
        gt_field="ground_truth",
        eval_key="simple",
        mask_targets=TARGETS,
        custom_metrics=[MEAN_IOU_METRIC],
    )
    assert results.metrics()["mIoU"] == pytest.approx(expected.mIoU)
    loaded = seg_dataset.load_evaluation_results("simple")
    assert loaded.custom_metrics[MEAN_IOU_METRIC]["value"] == pytest.approx(expected.mIoU)
    from fiftyone_cass.fo.metrics import sample_scores

    for s, h in zip(seg_dataset, hists):
        assert s["simple_iou"] == pytest.approx(sample_scores(h)["iou"])
    seg_dataset.delete_evaluation("simple")
    assert not seg_dataset.has_sample_field("simple_iou")


def test_mean_iou_custom_metric_drops_255_when_observed_as_a_class(seg_dataset):
    expected, _ = _expected()
    # no mask_targets: FiftyOne uses the observed values, so 255 becomes a "class" "255"
    seg_dataset.mask_targets = {}
    seg_dataset.save()
    results = seg_dataset.evaluate_segmentations("predictions", gt_field="ground_truth", custom_metrics=[MEAN_IOU_METRIC])
    assert "255" in list(results.classes)
    assert results.metrics()["mIoU"] == pytest.approx(expected.mIoU)


def test_evaluate_iou_without_mask_targets_uses_observed_values(seg_dataset):
    expected, _ = _expected()
    seg_dataset.mask_targets = {}
    seg_dataset.save()
    r = evaluate_iou(seg_dataset, "predictions", eval_key="obs")
    assert list(r.classes) == ["0", "1", "2"]
    assert r.mean_iou() == pytest.approx(expected.mIoU)
    assert math.isfinite(seg_dataset.first()["obs_iou"])


# ------------------------------------------------------------------------------------------------
# End-to-end protocol: import -> predict -> evaluate -> table
# ------------------------------------------------------------------------------------------------
class ConstantSegmenter:
    """A stand-in model with the Segmenter interface that labelling runs use: predicts class
    ``value`` everywhere, at each image's size."""

    method, backbone, precision = "cass", "constant", "fp32"

    def __init__(self, num_classes, value=0):
        from fiftyone_cass.models.segmenter import SegmenterOptions

        self.mask_targets = {i: str(i) for i in range(num_classes)}
        self.class_lines = [str(i) for i in range(num_classes)]
        self.class_names = list(self.class_lines)
        self.background_id = None
        self.options = SegmenterOptions()
        self.value = value
        self.batch_size = 1
        self.calls = 0

    def segment_loaded(self, loaded, names, return_embeddings=None):
        from fiftyone_cass.models.segmenter import SegmentationResult

        self.calls += 1
        presence = np.full(len(self.class_names), 1.0 / len(self.class_names), np.float32)
        return [(None, err) if arr is None else
                (SegmentationResult(np.full(arr.shape[:2], self.value, np.uint8), presence, 0.0), None)
                for arr, err in loaded]


def _ade_layout(root):
    base = root / "ADEChallengeData2016"
    labels = [np.array([[0, 1, 1], [2, 2, 1]], np.uint8), np.array([[1, 1], [150, 0]], np.uint8)]
    for i, lab in enumerate(labels):
        stem = f"ADE_val_{i + 1:08d}"
        (base / "images" / "validation").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(lab.shape + (3,), np.uint8)).save(base / "images" / "validation" / f"{stem}.jpg")
        Image.fromarray(lab).save(base / "annotations" / "validation" / f"{stem}.png")
    return labels


def test_run_protocol_end_to_end_with_exact_numbers(tmp_path, fiftyone_database):
    import uuid

    from fiftyone_cass.protocols.importers import reduce_zero_label
    from fiftyone_cass.protocols.runner import run_protocol

    labels = _ade_layout(tmp_path)
    seg = ConstantSegmenter(150, value=0)
    name = f"proto-{uuid.uuid4().hex[:8]}"
    try:
        run = run_protocol("ade20k", tmp_path, segmenter=seg, name=name, masks_dir=str(tmp_path / "masks"), print_table=False)
        acc = IoUAccumulator(num_classes=150)
        for lab in labels:
            acc.update(np.zeros(lab.shape, np.uint8), reduce_zero_label(lab))
        exp = acc.compute()
        # GT after reduce: ids 0, 1, 149 present; prediction = 0 everywhere -> only class 0 scores
        assert run.metrics.mIoU == pytest.approx(exp.mIoU)
        assert run.metrics.aAcc == pytest.approx(exp.aAcc)
        assert run.eval_key == "eval_ade20k"
        ds = run.dataset
        assert ds.load_evaluation_results("eval_ade20k").mean_iou() == pytest.approx(exp.mIoU)
        assert ds.mask_targets["predictions"] == ds.mask_targets["ground_truth"]
        assert ds.first().predictions.mask_path.startswith(str(tmp_path / "masks" / "predictions"))
        assert "paper (cass, full val set): mIoU 20.40" in run.table
        assert f"{exp.mIoU * 100:.2f}" in run.table

        with pytest.raises(InvalidInputError, match="3 classes"):
            run_protocol("ade20k", dataset=ds, segmenter=ConstantSegmenter(3), print_table=False)
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_protocol_command_with_a_tiny_random_segmenter(tmp_path, fiftyone_database, capsys):
    """The CLI path with the real Segmenter (tiny random-weight backbones, CPU)."""
    import uuid

    from fiftyone_cass.protocols.runner import main

    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "SegmentationClass").mkdir()
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i, (h, w) in enumerate([(40, 56), (48, 36)]):
        sid = f"2007_00000{i}"
        ids.append(sid)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{sid}.jpg")
        lab = np.zeros((h, w), np.uint8)
        lab[5:20, 5:20] = 15
        lab[0, :] = 255
        Image.fromarray(lab).save(base / "SegmentationClass" / f"{sid}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")

    name = f"cli-{uuid.uuid4().hex[:8]}"
    try:
        rc = main(["voc20", str(tmp_path), "--backbone", "tiny", "--device", "cpu", "--batch-size", "2",
                   "--name", name, "--masks-dir", str(tmp_path / "m")])
        assert rc == 0
        out = capsys.readouterr().out
        assert "voc20 | cass+cdam | 2 images" in out and "mIoU" in out
        ds = fo.load_dataset(name)
        res = ds.load_evaluation_results("eval_voc20")
        assert 0.0 <= res.mean_iou() <= 1.0
        for s in ds:
            assert s.predictions.get_mask().shape == s.ground_truth.get_mask().shape
            assert s.predictions.get_mask().max() < 20
            assert s["eval_voc20_iou"] is not None
        # person = VOC id 15 -> voc20 id 14; row 0 is boundary (255) and stays ignored
        gt = ds.first().ground_truth.get_mask()
        assert gt[10, 10] == 14 and (gt[0] == 255).all() and gt[30, 30] == 255
        assert main(["voc20", str(tmp_path / "missing"), "--backbone", "tiny", "--name", name + "x"]) == 2
        # the command line's eval --protocol honours --eval-key and --summary-json
        import json

        from fiftyone_cass import cli

        summary = tmp_path / "protocol.json"
        rc = cli.main(["eval", str(tmp_path), "--protocol", "voc20", "--backbone", "tiny", "--device", "cpu",
                       "--batch-size", "2", "--name", name, "--masks-dir", str(tmp_path / "m"),
                       "--overwrite", "--eval-key", "my_key", "--summary-json", str(summary)])
        assert rc == 0
        got = json.loads(summary.read_text())
        ds = fo.load_dataset(name)
        assert got["eval_key"] == "my_key" and got["dataset"] == name and got["protocol"] == "voc20"
        assert got["mIoU"] == pytest.approx(ds.load_evaluation_results("my_key").mean_iou())
        assert ds.list_evaluations() == ["my_key"]
    finally:
        for n in (name, name + "x"):
            if fo.dataset_exists(n):
                fo.delete_dataset(n)


def test_evaluate_operator_form_offers_segmentation_fields_and_guards_the_key(seg_dataset):
    from fiftyone.operators.executor import ExecutionContext

    seg_dataset.add_sample_field("score", fo.FloatField)
    op = foo.get_operator(EVALUATE_URI)

    def form(params):
        ctx = ExecutionContext(request_params={"dataset_name": seg_dataset.name, "params": params})
        return op.resolve_input(ctx).type.properties

    props = form({})
    assert sorted(props["pred_field"].type.values) == ["ground_truth", "predictions"]
    assert props["gt_field"].default == "ground_truth" and props["pred_field"].default == "predictions"
    assert not props["eval_key"].invalid
    evaluate_iou(seg_dataset, "predictions", eval_key="taken")
    props = form({"eval_key": "taken"})
    assert props["eval_key"].invalid and "overwrite" in props
    assert not form({"eval_key": "taken", "overwrite": True})["eval_key"].invalid
    assert form({"eval_key": "not valid"})["eval_key"].invalid


def test_model_evaluation_panel_can_load_the_run(seg_dataset):
    """The App's Model Evaluation panel code (shipped with fiftyone) reads our run: metrics with
    mIoU, the mean_iou custom metric for its Summary table, and the clickable confusion matrix."""
    from plugins.panels.model_evaluation import EvaluationPanel, _init_segmentation_results

    expected, _ = _expected()
    evaluate_iou(seg_dataset, "predictions", eval_key="panel")
    info = seg_dataset.get_evaluation_info("panel")
    assert info.config.type == "segmentation"
    results = seg_dataset.load_evaluation_results("panel")
    _init_segmentation_results(seg_dataset, results, "ground_truth")
    panel = EvaluationPanel()
    assert results.metrics()["mIoU"] == pytest.approx(expected.mIoU)
    custom = panel.get_custom_metrics(results)
    assert custom[MEAN_IOU_METRIC]["label"] == "mIoU (0-1)"  # the panel shows fractions: say so
    assert custom[MEAN_IOU_METRIC]["value"] == pytest.approx(expected.mIoU)
    cm = panel.get_confusion_matrix(results)
    assert list(cm["classes"])[:3] == ["wall", "building", "sky"]
    per_class = panel.get_per_class_metrics(info, results)
    assert set(per_class) >= {"wall", "building", "sky"}


def _fields_and_values(ds):
    schema = {n: type(f).__name__ for n, f in ds.get_field_schema().items()}
    return schema, {n: ds.values(n) for n in schema if n not in ("ground_truth", "predictions", "metadata", "last_modified_at")}


def test_an_evaluation_never_touches_fields_it_does_not_own(seg_dataset, capsys):
    from fiftyone_cass import cli

    ds = seg_dataset
    # the user's own fields under the names an evaluation "ev" (and the CLI's default key) would write
    for key in ("ev", "eval_predictions"):
        ds.add_sample_field(f"{key}_iou", fo.StringField)
        ds.set_values(f"{key}_iou", ["mine", "also mine", None])
        ds.set_values(f"{key}_pixel_acc", [0.5, 0.25, 0.125])
    before = _fields_and_values(ds)
    with pytest.raises(InvalidInputError, match=r"'ev_iou'.*not written by an evaluation.*eval_key"):
        evaluate_iou(ds, "predictions", eval_key="ev")
    with pytest.raises(InvalidInputError, match=r"'ev_iou'"):
        evaluate_iou(ds, "predictions", eval_key="ev", overwrite=True)
    assert cli.main(["eval", ds.name, "--pred-field", "predictions"]) == 2
    err = capsys.readouterr().err
    assert "'eval_predictions_iou'" in err and "--eval-key" in err and "Traceback" not in err
    res = foo.execute_operator(EVALUATE_URI, ctx={"dataset": ds, "params": {
        "pred_field": "predictions", "gt_field": "ground_truth", "eval_key": "ev", "target": "DATASET"}})
    assert "ev_iou" in res.result["error"]
    ds.reload()
    assert _fields_and_values(ds) == before and ds.list_evaluations() == []
    # a failure in the middle of an evaluation (an unreadable mask) leaves every pre-existing field as it was
    bad = ds.first()
    bad.predictions = fo.Segmentation(mask_path="/nonexistent/mask.png")
    bad.save()
    before = _fields_and_values(ds)
    with pytest.raises(InvalidInputError, match="could not read a mask"):
        evaluate_iou(ds, "predictions", eval_key="other")
    ds.reload()
    assert _fields_and_values(ds) == before and ds.list_evaluations() == []
