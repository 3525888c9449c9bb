"""Data integrity of labelling runs on the real MongoDB (tiny backbone, real processes where it is
about concurrency): a run claims its label field, mask files are never shared or rewritten in
place (clones, overwrite runs), temp files of killed runs are removed, and an unwritable mask
directory fails once, before the model runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.core.odm as foo

from _label_helpers import BATCH, CLASSES, OPTS, add_samples, make_images, read_mask
from fiftyone_cass import cli
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.apply import CONFIG_ATTR, AutoLabelRun, apply, is_valid_png
from fiftyone_cass.fo.claims import FieldClaim, FieldClaimedError, field_claim, release_field

KW = dict(OPTS, batch_size=BATCH)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 6)


@pytest.fixture
def persistent(fo_dataset):
    """A persistent dataset (other processes may open it), deleted after the test."""

    def make(prefix, paths):
        ds = add_samples(fo_dataset(prefix), paths)
        ds.persistent = True
        return ds

    return make


def _python(code: str, log: Path, env_extra=None) -> subprocess.Popen:
    f = open(log, "ab")
    env = {**os.environ, **(env_extra or {})}
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=f, stderr=subprocess.STDOUT, env=env)
    f.close()
    return p


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


#: the prelude of the worker processes of the concurrency tests: a slow writer (and, with
#: ``slow_segment``, a slow CassModel) so that runs overlap, and ``barrier()``: announce
#: ``<ready><tag>``, then wait for the test to create ``<go>``
_WORKER = """
    import os, sys, time
    import fiftyone as fo
    from fiftyone_cass import cli
    from fiftyone_cass.fo.apply import AutoLabelRun, apply
    from fiftyone_cass.fo.model import CassModel
    TAG = sys.argv[1]
    def barrier():
        open({ready!r} + TAG, "w").close()
        while not os.path.exists({go!r}):
            time.sleep(0.02)
    slow = AutoLabelRun._write_batch
    BATCHES = []
    def write(self, batch, outputs):  # long enough for the runs to overlap
        time.sleep(0.4)
        if len(BATCHES) == {pause_after!r}:  # the test acts (deletes, removes...) between two batches
            barrier()
        BATCHES.append(len(batch))
        return slow(self, batch, outputs)
    AutoLabelRun._write_batch = write
    if {slow_segment!r}:
        seg = CassModel.segment
        def segment(self, *a, **k):
            time.sleep(0.4)
            return seg(self, *a, **k)
        CassModel.segment = segment
