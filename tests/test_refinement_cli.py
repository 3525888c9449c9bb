"""The refinements from the command line (issue 20): ``-o pamr_steps=10`` changes the label map and
is part of the settings (a rerun without it is refused as other settings); ``--regions-field``
votes one label per region (above ``--region-min-area``), samples without regions are labelled
without voting and counted, a bad instance mask is that sample's failure with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fiftyone as fo

from _label_helpers import CLASSES, make_images, read_mask
from fiftyone_cass.fo.apply import CONFIG_ATTR
from test_cli import TINY, run_cli
from test_reliability import dataset_name  # noqa: F401 - the fixture


def _label_plain(tmp_path, capsys, dataset_name):
    """Labels 4 images into field ``plain`` (no refinement); returns the command's base arguments."""
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 4)
    base = ["label", img_dir, "--dataset", dataset_name, "--classes", ", ".join(CLASSES), *TINY]
    rc, out = run_cli(*base, "--label-field", "plain", capsys=capsys)
    assert rc == 0, out.err
    return base


def test_pamr_changes_the_labels_and_is_part_of_the_settings(tmp_path, capsys, dataset_name):
    summary = tmp_path / "s.json"
    base = _label_plain(tmp_path, capsys, dataset_name)
    rc, out = run_cli(*base, "-o", "pamr_steps=10", "--summary-json", summary, capsys=capsys)
    assert rc == 0, out.err
    pamr_id = json.loads(summary.read_text())["config_id"]
    ds = fo.load_dataset(dataset_name)
    plain = {s.filepath: read_mask(s.plain) for s in ds}
    refined = {s.filepath: read_mask(s.cass) for s in ds}
    assert any((plain[k] != refined[k]).any() for k in plain)  # PAMR changed a label map
    assert ds.first().cass[CONFIG_ATTR] == pamr_id != ds.first().plain[CONFIG_ATTR]
    rc, out = run_cli(*base, capsys=capsys)  # the same field without PAMR: other settings
    assert rc == 2 and "overwrite" in out.err


def _sam_like(h, w, boxes):
    """fo.Detections with instance masks placed as FiftyOne's SAM models write them."""
    dets = []
    for (y0, x0, y1, x1) in boxes:
        m = np.ones((y1 - y0, x1 - x0), bool)
        dets.append(fo.Detection(label="region", bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h], mask=m))
    return fo.Detections(detections=dets)


