"""Importers of the benchmark layouts, on small synthetic files (real FiftyOne + MongoDB)."""

import json
import uuid

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import fiftyone as fo

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.protocols.importers import (
    COCO_THING_IDS,
    coco_semantic_mask,
    load_ade20k,
    load_cityscapes,
    load_coco_object,
    load_coco_stuff,
    load_context,
    load_voc,
    protocol_class_names,
    reduce_zero_label,
)
from fiftyone_cass.protocols.records import load_protocol_dataset

H, W = 16, 20


@pytest.fixture
def new_name(fiftyone_database):
    made = []

    def make(prefix="imp"):
        n = f"{prefix}-{uuid.uuid4().hex[:10]}"
        made.append(n)
        return n

    yield make
    for n in made:
        if fo.dataset_exists(n):
            fo.delete_dataset(n)


def _img(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
    return path


def _label(path, arr, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(arr, np.uint8))
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)])
    im.save(path)
    return path


def _gt(dataset, i=0, field="ground_truth"):
    s = dataset.skip(i).first()
    m = s[field].get_mask()
    assert m.ndim == 2, "masks must be single-channel on disk"
    return m


# ------------------------------------------------------------------------------------------------
# COCO-Object from instances JSON
# ------------------------------------------------------------------------------------------------
def _coco_fixture(tmp_path):
    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 10.0, 2.0, 10.0]]  # person, polygon
    two_parts = [[14.0, 1.0, 18.0, 1.0, 18.0, 4.0, 14.0, 4.0], [14.0, 12.0, 18.0, 12.0, 18.0, 15.0, 14.0, 15.0]]
    dog = np.zeros((H, W), np.uint8)
    dog[6:14, 8:16] = 1  # overlaps the person square: the later dog wins there
    dog_rle = mask_utils.encode(np.asfortranarray(dog))
    dog_uncompressed = {"size": [H, W], "counts": _uncompressed_counts(dog)}
    crowd = np.zeros((H, W), np.uint8)
    crowd[0:4, 0:6] = 1  # overlaps the person square at rows 2-3, cols 2-5
    crowd_uncompressed = {"size": [H, W], "counts": _uncompressed_counts(crowd)}
    brush = np.zeros((H, W), np.uint8)
    brush[12:16, 0:4] = 1
    brush_rle = mask_utils.encode(np.asfortranarray(brush))
    brush_rle["counts"] = brush_rle["counts"].decode("ascii")  # compressed RLE as stored in JSON
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": square, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 18, "segmentation": dog_uncompressed, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 3, "segmentation": crowd_uncompressed, "iscrowd": 1},
        {"id": 4, "image_id": 1, "category_id": 90, "segmentation": brush_rle, "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": 44, "segmentation": two_parts, "iscrowd": 0},
        # image 2: the earlier (person) annotation is painted over by nothing; the dog comes first
        {"id": 6, "image_id": 2, "category_id": 18, "segmentation": dog_uncompressed, "iscrowd": 0},
        {"id": 7, "image_id": 2, "category_id": 1, "segmentation": square, "iscrowd": 0},
    ]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 3, 18, 44, 90)]
    images = [
        {"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W},
        {"id": 2, "file_name": "000000000002.jpg", "height": H, "width": W},
        {"id": 3, "file_name": "000000000003.jpg", "height": H, "width": W},  # no annotations
    ]
    root = tmp_path / "coco"
    for im in images:
        _img(root / "val2017" / im["file_name"])
    ann_path = root / "annotations" / "instances_val2017.json"
    ann_path.parent.mkdir(parents=True)
    ann_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root, ann_path, {"dog": dog, "crowd": crowd, "brush": brush}


def _uncompressed_counts(m):
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


def _pycocotools_reference(ann_path, img_id, crowd):
    """The documented rule, written against pycocotools' mask API directly."""
    data = json.loads(ann_path.read_text())
    out = np.zeros((H, W), np.uint8)
    for a in data["annotations"]:
        if a["image_id"] != img_id:
            continue
        if a["iscrowd"] and crowd == "skip":
            continue
        seg = a["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, H, W))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, H, W)
        else:
            rle = seg
        m = mask_utils.decode(rle).astype(bool)
        value = 255 if (a["iscrowd"] and crowd == "ignore") else COCO_THING_IDS.index(a["category_id"]) + 1
        out[m] = value
    return out


@pytest.mark.parametrize("crowd", ["skip", "paint", "ignore"])
def test_coco_semantic_mask_equals_pycocotools_decoding(tmp_path, crowd):
    root, ann_path, parts = _coco_fixture(tmp_path)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_path))
    for img_id in (1, 2, 3):
        got = coco_semantic_mask(coco, img_id, crowd=crowd)
        np.testing.assert_array_equal(got, _pycocotools_reference(ann_path, img_id, crowd))

    m1 = coco_semantic_mask(coco, 1, crowd=crowd)
    person, dog, car, brush = 1, COCO_THING_IDS.index(18) + 1, 3, 80
    assert protocol_class_names("coco_object")[dog] == "dog"
    assert protocol_class_names("coco_object")[brush] == "toothbrush"
    assert protocol_class_names("coco_object")[0] == "background"
    assert m1[4, 4] == person  # only the person square
    assert m1[8, 10] == dog  # overlap: the later dog annotation is on top
    assert m1[13, 1] == brush  # compressed RLE
    assert m1[2, 15] == m1[13, 15] == COCO_THING_IDS.index(44) + 1  # both polygon parts
    assert m1[3, 3] == {"skip": person, "paint": car, "ignore": 255}[crowd]  # crowd over person
    assert m1[0, 0] == {"skip": 0, "paint": car, "ignore": 255}[crowd]  # crowd over background
    m2 = coco_semantic_mask(coco, 2, crowd=crowd)
    assert m2[8, 10] == person  # image 2: person comes after the dog, so the person is on top
    assert not coco_semantic_mask(coco, 3).any()


