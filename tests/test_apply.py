"""apply()/retag() on real FiftyOne datasets in a real MongoDB: labels, masks (database and PNG
files), mask_targets, presence scores and tags, failures, resume, guard, shards, GT id mapping."""

import os

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo

from _label_helpers import (BATCH, CLASSES, OPTS, Reference, add_samples, all_scores, make_bad_files, make_images,
                            read_mask)
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.apply import (
    CONFIG_ATTR,
    AutoLabelRun,
    apply,
    is_valid_png,
    mask_file_path,
    retag,
    shard_index,
    validate_shard,
    write_mask_png,
)
from fiftyone_cass.models.vocabulary import vocabulary_from_mask_targets

KW = dict(OPTS, batch_size=BATCH)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 6)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def reference():
    return Reference()


def _labels(ds, field="cass"):
    return {s.id: s[field] for s in ds.select_fields(field)}


# ------------------------------------------------------------------------------------------------
def test_database_masks_equal_library_output_with_scores_tags_and_failures(fo_dataset, images, bad, reference):
    ds = add_samples(fo_dataset("db"), images[:4] + [bad["garbage"], bad["empty"], bad["missing"]])
    s0 = ds.first()
    s0.tags = ["keep-me"]
    s0.save()

    summary = apply(ds, CLASSES, masks="database", presence_threshold=0.3, **KW)

    assert (summary.num_target, summary.num_labeled, summary.num_failed) == (7, 4, 3)
    assert summary.mask_dir is None
    # every failure is recorded on its sample, with a reason, and the run went on
    reasons = " | ".join(summary.failure_reasons)
    assert "cannot decode image" in reasons and "empty" in reasons and "no such image file" in reasons
    assert sum(summary.failure_reasons.values()) == 3
    assert "3 failed" in str(summary)
    errs = dict(zip(*ds.values(["filepath", "cass_error"])))
    assert errs[bad["garbage"]].startswith(bad["garbage"]) and "decode" in errs[bad["garbage"]]
    assert "empty" in errs[bad["empty"]] and "no such image file" in errs[bad["missing"]]
    assert all(errs[p] is None for p in images[:4])
    assert set(ds.exists("cass").values("filepath")) == set(images[:4])
    assert set(ds.exists("cass_presence").values("filepath")) == set(images[:4])

    # 0 = background, classes 1..C
    assert ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "frisbee", 3: "cat"}
    refs = dict(zip(images[:4], reference(images[:4])))
    for s in ds.exists("cass"):
        r = refs[s.filepath]
        mask = read_mask(s.cass)
        assert mask.shape == Image.open(s.filepath).size[::-1]
        np.testing.assert_array_equal(mask, r.label_map)
        assert s.cass[CONFIG_ATTR] == summary.config_id
        scores = all_scores(s.cass_presence)
        assert scores == pytest.approx(r.presence_dict(["background"] + CLASSES))
        assert set(scores) == set(CLASSES)  # the empty background line has no score
        # only the classes at or above the threshold are labels, best first, with their score
        visible = [(c.label, c.confidence) for c in s.cass_presence.classifications]
        assert visible == sorted(((c, v) for c, v in scores.items() if v >= 0.3), key=lambda x: -x[1])
        expected_tags = {f"cass:{c}" for c, v in scores.items() if v >= 0.3}
        assert {t for t in s.tags if t.startswith("cass:")} == expected_tags
    assert "keep-me" in ds.first().tags
    assert len(set(np.unique(np.concatenate([read_mask(l).ravel() for l in _labels(ds).values() if l])))) >= 2


