"""Reliability of ``fiftyone-cass label`` on the session's real MongoDB, with real processes:

* fault injection: the command is killed with SIGKILL in the middle of labelling (twice), then run
  again with the same arguments; every sample ends up labelled exactly once with a readable mask of
  its image's size, and at no point does a sample point at a missing or truncated mask file;
* two worker processes (``--shard 0/2`` and ``--shard 1/2``) import and label one directory into one
  dataset at the same time: disjoint work, complete result, no duplicate samples;
* delegated operations: ``--delegate --workers 2`` queues one operation per shard for FiftyOne's
  delegated-operation workers; together they label everything once;
* a matrix of bad and unusual inputs: the run completes, good samples are labelled at their
  (EXIF-rotated) size, bad ones are reported by name, and the exit status says so.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo

from fiftyone_cass import cli
from fiftyone_cass.fo.shards import shard_index
from fiftyone_cass.fo.apply import CONFIG_ATTR, is_valid_png

CLASSES = "dog, frisbee, cat"
#: the tiny random-weight model in "slide" inference (several windows per image), so that a batch
#: takes long enough to be interrupted in the middle of a run; CASS without CDAM in the worker
#: processes (CDAM's text set takes seconds to embed at every process start)
TINY_SLOW = ["--backbone", "tiny", "--device", "cpu", "--method", "cass", "--batch-size", "2",
             "-o", "short_side=112", "-o", "bg_rule=none"]
TINY_FAST = ["--backbone", "tiny", "--device", "cpu", "--method", "cass", "--batch-size", "3",
             "-o", "mode=whole", "-o", "short_side=64", "-o", "long_side=128", "-o", "bg_rule=none"]
#: in this process (model and text embeddings cached across tests): the default method
TINY_IN_PROCESS = ["--backbone", "tiny", "--device", "cpu", "--batch-size", "3",
                   "-o", "mode=whole", "-o", "short_side=64", "-o", "long_side=128", "-o", "bg_rule=none"]


def make_dir(root: Path, n: int):
    """``n`` small images of slightly different sizes; returns {path: (height, width)}."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    out = {}
    for i in range(n):
        h, w = 40 + (i % 5) * 2, 60 + (i % 3) * 4
        a = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        a[:, : w // 2] //= 3
        p = root / f"im{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(a).save(p)
        out[str(p)] = (h, w)
    return out


def cli_cmd(*argv):
    return [sys.executable, "-m", "fiftyone_cass", *[str(a) for a in argv]]


def start(argv, log: Path):
    f = open(log, "ab")
    p = subprocess.Popen(cli_cmd(*argv), stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    f.close()
    return p


class LabelledCounter:
    """Counts the samples of a dataset with a label in ``field`` straight from MongoDB (cheap
    enough to poll every few milliseconds while another process labels)."""

    def __init__(self, name: str, field: str = "cass"):
        self.name, self.field, self.coll = name, field, None

    def __call__(self) -> int:
        if self.coll is None:
            if not fo.dataset_exists(self.name):
                return 0
            import fiftyone.core.odm as foo

            self.coll = foo.get_db_conn()[fo.load_dataset(self.name)._sample_collection_name]
        return self.coll.count_documents({self.field: {"$type": "object"}})


def check_consistent(name: str, sizes, field: str = "cass"):
    """Every labelled sample points at a complete PNG of its image's size (the invariant that must
    hold after a kill at any point). Returns {sample id: (mask path, mtime_ns, inode)}."""
    ds = fo.load_dataset(name)
    ds.reload()
    out = {}
    if not ds.has_sample_field(field):
        return out
    for sid, fp, label in zip(*ds.exists(field).values(["id", "filepath", field])):
        assert label.mask is None and label.mask_path, sid
        assert is_valid_png(label.mask_path), f"{fp}: mask {label.mask_path} is missing or truncated"
        with Image.open(label.mask_path) as im:
            im.load()
            assert (im.height, im.width) == sizes[fp], fp
        st = os.stat(label.mask_path)
        out[sid] = (label.mask_path, st.st_mtime_ns, st.st_ino)
    return out


def kill_when(proc, name: str, at_least: int, timeout: float = 240.0) -> int:
    """SIGKILLs ``proc`` once ``at_least`` samples are labelled; returns the count after its death."""
    count = LabelledCounter(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the labelling process ended (exit {proc.returncode}) before it could be killed")
        if count() >= at_least:
            break
        time.sleep(0.01)
    else:
        raise AssertionError(f"fewer than {at_least} samples labelled after {timeout}s")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return count()


@pytest.fixture
def dataset_name():
    name = f"rel-{uuid.uuid4().hex[:10]}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


# ------------------------------------------------------------------------------------------------
def test_kill_9_mid_run_then_rerun_labels_every_sample_exactly_once(tmp_path, dataset_name):
    n = 16
    sizes = make_dir(tmp_path / "imgs", n)
    masks = tmp_path / "masks"
    summary = tmp_path / "summary.json"
    argv = ["label", tmp_path / "imgs", "--dataset", dataset_name, "--classes", CLASSES, *TINY_SLOW,
            "--masks", "disk", "--mask-dir", masks, "--summary-json", summary]
    log = tmp_path / "log.txt"

    done_1 = kill_when(start(argv, log), dataset_name, 2)
    assert 2 <= done_1 < n, "the first run was not interrupted in the middle"
    before = check_consistent(dataset_name, sizes)
    assert len(before) == done_1 and not summary.exists()

    done_2 = kill_when(start(argv, log), dataset_name, done_1 + 4)
    assert done_1 + 4 <= done_2 < n, "the second run was not interrupted in the middle"
    mid = check_consistent(dataset_name, sizes)
    assert len(mid) == done_2
    assert all(mid[s] == before[s] for s in before), "the second run rewrote masks of the first"

    p = subprocess.run(cli_cmd(*argv), capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert p.returncode == 0, p.stdout + p.stderr + log.read_text(errors="replace")
    s = json.loads(summary.read_text())
    assert s["num_already_done"] == done_2 and s["num_labeled"] == n - done_2 and s["num_failed"] == 0
    assert s["imported"] == 0 and s["image_files"] == n

    ds = fo.load_dataset(dataset_name)
    assert len(ds) == n and sorted(ds.values("filepath")) == sorted(sizes)  # imported once each
    final = check_consistent(dataset_name, sizes)
    assert len(final) == n
    assert all(final[s] == mid[s] for s in mid), "a sample labelled before a kill was labelled again"
    assert len(set(ds.values(f"cass.{CONFIG_ATTR}"))) == 1
    assert len({v[0] for v in final.values()}) == n
    pngs = sorted(p.name for p in (masks / "cass").iterdir() if p.suffix == ".png")
    assert len(pngs) == n  # one mask file per sample, none orphaned or duplicated
    assert all(v is None for v in ds.values("cass_error"))



def test_two_concurrent_shard_workers_share_one_directory_without_overlap(tmp_path, dataset_name):
    n = 14
    sizes = make_dir(tmp_path / "imgs", n)
    procs, summaries = [], []
    for i in range(2):
        summaries.append(tmp_path / f"s{i}.json")
        procs.append(start(["label", tmp_path / "imgs", "--dataset", dataset_name, "--classes", CLASSES,
                            *TINY_FAST, "--masks", "disk", "--mask-dir", tmp_path / "masks",
                            "--shard", f"{i}/2", "--summary-json", summaries[-1]], tmp_path / f"log{i}.txt"))
    for i, p in enumerate(procs):
        p.wait(timeout=300)
        assert p.returncode == 0, (tmp_path / f"log{i}.txt").read_text(errors="replace")
    s = [json.loads(x.read_text()) for x in summaries]

    expected = [sorted(fp for fp in sizes if shard_index(fp, 2) == i) for i in range(2)]
    assert all(expected), "degenerate split: pick other file names"
    for i in range(2):
        # num_target: the directory's samples when this worker planned (the other may still import)
        assert s[i]["shard"] == [i, 2] and len(expected[i]) <= s[i]["num_target"] <= n
        assert s[i]["imported"] == len(expected[i])  # each worker imported its own files only
        assert s[i]["num_in_shard"] == len(expected[i])
        assert s[i]["num_labeled"] == len(expected[i]) and s[i]["num_already_done"] == 0
    assert s[0]["num_labeled"] + s[1]["num_labeled"] == n  # disjoint: nobody labelled a sample twice

    ds = fo.load_dataset(dataset_name)
    assert len(ds) == n and sorted(ds.values("filepath")) == sorted(sizes)  # no duplicate samples
    assert len(check_consistent(dataset_name, sizes)) == n  # complete
    assert ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "frisbee", 3: "cat"}


def test_delegated_operations_one_per_shard(tmp_path, dataset_name, capsys):
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    n = 8
    sizes = make_dir(tmp_path / "imgs", n)
    rc = cli.main([str(a) for a in ["label", tmp_path / "imgs", "--dataset", dataset_name, "--classes", CLASSES,
                                    *TINY_IN_PROCESS, "--masks", "disk", "--mask-dir", tmp_path / "masks",
                                    "--delegate", "--workers", "2"]])
    out = capsys.readouterr().out
    assert rc == 0 and "queued 2 delegated operation(s)" in out and "fiftyone delegated launch" in out
    ds = fo.load_dataset(dataset_name)
    assert len(ds) == n and not ds.has_sample_field("cass")  # imported, nothing labelled yet

    svc = DelegatedOperationService()
    ops = svc.list_operations(dataset_name=dataset_name, run_state=ExecutionRunState.QUEUED)
    assert len(ops) == 2
    svc.execute_queued_operations(dataset_name=dataset_name)
    results = []
    for op in ops:
        doc = svc.get(op.id)
        assert doc.run_state == ExecutionRunState.COMPLETED, doc.result and doc.result.error
        results.append(doc.result.result)
    assert sorted(tuple(r["shard"]) for r in results) == [(0, 2), (1, 2)]
    assert sum(r["num_labeled"] for r in results) == n and all(r["num_failed"] == 0 for r in results)
    assert len(check_consistent(dataset_name, sizes)) == n


# ------------------------------------------------------------------------------------------------
def _jpeg_bytes(a: np.ndarray, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", **kw)
    return b.getvalue()


def make_matrix(root: Path):
    """Bad and unusual image files. Returns ({path: (h, w)} of good ones, {path: reason} of bad ones)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 255, (36, 52, 3)).astype(np.uint8)
    good, bad = {}, {}

    def put(name, data: bytes):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return str(p)

    jpg = _jpeg_bytes(rgb)
    noise = bytes(rng.integers(0, 255, 3000).astype(np.uint8))
    bad[put("corrupt.jpg", jpg[:300] + noise)] = "cannot decode"  # valid JPEG header, garbage scan data
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    bad[put("truncated.png", png.getvalue()[: len(png.getvalue()) // 2])] = "cannot decode"
    bad[put("empty.png", b"")] = "empty"

    def save(name, img: Image.Image, size_hw, **kw):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p, **kw)
        good[str(p)] = size_hw

    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), (36, 52))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), (36, 52))
    save("gray16.png", Image.fromarray((rng.integers(0, 65535, (30, 44))).astype(np.uint16)), (30, 44))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])), (36, 52))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("exif_rotated.jpg", Image.fromarray(rgb), (52, 36), exif=exif.tobytes())  # stored 52x36, shown 36x52
    save("one_pixel.png", Image.fromarray(rgb[:1, :1]), (1, 1))
    save("wide_10000x20.png", Image.fromarray(np.tile(rgb[:20, :50], (1, 200, 1))), (20, 10000))
    save("données/ünïcødé 画像 ✓.png", Image.fromarray(rgb[::-1]), (36, 52))
    (root / "notes.txt").write_text("not an image: never imported")
    return good, bad


def test_bad_input_matrix_completes_labels_the_good_and_names_the_bad(tmp_path, dataset_name, capsys):
    good, bad = make_matrix(tmp_path / "in")
    summary = tmp_path / "s.json"
    rc = cli.main([str(a) for a in ["label", tmp_path / "in", "--dataset", dataset_name, "--classes", CLASSES,
                                    *TINY_IN_PROCESS, "--masks", "disk", "--mask-dir", tmp_path / "masks",
                                    "--summary-json", summary]])
    out = capsys.readouterr().out
    assert rc == 1  # some samples failed
    s = json.loads(summary.read_text())
    assert s["image_files"] == len(good) + len(bad) and s["num_target"] == len(good) + len(bad)
    assert s["num_labeled"] == len(good) and s["num_failed"] == len(bad)
    failed = {f["filepath"]: f["error"] for f in s["failures"]}
    assert set(failed) == set(bad)
    for path, why in bad.items():
        assert why in failed[path], failed[path]
        assert f"FAILED {path}: " in out  # reported by name on the console

    ds = fo.load_dataset(dataset_name)
    by_path = {smp.filepath: smp for smp in ds}
    assert set(by_path) == set(good) | set(bad)
    for path, (h, w) in good.items():
        smp = by_path[path]
        assert smp.cass is not None and smp.cass_error is None, path
        assert is_valid_png(smp.cass.mask_path)
        with Image.open(smp.cass.mask_path) as im:
            assert (im.height, im.width) == (h, w), path
        assert smp.cass_presence is not None
    for path in bad:
        smp = by_path[path]
        assert smp.cass is None and smp.cass_presence is None
        assert bad[path] in smp.cass_error and not smp.cass_error.startswith(path), smp.cass_error  # reason first


@pytest.fixture
def buggy_family():
    """A method family with a programming error (issue 19): ``buggy`` raises ZeroDivisionError in
    its last block; ``calls`` counts how often it ran."""
    from fiftyone_cass.methods import base, register_family
    from fiftyone_cass.methods.maskclip import MaskCLIP

    calls = []

    @register_family
    class Buggy(MaskCLIP):
        name = "buggy"

        def features(self, seg, x, crops, grid):
            calls.append(x.shape[0])
            return 1 / 0

    yield calls
    base._FAMILIES.pop("buggy", None)


def test_a_bug_in_a_family_stops_label_with_exit_3_and_its_traceback(tmp_path, dataset_name, capsys, buggy_family):
    make_dir(tmp_path / "in", 5)
    summary = tmp_path / "s.json"
    rc = cli.main([str(a) for a in ["label", tmp_path / "in", "--dataset", dataset_name, "--classes", CLASSES,
                                    *TINY_IN_PROCESS, "--method", "buggy", "--masks", "database",
                                    "--summary-json", summary]])
    captured = capsys.readouterr()
    assert rc == 3, captured.err
    assert "Traceback (most recent call last)" in captured.err and "ZeroDivisionError" in captured.err
    assert "internal error: ZeroDivisionError" in captured.err
    assert "failed" not in captured.out and "FAILED" not in captured.out  # not "N failed"
    assert len(buggy_family) == 1  # stopped at the first call: not retried image by image, no next batch
    ds = fo.load_dataset(dataset_name)
    assert len(ds.exists("cass")) == 0 and len(ds.exists("cass_error")) == 0  # no sample marked as failed


def test_a_bug_in_a_family_is_an_unexpected_error_in_the_operator_and_apply_model_keeps_skip_failures(
        fo_dataset, tmp_path, buggy_family):
    import asyncio
    import json

    from fiftyone.operators.executor import execute_or_delegate_operator

    from fiftyone_cass.fo.model import CassModel

    paths = [str(p) for p in make_dir(tmp_path / "in", 3)]
    ds = fo_dataset("buggy")
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    opts = {"mode": "whole", "short_side": 64, "long_side": 128, "bg_rule": "none"}
    params = dict(class_source="classes", classes=CLASSES, label_field="cass", backbone="tiny", device="cpu",
                  batch_size=3, masks="database", method="buggy", options=json.dumps(opts))
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params)
    result = asyncio.run(execute_or_delegate_operator("@fiftyone-cass/cass/auto_label", request))
    messages = [m.body.to_json() for m in result.result] if result.is_generator else []
    errors = [m["params"]["message"] for m in messages
              if m["operator_uri"] == "notify" and m["params"].get("variant") == "error"]
    assert len(errors) == 1 and "Unexpected error: ZeroDivisionError" in errors[0] and "server log" in errors[0], errors
    assert len(ds.exists("cass")) == 0 and len(ds.exists("cass_error")) == 0

    model = CassModel(classes=CLASSES, method="buggy", backbone="tiny", device="cpu", batch_size=3, **opts)
    with pytest.raises(ZeroDivisionError):
        ds.apply_model(model, "cass", skip_failures=False)
    ds.apply_model(model, "cass", skip_failures=True)  # FiftyOne's choice: the batch is skipped, logged
    assert len(ds.exists("cass")) == 0
