"""The table of output fields (fiftyone_cass/fo/outputs.py) and the confidence outputs of issue 22,
on a real MongoDB with the tiny backbone: one tag rule on every surface, `<field>_confidence` in
[0, 1] and sortable, per-class confidence as a view, uncertainty Heatmaps at the image's size as
PNG files that round-trip and resume, the review queue; and on synthetic probabilities, that the
confidence is lower where the labels are wrong."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fiftyone as fo

from _label_helpers import BATCH, CLASSES, OPTS, add_samples, make_images, read_mask
from fiftyone_cass.fo.apply import apply, retag
from fiftyone_cass.fo.outputs import (OUTPUTS, form_settings, per_class_confidence, presence_label, presence_tags,
                                      readme_table, tag_classes)
from fiftyone_cass.fo.review import REVIEW_TAG, class_confidence, review_queue

KW = dict(OPTS, batch_size=BATCH)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 6)


def _reference(paths, **flags):
    from fiftyone_cass import Segmenter

    seg = Segmenter(classes=list(CLASSES), batch_size=BATCH, **OPTS)
    for k, v in flags.items():
        setattr(seg, k, v)
    return seg(paths)


# ------------------------------------------------------------------------------------------------
# The table and the one tag rule
# ------------------------------------------------------------------------------------------------
def test_every_output_has_a_setting_and_the_form_offers_the_table_s_inputs():
    from fiftyone_cass.config.settings import LabelSettings
    from fiftyone_cass.config.schema import setting_fields

    names = set(setting_fields(LabelSettings))
    for o in OUTPUTS:
        assert o.setting in names, o.name
        assert set(o.form) <= names, o.name
    assert {"confidence_field", "uncertainty_field", "presence_field", "tag_prefix", "embeddings_field"} <= set(form_settings())
    assert [o.name for o in OUTPUTS][-1] == "segmentation"  # the label is written last (resume)


def test_readme_lists_the_output_table():
    assert readme_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_tag_rule_never_tags_background_and_agrees_with_the_presence_labels():
    names = ["background", "dog", "cat", "bird"]
    scores = [0.9, 0.4, 0.1, float("nan")]
    assert tag_classes(names, scores, 0.1) == ["dog", "cat"]
    assert tag_classes(names, scores, 0.1, background_label=0) == ["dog", "cat"]
    label = presence_label(names, scores, 0.1)
    assert sorted(c.label for c in label.classifications) == ["cat", "dog"]
    assert presence_tags("p", names, scores, 0.1) == ["p:dog", "p:cat"]
    # without a background label (a preset with none), every class scoring enough is a tag
    assert tag_classes(["wall", "road"], [0.5, 0.5], 0.1) == ["wall", "road"]


def test_labelling_run_apply_model_and_retag_tag_the_same_classes(fo_dataset, images):
    from fiftyone_cass import CassModel

    ds = add_samples(fo_dataset("tags"), images[:4])
    apply(ds, classes=CLASSES, label_field="lab", **KW)
    model = CassModel(CLASSES, batch_size=BATCH, **OPTS)
    ds.apply_model(model, "mod", batch_size=BATCH)
    for s in ds:
        lab = sorted(t.split(":", 1)[1] for t in s.tags if t.startswith("lab:"))
        mod = sorted(t.split(":", 1)[1] for t in s.tags if t.startswith("mod:"))
        shown = sorted(c.label for c in s["lab_presence"].classifications)
        assert lab == mod == shown, s.id
        # apply_model writes the confidence outputs too, equal to the labelling run's
        assert s["mod_confidence"] == pytest.approx(s["lab_confidence"], abs=1e-6)
        assert [c.label for c in s["mod_confidence_per_class"].classifications] == \
               [c.label for c in s["lab_confidence_per_class"].classifications]
    # retag at the same threshold changes nothing: the same rule
    assert retag(ds, "lab_presence", threshold=0.1)["_samples_changed"] == 0
    assert retag(ds, "mod_presence", threshold=0.1)["_samples_changed"] == 0
    assert not any(t.endswith(":background") for t in ds.distinct("tags"))


# ------------------------------------------------------------------------------------------------
# Confidence with every label (items 1, 2, 5)
# ------------------------------------------------------------------------------------------------
def test_confidence_fields_are_in_range_sortable_equal_to_the_engine_and_reruns_add_nothing(fo_dataset, images):
    ds = add_samples(fo_dataset("conf"), images)
    s1 = apply(ds, classes=CLASSES, **KW)
    assert s1.num_labeled == len(images)
    ref = {p: r for p, r in zip(images, _reference(images, return_confidence=True))}
    for s in ds:
        c = s["cass_confidence"]
        assert isinstance(c, float) and 0.0 <= c <= 1.0
        for part in ("cass_confidence_margin", "cass_confidence_removed"):
            assert 0.0 <= s[part] <= 1.0
        r = ref[s.filepath]
        assert c == pytest.approx(r.confidence.mean, abs=1e-6)
        assert s["cass_confidence_margin"] == pytest.approx(r.confidence.margin, abs=1e-6)
        # per class: the labels that got pixels, their mean top-1 probability and pixel share
        mask = read_mask(s["cass"])
        names = ["background"] + CLASSES
        per = {c.label: c for c in s["cass_confidence_per_class"].classifications}
        assert set(per) == {names[j] for j in np.unique(mask)}
        for j in np.unique(mask):
            assert per[names[j]].confidence == pytest.approx(float(r.confidence.per_class[j]), abs=1e-6)
            assert per[names[j]].share == pytest.approx(float((mask == j).mean()), abs=1e-9)
    # the App's sort: least confident first
    order = ds.sort_by("cass_confidence").values("cass_confidence")
    assert order == sorted(order) and len(order) == len(images)
    assert ds.get_field("cass_confidence").__class__.__name__ == "FloatField"
    # a rerun of the finished job adds nothing
    before = ds.values("cass_confidence")
    s2 = apply(ds, classes=CLASSES, **KW)
    assert s2.num_labeled == 0 and s2.num_already_done == len(images)
    assert ds.values("cass_confidence") == before
    # a sample that lost its confidence (labelled before it existed) is labelled again, alone
    sid = ds.first().id
    ds.select(sid).set_values("cass_confidence", [None])
    s3 = apply(ds, classes=CLASSES, **KW)
    assert s3.num_labeled == 1 and ds[sid]["cass_confidence"] == pytest.approx(before[0])

    # per-class confidence: "least confident samples containing class c" is a view
    cls = max(class_confidence(ds).items(), key=lambda kv: kv[1]["samples"])[0]
    view = review_queue(ds, n=3, class_name=cls)
    got = [min(c.confidence for c in s["cass_confidence_per_class"].classifications if c.label == cls) for s in view]
    every = sorted(min(c.confidence for c in s["cass_confidence_per_class"].classifications if c.label == cls)
                   for s in ds if any(c.label == cls for c in s["cass_confidence_per_class"].classifications))
    assert got == every[:3]
    stats = class_confidence(ds)
    assert class_confidence(ds, label_field="cass") == stats  # the IoU panel's call
    assert stats[cls]["samples"] == len(every)
    assert stats[cls]["confidence"] == pytest.approx(float(np.mean(every)))

    # the review queue: the N least confident overall, tagged and saved
    q = review_queue(ds, n=2, tag=REVIEW_TAG, saved_view="to_review")
    assert q.values("cass_confidence") == sorted(ds.values("cass_confidence"))[:2]
    assert set(ds.match_tags(REVIEW_TAG).values("id")) == set(q.values("id"))
    assert ds.load_saved_view("to_review").values("id") == q.values("id")
    from fiftyone_cass.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="n=0"):
        review_queue(ds, n=0)
    with pytest.raises(InvalidInputError, match="no field 'nope_per_class'"):
        review_queue(ds, confidence_field="nope", class_name="dog")


def test_confidence_can_be_turned_off(fo_dataset, images):
    ds = add_samples(fo_dataset("noconf"), images[:2])
    apply(ds, classes=CLASSES, confidence_field=None, **KW)
    assert not ds.has_sample_field("cass_confidence") and ds.count("cass") == 2


# ------------------------------------------------------------------------------------------------
# Uncertainty maps (item 3)
# ------------------------------------------------------------------------------------------------
def test_uncertainty_heatmaps_are_pngs_at_the_image_size_that_round_trip_and_resume(fo_dataset, images, tmp_path):
    ds = add_samples(fo_dataset("unc"), images)
    s = apply(ds, classes=CLASSES, uncertainty_field="cass_uncertainty", masks="disk", mask_dir=str(tmp_path), **KW)
    assert s.num_labeled == len(images)
    ref = {p: r for p, r in zip(images, _reference(images, uncertainty="margin"))}
    for smp in ds:
        hm = smp["cass_uncertainty"]
        assert isinstance(hm, fo.Heatmap) and hm.map is None and list(hm.range) == [0, 255]
        assert hm.map_path.startswith(str(tmp_path / "cass_uncertainty"))
        with Image.open(hm.map_path) as im:
            w, h = im.size
            stored = np.asarray(im)
        with Image.open(smp.filepath) as im:
            assert (w, h) == im.size  # the original size
        u = stored.astype(np.float32) / 255.0
        assert 0.0 <= u.min() and u.max() <= 1.0
        assert np.abs(u - ref[smp.filepath].uncertainty).max() <= 0.5 / 255 + 1e-6  # the engine's map, 8-bit
    # rerun: nothing; a missing heatmap file: only that sample again
    assert apply(ds, classes=CLASSES, uncertainty_field="cass_uncertainty", masks="disk",
                 mask_dir=str(tmp_path), **KW).num_labeled == 0
    gone = ds.first()
    os.remove(gone["cass_uncertainty"].map_path)
    again = apply(ds, classes=CLASSES, uncertainty_field="cass_uncertainty", masks="disk", mask_dir=str(tmp_path), **KW)
    assert again.num_labeled == 1 and os.path.exists(ds[gone.id]["cass_uncertainty"].map_path)
    # the entropy kind, in the database
    ds2 = add_samples(fo_dataset("unc2"), images[:2])
    apply(ds2, classes=CLASSES, uncertainty_field="unc", uncertainty_kind="entropy", masks="database", **KW)
    for smp in ds2:
        m = smp["unc"].map
        with Image.open(smp.filepath) as im:
            assert m.shape == (im.size[1], im.size[0]) and m.dtype == np.uint8


def test_a_rerun_with_another_uncertainty_kind_recomputes_the_maps_in_place(fo_dataset, images, tmp_path):
    # uncertainty_kind is an output setting (not in the label hash): like a rerun that turns an output
    # on, a rerun asking for another kind computes the maps again (the kind is recorded on each map)
    ds = add_samples(fo_dataset("unckind"), images[:3])
    kw = dict(KW, uncertainty_field="unc", masks="disk", mask_dir=str(tmp_path))
    apply(ds, classes=CLASSES, **kw)
    assert ds.distinct("unc.kind") == ["margin"]
    paths = dict(zip(*ds.values(["id", "unc.map_path"])))
    s = apply(ds, classes=CLASSES, uncertainty_kind="entropy", **kw)
    assert s.num_labeled == 3 and ds.distinct("unc.kind") == ["entropy"]
    ref = {p: r for p, r in zip(images, _reference(images[:3], uncertainty="entropy"))}
    for smp in ds:
        assert smp["unc"].map_path == paths[smp.id]  # same settings: the same file, rewritten atomically
        with Image.open(smp["unc"].map_path) as im:
            stored = np.asarray(im).astype(np.float32) / 255.0
        assert np.abs(stored - ref[smp.filepath].uncertainty).max() <= 0.5 / 255 + 1e-6  # now the entropy map
    assert apply(ds, classes=CLASSES, uncertainty_kind="entropy", **kw).num_labeled == 0
    # a map without a recorded kind (an older version's) counts as missing
    first = ds.first()
    first["unc"].kind = None
    first.save()
    assert apply(ds, classes=CLASSES, uncertainty_kind="entropy", **kw).num_labeled == 1


def test_overwrite_removes_the_replaced_mask_and_heatmap_files_unless_another_dataset_uses_them(
        fo_dataset, images, tmp_path):
    ds = add_samples(fo_dataset("uncover"), images[:3])
    kw = dict(KW, uncertainty_field="unc", masks="disk", mask_dir=str(tmp_path))
    apply(ds, classes=CLASSES, **kw)
    old = {sid: (m, u) for sid, m, u in zip(*ds.values(["id", "cass.mask_path", "unc.map_path"]))}
    keep = ds.first().id
    clone = ds.select(keep).clone()  # shares the first sample's files
    try:
        s = apply(ds, classes=["dog", "cat"], overwrite=True, **kw)  # other settings: new files
        assert s.num_labeled == 3
        for sid, m, u in zip(*ds.values(["id", "cass.mask_path", "unc.map_path"])):
            assert os.path.isfile(m) and os.path.isfile(u) and (m, u) != old[sid]
            # the replaced files are gone once the new labels are stored, but those the clone points at
            assert all(os.path.exists(p) == (sid == keep) for p in old[sid])
    finally:
        clone.delete()


def test_a_bad_uncertainty_kind_is_refused_before_writing(fo_dataset, images):
    from fiftyone_cass.errors import InvalidInputError

    ds = add_samples(fo_dataset("badunc"), images[:1])
    with pytest.raises(InvalidInputError, match="uncertainty_kind"):
        apply(ds, classes=CLASSES, uncertainty_field="u", uncertainty_kind="variance", **KW)
    assert not ds.has_sample_field("cass")


# ------------------------------------------------------------------------------------------------
# Confidence is lower where the labels are wrong (synthetic probabilities)
# ------------------------------------------------------------------------------------------------
def test_confidence_is_lower_where_labels_are_wrong_on_synthetic_probabilities():
    from fiftyone_cass.core.confidence import band_sums, pixel_confidence

    gen = torch.Generator().manual_seed(0)
    q, h, w = 5, 64, 64
    q2c = torch.arange(q)
    truth = torch.randint(0, q, (h, w), generator=gen)
    sample_conf, sample_err = [], []
    for signal in (3.0, 2.0, 1.5, 1.0, 0.5):  # weaker evidence for the truth: more wrong labels
        logits = torch.randn(q, h, w, generator=gen)
        logits.scatter_add_(0, truth[None], torch.full((1, h, w), signal))
        conf = pixel_confidence(logits.clone(), q2c)
        labels = q2c[conf.query]
        wrong = labels != truth
        assert wrong.any() and (~wrong).any()
        assert conf.p1[wrong].mean() < conf.p1[~wrong].mean()  # per pixel
        assert conf.margin[wrong].mean() < conf.margin[~wrong].mean()
        mean, margin, removed, per_class = band_sums(conf, labels, torch.zeros_like(wrong), q).summary()
        sample_conf.append(mean)
        sample_err.append(float(wrong.float().mean()))
    # per sample: the more wrong labels, the lower the confidence (the review queue's order)
    assert np.argsort(sample_conf).tolist() == np.argsort(sample_err)[::-1].tolist()


def test_per_class_confidence_keeps_the_labels_with_pixels():
    names = ["background", "dog", "cat"]
    mask = np.array([[1, 1], [1, 0]], np.uint8)
    out = per_class_confidence(names, np.array([0.2, 0.9, np.nan]), mask)
    assert [(c.label, c.confidence, c.share) for c in out.classifications] == [("background", 0.2, 0.25),
                                                                                ("dog", 0.9, 0.75)]


# ------------------------------------------------------------------------------------------------
# The review queue operator
# ------------------------------------------------------------------------------------------------
def test_review_queue_operator_makes_the_view_tags_and_saves(fo_dataset, tmp_path):
    import fiftyone.operators as foo

    from fiftyone_cass.app.review_operators import REVIEW_URI, confidence_fields

    ds = fo_dataset("review")
    confs = [0.9, 0.2, 0.5, 0.7, 0.1]
    dog = [0.3, None, 0.8, 0.1, None]  # the samples containing "dog" and their confidence in it
    for i, (c, d) in enumerate(zip(confs, dog)):
        per = [fo.Classification(label="cat", confidence=c, share=0.5)]
        if d is not None:
            per.append(fo.Classification(label="dog", confidence=d, share=0.5))
        ds.add_sample(fo.Sample(filepath=str(tmp_path / f"{i}.png"), cass_confidence=c,
                                cass_confidence_per_class=fo.Classifications(classifications=per)))
    assert confidence_fields(ds) == ["cass_confidence"]
    op = foo.get_operator(REVIEW_URI)
    res = op(ds, n=2, tag=True, saved_view="low")
    assert res.result["samples"] == 2
    assert ds.select(res.result["ids"], ordered=True).values("cass_confidence") == [0.1, 0.2]
    assert sorted(ds.match_tags("needs_review").values("cass_confidence")) == [0.1, 0.2]
    assert ds.load_saved_view("low").values("cass_confidence") == [0.1, 0.2]
    res = op(ds, n=5, class_name="dog")
    got = [next(c.confidence for c in ds[i]["cass_confidence_per_class"].classifications if c.label == "dog")
           for i in res.result["ids"]]
    assert got == [0.1, 0.3, 0.8]
    # per class over samples (what the IoU panel shows beside each class's IoU)
    stats = class_confidence(ds, label_field="cass")
    assert stats["dog"]["samples"] == 3 and stats["dog"]["confidence"] == pytest.approx((0.3 + 0.8 + 0.1) / 3)
    assert stats["cat"]["samples"] == 5 and stats["cat"]["confidence"] == pytest.approx(sum(confs) / 5)


# ------------------------------------------------------------------------------------------------
# Concept heatmaps (item 4)
# ------------------------------------------------------------------------------------------------
def test_concept_heatmaps_for_the_target_only_at_the_image_size_and_they_resume(fo_dataset, images, tmp_path):
    import fiftyone_cass
    from fiftyone_cass import Segmenter

    ds = add_samples(fo_dataset("concept"), images[:4])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    ds.add_sample(fo.Sample(filepath=str(bad)))
    target = ds.skip(1)  # 3 images + the bad file
    kw = dict(KW, batch_size=1, masks="disk", mask_dir=str(tmp_path / "m"))
    calls = []

    def stop_after_one(pb):  # kill the run after its first batch is saved
        calls.append(pb.iteration)
        if pb.iteration >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fiftyone_cass.concept_heatmap(target, "a red car", "car", progress=stop_after_one, **kw)
    assert ds.count("car") == 1
    s = fiftyone_cass.concept_heatmap(target, "a red car", "car", **kw)
    assert s.num_already_done == 1 and s.num_computed == 2 and s.num_failed == 1
    assert ds.first()["car"] is None  # outside the target: untouched
    errors = dict(zip(*ds.values(["filepath", "car_error"])))
    assert errors.pop(str(bad)).startswith(str(bad)) and not any(errors.values())  # per-sample error
    seg = Segmenter(classes=["a red car"], background="default", batch_size=1, **OPTS)
    seg.probability_maps = (1,)
    for smp in target.exists("car"):
        hm = smp["car"]
        with Image.open(hm.map_path) as im:
            stored = np.asarray(im).astype(np.float32) / 255.0
        with Image.open(smp.filepath) as im:
            assert stored.shape == (im.size[1], im.size[0])
        ref = seg([smp.filepath])[0].probabilities[1]
        assert np.abs(stored - ref).max() <= 0.5 / 255 + 1e-6 and list(hm.range) == [0, 255]
    # a finished run adds nothing
    again = fiftyone_cass.concept_heatmap(target, "a red car", "car", **kw)
    assert again.num_computed == 0 and again.num_already_done == 3


def test_concept_heatmaps_claim_their_field_as_labelling_runs_do(fo_dataset, images, tmp_path):
    from fiftyone_cass.fo.claims import FieldClaimedError, field_claim
    from fiftyone_cass.fo.concepts import ConceptHeatmapRun

    ds = add_samples(fo_dataset("conceptclaim"), images[:2])
    kw = dict(KW, masks="database")
    running = ConceptHeatmapRun(ds, "a red car", "car", **kw)
    running.plan()  # holds the field from here to its end
    with pytest.raises(FieldClaimedError, match="'car'.*being written by a concept heatmap run"):  # another prompt: refused while it runs
        ConceptHeatmapRun(ds, "a dog", "car", **kw).plan()
    with pytest.raises(FieldClaimedError, match="concept heatmap run"):  # a labelling run on that field too
        apply(ds, classes=CLASSES, label_field="car", **KW)
    joined = ConceptHeatmapRun(ds.limit(1), "a red car", "car", **kw)  # the same prompt and settings join
    assert joined.plan() == 1 and len(field_claim(ds, "car")["holders"]) == 2
    for _ in joined.iter_progress():
        pass
    for _ in running.iter_progress():
        pass
    assert field_claim(ds, "car") is None  # released at the end
    assert ds.count("car") == 2 and running.summary.num_already_done == 0
    # a refused start holds nothing either
    from fiftyone_cass.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="overwrite"):
        ConceptHeatmapRun(ds, "a dog", "car", **kw).plan()
    assert field_claim(ds, "car") is None


def test_concept_heatmaps_of_another_prompt_are_refused_or_replaced_with_their_files_removed(
        fo_dataset, images, tmp_path):
    import fiftyone_cass
    from fiftyone_cass.errors import InvalidInputError

    ds = add_samples(fo_dataset("conceptover"), images[:3])
    kw = dict(KW, masks="disk", mask_dir=str(tmp_path))
    fiftyone_cass.concept_heatmap(ds, "a red car", "map", **kw)
    old = dict(zip(*ds.values(["id", "map.map_path"])))
    with pytest.raises(InvalidInputError, match="overwrite"):
        fiftyone_cass.concept_heatmap(ds, "a dog", "map", **kw)
    assert dict(zip(*ds.values(["id", "map.map_path"]))) == old and all(map(os.path.isfile, old.values()))
    s = fiftyone_cass.concept_heatmap(ds, "a dog", "map", overwrite=True, **kw)
    assert s.num_computed == 3 and ds.distinct("map.prompt") == ["a dog"]
    for sid, p in zip(*ds.values(["id", "map.map_path"])):
        assert os.path.isfile(p) and p != old[sid] and not os.path.exists(old[sid])


def test_concept_heatmaps_go_through_the_labelling_batch_loop(fo_dataset, images, monkeypatch):
    import fiftyone_cass
    from fiftyone_cass.fo import apply as A

    ds = add_samples(fo_dataset("conceptbatch"), images[:4])
    seen = []
    monkeypatch.setattr(A, "BATCH_PIXEL_BUDGET", 1)  # every image over the budget: a batch alone
    s = fiftyone_cass.concept_heatmap(ds, "a red car", "car", masks="database", progress=lambda pb: seen.append(
        pb.iteration), **dict(KW, batch_size=4))
    assert s.num_computed == 4 and ds.count("car") == 4
    assert sorted(set(seen)) == [0, 1, 2, 3, 4]  # saved one image at a time, as labelling batches are cut


def test_concept_heatmap_operator_writes_the_target_samples_only(fo_dataset, images):
    import fiftyone.operators as foo

    from fiftyone_cass.app.review_operators import CONCEPT_URI

    ds = add_samples(fo_dataset("conceptop"), images[:3])
    view = ds.limit(2)
    res = foo.get_operator(CONCEPT_URI)(view, "a dog", "dog_map", masks="database", **KW)
    assert res.result["num_computed"] == 2, res
    assert ds.count("dog_map") == 2 and ds.last()["dog_map"] is None
    m = ds.first()["dog_map"].map
    with Image.open(ds.first().filepath) as im:
        assert m.shape == (im.size[1], im.size[0])


def test_cli_label_writes_confidence_sortable_and_a_rerun_adds_nothing(tmp_path, capsys):
    import uuid

    from fiftyone_cass import cli

    img_dir = tmp_path / "imgs"
    make_images(img_dir, 3)
    name = f"cli-conf-{uuid.uuid4().hex[:8]}"
    tiny = ["--backbone", "tiny", "--device", "cpu", "--batch-size", str(BATCH), "-o", "mode=whole",
            "-o", "short_side=64", "-o", "long_side=128", "-o", "bg_rule=none"]
    try:
        argv = ["label", str(img_dir), "--dataset", name, "--classes", ", ".join(CLASSES), *tiny,
                "--uncertainty-field", "cass_unc"]
        assert cli.main(argv) == 0, capsys.readouterr().err
        ds = fo.load_dataset(name)
        conf = ds.values("cass_confidence")
        assert len(conf) == 3 and all(0.0 <= c <= 1.0 for c in conf)
        assert ds.sort_by("cass_confidence").values("cass_confidence") == sorted(conf)
        assert ds.count("cass_unc") == 3
        capsys.readouterr()
        assert cli.main(argv) == 0
        assert "0 labelled now, 3 already done" in capsys.readouterr().out
        ds.reload()
        assert ds.values("cass_confidence") == conf
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