def test_load_coco_object_from_json(tmp_path, new_name):
    root, ann_path, _ = _coco_fixture(tmp_path)
    ds = load_coco_object(root, name=new_name(), masks_dir=tmp_path / "masks")
    assert len(ds) == 3
    assert ds.mask_targets["ground_truth"][0] == "background"
    assert len(ds.mask_targets["ground_truth"]) == 81
    assert ds.info["fiftyone_cass"]["protocol"] == "coco_object"
    assert "crowd=skip" in ds.info["fiftyone_cass"]["rule"]
    for s in ds:
        gt = s.ground_truth.get_mask()
        np.testing.assert_array_equal(gt, _pycocotools_reference(ann_path, s["coco_id"], "skip"))
        assert s.ground_truth.mask_path.startswith(str(tmp_path / "masks"))
        assert s.ground_truth.mask is None  # on disk, not in the database


def test_coco_unknown_category_is_an_error(tmp_path, new_name):
    root, ann_path, _ = _coco_fixture(tmp_path)
    data = json.loads(ann_path.read_text())
    data["categories"].append({"id": 12, "name": "unused-id"})
    ann_path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match=r"category ids \[12\]"):
        load_coco_object(root, name=new_name(), masks_dir=tmp_path / "m")


def test_coco_object_and_stuff_from_stuffthingmaps(tmp_path, new_name):
    root = tmp_path / "stuff"
    _img(root / "images" / "val2017" / "000000000009.jpg", 2, 4)
    # stuffthingmaps: value = COCO id - 1; 255 unlabeled; 11 = unused COCO id 12
    raw = np.array([[0, 89, 91, 181], [255, 11, 17, 2]], np.uint8)
    _label(root / "annotations" / "val2017" / "000000000009.png", raw)
    obj = load_coco_object(root, name=new_name(), masks_dir=tmp_path / "m1")
    assert obj.info["fiftyone_cass"]["rule"].startswith("raw stuffthingmaps")
    # things -> 1..80, stuff and unlabeled -> 0 (as cvt_coco_object.py)
    np.testing.assert_array_equal(_gt(obj), [[1, 80, 0, 0], [0, 0, 17, 3]])
    stuff = load_coco_stuff(root, name=new_name(), masks_dir=tmp_path / "m2")
    names = protocol_class_names("coco_stuff")
    np.testing.assert_array_equal(_gt(stuff), [[0, 79, 80, 170], [255, 255, 16, 2]])
    assert names[80] == "banner" and names[170] == "wood" and names[16] == "dog"

    # mmseg-converted files take precedence and are used as they are
    _label(root / "annotations" / "val2017" / "000000000009_labelTrainIds.png", [[5, 5, 5, 5], [255, 0, 0, 0]])
    _label(root / "annotations" / "val2017" / "000000000009_instanceTrainIds.png", [[7, 7, 0, 0], [0, 0, 0, 80]])
    np.testing.assert_array_equal(_gt(load_coco_stuff(root, name=new_name(), masks_dir=tmp_path / "m3")),
                                  [[5, 5, 5, 5], [255, 0, 0, 0]])
    np.testing.assert_array_equal(_gt(load_coco_object(root, name=new_name(), masks_dir=tmp_path / "m4")),
                                  [[7, 7, 0, 0], [0, 0, 0, 80]])


