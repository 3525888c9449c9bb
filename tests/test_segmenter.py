"""End-to-end engine tests on the tiny random-weight backbones (same code path as the real
models): odd sizes and formats, determinism, batching, bad input, methods, vocabularies."""

import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_cass import ImageLoadError, InvalidInputError, Segmenter
from fiftyone_cass.models.presets import PRESETS, cdam_aug_words, preset_class_lines
from fiftyone_cass.models.vocabulary import queries_from_class_lines

CLASSES = ["dog", "frisbee", "grass"]


def _seg(**kw):
    kw.setdefault("backbone", "tiny")
    kw.setdefault("device", "cpu")
    kw.setdefault("classes", CLASSES)
    return Segmenter(**kw)


@pytest.fixture(scope="module")
def cass():
    return _seg(method="cass")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("imgs")
    paths = {}
    Image.fromarray(rng.integers(0, 255, (37, 301, 3), dtype=np.uint8)).save(d / "odd.jpg")
    paths["odd"] = d / "odd.jpg"
    Image.fromarray(rng.integers(0, 255, (500, 333, 3), dtype=np.uint8)).save(d / "tall.png")
    paths["tall"] = d / "tall.png"
    Image.fromarray(rng.integers(0, 255, (120, 90), dtype=np.uint8), "L").save(d / "gray.png")
    paths["gray"] = d / "gray.png"
    Image.fromarray(rng.integers(0, 255, (64, 80, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    paths["rgba"] = d / "rgba.png"
    arr16 = rng.integers(0, 65535, (50, 70), dtype=np.uint16)
    Image.fromarray(arr16).save(d / "deep.png")
    assert Image.open(d / "deep.png").mode.startswith("I")
    paths["deep16"] = d / "deep.png"
    return paths


def test_odd_sizes_and_formats(cass, images):
    results = cass(list(images.values()))
    for (name, path), r in zip(images.items(), results):
        with Image.open(path) as im:
            w, h = im.size
        assert r.label_map.shape == (h, w), name
        assert r.label_map.dtype == np.uint8
        assert r.label_map.max() < cass.num_labels
        assert r.presence.shape == (cass.num_labels,)
        p = r.presence[1:]
        assert np.all(np.isfinite(p)) and abs(p.sum() - 1) < 1e-5
        assert np.isnan(r.presence[0])  # free vocabulary: background has no query
    assert cass.mask_targets == {0: "background", 1: "dog", 2: "frisbee", 3: "grass"}


def test_sixteen_bit_uses_full_range(cass, images):
    from fiftyone_cass.images import load_rgb

    rgb = load_rgb(images["deep16"])
    assert rgb.dtype == np.uint8 and rgb.shape == (50, 70, 3)
    assert rgb.max() > 200  # scaled from 16 bits, not clipped to 255 everywhere
    assert len(np.unique(rgb)) > 50


def test_deterministic_and_batch_equals_single(images):
    seg = _seg(method="cass+cdam", batch_size=4, window_batch=7)
    paths = [images["gray"], images["rgba"], images["deep16"]]  # 6 windows each
    batch = seg(paths)
    again = seg(paths)
    single = [seg([p])[0] for p in paths]
    for a, b, c in zip(batch, again, single):
        assert np.array_equal(a.label_map, b.label_map)
        assert np.array_equal(a.label_map, c.label_map)
        np.testing.assert_allclose(a.presence, c.presence, rtol=1e-5, atol=1e-6)
        assert a.threshold == pytest.approx(c.threshold, rel=1e-5)


def test_inputs_pil_numpy_path_agree(cass, images):
    arr = np.asarray(Image.open(images["tall"]).convert("RGB"))
    r_path, r_pil, r_np = cass([images["tall"], Image.fromarray(arr), arr])
    assert np.array_equal(r_path.label_map, r_pil.label_map)
    assert np.array_equal(r_path.label_map, r_np.label_map)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(classes=[]), "empty"),
        (dict(classes=""), "empty"),
        (dict(classes=["dog", "cat", "dog"]), "duplicate"),
        (dict(classes=["dog", "Dog"]), "duplicate"),
        (dict(classes=["dog", ""]), "empty class"),
        (dict(classes=["background", "dog"]), "background"),
        (dict(classes=None), "no classes"),
        (dict(preset="nope", classes=None), "unknown preset"),
        (dict(preset="voc21", classes=None, background="default"), "preset 'voc21' has its own"),
        (dict(method="magic"), "method='magic' is not allowed: one of 'cass\\+cdam'"),
        (dict(bogus_option=1), "unknown option"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _seg(**kwargs)


def test_bad_images(cass, tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="notes.txt"):
        cass([txt])
    with pytest.raises(ImageLoadError, match="empty"):
        cass([empty])
    with pytest.raises(ImageLoadError, match="zero size"):
        cass([np.zeros((0, 10, 3), np.uint8)])
    with pytest.raises(ImageLoadError, match="missing.jpg"):
        cass([tmp_path / "missing.jpg"])
    assert issubclass(ImageLoadError, ValueError)
    # segment_safe: one bad image does not stop the others
    good = np.full((40, 50, 3), 128, np.uint8)
    out = cass.segment_safe([good, txt, good], names=["a", "b", "c"])
    assert out[0][0] is not None and out[2][0] is not None
    assert out[1][0] is None and "b" in out[1][1]
    assert np.array_equal(out[0][0].label_map, cass([good])[0].label_map)
    for call in (cass, cass.segment_safe):  # names must pair with images one to one
        with pytest.raises(ValueError, match="2 names for 3 images"):
            call([good, txt, good], names=["a", "b"])


@pytest.mark.parametrize("method", ["cass", "cass+cdam", "naclip", "naclip+cdam", "maskclip", "maskclip+cdam"])
def test_every_method_runs(method):
    seg = _seg(method=method)
    img = np.random.default_rng(1).integers(0, 255, (240, 260, 3), dtype=np.uint8)
    r1, r2 = seg([img, img])
    assert r1.label_map.shape == (240, 260)
    assert np.array_equal(r1.label_map, r2.label_map)


def _window_logits(seg, img):
    """Stitched query logits of one image (through the pipeline's own stages)."""
    prepared = seg._prepare(0, img, "x")
    vg = seg._global_embeddings([prepared])
    crops = torch.stack([prepared.image[:, y1:y2, x1:x2] for (y1, y2, x1, x2) in prepared.windows])
    logits, *_ = seg._forward_windows(crops, vg.expand(len(crops), -1))
    return logits


def test_cdam_refinement_is_applied():
    img = np.random.default_rng(2).integers(0, 255, (230, 300, 3), dtype=np.uint8)
    a = _window_logits(_seg(method="cass"), img)
    b = _window_logits(_seg(method="cass+cdam"), img)
    assert a.shape == b.shape
    assert (a - b).abs().max() > 1e-4
    b2 = _window_logits(_seg(method="cass+cdam"), img)
    assert torch.equal(b, b2)


@pytest.mark.parametrize("n", [1, 200])
def test_vocabulary_sizes(n):
    classes = ["thing"] if n == 1 else [f"class {i}" for i in range(n)]
    seg = _seg(method="cass+cdam", classes=classes)
    img = np.random.default_rng(3).integers(0, 255, (100, 130, 3), dtype=np.uint8)
    (r,) = seg([img])
    assert np.isfinite(r.threshold)
    assert r.label_map.max() <= n
    assert np.all(np.isfinite(r.presence[1:]))
    if n == 1:
        # one class: entropy 0 everywhere, no threshold, the class everywhere
        assert r.threshold == 0.0
        assert np.all(r.label_map == 1)


def test_whole_mode_and_crop_prior():
    img = np.random.default_rng(4).integers(0, 255, (200, 333, 3), dtype=np.uint8)
    whole = _seg(method="cass", mode="whole")
    (r,) = whole([img])
    assert r.label_map.shape == (200, 333)
    crop = _seg(method="cass", global_prior="crop")
    (r2,) = crop([img])
    assert r2.label_map.shape == (200, 333)


def test_tiny_and_extreme_aspect_images(cass):
    for shape in [(1, 1, 3), (20, 10000, 3), (3, 5, 3)]:
        img = np.random.default_rng(5).integers(0, 255, shape, dtype=np.uint8)
        (r,) = cass([img])
        assert r.label_map.shape == shape[:2]


def test_presets_class_files():
    for name, p in PRESETS.items():
        lines = preset_class_lines(p)
        queries, owner = queries_from_class_lines(lines)
        assert len(lines) == p.num_classes, name
        assert len(queries) == p.num_queries, name
        assert max(owner) == len(lines) - 1
    aug = cdam_aug_words()
    assert len(aug) == 80 and aug[0] == "black" and "rawmaterial" in aug


def test_preset_ids_follow_class_file():
    seg = _seg(method="cass", classes=None, preset="voc21")
    assert seg.num_labels == 21 and seg.background_id == 0
    assert seg.class_names[0] == "background" and seg.class_names[15] == "person"
    assert seg.class_lines[0].startswith("sky, wall")
    assert len(seg.queries) == 56
    seg = _seg(method="cass", classes=None, preset="ade20k")
    assert seg.background_id is None and seg.num_labels == 150
    assert seg.options.gamma == 0.30 and seg.options.alpha == 0.05


def test_background_words_option():
    seg = _seg(method="cass", classes=["dog", "frisbee", "cat"], background="default")
    assert seg.class_lines[0].startswith("sky, wall")
    assert seg.class_names[0] == "background"
    assert len(seg.queries) == 26 + 3
    with pytest.raises(InvalidInputError, match="also a class"):
        _seg(method="cass", classes=["sky", "dog"], background="default")