def test_disk_masks_are_valid_pngs_and_a_rerun_labels_nothing_twice(fo_dataset, images, reference, tmp_path):
    ds = add_samples(fo_dataset("disk"), images[:5])
    mask_dir = tmp_path / "masks"
    summary = apply(ds, CLASSES, masks="disk", mask_dir=str(mask_dir), **KW)
    assert summary.num_labeled == 5 and summary.mask_dir == str(mask_dir)

    mtimes = {}
    for s, r in zip(ds, reference(images[:5])):
        path = s.cass.mask_path
        assert path == mask_file_path(str(mask_dir), "cass", s.id, str(ds._doc.id), summary.config_id)
        assert s.cass.mask is None
        assert is_valid_png(path)
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), r.label_map)
        np.testing.assert_array_equal(s.cass.get_mask(), r.label_map)  # FiftyOne reads it too
        mtimes[s.id] = os.stat(path).st_mtime_ns
    assert not [f for f in os.listdir(mask_dir / "cass") if not f.endswith(".png")]  # no temp files left

    # same arguments again: nothing to do, nothing rewritten
    again = apply(ds, CLASSES, masks="disk", mask_dir=str(mask_dir), **KW)
    assert (again.num_labeled, again.num_already_done, again.num_failed) == (0, 5, 0)
    assert {s.id: os.stat(s.cass.mask_path).st_mtime_ns for s in ds} == mtimes

    # a missing and a truncated mask file: exactly those two samples are labelled again
    s_missing, s_trunc = ds.skip(1).first(), ds.skip(3).first()
    os.remove(s_missing.cass.mask_path)
    data = open(s_trunc.cass.mask_path, "rb").read()
    open(s_trunc.cass.mask_path, "wb").write(data[: len(data) // 2])
    assert not is_valid_png(s_trunc.cass.mask_path)
    fixed = apply(ds, CLASSES, masks="disk", mask_dir=str(mask_dir), **KW)
    assert (fixed.num_labeled, fixed.num_already_done) == (2, 3)
    for s, r in zip(ds, reference(images[:5])):
        assert is_valid_png(s.cass.mask_path)
        np.testing.assert_array_equal(read_mask(s.cass), r.label_map)
        if s.id not in (s_missing.id, s_trunc.id):
            assert os.stat(s.cass.mask_path).st_mtime_ns == mtimes[s.id]


def test_only_the_target_view_is_labelled(fo_dataset, images):
    ds = add_samples(fo_dataset("view"), images[:5])
    ids = ds.values("id")
    view = ds.select([ids[1], ids[3]])
    summary = apply(view, CLASSES, label_field="sel", masks="database", **KW)
    assert summary.num_target == 2 and summary.num_labeled == 2
    assert set(ds.exists("sel").values("id")) == {ids[1], ids[3]}
    assert set(ds.exists("sel_presence").values("id")) == {ids[1], ids[3]}
    assert all(not [t for t in s.tags if t.startswith("sel:")] for s in ds.exclude([ids[1], ids[3]]))
    # a view that hides the label field still resumes correctly (the state is read from the dataset)
    again = apply(ds.select_fields().select([ids[1], ids[3]]), CLASSES, label_field="sel", masks="database", **KW)
    assert (again.num_already_done, again.num_labeled) == (2, 0)
    assert [t for t in ds[ids[1]].tags if t.startswith("sel:")]
    counts = retag(ds.exclude_fields("sel_presence").select([ids[1]]), "sel_presence", threshold=1.0)
    assert counts == {"_samples_changed": 1}
    assert not [t for t in ds[ids[1]].tags if t.startswith("sel:")] and [t for t in ds[ids[3]].tags if t.startswith("sel:")]

    # generated views (patches) are refused
    s = ds.first()
    s["det"] = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0.1, 0.1, 0.5, 0.5])])
    s.save()
    with pytest.raises(InvalidInputError, match="patches"):
        apply(ds.to_patches("det"), CLASSES, label_field="p", **KW)