# ------------------------------------------------------------------------------------------------
# ADE20K, VOC, Context, Cityscapes
# ------------------------------------------------------------------------------------------------
def test_reduce_zero_label():
    np.testing.assert_array_equal(reduce_zero_label(np.array([[0, 1, 150, 255]], np.uint8)), [[255, 0, 149, 255]])


def test_load_ade20k_reduces_zero_label(tmp_path, new_name):
    base = tmp_path / "data" / "ADEChallengeData2016"
    for i, lab in enumerate([[[0, 1], [150, 5]], [[3, 3], [3, 0]]]):
        stem = f"ADE_val_{i + 1:08d}"
        _img(base / "images" / "validation" / f"{stem}.jpg", 2, 2)
        _label(base / "annotations" / "validation" / f"{stem}.png", lab)
    ds = load_ade20k(tmp_path / "data", name=new_name(), masks_dir=tmp_path / "m")  # parent dir accepted
    assert len(ds) == 2
    np.testing.assert_array_equal(_gt(ds, 0), [[255, 0], [149, 4]])
    np.testing.assert_array_equal(_gt(ds, 1), [[2, 2], [2, 255]])
    mt = ds.mask_targets["ground_truth"]
    assert len(mt) == 150 and mt[0] == "wall" and 255 not in mt
    assert ds.info["fiftyone_cass"]["reduce_zero_label"] is True


def test_ade20k_out_of_range_label_is_an_error(tmp_path, new_name):
    base = tmp_path / "ADEChallengeData2016"
    _img(base / "images" / "validation" / "ADE_val_1.jpg", 2, 2)
    _label(base / "annotations" / "validation" / "ADE_val_1.png", [[0, 151], [1, 1]])
    with pytest.raises(InvalidInputError, match=r"ADE_val_1\.jpg.*\[150\]"):
        load_ade20k(base, name=new_name(), masks_dir=tmp_path / "m")


def _voc_layout(root, year, ann_dir, split_dir, lab):
    base = root / "VOCdevkit" / f"VOC{year}"
    _img(base / "JPEGImages" / "2007_000001.jpg", 2, 3)
    _label(base / ann_dir / "2007_000001.png", lab, palette=True)
    (base / "ImageSets" / split_dir).mkdir(parents=True)
    (base / "ImageSets" / split_dir / "val.txt").write_text("2007_000001\n")
    return base


def test_load_voc21_and_voc20_from_palette_pngs(tmp_path, new_name):
    _voc_layout(tmp_path, 2012, "SegmentationClass", "Segmentation", [[0, 15, 255], [1, 20, 0]])
    v21 = load_voc(tmp_path, protocol="voc21", name=new_name(), masks_dir=tmp_path / "m21")
    np.testing.assert_array_equal(_gt(v21), [[0, 15, 255], [1, 20, 0]])
    assert v21.mask_targets["ground_truth"][0] == "background"
    assert v21.mask_targets["ground_truth"][15] == "person"
    v20 = load_protocol_dataset("voc20", tmp_path, name=new_name(), masks_dir=tmp_path / "m20")
    np.testing.assert_array_equal(_gt(v20), [[255, 14, 255], [0, 19, 255]])
    assert v20.mask_targets["ground_truth"][14] == "person" and len(v20.mask_targets["ground_truth"]) == 20


