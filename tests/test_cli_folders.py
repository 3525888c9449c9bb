"""``fiftyone-cass label DIR`` on awkward folders (real MongoDB, tiny backbone): a file name that is
not valid UTF-8, fifos, sockets, broken links, an unreadable subfolder (a real process without
the permission to read it) are reported per path while the rest is imported and labelled; two
commands started at the same time on one folder import each file once (two real processes)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

from PIL import Image

import fiftyone as fo

from _label_helpers import make_images, strict_json
from fiftyone_cass.fo.folders import printable, scan_images
from test_cli import TINY, run_cli


def _cli(*argv):
    return [sys.executable, "-m", "fiftyone_cass", *[str(a) for a in argv]]


def test_awkward_paths_are_reported_and_the_rest_is_imported(tmp_path, capsys, names):
    d = tmp_path / "photos"
    good = make_images(d, 3)
    # a real image whose name is not valid UTF-8 (Latin-1 "café.jpg")
    bad_name = os.path.join(os.fsencode(str(d)), b"caf\xe9.jpg")
    shutil.copyfile(good[0], bad_name)
    os.mkfifo(d / "pipe.jpg")  # opening it would block the labelling forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.png"))
    os.symlink(d / "missing.jpg", d / "gone.jpg")
    os.symlink(good[1], d / "link.jpg")  # a link to an image is an image
    (d / "sub").mkdir()
    os.symlink(d / "sub", d / "loop")  # a link to a folder is not followed
    Image.new("RGB", (20, 16), (200, 10, 10)).save(d / "sub" / "red.png")
    (d / "notes.txt").write_text("not an image")  # other files: not images, silently not imported
    (d / ".hidden.jpg").write_bytes(b"")

    name = names.new("awk")
    summary = tmp_path / "s.json"
    try:
        rc, out = run_cli("label", d, "--dataset", name, "--classes", "cat, dog", *TINY, "--summary-json", summary,
                          capsys=capsys)
    finally:
        sock.close()
    assert rc == 1, out.err  # something could not be imported: said in the exit status
    printable_bad = str(d) + "/caf\\xe9.jpg"
    expected = {
        printable_bad: "not valid UTF-8",
        str(d / "pipe.jpg"): "a fifo",
        str(d / "sock.png"): "a socket",
        str(d / "gone.jpg"): "broken symbolic link",
        str(d / "loop"): "link to a folder",
    }
    s = strict_json(summary)
    got = {x["path"]: x["reason"] for x in s["skipped"]}
    assert set(got) == set(expected), got
    for path, why in expected.items():
        assert why in got[path]
        assert f"SKIPPED {path}: " in out.out
    ds = fo.load_dataset(name)
    paths = sorted(ds.values("filepath"))
    assert paths == sorted(good + [str(d / "link.jpg"), str(d / "sub" / "red.png")])
    assert s["imported"] == 5 and s["image_files"] == 5 and s["num_labeled"] == 5 and s["num_failed"] == 0
    assert len(ds.exists("cass")) == 5

    # again: nothing imported twice, the same paths reported
    rc, out = run_cli("label", d, "--dataset", name, "--classes", "cat, dog", *TINY, "--summary-json", summary,
                      capsys=capsys)
    s = strict_json(summary)
    assert rc == 1 and s["imported"] == 0 and len(fo.load_dataset(name)) == 5
    assert {x["path"] for x in s["skipped"]} == set(expected)
    assert printable(os.fsdecode(bad_name)) == printable_bad


def test_an_unreadable_subfolder_is_reported_by_a_process_that_cannot_read_it(tmp_path, names):
    d = tmp_path / "photos"
    good = make_images(d, 2)
    locked = d / "locked"
    make_images(locked, 2)
    name = names.new("locked")
    summary = tmp_path / "s.json"
    setpriv = shutil.which("setpriv")
    assert setpriv, "util-linux's setpriv is needed to run the command without root's read-anything capability"
    # root may read any folder: drop that capability (the command runs as an ordinary reader would)
    drop = [setpriv, "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    os.chmod(locked, 0)
    try:
        p = subprocess.run(drop + _cli("label", d, "--dataset", name, "--classes", "cat", *TINY,
                                       "--summary-json", summary),
                           capture_output=True, text=True, timeout=300, env=os.environ.copy())
    finally:
        os.chmod(locked, 0o755)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert f"SKIPPED {locked}: folder cannot be read (Permission denied)" in p.stdout, p.stdout
    s = strict_json(summary)
    assert s["skipped"] == [dict(path=str(locked), reason="folder cannot be read (Permission denied)")]
    assert sorted(fo.load_dataset(name).values("filepath")) == sorted(good)
    assert s["num_labeled"] == 2


#: runs the command's main() in a real process, holding its first ``add_samples`` call until every
#: process of the test has reached its own: both have read the dataset's file paths before either
#: inserts, the worst interleaving of two imports (without this, one process usually starts late)
BARRIER_DRIVER = """
import os, sys, time
import fiftyone.core.dataset as fod

barrier, me = sys.argv[1], sys.argv[2]
original = fod.Dataset.add_samples
held = []


def add_samples(self, *args, **kwargs):
    if not held:
        held.append(True)
        open(os.path.join(barrier, me), "w").close()
        deadline = time.time() + 300
        while len(os.listdir(barrier)) < 2 and time.time() < deadline:
            time.sleep(0.005)
    return original(self, *args, **kwargs)


fod.Dataset.add_samples = add_samples
from fiftyone_cass.cli import main

sys.exit(main(sys.argv[3:]))
"""


def test_two_label_commands_started_together_import_each_file_once(tmp_path, names):
    d = tmp_path / "many"
    n = 1200
    for k in range(n // 100):
        sub = d / f"part{k:02d}"
        sub.mkdir(parents=True)
        for j in range(100):
            (sub / f"im{j:03d}.jpg").write_bytes(b"")  # only imported: --tags selects no sample to label
    name = names.new("twice")
    driver = tmp_path / "driver.py"
    driver.write_text(BARRIER_DRIVER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = []
    for i in range(2):
        argv = [sys.executable, str(driver), str(barrier), str(i), "label", str(d), "--dataset", name,
                "--classes", "cat", *TINY, "--tags", "no-such-tag", "--summary-json", str(tmp_path / f"s{i}.json"),
                "--no-progress"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=os.environ.copy()))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (out, err)
    assert sorted(os.listdir(barrier)) == ["0", "1"]  # both reached the insert
    ds = fo.load_dataset(name)
    paths = ds.values("filepath")
    assert len(set(paths)) == n and len(paths) == n
    imported = [strict_json(tmp_path / f"s{i}.json")["imported"] for i in range(2)]
    assert sum(imported) == n, imported  # each file added by exactly one of them
    assert ds.get_index_information()["filepath"]["unique"]


def test_scan_images_lists_images_and_reports_the_rest(tmp_path):
    d = tmp_path / "x"
    good = make_images(d, 2)
    os.mkfifo(d / "f.png")
    mask_dir = d / "masks"
    make_images(mask_dir, 1)
    files, skipped = scan_images(str(d), exclude=[str(mask_dir)])
    assert files == sorted(good)
    assert [(x.path, x.reason) for x in skipped] == [(str(d / "f.png"), "a fifo, not an image file")]
