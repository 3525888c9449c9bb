"""Region voting inside the engine and through FiftyOne's apply_model (issue 20): the mean vote is
the argmax of each region's mean class probabilities; CassModel asks apply_model for the regions
field (needs_fields) and hashes the voting settings into its config id."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import fiftyone as fo

from _label_helpers import CLASSES, OPTS, make_images, read_mask
from fiftyone_cass.core.regions import Region
from fiftyone_cass.fo.model import CassModel
from fiftyone_cass.models.segmenter import Segmenter


def test_mean_vote_in_the_engine_is_the_argmax_of_mean_class_probabilities():
    rng = np.random.default_rng(2)
    img = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    seg = Segmenter(["dog, puppy", "cat", "car"], backbone="tiny", device="cpu", method="cass", bg_rule="none")
    seg.probability_maps = tuple(range(seg.num_labels))
    plain = seg.segment_arrays([img])[0]
    left = Region(0, 0, np.ones((60, 50), bool))
    right = Region(10, 40, np.ones((50, 40), bool))  # smaller: wins the overlap
    for mode in ("mean", "majority"):
        res = seg.segment_arrays([img], regions=[[left, right]], region_vote=mode)[0]
        assert res.regions_voted == 2
        lm = res.label_map
        assert len(np.unique(lm[10:60, 40:80])) == 1
        only_left = np.zeros((60, 80), bool)
        only_left[:, :50] = True
        only_left[10:, 40:] = False
        assert len(np.unique(lm[only_left])) == 1
        np.testing.assert_array_equal(lm[:10, 50:], plain.label_map[:10, 50:])  # outside: kept
        if mode == "mean":
            probs = np.stack([plain.probabilities[c] for c in range(seg.num_labels)])
            assert lm[20, 60] == int(np.argmax(probs[:, 10:60, 40:80].mean((1, 2))))
            assert lm[0, 0] == int(np.argmax(probs[:, only_left].mean(1)))
        else:
            counts = np.bincount(plain.label_map[10:60, 40:80].ravel(), minlength=seg.num_labels)
            assert lm[20, 60] == int(np.argmax(counts))
    assert seg.segment_arrays([img], regions=[None])[0].regions_voted is None


@pytest.fixture
def dataset(tmp_path):
    paths = make_images(tmp_path / "imgs", 3)
    ds = fo.Dataset(f"regions-{uuid.uuid4().hex[:8]}")
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    yield ds
    ds.delete()


def test_apply_model_hands_the_regions_field_to_cass_model(dataset):
    plain_model = CassModel(CLASSES, **OPTS)
    model = CassModel(CLASSES, regions_field="sam", **OPTS)
    assert model.needs_fields == {"regions": "sam"}
    assert model.config_id != plain_model.config_id  # voted labels are other labels
    assert CassModel(CLASSES, regions_field="sam", region_vote="mean", **OPTS).config_id != model.config_id
    dataset.apply_model(plain_model, label_field="plain")
    for s in dataset.iter_samples(autosave=True):
        h, w = read_mask(s.plain).shape
        s["sam"] = fo.Detections(detections=[fo.Detection(bounding_box=[0, 0, 1, 1], mask=np.ones((h, w), bool))])
    dataset.apply_model(model, label_field="voted")
    assert model.needs_fields == {"regions": "sam"}  # apply_model's own needs_fields kept ours
    for s in dataset:
        plain, voted = read_mask(s.plain), read_mask(s.voted)
        assert len(np.unique(voted)) == 1
        assert voted[0, 0] == np.argmax(np.bincount(plain.ravel()))
