"""The test harness talks to a real MongoDB: datasets with segmentation masks round-trip."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo


def _write_png(path: Path, rng, shape=(12, 16)) -> str:
    Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_dataset_with_segmentation_round_trips(fo_dataset, tmp_path):
    rng = np.random.default_rng(0)
    ds = fo_dataset("roundtrip")
    masks = [rng.integers(0, 5, size=(12, 16), dtype=np.uint8) for _ in range(2)]
    ds.add_samples(
        [
            fo.Sample(filepath=_write_png(tmp_path / f"img{i}.png", rng), tag_index=i)
            for i in range(2)
        ]
    )
    ds.default_mask_targets = {0: "background", 1: "cat", 2: "dog", 3: "car", 4: "tree"}
    for sample, mask in zip(ds.iter_samples(autosave=True), masks):
        sample["pred"] = fo.Segmentation(mask=mask)
    ds.save()
    name = ds.name

    # A fresh handle re-reads everything from the database.
    ds.clear_cache()
    reloaded = fo.load_dataset(name)
    assert len(reloaded) == 2
    assert reloaded.get_field("pred").document_type is fo.Segmentation
    assert reloaded.default_mask_targets == {0: "background", 1: "cat", 2: "dog", 3: "car", 4: "tree"}
    by_index = {s["tag_index"]: s for s in reloaded}
    for i, mask in enumerate(masks):
        got = by_index[i]["pred"].mask
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, mask)
        assert os.path.basename(by_index[i].filepath) == f"img{i}.png"


def test_second_process_reads_what_was_saved(fo_dataset, tmp_path):
    # Another interpreter has no in-memory FiftyOne cache: it can only see what reached MongoDB.
    rng = np.random.default_rng(1)
    ds = fo_dataset("crossproc", persistent=True)  # the child's exit hook may drop non-persistent ones
    mask = rng.integers(0, 3, size=(8, 10), dtype=np.uint8)
    sample = fo.Sample(filepath=_write_png(tmp_path / "a.png", rng, shape=(8, 10)))
    sample["pred"] = fo.Segmentation(mask=mask)
    ds.add_sample(sample)
    np.save(tmp_path / "expected.npy", mask)

    code = (
        "import sys, numpy as np, fiftyone as fo\n"
        "ds = fo.load_dataset(sys.argv[1])\n"
        "got = ds.first()['pred'].mask\n"
        "assert np.array_equal(got, np.load(sys.argv[2])), got\n"
        "print('child-ok', len(ds))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, ds.name, str(tmp_path / "expected.npy")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "child-ok 1" in out.stdout


def test_database_is_isolated_and_datasets_are_cleaned_up(fo_dataset):
    # The session database lives in a temporary directory, never ~/.fiftyone.
    assert fo.config.database_dir == os.environ["FIFTYONE_DATABASE_DIR"]
    assert "fiftyone_cass_tests_" in fo.config.database_dir
    assert fo.config.database_uri.startswith("mongodb://127.0.0.1:")
    assert fo.config.do_not_track is True
    ds = fo_dataset()
    assert not ds.persistent
    assert fo.dataset_exists(ds.name)


def test_plugins_dir_links_the_repository():
    plugins = Path(fo.config.plugins_dir)
    link = plugins / "fiftyone_cass"
    assert link.is_symlink()
    assert link.resolve() == Path(__file__).resolve().parents[1]


def test_parity_fixture_loads_shared_npz(parity, shared_dir):
    files = sorted(p.name for p in (shared_dir / "parity").glob("*.npz"))
    assert files, "no parity fixtures in shared/parity"
    data = parity(files[0])
    assert len(data.files) > 0
    assert all(isinstance(data[k], np.ndarray) for k in data.files)


def test_parity_fixture_fails_loudly_on_missing_file(parity):
    # A missing fixture is a failure, never a skip.
    with pytest.raises(pytest.fail.Exception, match="missing"):
        parity("does-not-exist.npz")
