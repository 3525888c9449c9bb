"""Failures of the ``fiftyone-cass`` command line end as the README promises: bad checkpoint files,
an unwritable ``--summary-json``, NaN figures, ground-truth values that ``mask_targets`` do not
declare, SIGTERM/SIGHUP, messages in the command line's words, and typed, range-checked
Segmenter options (``-o``, ``--options``, Python keywords). Real MongoDB, tiny backbone; the
signal tests run the command as a real process."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch

import fiftyone as fo

from _label_helpers import CLASSES, OPTS, make_images, strict_json
from fiftyone_cass import Segmenter, cli, fileio
from fiftyone_cass.errors import InvalidInputError, kw, use
from fiftyone_cass.fo.apply import CONFIG_ATTR, AutoLabelRun
from fiftyone_cass.models.segmenter import SegmenterOptions
from fiftyone_cass.config.schema import coerce_settings
from fiftyone_cass.config.settings import parse_segmenter_options
from test_cli import TINY, entry_point, run_cli


class NotATensor:
    """Pickled into a checkpoint: what ``weights_only`` loading refuses."""


def _err_lines(err: str):
    return [line for line in err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def test_unusable_checkpoints_exit_2_with_one_line_naming_the_file(tmp_path, capsys):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 1)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00 definitely not a checkpoint " * 20)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": NotATensor(), "w": torch.zeros(2)}, pickled)
    wrong = tmp_path / "other_model.safetensors"
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(3, 3)}, str(wrong))
    cases = [("--clip-checkpoint", garbage, "neither a safetensors file nor a torch checkpoint", "open_clip"),
             ("--clip-checkpoint", pickled, "pickled Python objects", "open_clip"),
             ("--clip-checkpoint", wrong, "do not match the model", "open_clip"),
             ("--dino-checkpoint", pickled, "pickled Python objects", "timm vit_base_patch8_224"),
             ("--dino-checkpoint", garbage, "neither a safetensors file nor a torch checkpoint",
              "timm vit_base_patch8_224")]  # the tiny record: the architecture, no weights tag
    for opt, path, problem, expected in cases:
        rc, out = run_cli("label", img_dir, "--dataset", f"ckpt-{uuid.uuid4().hex[:8]}", "--classes", "cat",
                          *TINY, "--method", "cass", opt, path, capsys=capsys)
        lines = _err_lines(out.err)
        assert rc == 2, (opt, path, out.err)
        assert len(lines) == 1, lines
        assert str(path) in lines[0] and problem in lines[0], lines[0]
        assert f"expected a safetensors file or a weights-only torch state dict of {expected}" in lines[0]
        assert "Traceback" not in out.err and "weights_only=False" not in out.err

    # the real command: nothing else on stderr (no traceback, no torch advice to unpickle)
    env = dict(os.environ)
    p = subprocess.run(entry_point() + ["label", str(img_dir), "--classes", "cat", *TINY,
                                        "--clip-checkpoint", str(pickled)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2, p.stderr
    lines = _err_lines(p.stderr)
    assert len(lines) == 1 and str(pickled) in lines[0] and "weights_only" not in lines[0], p.stderr


# ------------------------------------------------------------------------------------------------
# --summary-json that cannot be written
# ------------------------------------------------------------------------------------------------
def test_unwritable_summary_json_is_a_warning_and_keeps_the_exit_status(tmp_path, capsys, names, monkeypatch):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 3)
    name = names.new("sumjson")
    a_dir = tmp_path / "a_directory"
    a_dir.mkdir()
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", ", ".join(CLASSES), *TINY,
                      "--summary-json", a_dir, capsys=capsys)
    assert rc == 0, out.err
    assert f"warning: could not write --summary-json {a_dir}" in out.err and "Traceback" not in out.err
    assert a_dir.is_dir() and os.listdir(a_dir) == []  # nothing left behind
    assert len(fo.load_dataset(name).exists("cass")) == 3  # the work is stored

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", ", ".join(CLASSES), *TINY,
                      "--summary-json", a_file / "summary.json", capsys=capsys)
    assert rc == 0 and "warning: could not write --summary-json" in out.err, out.err

    def full_disk(path, write, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "atomic_write", full_disk)  # under --summary-json's write_json
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", ", ".join(CLASSES), *TINY,
                      "--summary-json", tmp_path / "s.json", capsys=capsys)
    assert rc == 0 and "No space left on device" in out.err, out.err

    # a failed sample keeps exit status 1, not 3
    (img_dir / "broken.png").write_bytes(b"not a png")
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", ", ".join(CLASSES), *TINY,
                      "--summary-json", a_dir, capsys=capsys)
    assert rc == 1 and "could not write --summary-json" in out.err, out.err


# ------------------------------------------------------------------------------------------------
# eval: strict JSON, undeclared ground-truth values
# ------------------------------------------------------------------------------------------------
def _eval_dataset(tmp_path, name, gts, preds, targets):
    paths = make_images(tmp_path / "imgs", len(gts))
    ds = fo.Dataset(name)
    ds.add_samples([fo.Sample(filepath=p, ground_truth=fo.Segmentation(mask=g), cass=fo.Segmentation(mask=q))
                    for p, g, q in zip(paths, gts, preds)])
    ds.mask_targets = {"ground_truth": targets, "cass": targets}
    ds.save()
    return ds, paths


def test_eval_summary_json_is_strict_json_with_null_for_undefined_figures(tmp_path, capsys, names):
    name = names.new("evnan")
    gt = np.zeros((8, 8), np.uint8)
    gt[:4] = 1
    # class 2 ("cat") is in neither GT nor prediction: its IoU is undefined (NaN in the table)
    _eval_dataset(tmp_path, name, [gt], [gt.copy()], {0: "background", 1: "dog", 2: "cat"})
    summary = tmp_path / "eval.json"
    rc, out = run_cli("eval", name, "--summary-json", summary, capsys=capsys)
    assert rc == 0, out.err
    got = strict_json(summary)
    assert got["iou"]["cat"] is None
    assert got["iou"]["dog"] == pytest.approx(1.0) and got["mIoU"] == pytest.approx(1.0)


def test_eval_resize_nearest_does_not_hide_an_undeclared_ground_truth_value(tmp_path, capsys, names):
    name = names.new("evundecl")
    small = np.zeros((6, 8), np.uint8)
    small[:3, :4] = 1
    small[4:, 5:] = 7  # a value that mask_targets does not declare
    gt = np.kron(small, np.ones((2, 2), np.uint8))  # the prediction, resized by nearest neighbour, is exact
    _, paths = _eval_dataset(tmp_path, name, [gt], [small.copy()], {0: "background", 1: "dog"})
    summary = tmp_path / "eval.json"
    rc, out = run_cli("eval", name, "--resize-nearest", "--summary-json", summary, capsys=capsys)
    assert rc == 2, (out.out, out.err)
    assert paths[0] in out.err and "[7]" in out.err and "--ignore-undeclared" in out.err
    assert "strict=False" not in out.err and "mIoU" not in out.out and not summary.exists()

    rc, out = run_cli("eval", name, "--resize-nearest", "--ignore-undeclared", "--summary-json", summary,
                      capsys=capsys)
    assert rc == 0, out.err
    got = strict_json(summary)
    assert got["mIoU"] == pytest.approx(1.0)  # value 7 is ignored, as asked

    # evaluating again under the same key and failing keeps the evaluation that was there
    ds = fo.load_dataset(name)
    fields = set(ds.get_field_schema())
    rc, out = run_cli("eval", name, "--resize-nearest", capsys=capsys)
    assert rc == 2 and "--ignore-undeclared" in out.err, out.err
    ds.reload()
    assert ds.list_evaluations() == [got["eval_key"]] and set(ds.get_field_schema()) == fields
    assert ds.load_evaluation_results(got["eval_key"]).metrics()["mIoU"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# inputs that the library cannot use: usage errors naming the flag, not internal errors
# ------------------------------------------------------------------------------------------------
def test_classes_file_that_is_not_utf8_is_a_usage_error_and_a_bom_is_not_a_class(tmp_path, capsys, names):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 1)
    latin1 = tmp_path / "classes-latin1.txt"
    latin1.write_bytes("caf\u00e9\nchien\n".encode("latin-1"))
    rc, out = run_cli("label", img_dir, "--classes-file", latin1, *TINY, capsys=capsys)
    lines = _err_lines(out.err)
    assert rc == 2, out.err
    assert len(lines) == 1 and f"--classes-file {latin1} is not UTF-8 text" in lines[0], lines
    assert "Traceback" not in out.err and "internal error" not in out.err

    bom = tmp_path / "classes-bom.txt"
    bom.write_text("cat\ndog\n", encoding="utf-8-sig")  # as Notepad saves it
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    name = names.new("bom")
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes-file", bom, *TINY, capsys=capsys)
    assert rc == 0, out.err
    assert fo.load_dataset(name).mask_targets["cass"] == {0: "background", 1: "cat", 2: "dog"}


def test_classes_file_that_is_endless_huge_a_fifo_or_a_device_is_a_usage_error(tmp_path, capsys):
    """/dev/zero filled memory and ended in 'internal error: MemoryError' (exit 3); a FIFO blocks
    open() forever. Only a regular file of at most MAX_CLASSES_FILE_BYTES is read (issue 21 item 11)."""
    from fiftyone_cass.fo.labelling import MAX_CLASSES_FILE_BYTES

    img_dir = tmp_path / "imgs"
    make_images(img_dir, 1)
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_CLASSES_FILE_BYTES + 1)
    fifo = tmp_path / "classes.fifo"
    os.mkfifo(fifo)
    for path, why in [("/dev/zero", "not a regular file"), (fifo, "not a regular file"),
                      (huge, "larger than"), (tmp_path, "not a regular file")]:
        rc, out = run_cli("label", img_dir, "--classes-file", path, *TINY, capsys=capsys)
        lines = _err_lines(out.err)
        assert rc == 2, (path, out.err)
        assert len(lines) == 1 and f"--classes-file {path}" in lines[0] and why in lines[0], lines
        assert "Traceback" not in out.err and "internal error" not in out.err
    # a large but legal vocabulary still reads
    big = tmp_path / "many.txt"
    big.write_text("".join(f"class{i}\n" for i in range(2000)))
    from fiftyone_cass.fo.labelling import read_classes_file

    assert len(read_classes_file(str(big))) == 2000


def test_eval_skip_missing_lists_skipped_samples_in_its_words_and_counts_only_evaluated(tmp_path, capsys, names):
    """Issue 21 item 9: a raw Python UserWarning with its source line, and "3 samples" for 2 evaluated."""
    name = names.new("skipmiss")
    ds = fo.Dataset(name)
    samples = []
    for i in range(3):
        gt = np.zeros((8, 8), np.uint8)
        gt[:4] = 1
        s = fo.Sample(filepath=str(tmp_path / f"img{i}.png"), ground_truth=fo.Segmentation(mask=gt))
        if i:
            s["cass"] = fo.Segmentation(mask=gt)
        samples.append(s)
    ds.add_samples(samples)
    ds.mask_targets = {"ground_truth": {0: "background", 1: "cat"}, "cass": {0: "background", 1: "cat"}}
    ds.save()
    rc, out = run_cli("eval", name, "--skip-missing", "--no-progress", capsys=capsys)
    assert rc == 0, out.err
    assert "UserWarning" not in out.err and "warnings.warn" not in out.err, out.err
    skipped = [line for line in out.err.splitlines() if "SKIPPED" in line]
    assert len(skipped) == 1 and f"SKIPPED {tmp_path / 'img0.png'} (id " in skipped[0], out.err
    assert skipped[0].endswith("): no prediction mask in 'cass'"), out.err
    assert "| 2 samples evaluated (1 skipped) |" in out.out, out.out


def test_eval_key_that_fiftyone_refuses_is_a_usage_error_naming_eval_key(tmp_path, capsys, names):
    name = names.new("evkey")
    gt = np.zeros((8, 8), np.uint8)
    gt[:4] = 1
    _eval_dataset(tmp_path, name, [gt], [gt.copy()], {0: "background", 1: "dog"})
    for key in ("bad key", "a.b", "1st", "eval-cass"):
        rc, out = run_cli("eval", name, "--eval-key", key, capsys=capsys)
        lines = _err_lines(out.err)
        assert rc == 2, (key, out.err)
        assert len(lines) == 1 and f"--eval-key {key!r} is not a valid evaluation key" in lines[0], lines
        assert "Traceback" not in out.err
    assert fo.load_dataset(name).list_evaluations() == []
    rc, out = run_cli("eval", name, "--eval-key", "good_key", capsys=capsys)
    assert rc == 0 and fo.load_dataset(name).list_evaluations() == ["good_key"], out.err


def test_demo_images_dir_that_is_a_file_is_a_usage_error_naming_images_dir(tmp_path, capsys, names):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    name = names.new("demofile")
    for images_dir in (a_file, a_file / "images"):  # the file itself, and a path under it
        rc, out = run_cli("demo", "--dataset", name, "--images-dir", images_dir, *TINY, capsys=capsys)
        lines = _err_lines(out.err)
        assert rc == 2, (images_dir, out.err)
        assert len(lines) == 1 and f"--images-dir {images_dir}" in lines[0], lines
        assert "Traceback" not in out.err and "internal error" not in out.err
    assert a_file.read_text() == "x" and not fo.dataset_exists(name)


def test_gt_field_that_is_not_a_segmentation_field_is_named_with_its_type(tmp_path, capsys, names):
    name = names.new("gtkind")
    paths = make_images(tmp_path / "imgs", 1)
    ds = fo.Dataset(name)
    ds.add_samples([fo.Sample(filepath=paths[0], strf="a string", det=fo.Detections(detections=[]),
                              seg=fo.Segmentation(mask=np.zeros((4, 4), np.uint8)))])
    cases = [("strf", "--gt-field 'strf' is a StringField, not a Segmentation field with mask_targets"),
             ("det", "--gt-field 'det' is a Detections field, not a Segmentation field with mask_targets"),
             ("seg", "--gt-field 'seg' has no mask_targets (the classes and ids to label with): set "
                     "dataset.mask_targets['seg']")]
    for field, expected in cases:
        rc, out = run_cli("label", name, "--gt-field", field, *TINY, capsys=capsys)
        lines = _err_lines(out.err)
        assert rc == 2, (field, out.err)
        assert len(lines) == 1 and expected in lines[0], lines
        assert "mask_targets has no mask_targets" not in out.err and '["' not in out.err
    assert not fo.load_dataset(name).has_sample_field("cass")  # nothing was labelled


# ------------------------------------------------------------------------------------------------
# messages in the command line's words
# ------------------------------------------------------------------------------------------------
def test_library_errors_name_the_command_line_flags(tmp_path, capsys, names):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 2)
    name = names.new("flags")
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", "dog, cat", *TINY, capsys=capsys)
    assert rc == 0, out.err
    rc, out = run_cli("label", name, "--classes", "dog, frisbee", *TINY, capsys=capsys)
    assert rc == 2
    assert "--overwrite" in out.err and "--skip-existing" in out.err, out.err
    assert "overwrite=True" not in out.err and "skip_existing=True" not in out.err

    ds = fo.load_dataset(name)
    gt = fo.Segmentation(mask=np.zeros((4, 4), np.uint8))
    ds.set_values("ground_truth", [gt.copy() for _ in range(len(ds))])
    ds.mask_targets = dict(ds.mask_targets, ground_truth={0: "background", 1: "dog"})
    ds.save()
    rc, out = run_cli("eval", name, "--pred-field", "missing_field", capsys=capsys)
    assert rc == 2  # (a CLI check)
    ds.add_sample_field("other", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    rc, out = run_cli("eval", name, "--pred-field", "other", capsys=capsys)
    assert rc == 2 and "--skip-missing" in out.err and "skip_missing=True" not in out.err, out.err

    # the error references its settings; the command line names them by their flags, from the
    # references (a path that looks like a keyword stays as it is)
    flags = cli._flags_of(cli.build_parser(), "label")
    err = InvalidInputError(f"cannot write masks to '/data/mask_dir/x' (no); choose another mask directory "
                            f"({kw('mask_dir')}) or keep masks in the database ({kw('masks', 'database')})")
    assert cli.cli_message(err, flags) == ("cannot write masks to '/data/mask_dir/x' (no); choose another mask "
                                           "directory (--mask-dir) or keep masks in the database (--masks database)")
    assert "(mask_dir) or keep masks in the database (masks='database')" in str(err)  # Python's words


def test_messages_name_the_flag_that_takes_the_value_and_say_why(tmp_path, capsys, names):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 1)
    name = names.new("flagname")
    cases = [
        (["--presence-field", "g4", "--label-field", "g4"],
         "--presence-field 'g4' is not a usable field name: it is the same as --label-field"),
        (["--label-field", "g5", "--embeddings-field", "g5_presence"],
         "--presence-field, --error-field and --embeddings-field must differ"),
    ]
    for argv, expected in cases:
        rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", "cat", *TINY, *argv, capsys=capsys)
        assert rc == 2, (argv, out.err)
        assert expected in out.err, (argv, out.err)
        assert "--no-presence" not in out.err and "--no-embeddings" not in out.err, out.err
        assert len(_err_lines(out.err)) == 1, out.err

    # the flag that sets a setting to None is named where the library says so
    flags = cli._flags_of(cli.build_parser(), "label")
    assert flags["presence_field"].option_strings == ["--presence-field"]
    assert cli.cli_message(InvalidInputError(f"or {use('tag_prefix', None)}"), flags) == "or pass --no-tags"
    assert cli.cli_message(InvalidInputError(f"or {use('embeddings_field', 'emb')}"), flags) == "or pass --embeddings-field emb"
    # text that merely looks like a keyword is never reworded
    assert cli.cli_message(InvalidInputError("or pass tag_prefix=None"), flags) == "or pass tag_prefix=None"

    # an unknown --options name is reported as it is (no "--" glued to the message)
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", "cat", *TINY,
                      "--options", '{"nosuch": 1}', capsys=capsys)
    assert rc == 2, out.err
    assert "error: unknown --options name(s): nosuch (known:" in out.err, out.err
    assert "--unknown" not in out.err


def test_relabelling_part_of_a_field_with_other_classes_is_refused_in_flags(tmp_path, capsys, names):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 3)
    name = names.new("idspace")
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", "dog, cat", *TINY, capsys=capsys)
    assert rc == 0, out.err
    ds = fo.load_dataset(name)
    ds.take(1).tag_samples("part")
    before = ds.values(f"cass.{CONFIG_ATTR}")
    rc, out = run_cli("label", name, "--tags", "part", "--classes", "cat, dog", "--overwrite", *TINY, capsys=capsys)
    assert rc == 2, out.err
    assert "field 'cass'" in out.err and "2 outside this run's target" in out.err, out.err
    assert "pass --overwrite; or choose another --label-field" in out.err, out.err
    assert "overwrite=True" not in out.err and "label_field" not in out.err
    ds.reload()
    assert ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "cat"}
    assert ds.values(f"cass.{CONFIG_ATTR}") == before
    # the whole dataset with --overwrite relabels the field
    rc, out = run_cli("label", name, "--classes", "cat, dog", "--overwrite", *TINY, capsys=capsys)
    assert rc == 0, out.err
    ds.reload()
    assert ds.mask_targets["cass"] == {0: "background", 1: "cat", 2: "dog"}


# ------------------------------------------------------------------------------------------------
# typed and range-checked Segmenter options
# ------------------------------------------------------------------------------------------------
def test_option_values_are_typed_by_the_options_dataclass(tmp_path, capsys, names):
    got = parse_segmenter_options('{"cdam_scales": [0.5, 1], "energy_rank": null}',
                             ["paper_matching=False", "eigenscale=yes", "short_side=448", "gamma=0",
                              "cdam_mix=0.5", "crop=224"])
    assert got == dict(cdam_scales=(0.5, 1.0), energy_rank=None, paper_matching=False, eigenscale=True,
                       short_side=448, gamma=0.0, cdam_mix=0.5, crop=224)
    assert type(got["gamma"]) is float and type(got["short_side"]) is int
    assert parse_segmenter_options(None, ["cdam_scales=0.25,0.5", "energy_rank=none"]) == dict(
        cdam_scales=(0.25, 0.5), energy_rank=None)

    img_dir = tmp_path / "imgs"
    make_images(img_dir, 1)
    bad = [
        (["-o", "short_side=0"], "-o short_side='0'", "an integer from 1 to 4096"),
        (["-o", "short_side=100000"], "-o short_side='100000'", "an integer from 1 to 4096"),
        (["--options", '{"crop": "abc"}'], "--options crop='abc'", "an integer from 16 to 4096"),
        (["-o", "gaussian_std=-1"], "-o gaussian_std='-1'", "a finite number > 0"),
        (["-o", "prob_thd=2"], "-o prob_thd='2'", "a finite number from 0 to 1"),
        (["-o", "gamma=nan"], "-o gamma='nan'", "a finite number from 0 to 1"),
        (["--options", '{"gamma": 1e999}'], "--options gamma=inf", "a finite number from 0 to 1"),
        (["-o", "paper_matching=maybe"], "-o paper_matching='maybe'", "a boolean"),
        (["-o", "cdam_scales=0.5,x"], "-o cdam_scales='0.5,x'", "a non-empty list of finite numbers"),
        (["-o", "mode=sideways"], "-o mode='sideways'", "one of 'slide', 'whole'"),
        (["-o", "no_such_option=1"], "unknown -o name(s): no_such_option", "short_side"),
    ]
    for argv, named, allowed in bad:
        rc, out = run_cli("label", img_dir, "--classes", "cat", *TINY, *argv, capsys=capsys)
        assert rc == 2, (argv, out.err)
        assert named in out.err and allowed in out.err, (argv, out.err)
        assert "Traceback" not in out.err and "internal error" not in out.err

    # the same validation for Python keywords
    for kw, needle in ((dict(gamma=float("nan")), "gamma=nan"), (dict(short_side=0), "short_side=0"),
                       (dict(crop="abc"), "crop='abc'"), (dict(prob_thd=2), "prob_thd=2")):
        with pytest.raises(InvalidInputError, match=needle.replace("(", r"\(")):
            Segmenter(classes="cat", **dict(OPTS, **kw))
    with pytest.raises(InvalidInputError, match="gaussian_std=-1"):
        coerce_settings(SegmenterOptions, dict(gaussian_std=-1))

    # -o paper_matching=False is False end to end: the labels carry the settings of paper_matching=False
    name = names.new("typed")
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", "cat", *TINY, "--method", "cass",
                      "-o", "paper_matching=False", capsys=capsys)
    assert rc == 0, out.err
    ds = fo.load_dataset(name)
    stored = ds.first().cass[CONFIG_ATTR]
    as_false = AutoLabelRun(ds, classes=["cat"], method="cass", batch_size=3, paper_matching=False, **OPTS)
    as_true = AutoLabelRun(ds, classes=["cat"], method="cass", batch_size=3, paper_matching=True, **OPTS)
    assert stored == as_false.config_id != as_true.config_id
    as_false.release()
    as_true.release()


# ------------------------------------------------------------------------------------------------
# SIGTERM and SIGHUP
# ------------------------------------------------------------------------------------------------
SLOW = ["--backbone", "tiny", "--device", "cpu", "--method", "cass", "--batch-size", "1",
        "-o", "short_side=112", "-o", "bg_rule=none"]


def _labelled(name: str) -> int:
    if not fo.dataset_exists(name):
        return 0
    import fiftyone.core.odm as foo

    coll = foo.get_db_conn()[fo.load_dataset(name)._sample_collection_name]
    return coll.count_documents({"cass": {"$type": "object"}})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_label_like_ctrl_c(tmp_path, names, sig):
    img_dir = tmp_path / "imgs"
    make_images(img_dir, 12)
    name = names.new("sig")
    argv = [sys.executable, "-m", "fiftyone_cass", "label", str(img_dir), "--dataset", name, "--classes",
            "dog, cat", *SLOW, "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 240
        while _labelled(name) < 1:
            assert proc.poll() is None, f"ended before the signal (exit {proc.returncode}): {proc.communicate()}"
            assert time.monotonic() < deadline, "nothing labelled in time"
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted; run the same command again to resume" in err and "Traceback" not in err, err
    done = _labelled(name)
    assert 1 <= done < 12
    # the same command again finishes the rest
    rc = cli.main([str(a) for a in argv[3:]])
    assert rc == 0 and _labelled(name) == 12
