"""The ``fiftyone-cass`` command line: label (directory and dataset), eval, demo, app, exit codes and
the fail-fast message when the model weights are missing. Runs on the session's real MongoDB with the
tiny random-weight backbone (``--backbone tiny``); the installed entry point is run as a subprocess
where the behaviour of the real command matters (no traceback, exit status, App server)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo

from _label_helpers import BATCH, CLASSES, Reference, all_scores, make_bad_files, make_images, read_mask
from fiftyone_cass import bootstrap, cli
from fiftyone_cass.errors import WeightsUnavailableError
from fiftyone_cass.fo.demo import DEMO_CLASSES, DEMO_IMAGES
from fiftyone_cass.models.weights import ensure_weights
from fiftyone_cass.config.schema import coerce_settings
from fiftyone_cass.config.settings import LabelSettings
from fiftyone_cass.fo.apply import CONFIG_ATTR

#: the tiny test model, as command-line options (= _label_helpers.OPTS)
TINY = ["--backbone", "tiny", "--device", "cpu", "--batch-size", str(BATCH),
        "-o", "mode=whole", "-o", "short_side=64", "-o", "long_side=128", "-o", "bg_rule=none"]


def entry_point() -> list:
    """The installed ``fiftyone-cass`` script of this interpreter's environment."""
    exe = shutil.which("fiftyone-cass", path=os.path.dirname(sys.executable))
    assert exe, "the fiftyone-cass entry point is not installed (pip install -e .)"
    return [exe]


def run_cli(*argv, capsys=None):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


@pytest.fixture
def cleanup_datasets():
    names = []
    yield names
    for n in names:
        if fo.dataset_exists(n):
            fo.delete_dataset(n)


@pytest.fixture(scope="module")
def reference():
    return Reference()


# ------------------------------------------------------------------------------------------------
def test_usage_errors_exit_2_with_a_message(capsys, tmp_path, cleanup_datasets):
    assert run_cli("--help", capsys=capsys)[0] == 0
    rc, out = run_cli("label", capsys=capsys)
    assert rc == 2 and "source" in out.err
    rc, out = run_cli("label", "no-such-dataset-or-dir", "--classes", "cat", *TINY, capsys=capsys)
    assert rc == 2 and "'no-such-dataset-or-dir' is neither a directory nor a FiftyOne dataset" in out.err
    rc, out = run_cli("label", tmp_path, "--classes", "cat", "--shard", "2/2", capsys=capsys)
    assert rc == 2 and "0 <= i < N" in out.err
    rc, out = run_cli("label", tmp_path, "--classes", "cat", "--preset", "voc21", *TINY, capsys=capsys)
    assert rc == 2 and "exactly one of --classes" in out.err
    rc, out = run_cli("label", tmp_path, "--classes", "cat", "--options", "{not json", *TINY, capsys=capsys)
    assert rc == 2 and "--options must be a JSON object" in out.err
    rc, out = run_cli("label", tmp_path, "--classes", "cat", *TINY, capsys=capsys)  # empty directory
    assert rc == 2 and "no image files found" in out.err
    rc, out = run_cli("demo", "--clip-checkpoint", tmp_path / "nope.safetensors", capsys=capsys)
    assert rc == 2 and "CLIP checkpoint file not found" in out.err and "Traceback" not in out.err
    assert "Fix --clip-checkpoint" in out.err  # the setting, named by its flag
    rc, out = run_cli("app", "no-such-dataset", capsys=capsys)
    assert rc == 2 and "neither a directory nor a FiftyOne dataset" in out.err
    assert coerce_settings(LabelSettings, {"shard": "1/3"})["shard"] == (1, 3)  # the --shard flag's parser