def test_interrupted_run_resumes_without_relabelling(fo_dataset, images, reference):
    ds = add_samples(fo_dataset("resume"), images[:5])
    run = AutoLabelRun(ds, CLASSES, masks="database", **KW)
    it = run.iter_progress()
    assert next(it) == (0, 5)
    assert next(it) == (BATCH, 5)  # one batch saved
    it.close()  # "killed" between batches
    first = set(ds.exists("cass").values("id"))
    assert len(first) == BATCH
    cfg_first = {s.id: s.cass[CONFIG_ATTR] for s in ds.exists("cass")}

    rest = apply(ds, CLASSES, masks="database", **KW)
    assert (rest.num_already_done, rest.num_labeled) == (BATCH, 5 - BATCH)
    assert len(ds.exists("cass")) == 5
    assert {s.id: s.cass[CONFIG_ATTR] for s in ds.exists("cass").select(list(first))} == cfg_first
    for s, r in zip(ds, reference(images[:5])):
        np.testing.assert_array_equal(read_mask(s.cass), r.label_map)


def test_overwrite_guard_and_skip_existing(fo_dataset, images, reference):
    ds = add_samples(fo_dataset("guard"), images[:4])
    ids = ds.values("id")
    apply(ds.select(ids[:2]), CLASSES, masks="database", **KW)
    before = {s.id: read_mask(s.cass).copy() for s in ds.exists("cass")}
    old_cfg = ds.first().cass[CONFIG_ATTR]

    other = ["dog", "frisbee"]
    with pytest.raises(InvalidInputError, match=r"already holds labels of other settings.*overwrite=True"):
        apply(ds, other, masks="database", **KW)
    assert {s.id: read_mask(s.cass).tolist() for s in ds.exists("cass")} == {k: v.tolist() for k, v in before.items()}
    assert ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "frisbee", 3: "cat"}

    # skip_existing with a vocabulary that renames ids of the kept labels is refused
    with pytest.raises(InvalidInputError, match=r"2 kept by skip_existing"):
        apply(ds, other, masks="database", skip_existing=True, **KW)

    # skip_existing: only the two unlabelled samples get the new settings (other settings, same ids)
    s = apply(ds, CLASSES, masks="database", skip_existing=True, **dict(KW, short_side=56))
    assert (s.num_already_done, s.num_labeled) == (2, 2)
    cfgs = dict(zip(*ds.values(["id", f"cass.{CONFIG_ATTR}"])))
    assert cfgs[ids[0]] == cfgs[ids[1]] == old_cfg and cfgs[ids[2]] == cfgs[ids[3]] == s.config_id != old_cfg
    for sid in ids[:2]:
        np.testing.assert_array_equal(read_mask(ds[sid].cass), before[sid])

    # overwrite: the two old labels are replaced, the two current ones are kept
    o = apply(ds, CLASSES, masks="database", overwrite=True, **dict(KW, short_side=56))
    assert (o.num_already_done, o.num_labeled) == (2, 2)
    assert set(ds.values(f"cass.{CONFIG_ATTR}")) == {o.config_id}
    # overwrite of the whole field with other classes
    o = apply(ds, other, masks="database", overwrite=True, **KW)
    assert (o.num_already_done, o.num_labeled) == (0, 4)
    assert set(ds.values(f"cass.{CONFIG_ATTR}")) == {o.config_id}
    assert ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "frisbee"}
    for smp, r in zip(ds, reference(images[:4], classes=other)):
        np.testing.assert_array_equal(read_mask(smp.cass), r.label_map)
        assert "cass:cat" not in smp.tags
        assert set(all_scores(smp.cass_presence)) == set(other)