def test_load_context60_and_59(tmp_path, new_name):
    _voc_layout(tmp_path, 2010, "SegmentationClassContext", "SegmentationContext", [[0, 1, 59], [2, 2, 0]])
    c60 = load_context(tmp_path / "VOCdevkit" / "VOC2010", protocol="context60", name=new_name(), masks_dir=tmp_path / "a")
    np.testing.assert_array_equal(_gt(c60), [[0, 1, 59], [2, 2, 0]])
    c59 = load_context(tmp_path, protocol="context59", name=new_name(), masks_dir=tmp_path / "b")
    np.testing.assert_array_equal(_gt(c59), [[255, 0, 58], [1, 1, 255]])
    assert c59.mask_targets["ground_truth"][0] == "aeroplane"


def test_load_cityscapes_label_ids_and_train_ids(tmp_path, new_name):
    for city, stem in [("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")]:
        _img(tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", 2, 3)
    _label(tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", [[7, 26, 0], [33, 24, 6]])
    _label(tmp_path / "gtFine" / "val" / "bonn" / "bonn_000001_000019_gtFine_labelTrainIds.png", [[0, 18, 255], [5, 5, 5]])
    ds = load_cityscapes(tmp_path, name=new_name(), masks_dir=tmp_path / "m")
    assert ds.distinct("city") == ["aachen", "bonn"]
    np.testing.assert_array_equal(_gt(ds, 0), [[0, 13, 255], [18, 11, 255]])
    np.testing.assert_array_equal(_gt(ds, 1), [[0, 18, 255], [5, 5, 5]])
    assert ds.mask_targets["ground_truth"][13] == "car"


def test_missing_layout_and_existing_name_are_clear_errors(tmp_path, new_name):
    with pytest.raises(InvalidInputError, match="ADEChallengeData2016"):
        load_ade20k(tmp_path / "nothing", name=new_name())
    _voc_layout(tmp_path, 2012, "SegmentationClass", "Segmentation", [[0, 1, 2], [0, 0, 0]])
    name = new_name()
    load_voc(tmp_path, name=name, masks_dir=tmp_path / "m")
    with pytest.raises(InvalidInputError, match="exists"):
        load_voc(tmp_path, name=name, masks_dir=tmp_path / "m")
    assert len(load_voc(tmp_path, name=name, masks_dir=tmp_path / "m", overwrite=True)) == 1
    with pytest.raises(InvalidInputError, match="unknown preset"):
        load_protocol_dataset("pascal", tmp_path)


def test_protocols_are_one_record_each_and_listed_live(tmp_path, monkeypatch, capsys):
    """Issue 19: one record per protocol (preset, loader, default split, published mIoU); a preset
    registered without a loader is a clear input error (exit 2), not a KeyError (exit 3)."""
    from fiftyone_cass import PRESETS, cli
    from fiftyone_cass.models.presets import Preset
    from fiftyone_cass.protocols import records
    from fiftyone_cass.protocols.runner import run_protocol

    ade = records.get_protocol("ade20k")
    assert ade.preset is PRESETS["ade20k"] and ade.loader is load_ade20k and ade.default_split == "validation"
    assert ade.published_miou["cass"] == 20.4 and records.published_miou("city_scapes", "cass") == 39.4
    assert set(records.protocol_names()) == set(PRESETS)  # every built-in preset has its record

    monkeypatch.setitem(PRESETS, "mine", Preset("mine", "cass_cls_voc21.txt", num_classes=21))
    with pytest.raises(InvalidInputError, match=r"preset 'mine' has no dataset loader.*protocols with a loader: voc21"):
        run_protocol("mine", tmp_path)
    with pytest.raises(InvalidInputError, match="no dataset loader"):
        load_protocol_dataset("mine", tmp_path)
    # the command line lists it (read from the registry now) and refuses it as an input error
    rc = cli.main(["eval", "--protocol", "mine", str(tmp_path), "--backbone", "tiny", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "preset 'mine' has no dataset loader" in err and "Traceback" not in err, err
    # registered with a loader, it is a protocol like the others
    calls = []
    monkeypatch.setitem(records.PROTOCOLS, "mine", records.Protocol("mine", lambda root, **kw: calls.append(kw) or 1,
                                                                      default_split="test"))
    assert load_protocol_dataset("mine", tmp_path) == 1 and calls[0]["split"] == "test"