def test_label_directory_then_resume_then_dataset_input(tmp_path, capsys, reference, cleanup_datasets):
    img_dir = tmp_path / "imgs"
    paths = make_images(img_dir, 5)
    bad = make_bad_files(img_dir / "sub")  # garbage.jpg, empty.png (+ a missing file, not in the dir)
    name = f"cli-dir-{uuid.uuid4().hex[:8]}"
    cleanup_datasets.append(name)
    summary = tmp_path / "summary.json"

    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", ", ".join(CLASSES), *TINY,
                      "--summary-json", summary, capsys=capsys)
    assert rc == 1, out.err  # two bad files
    s = json.loads(summary.read_text())
    assert (s["imported"], s["image_files"], s["num_labeled"], s["num_failed"]) == (7, 7, 5, 2)
    assert {f["filepath"] for f in s["failures"]} == {bad["garbage"], bad["empty"]}
    for p in (bad["garbage"], bad["empty"]):
        assert f"FAILED {p}: " in out.out  # reported by name
    assert "open it with: fiftyone-cass app" in out.out

    ds = fo.load_dataset(name)
    assert ds.persistent and len(ds) == 7
    assert ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "frisbee", 3: "cat"}
    refs = dict(zip(paths, reference(paths)))
    for smp in ds:
        if smp.filepath in refs:
            np.testing.assert_array_equal(read_mask(smp.cass), refs[smp.filepath].label_map)
            assert smp.cass_error is None and smp.cass[CONFIG_ATTR] == s["config_id"]
            assert {t for t in smp.tags if t.startswith("cass:")} == {
                f"cass:{c}" for c, v in all_scores(smp.cass_presence).items() if v >= 0.1}
        else:
            assert smp.cass is None and os.path.basename(smp.filepath) in smp.cass_error

    # the same command again: nothing imported, nothing relabelled, the bad files fail again
    rc, out = run_cli("label", img_dir, "--dataset", name, "--classes", ", ".join(CLASSES), *TINY,
                      "--summary-json", summary, capsys=capsys)
    s = json.loads(summary.read_text())
    assert rc == 1 and (s["imported"], s["num_labeled"], s["num_already_done"], s["num_failed"]) == (0, 0, 5, 2)
    assert len(fo.load_dataset(name)) == 7

    # an existing dataset as input, restricted to a tag; other settings need --overwrite
    ds.select(ds.values("id")[:2]).tag_samples("pick")
    rc, out = run_cli("label", name, "--tags", "pick", "--classes", "dog, cat", *TINY, capsys=capsys)
    assert rc == 2 and "overwrite" in out.err
    rc, out = run_cli("label", name, "--tags", "pick", "--label-field", "two", "--classes", "dog, cat",
                      "--no-tags", *TINY, "--summary-json", summary, capsys=capsys)
    s = json.loads(summary.read_text())
    assert s["num_target"] == 2 and s["num_labeled"] + s["num_failed"] == 2 and s["tags"] == {}
    ds.reload()
    assert set(ds.exists("two_presence").values("id")) <= set(ds.match_tags("pick").values("id"))
    assert not any(t.startswith("two:") for t in ds.distinct("tags"))


def test_eval_of_labels_in_ground_truth_ids(tmp_path, capsys, reference, cleanup_datasets):
    paths = make_images(tmp_path / "imgs", 4)
    refs = reference(paths)
    name = f"cli-eval-{uuid.uuid4().hex[:8]}"
    cleanup_datasets.append(name)
    ds = fo.Dataset(name)
    gts = []
    for i, (p, r) in enumerate(zip(paths, refs)):
        gt = r.label_map.astype(np.uint8).copy()
        if i == 0:
            gt[: gt.shape[0] // 2] = 1  # disagree on half of one image
        if i == 1:
            gt[:5, :5] = 255  # ignored pixels
        gts.append(gt)
        ds.add_sample(fo.Sample(filepath=p, ground_truth=fo.Segmentation(mask=gt)))
    ds.mask_targets = {"ground_truth": {0: "background", 1: "dog", 2: "frisbee", 3: "cat", 255: "ignore"}}
    ds.save()

    rc, out = run_cli("eval", name, capsys=capsys)
    assert rc == 2 and "has no field 'cass'" in out.err and "--gt-field ground_truth" in out.err

    rc, out = run_cli("label", name, "--gt-field", "ground_truth", *TINY, capsys=capsys)
    assert rc == 0, out.err
    ds.reload()
    assert ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "frisbee", 3: "cat"}

    summary = tmp_path / "eval.json"
    rc, out = run_cli("eval", name, "--pred-field", "cass", "--gt-field", "ground_truth",
                      "--summary-json", summary, capsys=capsys)
    assert rc == 0, out.err
    got = json.loads(summary.read_text())
    # mmseg IoUMetric by hand: one histogram over every pixel, GT 255 ignored, NaN for absent classes
    hist = np.zeros((4, 4), np.int64)
    for gt, r in zip(gts, refs):
        keep = gt != 255
        hist += np.bincount(4 * gt[keep].astype(np.int64) + r.label_map[keep], minlength=16).reshape(4, 4)
    inter = np.diag(hist).astype(float)
    union = hist.sum(0) + hist.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    assert got["mIoU"] == pytest.approx(np.nanmean(iou), abs=1e-9)
    assert 0 < got["mIoU"] < 1
    assert "eval_cass" in fo.load_dataset(name).list_evaluations()
    assert "mIoU" in out.out


