"""The speed benchmark's baseline (benchmarks/reference_flow.py) must compute what the Segmenter
computes, or the speed-up it reports would compare different work. Tiny random-weight backbones,
random text vectors (the random text tower gives near-identical names, hence constant maps)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import bench  # noqa: E402
from reference_flow import ReferenceFlow  # noqa: E402

from fiftyone_cass.models.profiling import StageTimer  # noqa: E402
from fiftyone_cass.models.segmenter import Segmenter  # noqa: E402

CLASSES = ["dog", "cat", "horse", "car", "person", "tree", "boat", "bird"]


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_images")
    return bench.make_images([(300, 224), (224, 260)], 2, str(folder), seed=3)


@pytest.fixture(scope="module")
def models():
    """Private tiny models (not the process-wide cache: the random text vectors installed here
    must not leak into other tests' Segmenters)."""
    import open_clip

    from fiftyone_cass.models.backbones import get_backbone_spec, load_clip, load_dino
    from fiftyone_cass.models.presets import cdam_aug_words

    spec = get_backbone_spec("tiny")
    clip, dino = load_clip(spec), load_dino(spec)
    tok = open_clip.get_tokenizer("ViT-B-16")
    bench.install_random_text(clip, tok, "cpu", CLASSES + cdam_aug_words())
    return clip, dino, tok


@pytest.mark.parametrize("method", ["cass", "cass+cdam"])
def test_reference_flow_matches_segmenter(method, image_paths, models):
    # short side 224: 2 windows per image, so the test stays fast; no background threshold,
    # so the maps are argmax maps over all classes (a strict comparison)
    seg = Segmenter(classes=CLASSES, backbone="tiny", method=method, device="cpu", batch_size=2,
                    short_side=224, bg_rule="none", models=models)
    results = seg(image_paths)
    flow = ReferenceFlow(seg)
    from fiftyone_cass.images import load_rgb

    for path, res in zip(image_paths, results):
        label_map, thr = flow.segment(load_rgb(path, path))
        assert label_map.shape == res.label_map.shape
        assert len(np.unique(res.label_map)) >= 3, "trivial label map: the comparison would prove nothing"
        assert bench.agreement([label_map], [res.label_map]) >= 0.999
        assert thr == res.threshold == 0.0
    # every window went through the reference's per-window passes (2 DINO runs per window)
    assert set(flow.stage_seconds) >= {"dino", "clip", "clip_global", "spectral", "stitch"}
    assert ("cdam" in flow.stage_seconds) == (method == "cass+cdam")


def test_reference_flow_entropy_threshold_matches(image_paths, models):
    from fiftyone_cass.images import load_rgb

    seg = Segmenter(classes=CLASSES, backbone="tiny", method="cass+cdam", device="cpu", short_side=224, models=models)
    res = seg(image_paths[:1])[0]
    _, thr = ReferenceFlow(seg).segment(load_rgb(image_paths[0]))
    assert res.threshold > 0
    assert thr == pytest.approx(res.threshold, rel=1e-4)


def test_reference_flow_rejects_what_it_does_not_reproduce(models):
    seg = Segmenter(classes=CLASSES, backbone="tiny", method="naclip", device="cpu", models=models)
    with pytest.raises(ValueError, match="CASS"):
        ReferenceFlow(seg)
    seg = Segmenter(classes=CLASSES, backbone="tiny", method="cass", device="cpu", mode="whole", models=models)
    with pytest.raises(ValueError, match="slide"):
        ReferenceFlow(seg)


def test_stage_timer_records_every_stage_and_is_off_by_default(image_paths, models):
    seg = Segmenter(classes=CLASSES, backbone="tiny", method="cass+cdam", device="cpu", short_side=224, bg_rule="none",
                    models=models)
    assert seg.profiler is None
    plain = seg(image_paths[:1])[0]
    seg.profiler = StageTimer(seg.device)
    timed = seg(image_paths[:1])[0]
    assert set(seg.profiler.seconds) == set(bench.STAGES)
    assert all(v >= 0 for v in seg.profiler.seconds.values())
    assert set(seg.profiler.cpu_seconds) == set(seg.profiler.seconds)
    assert sum(seg.profiler.cpu_seconds.values()) > 0
    assert seg.profiler.calls["load"] == 1 and seg.profiler.calls["stitch"] == 1
    np.testing.assert_array_equal(plain.label_map, timed.label_map)


def test_agreement_and_label_stats():
    a = [np.array([[1, 2], [3, 4]], dtype=np.uint8)]
    b = [np.array([[1, 2], [3, 0]], dtype=np.uint8)]
    assert bench.agreement(a, b) == 0.75
    assert bench.label_stats(a).startswith("4 labels used, largest covers 25%")


def test_random_text_is_deterministic_per_name(models):
    clip, _, tok = models
    from fiftyone_cass.models.text import text_embedder

    bench.install_random_text(clip, tok, "cpu", ["zebra-test-name"])
    emb = text_embedder(clip, tok, "cpu")
    first = emb._cache["zebra-test-name"].clone()
    del emb._cache["zebra-test-name"]
    bench.install_random_text(clip, tok, "cpu", ["other-name", "zebra-test-name"])
    assert torch.equal(first, emb._cache["zebra-test-name"])
    assert not hasattr(clip, "_cass_text_embedder")  # nothing attached to open_clip's object
    assert torch.linalg.norm(first).item() == pytest.approx(1.0, abs=1e-6)
