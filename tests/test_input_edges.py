"""Inputs that used to be dropped or accepted without a word (issue 24 items 7 and 8), on the real
MongoDB with the tiny backbone: the comment rule of classes files is documented, a mask folder
equal to the image folder excludes only the mask subfolder (with a SKIPPED line), ground-truth
mask_targets whose names are dropped or whose ids collide with the ignore value are said, and
bad dataset names, option sizes, shards and vocabularies are refused up front."""

from __future__ import annotations

import logging
import os

import pytest
from PIL import Image

import fiftyone as fo

from _label_helpers import make_images
from fiftyone_cass import cli
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.labelling import read_classes_file
from fiftyone_cass.models.vocabulary import Vocabulary
from test_cli import TINY, run_cli


# ------------------------------------------------------------------------------------------------
# item 7: silent drops
# ------------------------------------------------------------------------------------------------
def test_the_comment_rule_of_classes_files_is_documented(tmp_path, capsys):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\ndog\n\n  # indented comment\ncat, kitty\n", encoding="utf-8")
    assert read_classes_file(str(f)) == ["dog", "cat, kitty"]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["label", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "lines starting with '#' are comments" in help_text
    readme = " ".join((cli.__file__ and open(os.path.join(os.path.dirname(cli.__file__), "..", "README.md"),
                                             encoding="utf-8").read()).split())
    assert "lines starting with `#` are comments" in readme


def test_a_mask_dir_equal_to_the_image_folder_excludes_only_the_mask_subfolder(tmp_path, capsys, names):
    d = tmp_path / "photos"
    make_images(d, 2)
    make_images(d / "sub", 2)  # images in a subfolder are imported too
    name = names.new("md-eq")
    argv = ["label", d, "--dataset", name, "--classes", "cat, dog", "--masks", "disk", "--mask-dir", d, *TINY]
    rc, out = run_cli(*argv, capsys=capsys)
    assert rc == 0, out.err
    ds = fo.load_dataset(name)
    assert len(ds) == 4 and len(ds.exists("cass")) == 4
    assert sum(1 for p in ds.values("filepath") if os.sep + "sub" + os.sep in p) == 2
    rc, out = run_cli(*argv, capsys=capsys)  # the mask folder <d>/cass exists now: not imported, and said
    assert rc == 0, out.err
    assert f"SKIPPED {d / 'cass'}: the mask folder of this run (--mask-dir), not imported" in out.out + out.err
    ds.reload()
    assert len(ds) == 4 and not any(os.sep + "cass" + os.sep in p for p in ds.values("filepath"))


def test_gt_mask_targets_that_name_nothing_or_background_at_another_id_are_said(caplog):
    with caplog.at_level(logging.WARNING, logger="fiftyone_cass"):
        v = Vocabulary.from_mask_targets({0: "background", 1: "cat", 2: "", 3: "background", 4: "dog"}, "gt_field 'gt'")
    assert v.mask_targets == {0: "background", 1: "cat", 4: "dog"}
    text = caplog.text
    assert "gt_field 'gt'" in text and "id 2 (empty name)" in text and "id 3 ('background'" in text, text
    assert "never predicted" in text


def test_labelling_with_a_gt_class_at_the_ignore_value_255_is_said(caplog):
    with caplog.at_level(logging.WARNING, logger="fiftyone_cass"):
        v = Vocabulary.from_mask_targets({0: "background", 1: "cat", 255: "dog"}, "gt_field 'gt'")
    assert v.mask_targets[255] == "dog"
    assert "id 255 ('dog')" in caplog.text and "ignore" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fiftyone_cass"):
        Vocabulary.from_mask_targets({0: "background", 1: "cat", 255: "void"}, "gt_field 'gt'")
    assert caplog.text == ""  # 255 named as ignored: nothing to say


# ------------------------------------------------------------------------------------------------
# item 8: smaller ones
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [" ", "", "###"])
def test_a_blank_dataset_name_is_a_usage_error(tmp_path, capsys, name):
    d = tmp_path / "photos"
    make_images(d, 1)
    before = set(fo.list_datasets())
    rc, out = run_cli("label", d, "--dataset", name, "--classes", "cat", *TINY, capsys=capsys)
    assert rc == 2, out.err
    assert "--dataset" in out.err and repr(name) in out.err and "Traceback" not in out.err, out.err
    assert set(fo.list_datasets()) == before


def test_a_300_character_dataset_name_is_refused_before_anything_is_created(tmp_path, capsys):
    d = tmp_path / "photos"
    make_images(d, 1)
    name = "n" * 300
    before = set(fo.list_datasets())
    rc, out = run_cli("label", d, "--dataset", name, "--classes", "cat", *TINY, capsys=capsys)
    assert rc == 2, out.err
    assert "--dataset" in out.err and "300 characters" in out.err and "Traceback" not in out.err, out.err
    assert set(fo.list_datasets()) == before
    for n in set(fo.list_datasets()) - before:  # (cleanup if it was created after all)
        fo.delete_dataset(n)


def test_segmenter_with_models_that_are_not_a_triple_is_a_clear_error():
    from fiftyone_cass import Segmenter

    for bad in ("x", (1, 2), None and ()):
        if bad is None:
            continue
        with pytest.raises(InvalidInputError, match=r"models must be .*\(clip, dino, tokenizer\)"):
            Segmenter(["cat"], backbone="tiny", device="cpu", models=bad)