def test_demo_with_the_tiny_backbone_end_to_end(tmp_path, capsys, cleanup_datasets):
    name = f"cli-demo-{uuid.uuid4().hex[:8]}"
    cleanup_datasets.append(name)
    summary = tmp_path / "demo.json"
    argv = ["demo", "--dataset", name, "--images-dir", tmp_path / "demo-images", *TINY, "--summary-json", summary]
    rc, out = run_cli(*argv, capsys=capsys)
    assert rc == 0, out.err
    s = json.loads(summary.read_text())
    assert s["num_labeled"] == len(DEMO_IMAGES) and s["num_failed"] == 0
    assert f"open it with: fiftyone-cass app {name}" in out.out
    assert "classes by share of pixels" in out.out and "presence tags:" in out.out
    assert sum(s["pixel_shares"].values()) == pytest.approx(1.0)
    assert set(s["pixel_shares"]) <= {"background", *DEMO_CLASSES}

    ds = fo.load_dataset(name)  # persistent, in the database this process uses
    assert ds.persistent and len(ds) == len(DEMO_IMAGES)
    assert ds.mask_targets["cass"] == {0: "background", **{i + 1: c for i, c in enumerate(DEMO_CLASSES)}}
    for smp in ds:
        with Image.open(smp.filepath) as im:
            w, h = im.size
        assert read_mask(smp.cass).shape == (h, w)
        assert set(all_scores(smp.cass_presence)) == set(DEMO_CLASSES)
        assert any(t.startswith("cass:") for t in smp.tags) == any(
            v >= 0.1 for v in all_scores(smp.cass_presence).values())

    rc, out = run_cli(*argv, capsys=capsys)  # again: everything is done already
    s = json.loads(summary.read_text())
    assert rc == 0 and s["num_labeled"] == 0 and s["num_already_done"] == len(DEMO_IMAGES) and s["imported"] == 0


def test_default_demo_fails_fast_naming_the_missing_weights(tmp_path, cleanup_datasets):
    """The README's main command on a machine without the weights (tests run with HF_HUB_OFFLINE=1)."""
    name = f"cli-demo-noweights-{uuid.uuid4().hex[:8]}"
    cleanup_datasets.append(name)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("FIFTYONE_CASS_CLIP_CHECKPOINT", None)
    env.pop("FIFTYONE_CASS_DINO_CHECKPOINT", None)
    t0 = time.monotonic()
    p = subprocess.run(entry_point() + ["demo", "--dataset", name, "--images-dir", str(tmp_path / "i")],
                       capture_output=True, text=True, timeout=180, env=env)
    took = time.monotonic() - t0
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr
    assert "Traceback" not in err and "Traceback" not in p.stdout
    assert "the CLIP and DINO weights are missing" in err
    for needle in ("--clip-checkpoint", "--dino-checkpoint", "FIFTYONE_CASS_CLIP_CHECKPOINT",
                   "FIFTYONE_CASS_DINO_CHECKPOINT", "timm/vit_base_patch16_clip_224.openai", "vit_base_patch8_224.dino"):
        assert needle in err, needle
    assert took < 120
    assert not fo.dataset_exists(name) and not (tmp_path / "i").exists()  # failed before any work


