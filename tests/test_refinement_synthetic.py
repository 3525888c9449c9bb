"""The edge measurement that needs no weights (issue 20 item 6, benchmarks/refinement.py):
synthetic scenes of flat-coloured shapes, logits right but blurred to patch resolution. PAMR must
raise the boundary F-score; voting with the true shapes as regions must reach >= 99% mIoU."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import refinement  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pamr_raises_boundary_f_and_voting_with_true_shapes_reaches_99_miou(seed):
    scene = refinement.make_scene(160, 224, num_shapes=4, seed=seed)
    res = refinement.measure(scene)
    blurred, pamr, voted = res["blurred"], res["pamr"], res["vote"]
    assert blurred["boundary_f"] < 0.95  # the blur is there to be removed
    assert pamr["boundary_f"] > blurred["boundary_f"] + 0.05
    assert pamr["miou"] >= blurred["miou"]
    assert voted["miou"] >= 0.99
    assert res["pamr+vote"]["miou"] >= 0.99


def test_scene_generator_gives_known_masks():
    scene = refinement.make_scene(160, 224, num_shapes=4, seed=5)
    # flat colours: one colour per class, and the instance map refines the label map
    for c in np.unique(scene.labels):
        assert len(np.unique(scene.image[scene.labels == c], axis=0)) == 1
    for i in np.unique(scene.instances):
        assert len(np.unique(scene.labels[scene.instances == i])) == 1
    assert len(np.unique(scene.instances)) == 5  # background + 4 shapes, none occluded away


def test_boundary_f_and_miou_measure_what_they_say():
    gt = np.zeros((64, 64), np.int64)
    gt[16:48, 16:48] = 1
    assert refinement.boundary_f(gt, gt) == 1.0
    assert refinement.miou(gt, gt, 2) == 1.0
    near = np.roll(gt, 2, axis=1)  # within the 2-px tolerance
    far = np.roll(gt, 5, axis=1)
    assert refinement.boundary_f(near, gt) > 0.95
    assert refinement.boundary_f(far, gt) < 0.6
    assert refinement.miou(far, gt, 2) < refinement.miou(near, gt, 2) < 1.0