def test_a_second_interrupt_exits_without_a_traceback(tmp_path, names):
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    d = tmp_path / "photos"
    make_images(d, 6)
    name = names.new("sigint")
    started = tmp_path / "started"
    code = textwrap.dedent(f"""
        import sys, time
        from fiftyone_cass import cli
        from fiftyone_cass.fo.apply import AutoLabelRun
        slow = AutoLabelRun._write_batch
        def write(self, batch, outputs):  # a long write: the interrupts arrive while it runs
            open({str(started)!r}, "w").close()
            time.sleep(4)
            return slow(self, batch, outputs)
        AutoLabelRun._write_batch = write
        sys.exit(cli.main(["label", {str(d)!r}, "--dataset", {name!r}, "--classes", "cat, dog", *{TINY!r}]))
    """)
    log = tmp_path / "log"
    with open(log, "wb") as f:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not started.exists():
        assert time.monotonic() < deadline and p.poll() is None, log.read_text()
        time.sleep(0.05)
    for _ in range(4):  # ctrl + c, again, again...
        p.send_signal(signal.SIGINT)
        time.sleep(0.7)
    rc = p.wait(timeout=120)
    out = log.read_text()
    assert rc == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "interrupted" in out


def test_runs_of_overlapping_shards_at_the_same_time_are_warned_about(fo_dataset, tmp_path, caplog):
    from _label_helpers import BATCH, OPTS, add_samples
    from fiftyone_cass.fo.apply import AutoLabelRun

    ds = add_samples(fo_dataset("shards"), make_images(tmp_path / "im", 4))
    kw = dict(OPTS, batch_size=BATCH, masks="database")
    first = AutoLabelRun(ds, ["cat"], shard=(0, 2), **kw)
    first.plan()  # running: holds the field's claim with its shard
    try:
        with caplog.at_level(logging.WARNING, logger="fiftyone_cass"):
            disjoint = AutoLabelRun(ds, ["cat"], shard=(1, 2), **kw)
            disjoint.plan()
            disjoint.release()
        assert "overlap" not in caplog.text  # 0/2 and 1/2 share nothing
        with caplog.at_level(logging.WARNING, logger="fiftyone_cass"):
            other = AutoLabelRun(ds, ["cat"], shard=(0, 3), **kw)
            other.plan()
            other.release()
        assert "shard 0/3" in caplog.text and "shard 0/2" in caplog.text and "overlap" in caplog.text, caplog.text
        assert "labelled twice" in caplog.text
    finally:
        first.release()


def test_a_processing_size_that_cannot_fit_the_memory_is_refused_per_image(monkeypatch):
    import numpy as np

    from fiftyone_cass import Segmenter
    from fiftyone_cass.models import segmenter as segmod

    monkeypatch.setattr(segmod, "device_memory_bytes", lambda device: 16 * 2**30)  # a 16 GiB machine
    img = np.full((40, 80, 3), 120, np.uint8)
    big = Segmenter(["cat", "dog"], backbone="tiny", device="cpu", method="cass", short_side=4096, long_side=8192)
    (res, err), = big.segment_loaded([(img, None)], ["small.png"])
    assert res is None
    assert "small.png" in err and "short_side=4096" in err and "long_side=8192" in err and "8192x4096" in err, err
    assert "16 GiB" in err and "lower short_side/long_side" in err, err
    ok = Segmenter(["cat", "dog"], backbone="tiny", device="cpu", method="cass", mode="whole", short_side=64,
                   long_side=128)
    (res, err), = ok.segment_loaded([(img, None)], ["small.png"])
    assert err is None and res.label_map.shape == (40, 80)


def test_batches_are_cut_by_decoded_pixels_so_memory_does_not_grow_with_batch_size(tmp_path, fo_dataset,
                                                                                     monkeypatch):
    """Item 8: ``--batch-size 4096`` held every large image of the run decoded at once (three
    batches in flight); a batch now also stops at BATCH_PIXEL_BUDGET decoded pixels."""
    from fiftyone_cass.fo import apply as A

    sizes = {"a": 6_000_000, "b": 6_000_000, "c": 30_000_000, "d": 100, "e": 100}
    todo = [(k, k) for k in sizes]
    cut = list(A.split_batches(todo, 4096, budget=12_000_000, pixels_of=sizes.get))
    assert cut == [[("a", "a"), ("b", "b")], [("c", "c")], [("d", "d"), ("e", "e")]]  # the big one alone
    assert list(A.split_batches(todo, 2, budget=10**12, pixels_of=sizes.get)) == [todo[:2], todo[2:4], todo[4:]]
    # a real run: with a budget of the two largest images, --batch-size 4096 segments two at a time
    paths = [str(p) for p in make_images(tmp_path / "in", 5)]  # sizes grow with the index
    ds = fo_dataset("pixel_budget")
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    monkeypatch.setattr(A, "BATCH_PIXEL_BUDGET", A.image_pixels(paths[3]) + A.image_pixels(paths[4]))
    seen = []
    real = A.CassModel.segment
    monkeypatch.setattr(A.CassModel, "segment", lambda self, loaded, names, **kw: seen.append(len(loaded))
                        or real(self, loaded, names, **kw))
    summary = A.apply(ds, classes=["cat", "dog"], backbone="tiny", device="cpu", batch_size=4096, masks="database",
                      mode="whole", short_side=64, long_side=128, progress=False)
    assert summary.num_labeled == 5 and seen == [2, 2, 1]