def test_unreachable_hub_switches_to_cache_only_and_says_so(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FIFTYONE_CASS_CLIP_CHECKPOINT", raising=False)
    monkeypatch.delenv("FIFTYONE_CASS_DINO_CHECKPOINT", raising=False)
    monkeypatch.setattr(bootstrap, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(WeightsUnavailableError) as e:
        ensure_weights("openai", "cass+cdam", "cpu")
    # the error references the checkpoint settings; the command line names them as its flags
    msg = cli.cli_message(e.value, cli._flags_of(cli.build_parser(), "label"))
    assert "cannot be reached" in msg and "CLIP and DINO" in msg and "--clip-checkpoint /path/" in msg
    assert "clip_checkpoint=" in str(e.value)  # Python's words for Python callers
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_python_callers_switch_to_cache_only_where_the_hub_is_unreachable(monkeypatch):
    """Segmenter/CassModel/load_zoo_model load through cached_models: without the hub they fail
    with WeightsUnavailableError after the reachability check, not after download retries."""
    import fiftyone_cass.models.backbones as backbones
    from fiftyone_cass import Segmenter

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FIFTYONE_CASS_CLIP_CHECKPOINT", raising=False)
    monkeypatch.delenv("FIFTYONE_CASS_DINO_CHECKPOINT", raising=False)
    asked = []
    monkeypatch.setattr(bootstrap, "hub_reachable", lambda timeout=3.0: asked.append(timeout) or False)
    monkeypatch.setattr(backbones, "_LOADED", {})
    with pytest.raises(WeightsUnavailableError, match="clip_checkpoint="):
        Segmenter(classes=["dog"], device="cpu")
    assert asked and os.environ.get("HF_HUB_OFFLINE") == "1"
    # test backbones (random weights) never ask the hub
    asked.clear()
    Segmenter(classes=["dog"], backbone="tiny", device="cpu")
    assert asked == []


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_command_serves_the_dataset(tmp_path, cleanup_datasets):
    name = f"cli-app-{uuid.uuid4().hex[:8]}"
    cleanup_datasets.append(name)
    ds = fo.Dataset(name)
    ds.add_samples([fo.Sample(filepath=p) for p in make_images(tmp_path, 2)])
    ds.persistent = True
    port = _free_port()
    log = tmp_path / "app.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(entry_point() + ["app", name, "--remote", "--port", str(port), "--address", "127.0.0.1"],
                                stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    body = r.read().decode("utf-8", "replace")
                    break
            except OSError:
                time.sleep(0.5)
        assert body is not None, f"the App server did not answer; exit={proc.poll()}: {log.read_text()}"
        assert "<html" in body.lower()
        while time.monotonic() < deadline and "to exit" not in log.read_text(errors="replace"):
            time.sleep(0.2)  # the command is now waiting on the session
        proc.send_signal(signal.SIGTERM)  # stops like ctrl + c
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"fiftyone-cass app did not exit on SIGTERM:\n{log.read_text()}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the App left behind in its group
        except ProcessLookupError:
            pass
        proc.wait()
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, out
    assert f"the App shows dataset '{name}'" in out


def test_eval_protocol_runs_the_benchmark_pipeline(tmp_path, capsys, cleanup_datasets):
    """``eval --protocol``: import a (tiny) VOC layout, predict with the preset, evaluate, print the table."""
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(1)
    ids = []
    for i, (h, w) in enumerate([(40, 56), (44, 36)]):
        sid = f"2007_00000{i}"
        ids.append(sid)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{sid}.jpg")
        lab = np.zeros((h, w), np.uint8)
        lab[4:20, 4:20] = 12  # dog
        Image.fromarray(lab).save(base / "SegmentationClass" / f"{sid}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    name = f"cli-proto-{uuid.uuid4().hex[:8]}"
    cleanup_datasets.append(name)
    rc, out = run_cli("eval", "--protocol", "voc21", tmp_path, "--backbone", "tiny", "--device", "cpu",
                      "--method", "cass", "--name", name, "--masks-dir", tmp_path / "m", capsys=capsys)
    assert rc == 0, out.err
    assert "voc21 | cass | 2 images" in out.out and "mIoU" in out.out
    ds = fo.load_dataset(name)
    assert "eval_voc21" in ds.list_evaluations() and len(ds.exists("predictions")) == 2
    rc, out = run_cli("eval", "--protocol", "voc21", tmp_path / "missing", "--backbone", "tiny", "--device", "cpu",
                      capsys=capsys)
    assert rc == 2 and "check the dataset directory" in out.err


def test_eval_protocol_name_is_checked_before_the_weights_and_listed_in_help(tmp_path, capsys, monkeypatch):
    # no weights anywhere: an unknown protocol must be reported as such, not as missing weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FIFTYONE_CASS_CLIP_CHECKPOINT", raising=False)
    monkeypatch.delenv("FIFTYONE_CASS_DINO_CHECKPOINT", raising=False)
    rc, out = run_cli("eval", tmp_path, "--protocol", "voc99", capsys=capsys)
    assert rc == 2, out.err
    assert "--protocol: invalid choice: 'voc99'" in out.err and "voc21" in out.err, out.err
    assert "weights" not in out.err.lower() and "checkpoint not found" not in out.err.lower()
    rc, out = run_cli("eval", "--help", capsys=capsys)
    assert rc == 0
    text = " ".join(out.out.split())
    assert "--protocol NAME run a published benchmark on the directory TARGET: one of voc21, voc20," in text
    assert "--split SPLIT the benchmark's split to import (default val; validation for ade20k" in text
    assert "--summary-json FILE also write mIoU" in text