def test_changing_the_classes_of_part_of_a_field_is_refused(fo_dataset, images):
    """mask_targets name the ids of the whole field: a run that would rename them while samples it
    does not relabel keep labels with the old ids is refused before anything is written."""
    from fiftyone_cass import cli
    from fiftyone_cass.app import support as app_support

    ds = add_samples(fo_dataset("idspace"), images[:4])
    ids = ds.values("id")
    apply(ds, ["dog", "cat"], label_field="x1", masks="database", **KW)
    old_targets = {0: "background", 1: "dog", 2: "cat"}
    before = {s.id: (read_mask(s.x1).tolist(), s.x1[CONFIG_ATTR]) for s in ds}

    def unchanged():
        assert ds.mask_targets["x1"] == old_targets
        assert {s.id: (read_mask(s.x1).tolist(), s.x1[CONFIG_ATTR]) for s in ds} == before

    # a view, overwrite: the 2 samples outside it would be misread
    with pytest.raises(InvalidInputError) as exc:
        apply(ds.select(ids[:2]), ["cat", "dog"], label_field="x1", overwrite=True, masks="database", **KW)
    msg = str(exc.value)
    assert "field 'x1'" in msg and "on 2 sample(s)" in msg and "2 outside this run's target" in msg
    assert "id 1: 'dog' -> 'cat', 2: 'cat' -> 'dog'" in msg
    assert "run on the whole dataset and pass overwrite=True; or choose another label_field" in msg
    unchanged()
    # ... in the command line's and the App's words
    flags = cli._flags_of(cli.build_parser(), "label")
    assert "pass --overwrite; or choose another --label-field" in cli.cli_message(exc.value, flags)
    form = app_support.form_message(exc.value, app_support.AUTO_LABEL_FIELDS)
    assert f"tick “{app_support.AUTO_LABEL_FIELDS['overwrite']}”" in form
    assert f"another “{app_support.AUTO_LABEL_FIELDS['label_field']}”" in form

    # skip_existing with other classes: the samples it keeps would be misread
    ds.select(ids[2:]).set_values("x1", [None, None])
    with pytest.raises(InvalidInputError, match=r"on 2 sample\(s\) that this run would not relabel \(2 kept by skip_existing\)"):
        apply(ds, ["cat", "dog"], label_field="x1", skip_existing=True, masks="database", **KW)
    assert ds.mask_targets["x1"] == old_targets and len(ds.exists("x1")) == 2

    # the same classes keep working (skip_existing, and overwrite of a view)
    s = apply(ds, ["dog", "cat"], label_field="x1", skip_existing=True, masks="database", **KW)
    assert (s.num_already_done, s.num_labeled) == (2, 2)
    s = apply(ds.select(ids[:1]), ["dog", "cat"], label_field="x1", overwrite=True, masks="database", **KW)
    assert s.num_already_done == 1 and ds.mask_targets["x1"] == old_targets
    # classes added at the end keep every old id's name: allowed on a view
    s = apply(ds.select(ids[:2]), ["dog", "cat", "bird"], label_field="x1", overwrite=True, masks="database", **KW)
    assert s.num_labeled == 2 and ds.mask_targets["x1"] == {**old_targets, 3: "bird"}
    # the whole field relabelled with new ids
    s = apply(ds, ["cat", "dog"], label_field="x1", overwrite=True, masks="database", **KW)
    assert s.num_labeled == 4 and ds.mask_targets["x1"] == {0: "background", 1: "cat", 2: "dog"}
    assert set(ds.values(f"x1.{CONFIG_ATTR}")) == {s.config_id}


def test_label_field_equal_to_gt_field_is_refused(fo_dataset, images):
    ds = add_samples(fo_dataset("gtself"), images[:1])
    gt = fo.Segmentation(mask=np.full((4, 4), 3, np.uint8))
    s0 = ds.first()
    s0["ground_truth"] = gt
    s0.save()
    ds.mask_targets = {"ground_truth": {0: "background", 3: "dog"}}
    ds.save()
    with pytest.raises(InvalidInputError,
                       match="label_field 'ground_truth' is the gt_field: the predictions would replace the ground truth"):
        apply(ds, gt_field="ground_truth", label_field="ground_truth", overwrite=True, masks="database", **KW)
    assert ds.first().ground_truth.mask.tolist() == gt.mask.tolist()
    assert ds.mask_targets["ground_truth"] == {0: "background", 3: "dog"} and ds.list_runs() == []