def test_regions_field_votes_one_label_per_region(tmp_path, capsys, dataset_name):
    summary = tmp_path / "s.json"
    base = _label_plain(tmp_path, capsys, dataset_name)
    ds = fo.load_dataset(dataset_name)
    samples = list(ds.sort_by("filepath"))
    regions = {}
    for i, s in enumerate(samples[:3]):  # the 4th sample has no regions
        lm = read_mask(s.plain)
        h, w = lm.shape
        boxes = [(0, 0, h, w // 2 + 3), (h // 4, w // 4, h - 2, w - 1), (0, w - 3, 2, w)]  # the last: 6 px
        s["sam"] = _sam_like(h, w, boxes)
        s.save()
        regions[s.filepath] = boxes
    rc, out = run_cli(*base, "--label-field", "voted", "--regions-field", "sam", "--region-min-area", 7,
                      "--summary-json", summary, capsys=capsys)
    assert rc == 0, out.err
    rep = json.loads(summary.read_text())
    assert rep["regions_field"] == "sam" and rep["num_without_regions"] == 1 and rep["num_labeled"] == 4
    assert "1 labelled sample(s) had no regions" in out.out
    ds.reload()
    changed = False
    for s in ds:
        plain, voted = read_mask(s.plain), read_mask(s.voted)
        if s.filepath not in regions:
            np.testing.assert_array_equal(voted, plain)  # no regions: labelled without voting
            continue
        big, small, tiny = regions[s.filepath]
        y0, x0, y1, x1 = small
        assert len(np.unique(voted[y0:y1, x0:x1])) == 1  # the smaller region wins its overlap
        rest = np.zeros(voted.shape, bool)
        rest[big[0]:big[2], big[1]:big[3]] = True
        rest[y0:y1, x0:x1] = False
        assert len(np.unique(voted[rest])) == 1  # every region one label
        outside = np.ones(voted.shape, bool)
        outside[big[0]:big[2], big[1]:big[3]] = False
        outside[y0:y1, x0:x1] = False
        np.testing.assert_array_equal(voted[outside], plain[outside])  # outside every region: kept
        changed |= bool((voted != plain).any())
    assert changed
    # voted labels are other labels: the same field without --regions-field is refused
    rc, out = run_cli(*base, "--label-field", "voted", capsys=capsys)
    assert rc == 2 and "overwrite" in out.err


def test_bad_instance_mask_is_that_samples_failure_with_its_reason(tmp_path, capsys, dataset_name):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 2)
    summary = tmp_path / "s.json"
    base = ["label", img_dir, "--dataset", dataset_name, "--classes", ", ".join(CLASSES), *TINY]
    rc, out = run_cli(*base, "--label-field", "plain", capsys=capsys)
    ds = fo.load_dataset(dataset_name)
    bad, good = list(ds.sort_by("filepath"))
    h, w = read_mask(bad.plain).shape
    bad["sam"] = fo.Detections(detections=[fo.Detection(bounding_box=[0, 0, 0.5, 0.5], mask=np.ones((3, 3), bool))])
    bad.save()
    hg, wg = read_mask(good.plain).shape
    good["sam"] = _sam_like(hg, wg, [(0, 0, hg, wg)])
    good.save()
    rc, out = run_cli(*base, "--label-field", "voted", "--regions-field", "sam", "--summary-json", summary, capsys=capsys)
    rep = json.loads(summary.read_text())
    assert rc == 1 and rep["num_failed"] == 1 and rep["num_labeled"] == 1
    assert "detection 0" in out.out and "does not fit its" in out.out
    ds.reload()
    assert ds[bad.id].voted is None and "does not fit" in ds[bad.id].voted_error
    assert len(np.unique(read_mask(ds[good.id].voted))) == 1
    rc, out = run_cli(*base, "--label-field", "x", "--regions-field", "nope", capsys=capsys)
    assert rc == 2 and "--regions-field 'nope' is not a field of dataset" in out.err


def _voc_layout(root, sizes):
    """A tiny VOC2012 layout (random images, a 'dog' square in each ground truth)."""
    from PIL import Image

    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(3)
    ids = []
    for i, (h, w) in enumerate(sizes):
        ids.append(f"2007_00000{i}")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{ids[-1]}.jpg")
        lab = np.zeros((h, w), np.uint8)
        lab[4:20, 4:20] = 12
        Image.fromarray(lab).save(base / "SegmentationClass" / f"{ids[-1]}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")


def test_eval_protocol_votes_in_the_regions_of_the_dataset_it_imported(tmp_path, capsys, dataset_name):
    """``eval --protocol`` takes ``--regions-field`` (and vote / min area) as ``label`` does: on
    the dataset an earlier protocol run imported (TARGET is its name), with regions added to it."""
    _voc_layout(tmp_path, [(40, 56), (44, 36)])
    model = ["--backbone", "tiny", "--device", "cpu", "--method", "cass", "--masks-dir", tmp_path / "m"]
    rc, out = run_cli("eval", "--protocol", "voc21", tmp_path, "--name", dataset_name, *model, capsys=capsys)
    assert rc == 0, out.err
    ds = fo.load_dataset(dataset_name)
    first, second = list(ds.sort_by("filepath"))
    plain = {s.id: read_mask(s.predictions) for s in ds}
    plain_config = first.predictions[CONFIG_ATTR]
    h, w = plain[first.id].shape
    box = (2, 2, h - 2, w - 2)
    assert len(np.unique(plain[first.id][2:h - 2, 2:w - 2])) > 1  # voting has something to change
    first["sam"] = _sam_like(h, w, [box, (0, 0, 2, 3)])  # the second region: 6 px, under the minimum
    first.save()
    summary = tmp_path / "s.json"
    rc, out = run_cli("eval", "--protocol", "voc21", dataset_name, "--regions-field", "sam", "--region-min-area", 7,
                      "--summary-json", summary, *model, capsys=capsys)
    assert rc == 0, out.err
    assert "region voting in 'sam': 1 sample(s) had no regions there" in out.out
    rep = json.loads(summary.read_text())
    assert rep["regions_field"] == "sam" and rep["num_without_regions"] == 1 and rep["dataset"] == dataset_name
    ds.reload()
    voted = read_mask(ds[first.id].predictions)
    assert len(np.unique(voted[2:h - 2, 2:w - 2])) == 1  # the region: one label
    np.testing.assert_array_equal(voted[:2, 3:], plain[first.id][:2, 3:])  # outside every region: kept
    np.testing.assert_array_equal(read_mask(ds[second.id].predictions), plain[second.id])  # no regions: no voting
    assert ds.load_evaluation_results("eval_voc21").mean_iou() == pytest.approx(rep["mIoU"])  # evaluated anew
    # the runner's own command line takes the same flags (the same settings: the same labels)
    from fiftyone_cass.protocols.runner import main as runner_main

    args = ["voc21", dataset_name, "--backbone", "tiny", "--device", "cpu", "--method", "cass",
            "--masks-dir", str(tmp_path / "m"), "--regions-field", "sam", "--region-min-area", "7"]
    before = ds[first.id].predictions.mask_path
    assert runner_main(args) == 0
    ds.reload()
    assert ds[first.id].predictions.mask_path == before
    np.testing.assert_array_equal(read_mask(ds[first.id].predictions), voted)
    assert ds[second.id].predictions[CONFIG_ATTR] != plain_config  # voted labels are other labels
    # a dataset of another protocol, and --regions-field without --protocol: usage errors
    rc, out = run_cli("eval", "--protocol", "voc20", dataset_name, "--regions-field", "sam", *model, capsys=capsys)
    assert rc == 2 and f"dataset {dataset_name!r} was not imported for protocol 'voc20'" in out.err, out.err
    rc, out = run_cli("eval", dataset_name, "--pred-field", "predictions", "--regions-field", "sam", capsys=capsys)
    assert rc == 2 and "--regions-field and -o/--options are for --protocol runs" in out.err, out.err
    rc, out = run_cli("eval", dataset_name, "--pred-field", "predictions", "-o", "pamr_steps=10", capsys=capsys)
    assert rc == 2 and "-o/--options are for --protocol runs" in out.err, out.err
    # Segmenter options on top of the preset's: PAMR on a protocol run gives other labels, recorded as such
    rc, out = run_cli("eval", "--protocol", "voc21", dataset_name, "-o", "pamr_steps=10", "-o", "pamr_dilations=1,2",
                      *model, capsys=capsys)
    assert rc == 0, out.err
    ds.reload()
    assert all(s.predictions[CONFIG_ATTR] != plain_config for s in ds)  # refined labels are other labels
    assert not np.array_equal(read_mask(ds[first.id].predictions), plain[first.id])
    rc, out = run_cli("eval", "--protocol", "voc21", dataset_name, "-o", "pamr_steps=-1", *model, capsys=capsys)
    assert rc == 2 and "-o pamr_steps='-1' is not allowed: an integer from 0 to 1000" in out.err, out.err