"""


def _workers(tmp_path: Path, body: str, tags, args=None, pause_after=None, slow_segment=False, **fmt):
    """Starts one worker process per tag (``sys.argv[1]`` = tag, ``sys.argv[2:]`` = ``args[tag]``):
    :data:`_WORKER`'s prelude, then ``body`` (formatted with ``fmt``). Without ``pause_after`` the
    body calls ``barrier()`` itself before its run. Returns ``(processes, logs, go)`` once every
    worker waits at its barrier; create ``go`` to let them continue."""
    go = tmp_path / "go"
    ready = str(tmp_path / "ready")
    code = textwrap.dedent(_WORKER.format(ready=ready, go=str(go), pause_after=pause_after,
                                          slow_segment=slow_segment)) + textwrap.dedent(body.format(**fmt))
    logs = [tmp_path / f"{t}.log" for t in tags]
    procs = [subprocess.Popen([sys.executable, "-c", code, t, *((args or {}).get(t, ()))], stdout=open(log, "wb"),
                              stderr=subprocess.STDOUT, env=os.environ.copy()) for t, log in zip(tags, logs)]
    deadline = time.monotonic() + 240
    while not all(Path(ready + t).exists() for t in tags):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [l.read_text() for l in logs]
        time.sleep(0.05)
    return procs, logs, go


def test_two_concurrent_runs_with_different_classes_one_proceeds(persistent, images, tmp_path):
    ds = persistent("claim", images)
    body = """
        barrier()
        try:
            s = apply(fo.load_dataset({name!r}), sys.argv[2].split(","), masks="disk", mask_dir={masks!r},
                      batch_size=1, **{opts!r})
        except Exception as exc:
            print("REFUSED", type(exc).__name__, exc)
            sys.exit(2)
        print("LABELLED", s.num_labeled, s.config_id)
    """
    procs, logs, go = _workers(tmp_path, body, ["a", "b"], args={"a": [",".join(CLASSES)], "b": ["dog,cat"]},
                               name=ds.name, masks=str(tmp_path / "m"), opts=OPTS)
    go.touch()
    codes = [p.wait(timeout=300) for p in procs]
    outs = [l.read_text() for l in logs]
    assert sorted(codes) == [0, 2], outs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert "LABELLED 6" in outs[winner]
    assert "REFUSED FieldClaimedError" in outs[loser] and "being labelled by another run" in outs[loser]
    assert "'cass'" in outs[loser] and ds.name in outs[loser]
    ds.reload()
    config = outs[winner].split()[-1]
    assert set(ds.values(f"cass.{CONFIG_ATTR}")) == {config}  # one run's labels only
    expected = {0: "background", **{i + 1: c for i, c in enumerate(CLASSES if winner == 0 else ["dog", "cat"])}}
    assert ds.mask_targets["cass"] == expected
    assert field_claim(ds, "cass") is None  # released at the end


def test_same_settings_join_a_claim_and_other_settings_are_refused(fo_dataset, images):
    ds = add_samples(fo_dataset("join"), images[:2])
    first = AutoLabelRun(ds, CLASSES, masks="database", **KW)
    first.plan()  # holds the claim until it has run
    same = AutoLabelRun(ds, CLASSES, masks="database", **KW)
    same.plan()  # same settings (e.g. another shard): joins
    assert len(field_claim(ds, "cass")["holders"]) == 2
    with pytest.raises(FieldClaimedError, match="fiftyone-cass release"):
        AutoLabelRun(ds, ["dog"], masks="database", overwrite=True, **KW).plan()
    list(first.iter_progress())
    list(same.iter_progress())
    assert field_claim(ds, "cass") is None
    apply(ds, ["dog"], masks="database", overwrite=True, **KW)  # free again


def test_a_claim_of_a_killed_run_is_recovered(fo_dataset, images, tmp_path):
    ds = add_samples(fo_dataset("dead"), images[:2])
    ds.persistent = True
    # a process claims the field for other settings and is killed
    code = f"""
        import os, signal
        import fiftyone as fo
        from fiftyone_cass.fo.claims import FieldClaim
        FieldClaim(fo.load_dataset({ds.name!r}), "cass", "0123456789abcdef").acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    """
    p = _python(code, tmp_path / "k.log")
    assert p.wait(timeout=120) == -9
    assert field_claim(ds, "cass")["config_id"] == "0123456789abcdef"
    s = apply(ds, CLASSES, masks="database", **KW)  # the dead holder (this host) is dropped
    assert s.num_labeled == 2 and field_claim(ds, "cass") is None
    # a holder on another host (cannot be checked from here) is released by hand, from Python or the CLI
    from fiftyone_cass.fo.claims import COLLECTION, FieldInUseError

    claims = foo.get_db_conn()[COLLECTION]

    def claim_on_another_host():
        FieldClaim(ds, "cass", "fedcba9876543210").acquire()
        claims.update_one({"dataset": ds.name, "field": "cass"}, {"$set": {"holders.0.host": "elsewhere"}})

    claim_on_another_host()
    with pytest.raises(FieldClaimedError):
        apply(ds, ["dog"], masks="database", overwrite=True, **KW)
    assert release_field(ds, "cass") and not release_field(ds, "cass")
    claim_on_another_host()
    assert cli.main(["release", ds.name, "--label-field", "cass"]) == 0
    assert field_claim(ds, "cass") is None
    assert cli.main(["release", ds.name, "--label-field", "cass"]) == 0  # nothing to release: fine

    # a holder alive on this machine (here: this process) is not released, unless forced
    FieldClaim(ds, "cass", "fedcba9876543210").acquire()
    with pytest.raises(FieldInUseError, match=f"being labelled right now by process {os.getpid()} on this machine"):
        release_field(ds, "cass")
    assert cli.main(["release", ds.name, "--label-field", "cass"]) == 2
    assert field_claim(ds, "cass") is not None
    assert cli.main(["release", ds.name, "--label-field", "cass", "--force"]) == 0
    assert field_claim(ds, "cass") is None


def test_clone_and_overwrite_never_touch_the_originals_masks(fo_dataset, images, tmp_path):
    masks = str(tmp_path / "masks")
    ds = add_samples(fo_dataset("orig"), images[:4])
    apply(ds, CLASSES, masks="disk", mask_dir=masks, **KW)
    before = {s.id: (s.cass.mask_path, _digest(s.cass.mask_path), read_mask(s.cass).copy()) for s in ds}
    clone = ds.clone(f"{ds.name}-clone")
    try:
        assert set(clone.values("id")) == set(ds.values("id"))  # clone keeps sample ids
        s = apply(clone, ["dog", "cat"], masks="disk", mask_dir=masks, overwrite=True, **KW)
        assert s.num_labeled == 4
        for smp in clone:
            assert smp.cass.mask_path not in {p for p, _, _ in before.values()}
            assert is_valid_png(smp.cass.mask_path)
    finally:
        fo.delete_dataset(clone.name)
    ds.reload()
    for smp in ds:
        path, digest, mask = before[smp.id]
        assert smp.cass.mask_path == path and _digest(path) == digest  # byte-identical
        np.testing.assert_array_equal(read_mask(smp.cass), mask)
    again = apply(ds, CLASSES, masks="disk", mask_dir=masks, **KW)
    assert (again.num_labeled, again.num_already_done) == (0, 4)


def test_overwrite_writes_new_files_and_removes_only_unreferenced_old_ones(fo_dataset, images, tmp_path):
    masks = tmp_path / "masks"
    ds = add_samples(fo_dataset("ow"), images[:3])
    apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    old = {s.id: s.cass.mask_path for s in ds}
    # a second field that points at one of the old files keeps it alive
    keep_id = ds.first().id
    ds.add_sample_field("copy", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    ds.set_values("copy", {keep_id: fo.Segmentation(mask_path=old[keep_id])}, key_field="id")
    apply(ds, ["dog"], masks="disk", mask_dir=str(masks), overwrite=True, **KW)
    for s in ds:
        assert s.cass.mask_path != old[s.id] and is_valid_png(s.cass.mask_path)
        assert os.path.exists(old[s.id]) == (s.id == keep_id)
    assert sorted(os.listdir(masks / "cass")) == sorted(
        [os.path.basename(s.cass.mask_path) for s in ds] + [os.path.basename(old[keep_id])])


def test_a_kill_at_the_rename_leaves_no_file_behind_after_the_rerun(fo_dataset, images, tmp_path):
    masks = tmp_path / "masks"
    ds = add_samples(fo_dataset("rename"), images[:3])
    ds.persistent = True
    code = f"""
        import os, signal
        import fiftyone as fo
        from fiftyone_cass.fo.apply import apply
        real = os.replace
        def replace(src, dst):  # the process dies exactly between writing the temp file and renaming it
            if src.endswith(".tmp") and dst.endswith(".png"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        os.replace = replace
        apply(fo.load_dataset({ds.name!r}), {CLASSES!r}, masks="disk", mask_dir={str(masks)!r}, batch_size=1, **{OPTS!r})
    """
    p = _python(code, tmp_path / "r.log")
    assert p.wait(timeout=180) == -9, (tmp_path / "r.log").read_text()
    left = os.listdir(masks / "cass")
    assert any(f.endswith(".tmp") for f in left) and not any(f.endswith(".png") for f in left)
    s = apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    assert s.num_labeled == 3
    files = os.listdir(masks / "cass")
    assert not [f for f in files if not f.endswith(".png")]  # the orphan is gone
    assert sorted(files) == sorted(os.path.basename(x.cass.mask_path) for x in ds)


def test_an_unwritable_mask_directory_fails_before_the_model_runs(fo_dataset, images, tmp_path, monkeypatch):
    ds = add_samples(fo_dataset("ro"), images[:3])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the mask directory should be")
    calls = []
    from fiftyone_cass.fo.model import CassModel

    original = CassModel.segment
    monkeypatch.setattr(CassModel, "segment", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with pytest.raises(InvalidInputError, match="cannot write masks to .*not-a-dir"):
        apply(ds, CLASSES, masks="disk", mask_dir=str(blocker), **KW)
    assert calls == [] and not ds.has_sample_field("cass")
    assert field_claim(ds, "cass") is None


def test_overwrite_of_the_original_keeps_the_masks_its_clone_uses(fo_dataset, images, tmp_path):
    masks = str(tmp_path / "masks")
    ds = add_samples(fo_dataset("cl-orig"), images[:4])
    apply(ds, CLASSES, masks="disk", mask_dir=masks, **KW)
    clone = ds.clone(f"{ds.name}-clone")
    try:
        before = {s.id: (s.cass.mask_path, _digest(s.cass.mask_path)) for s in clone}
        s = apply(ds, ["dog", "cat"], masks="disk", mask_dir=masks, overwrite=True, **KW)
        assert s.num_labeled == 4
        clone.reload()
        for smp in clone:  # the clone still points at the original's first masks: all kept, unchanged
            path, digest = before[smp.id]
            assert smp.cass.mask_path == path and os.path.exists(path) and _digest(path) == digest
        # once the clone is gone, the next overwrite of the original removes what nobody references
        fo.delete_dataset(clone.name)
        apply(ds, ["frisbee"], masks="disk", mask_dir=masks, overwrite=True, **KW)
        ds.reload()
        assert sorted(os.listdir(os.path.join(masks, "cass"))) == sorted(
            [os.path.basename(x.cass.mask_path) for x in ds] + [os.path.basename(p) for p, _ in before.values()])
    finally:
        if fo.dataset_exists(clone.name):
            fo.delete_dataset(clone.name)


def test_apply_and_apply_model_at_once_on_one_field_one_refuses(persistent, images, tmp_path):
    ds = persistent("am-race", images)
    body = """
        ds = fo.load_dataset({name!r})
        model = CassModel(["car", "tree"], **{opts!r}) if TAG == "model" else None
        run = AutoLabelRun(ds, {classes!r}, masks="disk", mask_dir={masks!r}, batch_size=1, **{opts!r})
        barrier()
        try:
            if model is None:
                s = run.run()
                print("LABELLED", s.num_labeled, s.config_id)
            else:
                ds.apply_model(model, "cass", batch_size=1)
                print("LABELLED", len(ds.exists("cass")), model.config_id)
        except Exception as exc:
            print("REFUSED", type(exc).__name__, exc)
            sys.exit(2)
    """
    procs, logs, go = _workers(tmp_path, body, ["apply", "model"], slow_segment=True, name=ds.name,
                               masks=str(tmp_path / "m"), opts=OPTS, classes=CLASSES)
    go.touch()
    codes = [p.wait(timeout=300) for p in procs]
    outs = [l.read_text() for l in logs]
    assert sorted(codes) == [0, 2], outs
    winner = 0 if codes[0] == 0 else 1
    assert "LABELLED 6" in outs[winner] and "REFUSED" in outs[1 - winner] and "'cass'" in outs[1 - winner], outs
    ds.reload()
    config = outs[winner].split()[-1]
    assert set(ds.values(f"cass.{CONFIG_ATTR}")) == {config}  # one vocabulary's labels only
    names = CLASSES if winner == 0 else ["car", "tree"]
    assert ds.mask_targets["cass"] == {0: "background", **{i + 1: c for i, c in enumerate(names)}}
    for s in ds:
        assert set(np.unique(read_mask(s.cass))) <= set(ds.mask_targets["cass"])
    assert field_claim(ds, "cass") is None


def test_apply_model_never_replaces_labels_of_other_settings(fo_dataset, images, tmp_path):
    from fiftyone_cass.fo.model import CassModel

    masks = tmp_path / "masks"
    ds = add_samples(fo_dataset("am-keep"), images[:3])
    apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    before = {s.id: (s.cass.mask_path, s.cass[CONFIG_ATTR]) for s in ds}
    files = sorted(os.listdir(masks / "cass"))
    # other settings on the field: refused, nothing changed
    with pytest.raises(InvalidInputError, match=r"'cass'.*labels of other settings on 3"):
        ds.apply_model(CassModel(["car", "tree"], **OPTS), "cass", batch_size=BATCH)
    # the same settings, but the masks are files fiftyone_cass.apply wrote: replacing them would orphan them
    with pytest.raises(InvalidInputError, match=r"'cass'.*mask files"):
        ds.apply_model(CassModel(CLASSES, **OPTS), "cass", batch_size=BATCH)
    ds.reload()
    assert {s.id: (s.cass.mask_path, s.cass[CONFIG_ATTR]) for s in ds} == before
    assert sorted(os.listdir(masks / "cass")) == files and field_claim(ds, "cass") is None
    # FiftyOne's semantics where the field is the model's: a fresh field, then the same settings again
    model = CassModel(["car", "tree"], **OPTS)
    ds.apply_model(model, "other", batch_size=BATCH)
    ds.apply_model(model, "other", batch_size=BATCH)
    assert set(ds.values(f"other.{CONFIG_ATTR}")) == {model.config_id}
    assert ds.mask_targets["other"] == {0: "background", 1: "car", 2: "tree"}
    assert field_claim(ds, "other") is None
    # a live run with other settings holds the field: apply_model is refused
    claim = FieldClaim(ds, "fresh", "0123456789abcdef")
    claim.acquire()
    try:
        with pytest.raises(FieldClaimedError, match="being labelled by another run"):
            ds.apply_model(model, "fresh", batch_size=BATCH)
    finally:
        claim.release()
    assert not ds.has_sample_field("fresh")


# ------------------------------------------------------------------------------------------------
# issue 24 item 4: the dataset, some samples or the mask folder deleted while a run labels them
# ------------------------------------------------------------------------------------------------
CLI_TINY = ["--backbone", "tiny", "--device", "cpu", "--method", "cass", "--batch-size", "2",
            "-o", "mode=whole", "-o", "short_side=64", "-o", "long_side=128", "-o", "bg_rule=none"]
_CLI_BODY = """
    code = cli.main(["label", {name!r}, "--classes", "dog, cat", "--masks", "disk", "--mask-dir", {masks!r},
                     *{opts!r}])
    print("EXIT", code)
    sys.exit(code)
"""


def _pngs(folder: Path):
    return sorted(f for f in os.listdir(folder) if f.endswith(".png")) if folder.is_dir() else []


def _pause_mid_run(persistent, images, tmp_path, prefix):
    """A ``label`` command in another process on a persistent dataset of 6 samples (batches of 2),
    stopped after its first batch is saved."""
    ds = persistent(prefix, images)
    masks = tmp_path / "m"
    procs, logs, go = _workers(tmp_path, _CLI_BODY, ["w"], pause_after=1, name=ds.name, masks=str(masks),
                               opts=CLI_TINY)
    assert len(_pngs(masks / "cass")) == 2 and len(ds.exists("cass")) == 2
    return ds, masks, procs[0], logs[0], go


def test_a_dataset_deleted_mid_run_stops_the_run_and_leaves_no_mask_file(persistent, images, tmp_path):
    ds, masks, proc, log, go = _pause_mid_run(persistent, images, tmp_path, "gone-ds")
    name = ds.name
    fo.delete_dataset(name)
    go.touch()
    code, out = proc.wait(timeout=300), log.read_text()
    assert code == 1, out
    assert f"dataset {name!r} was deleted while it was being labelled" in out, out
    assert "labelled now" not in out and "internal error" not in out and "Traceback" not in out, out
    assert _pngs(masks / "cass") == []  # the files of the deleted dataset's samples are removed


def test_samples_deleted_mid_run_are_reported_and_get_no_mask_file(persistent, images, tmp_path):
    ds, masks, proc, log, go = _pause_mid_run(persistent, images, tmp_path, "gone-samples")
    gone = ds.exists("cass", False).take(3, seed=1).values("id")
    ds.delete_samples(gone)
    go.touch()
    code, out = proc.wait(timeout=300), log.read_text()
    assert code == 1, out
    assert "3 sample(s) were deleted from the dataset during the run" in out, out
    assert "3 labelled now" in out, out
    ds.reload()
    assert len(ds) == 3 and len(ds.exists("cass")) == 3
    # every mask file is one that a label points at: none for the deleted samples
    assert _pngs(masks / "cass") == sorted(os.path.basename(p) for p in ds.values("cass.mask_path"))
    assert all(is_valid_png(p) for p in ds.values("cass.mask_path"))


def test_a_mask_folder_removed_mid_run_stops_the_run_and_no_label_points_at_a_missing_file(
        persistent, images, tmp_path):
    import shutil

    ds, masks, proc, log, go = _pause_mid_run(persistent, images, tmp_path, "gone-masks")
    shutil.rmtree(masks / "cass")
    go.touch()
    code, out = proc.wait(timeout=300), log.read_text()
    assert code == 1, out
    assert f"the mask folder {str(masks / 'cass')!r} was removed during the run" in out, out
    assert "Traceback" not in out, out
    ds.reload()
    for p in ds.exists("cass").values("cass.mask_path"):
        assert is_valid_png(p), p  # no label points at a missing file
    assert _pngs(masks / "cass") == sorted(os.path.basename(p) for p in ds.exists("cass").values("cass.mask_path"))
    assert cli.main(["label", ds.name, "--classes", "dog, cat", "--masks", "disk", "--mask-dir", str(masks),
                     *CLI_TINY]) == 0  # a rerun finishes the job
    ds.reload()
    assert len(ds.exists("cass")) == 6 and all(is_valid_png(p) for p in ds.values("cass.mask_path"))


# ------------------------------------------------------------------------------------------------
# issue 24 item 5: resume decides "done" from a mask that fits the image and the vocabulary
# ------------------------------------------------------------------------------------------------
def _image_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size[::-1]  # (height, width)


def test_resume_relabels_masks_of_the_wrong_size_or_values_and_symlinks(fo_dataset, images, tmp_path):
    from PIL import Image

    masks = tmp_path / "masks"
    ds = add_samples(fo_dataset("resume-png"), images[:4])
    apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    a, b, c, d = list(ds)
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(a.cass.mask_path)  # a valid PNG of the wrong size
    wrong = np.full(_image_size(b.filepath), 9, np.uint8)  # the right size, a value outside mask_targets
    Image.fromarray(wrong).save(b.cass.mask_path)
    elsewhere = tmp_path / "copy.png"  # c's own (valid) mask, reached through a symbolic link
    os.replace(c.cass.mask_path, elsewhere)
    os.symlink(elsewhere, c.cass.mask_path)
    s = apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    assert (s.num_labeled, s.num_already_done) == (3, 1)
    ds.reload()
    targets = set(ds.mask_targets["cass"])
    for smp in ds:
        m = read_mask(smp.cass)
        assert m.shape == _image_size(smp.filepath) and set(np.unique(m)) <= targets
        assert not os.path.islink(smp.cass.mask_path)
    assert ds[d.filepath].cass.mask_path == d.cass.mask_path  # the good one was kept


def test_a_sample_whose_filepath_changed_is_not_done(fo_dataset, images, tmp_path):
    import shutil

    from PIL import Image

    masks = tmp_path / "masks"
    ds = add_samples(fo_dataset("resume-path"), images[:2])
    apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    first, second = list(ds)
    first.filepath = images[5]  # another image, of another size
    first.save()
    same_size = tmp_path / "same-size.png"  # another image of the same size as the second one
    arr = np.asarray(Image.open(second.filepath).convert("RGB"))[::-1].copy()
    Image.fromarray(arr).save(same_size)
    second.filepath = str(same_size)
    second.save()
    s = apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    assert (s.num_labeled, s.num_already_done) == (2, 0)
    ds.reload()
    for smp in ds:
        assert read_mask(smp.cass).shape == _image_size(smp.filepath)
    again = apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    assert (again.num_labeled, again.num_already_done) == (0, 2)
    shutil.rmtree(masks)


def test_a_sample_failing_in_an_overwrite_run_keeps_its_old_label_and_files(fo_dataset, images, tmp_path):
    """Overwrite replaces labels of other settings only with new ones: a sample whose image became
    unreadable keeps its label, presence and mask file (its error field says why); the others get
    the new labels and their old files go."""
    import shutil

    masks = tmp_path / "masks"
    own = tmp_path / "own"
    own.mkdir()
    paths = [shutil.copy(p, own / os.path.basename(p)) for p in images[:3]]
    ds = add_samples(fo_dataset("owfail"), paths)
    apply(ds, CLASSES, masks="disk", mask_dir=str(masks), **KW)
    before = {s.id: (s.cass.mask_path, s.cass[CONFIG_ATTR], s.cass_presence) for s in ds}
    bad = ds.first()
    Path(bad.filepath).write_bytes(b"not an image any more")
    summary = apply(ds, ["dog"], masks="disk", mask_dir=str(masks), overwrite=True, **KW)
    assert summary.num_failed == 1 and summary.num_labeled == 2
    for s in ds:
        path, cfg, presence = before[s.id]
        if s.id == bad.id:
            assert (s.cass.mask_path, s.cass[CONFIG_ATTR], s.cass_presence) == (path, cfg, presence)
            assert is_valid_png(path) and s.cass_error
        else:
            assert s.cass[CONFIG_ATTR] != cfg and s.cass.mask_path != path and not os.path.exists(path)
            assert s.cass_error is None
    # a run of the new settings without overwrite still sees the kept label as other settings
    with pytest.raises(InvalidInputError, match="other settings"):
        apply(ds, ["dog"], masks="disk", mask_dir=str(masks), **KW)