def test_shards_are_disjoint_and_cover_the_target(fo_dataset, images):
    ds = add_samples(fo_dataset("shard"), images * 2)  # 12 samples, each file twice
    ids, paths = ds.values(["id", "filepath"])
    assert {shard_index(p, 3) for p in paths} <= {0, 1, 2}
    assert shard_index(paths[0], 3) == shard_index(paths[0], 3)
    seen = []
    for i in range(3):
        s = apply(ds, CLASSES, label_field="sh", masks="database", shard=(i, 3), presence_field=None, **KW)
        mine = {x for x, p in zip(ids, paths) if shard_index(p, 3) == i}  # by file path, as the CLI
        assert s.num_in_shard == len(mine) and s.num_labeled == len(mine) and s.num_already_done == 0
        now = set(ds.exists("sh").values("id"))
        assert now == set(seen) | mine and not (set(seen) & mine)
        seen.extend(mine)
    assert sorted(seen) == sorted(ids)
    assert not ds.has_sample_field("sh_presence") and not any(t.startswith("sh:") for t in ds.distinct("tags"))
    for badshard in [(3, 3), (0, 0), (1,), "0/2"]:
        with pytest.raises(InvalidInputError):
            validate_shard(badshard)


def test_gt_mask_targets_give_gt_ids(fo_dataset, images, reference):
    ds = add_samples(fo_dataset("gt"), images[:3])
    ds.mask_targets = {
        "gt_bg": {0: "background", 3: "dog", 7: "frisbee", 255: "ignore"},
        "gt_nobg": {0: "dog", 1: "frisbee", 255: "void"},
    }
    ds.add_sample_field("gt_bg", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    ds.add_sample_field("gt_nobg", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    ds.save()

    apply(ds, gt_field="gt_bg", label_field="p_bg", masks="database", **KW)
    assert ds.mask_targets["p_bg"] == {0: "background", 3: "dog", 7: "frisbee"}
    lut = np.array([0, 3, 7])
    for s, r in zip(ds, reference(images[:3], classes=["dog", "frisbee"])):
        np.testing.assert_array_equal(read_mask(s.p_bg), lut[r.label_map])

    # reduce_zero_label style: id 0 is a class; background is never predicted
    apply(ds, gt_field="gt_nobg", label_field="p_nobg", masks="database", **KW)
    assert ds.mask_targets["p_nobg"] == {0: "dog", 1: "frisbee"}
    for s, r in zip(ds, reference(images[:3], classes=["dog", "frisbee"])):
        assert r.label_map.min() >= 1  # bg_rule none: the Segmenter never outputs its background
        np.testing.assert_array_equal(read_mask(s.p_nobg), r.label_map - 1)
        assert {t for t in s.tags if t.startswith("p_nobg:")} <= {"p_nobg:dog", "p_nobg:frisbee"}


def test_vocabulary_from_mask_targets_rules():
    classes, lut, bg, out = vocabulary_from_mask_targets({0: "unlabeled", 5: "sky", 2: "tree"})
    assert (classes, lut.tolist(), bg, out) == (["tree", "sky"], [0, 2, 5], 0, {0: "unlabeled", 2: "tree", 5: "sky"})
    classes, lut, bg, out = vocabulary_from_mask_targets({0: "wall", 1: "floor", 300: "lamp"})
    assert classes == ["wall", "floor", "lamp"] and bg is None and lut.dtype == np.uint16
    assert lut[1:].tolist() == [0, 1, 300]
    with pytest.raises(InvalidInputError, match="not an integer id"):
        vocabulary_from_mask_targets({"#ff0000": "cat"}, "gt")
    with pytest.raises(InvalidInputError, match="no mask_targets"):
        vocabulary_from_mask_targets({}, "gt")
    with pytest.raises(InvalidInputError, match="no class"):
        vocabulary_from_mask_targets({0: "background", 255: "ignore"}, "gt")


def test_bad_arguments_fail_before_writing(fo_dataset, images):
    ds = add_samples(fo_dataset("args"), images[:1])
    with pytest.raises(InvalidInputError, match="exactly one of"):
        apply(ds, CLASSES, preset="voc21", **KW)
    with pytest.raises(InvalidInputError, match="exactly one of"):
        apply(ds, **KW)
    with pytest.raises(InvalidInputError, match="skip_existing=True and overwrite=True exclude each other"):
        apply(ds, CLASSES, skip_existing=True, overwrite=True, **KW)
    with pytest.raises(InvalidInputError, match="duplicate"):
        apply(ds, ["dog", "Dog"], **KW)
    with pytest.raises(InvalidInputError, match="gt_field 'nope'"):
        apply(ds, gt_field="nope", **KW)
    with pytest.raises(InvalidInputError, match="label_field='filepath' is not allowed: a plain field name, not a reserved"):
        apply(ds, CLASSES, label_field="filepath", **KW)
    with pytest.raises(InvalidInputError, match="option masks='s3' is not allowed: auto, disk or database"):
        apply(ds, CLASSES, masks="s3", **KW)
    ds.add_sample_field("taken", fo.StringField)
    with pytest.raises(InvalidInputError, match="not a Segmentation field"):
        apply(ds, CLASSES, label_field="taken", **KW)
    assert not ds.has_sample_field("cass") and ds.list_runs() == []


def test_retag_from_stored_scores(fo_dataset, images):
    ds = add_samples(fo_dataset("retag"), images[:4])
    apply(ds, CLASSES, masks="database", presence_threshold=0.0, **KW)
    assert all({f"cass:{c}" for c in CLASSES} <= set(s.tags) for s in ds)
    s0 = ds.first()
    s0.tags.append("user")
    s0.save()

    scores = {s.id: all_scores(s.cass_presence) for s in ds}
    assert all(len(s.cass_presence.classifications) == len(CLASSES) for s in ds)  # threshold 0: all shown
    thr = float(np.median([v for d in scores.values() for v in d.values()]))
    counts = retag(ds, "cass_presence", threshold=thr)
    for s in ds:
        assert {t for t in s.tags if t.startswith("cass:")} == {f"cass:{c}" for c, v in scores[s.id].items() if v >= thr}
        # the visible labels follow the new threshold, the full vector stays
        assert {c.label for c in s.cass_presence.classifications} == {c for c, v in scores[s.id].items() if v >= thr}
        assert all_scores(s.cass_presence) == scores[s.id]
    assert "user" in ds[s0.id].tags
    assert counts["_samples_changed"] >= 1
    assert sum(v for k, v in counts.items() if not k.startswith("_")) == sum(
        v >= thr for d in scores.values() for v in d.values()
    )
    none = retag(ds, "cass_presence", threshold=1.0)
    assert none == {"_samples_changed": 4}
    assert not [t for t in ds.distinct("tags") if t.startswith("cass:")]
    with pytest.raises(InvalidInputError, match="no field"):
        retag(ds, "nope_presence")


def test_retag_threshold_is_checked_like_presence_threshold(fo_dataset, images):
    ds = add_samples(fo_dataset("retagthr"), images[:2])
    apply(ds, CLASSES, masks="database", presence_threshold=0.0, **KW)
    tags = {s.id: sorted(s.tags) for s in ds}
    presence = {s.id: [(c.label, c.confidence) for c in s.cass_presence.classifications] for s in ds}
    for bad in [float("nan"), -1, 7, 1.01, "x", None]:
        with pytest.raises(InvalidInputError,
                           match=r"option threshold=.* is not allowed: a finite number from 0 to 1"):
            retag(ds, "cass_presence", threshold=bad)
    assert {s.id: sorted(s.tags) for s in ds} == tags  # nothing changed
    assert {s.id: [(c.label, c.confidence) for c in s.cass_presence.classifications] for s in ds} == presence
    assert retag(ds, "cass_presence", threshold="0")["_samples_changed"] == 0  # the bounds are allowed


def test_retag_defaults_to_the_tag_prefix_apply_used(fo_dataset, images):
    ds = add_samples(fo_dataset("retagpfx"), images[:2])

    def prefixed(p):
        return {t for s in ds for t in s.tags if t.startswith(p + ":")}

    # presence field not named after the label field: apply tags with the label field's name
    apply(ds, CLASSES, label_field="lf", presence_field="pp", masks="database", presence_threshold=0.0, **KW)
    assert prefixed("lf") == {f"lf:{c}" for c in CLASSES}
    counts = retag(ds, "pp", threshold=1.0)
    assert counts["_samples_changed"] == 2
    assert not prefixed("lf") and not prefixed("pp")
    retag(ds, "pp", threshold=0.0)
    assert prefixed("lf") == {f"lf:{c}" for c in CLASSES} and not prefixed("pp")

    # an explicit tag_prefix
    apply(ds, CLASSES, label_field="lf2", tag_prefix="tp", masks="database", presence_threshold=0.0, **KW)
    assert prefixed("tp") == {f"tp:{c}" for c in CLASSES}
    retag(ds, "lf2_presence", threshold=1.0)
    assert not prefixed("tp") and not prefixed("lf2")
    # an explicit prefix still wins
    retag(ds, "lf2_presence", threshold=0.0, tag_prefix="other")
    assert prefixed("other") == {f"other:{c}" for c in CLASSES} and not prefixed("tp")


def test_atomic_png_writer(tmp_path):
    a = (np.arange(12 * 10).reshape(12, 10) % 7).astype(np.uint8)
    p = tmp_path / "x" / "m.png"
    write_mask_png(str(p), a)
    assert is_valid_png(str(p)) and os.listdir(p.parent) == ["m.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(p)), a)
    big = np.array([[0, 300], [65535, 7]], dtype=np.uint16)
    write_mask_png(str(p), big)  # replaces in place, 16-bit for > 256 labels
    np.testing.assert_array_equal(np.asarray(Image.open(p)).astype(np.uint16), big)
    assert not is_valid_png(str(tmp_path / "none.png"))
    (tmp_path / "t.png").write_bytes(p.read_bytes()[:-5])
    assert not is_valid_png(str(tmp_path / "t.png"))


class _FixedSegmenter:
    """A stand-in for the model (not for FiftyOne): constant 64x64 masks, instantly."""

    class_lines = ["", "a", "b"]
    class_names = ["background", "a", "b"]
    background_id = 0
    method, backbone, precision, batch_size = "fixed", "none", "fp32", 1

    def __init__(self):
        from fiftyone_cass.models.segmenter import SegmenterOptions

        self.options = SegmenterOptions()

    def segment_loaded(self, loaded, names, return_embeddings=None):  # the files need not exist
        from fiftyone_cass.models.segmenter import SegmentationResult

        presence = np.array([np.nan, 0.7, 0.3], np.float32)
        return [(SegmentationResult(np.full((64, 64), 1 + i % 2, np.uint8), presence, 0.0), None) for i in range(len(loaded))]


def test_memory_stays_flat_and_progress_is_reported(fo_dataset, tmp_path):
    import tracemalloc

    peaks, reports = {}, []
    for n in (100, 1000):
        ds = fo_dataset("mem")
        ds.add_samples([fo.Sample(filepath=f"/data/img{i}.jpg") for i in range(n)])
        tracemalloc.start()
        s = apply(ds, segmenter=_FixedSegmenter(), masks="disk", mask_dir=str(tmp_path / str(n)), batch_size=50,
                  progress=lambda pb: reports.append((n, pb.progress)))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert s.num_labeled == n and len(os.listdir(tmp_path / str(n) / "cass")) == n
    # masks are 4 KB each: holding them all would add > 3.6 MB; ids/paths cost well under 1 KB/sample
    assert peaks[1000] - peaks[100] < 900 * 1024, peaks
    big = [p for n, p in reports if n == 1000]
    assert big[-1] == 1.0 and big == sorted(big) and len(big) > 2


def test_segmenters_stay_loaded_across_calls():
    from fiftyone_cass.fo.apply import get_segmenter

    a = get_segmenter(classes=list(CLASSES), batch_size=2, **OPTS)
    b = get_segmenter(classes=list(CLASSES), batch_size=5, **OPTS)
    assert a is b and b.batch_size == 5  # same model, text embeddings and settings; batch size per call
    c = get_segmenter(classes=["dog"], batch_size=2, **OPTS)
    assert c is not a and c.clip is a.clip  # another vocabulary shares the loaded backbones


class _HandshakeSegmenter(_FixedSegmenter):
    """Segmenting batch i waits until the loader has started on batch i + 1 and the writer on
    batch i - 1: without the overlap the waits time out and the test fails (no timing asserted)."""

    def __init__(self, writing_started):
        super().__init__()
        self.loads = 0
        self.segments = 0
        self.loaded_next = {}
        self.writing_started = writing_started
        self.overlaps = []

    def started_loading(self):  # called by the spy on AutoLabelRun._load_batch
        import threading

        self.loaded_next.setdefault(self.loads, threading.Event()).set()
        self.loads += 1

    def segment_loaded(self, loaded, names, return_embeddings=None):
        import threading

        i = self.segments
        self.segments += 1
        load_ahead = self.loaded_next.setdefault(i + 1, threading.Event()).wait(10) if i + 1 < self.num_batches else None
        write_behind = self.writing_started.setdefault(i - 1, threading.Event()).wait(10) if i >= 1 else None
        self.overlaps.append((i, load_ahead, write_behind, threading.current_thread().name))
        return super().segment_loaded(loaded, names)


def test_loading_and_saving_overlap_segmenting(fo_dataset, tmp_path, monkeypatch):
    import threading

    ds = fo_dataset("overlap")
    ds.add_samples([fo.Sample(filepath=f"/data/img{i}.jpg") for i in range(50)])
    writing_started, writer_threads, saved_batches = {}, set(), []
    original = AutoLabelRun._write_batch

    def spy_write(self, batch, outputs):
        writer_threads.add(threading.current_thread().name)
        n = len(saved_batches)
        writing_started.setdefault(n, threading.Event()).set()
        count = original(self, batch, outputs)
        saved_batches.append([sid for sid, _ in batch])
        return count

    original_load = AutoLabelRun._load_batch

    def spy_load(self, batch):
        self.segmenter.started_loading()
        return original_load(self, batch)

    monkeypatch.setattr(AutoLabelRun, "_write_batch", spy_write)
    monkeypatch.setattr(AutoLabelRun, "_load_batch", spy_load)
    seg = _HandshakeSegmenter(writing_started)
    seg.num_batches = 5
    run = AutoLabelRun(ds, segmenter=seg, masks="disk", mask_dir=str(tmp_path), batch_size=10)
    progress = list(run.iter_progress())
    assert [o[1:3] for o in seg.overlaps] == [(True, None), (True, True), (True, True), (True, True), (None, True)]
    assert all(o[3] == threading.current_thread().name for o in seg.overlaps)  # compute stays on the caller's thread
    assert writer_threads and threading.current_thread().name not in writer_threads
    assert progress == [(0, 50), (10, 50), (20, 50), (30, 50), (40, 50), (50, 50)]
    assert saved_batches == [ds.values("id")[i : i + 10] for i in range(0, 50, 10)]  # in order
    assert len(ds.exists("cass")) == 50 and run.summary.num_labeled == 50


def test_a_failing_save_stops_the_run_with_earlier_batches_intact(fo_dataset, tmp_path, monkeypatch):
    ds = fo_dataset("savefail")
    ds.add_samples([fo.Sample(filepath=f"/data/img{i}.jpg") for i in range(30)])
    original = AutoLabelRun._write_batch
    calls = []

    def failing_write(self, batch, outputs):
        calls.append(len(batch))
        if len(calls) == 2:
            raise OSError("database unavailable")
        return original(self, batch, outputs)

    monkeypatch.setattr(AutoLabelRun, "_write_batch", failing_write)
    run = AutoLabelRun(ds, segmenter=_FixedSegmenter(), masks="database", batch_size=10)
    with pytest.raises(OSError, match="database unavailable"):
        list(run.iter_progress())
    assert len(ds.exists("cass")) == 10  # the first batch, whole; nothing of the others
    assert ds.exists("cass").values("id") == ds.values("id")[:10]
