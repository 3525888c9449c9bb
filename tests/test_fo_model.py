"""CassModel as a FiftyOne model, on a real MongoDB with the tiny backbone: the zoo entry
(``manifest.json`` + the root ``__init__.py`` placed under ``model_zoo_dir``), ``apply_model`` (masks
in the database and under ``output_dir``, equal to the Segmenter's), ``compute_embeddings``,
``embed_prompts``, FiftyOne Brain's text search, presence labels above the threshold only."""

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.zoo as foz

from _label_helpers import BATCH, CLASSES, OPTS, Reference, add_samples, all_scores, make_bad_files, make_images, read_mask
from fiftyone_cass import CassModel, InvalidInputError
from fiftyone_cass.fo.apply import apply
from fiftyone_cass.fo.model import CONFIG_ATTR, ZOO_MODEL_NAME, LoadFailure

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 6)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def reference():
    return Reference()


@pytest.fixture(scope="module")
def zoo_source():
    """The repository as FiftyOne's ``register_zoo_model_source`` leaves it: a copy of its source
    files (the manifest and the module with download_model/load_model) under ``model_zoo_dir``."""
    zoo_dir = Path(fo.config.model_zoo_dir)
    src = zoo_dir / "fiftyone-cass"
    src.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "__init__.py"):
        shutil.copy(REPO_ROOT / name, src / name)
    yield src
    shutil.rmtree(src, ignore_errors=True)


def test_zoo_model_is_listed_and_loads_with_keyword_arguments(zoo_source):
    assert ZOO_MODEL_NAME in foz.list_zoo_models()
    zm = foz.get_zoo_model(ZOO_MODEL_NAME)
    assert "segmentation" in zm.tags and "embeddings" in zm.tags
    assert {"torch", "open_clip_torch", "timm"} <= set(zm.requirements.packages)
    model = foz.load_zoo_model(ZOO_MODEL_NAME, classes=CLASSES, batch_size=BATCH, **OPTS)
    assert isinstance(model, CassModel) and isinstance(model, fo.core.models.Model)
    assert model.mask_targets == {0: "background", 1: "dog", 2: "frisbee", 3: "cat"}
    assert model.classes == CLASSES and model.segmenter.method == "cass+cdam"
    assert foz.is_zoo_model_downloaded(ZOO_MODEL_NAME)  # download_model wrote its record
    # keyword arguments reach the Segmenter; unknown ones are a clear error
    other = foz.load_zoo_model(ZOO_MODEL_NAME, preset="voc21", method="cass", **OPTS)
    assert other.segmenter.method == "cass" and len(other.mask_targets) == 21
    with pytest.raises(InvalidInputError, match=r"unknown argument\(s\) 'clases'"):
        foz.load_zoo_model(ZOO_MODEL_NAME, clases=CLASSES, **OPTS)
    with pytest.raises(InvalidInputError, match=r"option method='nope' is not allowed: one of 'cass\+cdam'"):
        foz.load_zoo_model(ZOO_MODEL_NAME, classes=CLASSES, method="nope", **OPTS)


def test_zoo_model_without_weights_fails_fast(zoo_source, monkeypatch):
    from fiftyone_cass import WeightsUnavailableError

    monkeypatch.delenv("FIFTYONE_CASS_CLIP_CHECKPOINT", raising=False)
    with pytest.raises(WeightsUnavailableError, match="clip_checkpoint"):
        foz.load_zoo_model(ZOO_MODEL_NAME, classes=CLASSES, device="cpu")  # the published weights, offline


@pytest.mark.parametrize("num_workers", [0, 2])
def test_apply_model_masks_equal_the_segmenters(fo_dataset, images, reference, num_workers):
    ds = add_samples(fo_dataset("am"), images)
    model = CassModel(CLASSES, batch_size=BATCH, presence_threshold=0.3, **OPTS)
    ds.apply_model(model, "cass", batch_size=BATCH, num_workers=num_workers)

    assert ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "frisbee", 3: "cat"}
    refs = dict(zip(images, reference(images)))
    for s in ds:
        r = refs[s.filepath]
        np.testing.assert_array_equal(s.cass.mask, r.label_map)  # original size, same labels
        assert s.cass[CONFIG_ATTR] == model.config_id
        scores = all_scores(s.cass_presence)
        assert scores == pytest.approx(r.presence_dict(["background"] + CLASSES))
        visible = [(c.label, c.confidence) for c in s.cass_presence.classifications]
        assert visible == sorted(((c, v) for c, v in scores.items() if v >= 0.3), key=lambda x: -x[1])
        assert {t for t in s.tags if t.startswith("cass:")} == {f"cass:{c}" for c, _ in visible}


def test_apply_model_output_dir_writes_pngs(fo_dataset, images, reference, tmp_path):
    ds = add_samples(fo_dataset("amdir"), images[:3])
    model = CassModel(CLASSES, batch_size=BATCH, **OPTS)
    ds.apply_model(model, "pred", batch_size=2, output_dir=str(tmp_path / "masks"))
    refs = dict(zip(images, reference(images[:3])))
    for s in ds:
        assert s.pred.mask is None and s.pred.mask_path.startswith(str(tmp_path / "masks"))
        np.testing.assert_array_equal(read_mask(s.pred), refs[s.filepath].label_map)
    assert ds.mask_targets["pred"] == model.mask_targets
    assert ds.has_sample_field("pred_presence")


def test_apply_model_skips_a_corrupt_image_by_name(fo_dataset, images, bad, reference, caplog):
    ds = add_samples(fo_dataset("ambad"), [images[0], bad["garbage"], images[1], bad["empty"]])
    model = CassModel(CLASSES, batch_size=BATCH, **OPTS)
    with caplog.at_level(logging.WARNING):
        ds.apply_model(model, "cass", batch_size=4, skip_failures=True)
    by_path = {s.filepath: s for s in ds}
    for p, r in zip(images[:2], reference(images[:2])):  # the good images of the same batch are labelled
        np.testing.assert_array_equal(by_path[p].cass.mask, r.label_map)
    assert by_path[bad["garbage"]].cass is None and by_path[bad["empty"]].cass is None
    text = caplog.text
    assert bad["garbage"] in text and "cannot decode image" in text and bad["empty"] in text


def test_embeddings_and_prompts(fo_dataset, images):
    ds = add_samples(fo_dataset("emb"), images)
    model = CassModel(CLASSES, batch_size=BATCH, **OPTS)
    ds.compute_embeddings(model, "emb", batch_size=BATCH)
    emb = np.stack(ds.values("emb"))
    dim = model.segmenter.text.shape[1]
    assert emb.shape == (len(images), dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the labelling run stores the same vectors in the same pass
    apply(ds, CLASSES, masks="database", batch_size=BATCH, **OPTS)
    stored = np.stack(ds.values("cass_embedding"))
    np.testing.assert_allclose(stored, emb, atol=1e-5)
    # prompts land in the same space, unit norm; a class name's prompt is its text embedding
    p = model.embed_prompts(["a red car", "dog"])
    assert p.shape == (2, dim) and p.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p[1], model.segmenter.text[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(model.embed_prompt("dog"), p[1], atol=1e-6)
    # one string is one prompt (not its characters); no prompts: (0, dim); non-texts are refused
    np.testing.assert_allclose(model.embed_prompts("dog"), p[1:], atol=1e-6)
    assert model.embed_prompts([]).shape == (0, dim)
    for bad in ([None], ["dog", ""], [3]):
        with pytest.raises(InvalidInputError, match="is not a non-empty text"):
            model.embed_prompts(bad)
    np.testing.assert_allclose(model.embed(images[0]), emb[0], atol=1e-5)
    # a model with no vocabulary still embeds, and says clearly that it cannot segment
    plain = CassModel(batch_size=BATCH, **OPTS)
    np.testing.assert_allclose(plain.embed_prompts(["dog"])[0], p[1], atol=1e-6)
    assert plain.embed_all(images[:2]).shape == (2, dim)
    with pytest.raises(InvalidInputError, match="no vocabulary"):
        plain.predict(images[0])
    with pytest.raises(InvalidInputError, match="no vocabulary"):  # once, before any batch
        ds.apply_model(plain, "plain_labels", batch_size=BATCH)
    assert not ds.has_sample_field("plain_labels")
    ds.compute_embeddings(plain, "plain_emb", batch_size=BATCH)  # embedding needs no vocabulary
    np.testing.assert_allclose(np.stack(ds.values("plain_emb")), emb, atol=1e-5)
    # an unreadable image is None in its place (FiftyOne then stores nothing for it)
    out = model.embed_all([images[0], LoadFailure("x.jpg", "x.jpg: broken")])
    assert out[1] is None and np.allclose(out[0], emb[0], atol=1e-5)


def test_text_search_with_brain_sorts_by_embedding_similarity(fo_dataset, images, zoo_source):
    ds = add_samples(fo_dataset("sim"), images)
    apply(ds, CLASSES, masks="database", batch_size=BATCH, **OPTS)
    fob.compute_similarity(ds, model=ZOO_MODEL_NAME, model_kwargs=dict(backbone="tiny", device="cpu"),
                           embeddings="cass_embedding", brain_key="cass_sim", backend="sklearn")
    info = ds.get_brain_info("cass_sim")
    assert info.config.supports_prompts
    query = "a photo of a frisbee on grass"
    view = ds.sort_by_similarity(query, k=4, brain_key="cass_sim")
    model = CassModel(backbone="tiny", device="cpu")
    q = model.embed_prompt(query)
    ids, emb = ds.values(["id", "cass_embedding"])
    sims = np.stack(emb) @ q
    expected = [ids[i] for i in np.argsort(-sims, kind="stable")[:4]]
    assert view.values("id") == expected


def test_model_interface_flags():
    model = CassModel(CLASSES, batch_size=BATCH, **OPTS)
    assert model.media_type == "image" and model.has_embeddings and model.can_embed_prompts
    assert not model.ragged_batches and model.has_collate_fn and model.collate_fn([1, 2]) == [1, 2]
    assert model.build_get_item().required_keys == ["filepath"]
    with pytest.raises(InvalidInputError, match="not classes and preset"):
        CassModel(CLASSES, preset="voc21", **OPTS)
    with pytest.raises(InvalidInputError, match="presence_threshold"):
        CassModel(CLASSES, presence_threshold="high", **OPTS)
    gt = CassModel(mask_targets={0: "background", 7: "dog", 3: "cat"}, **OPTS)
    assert gt.mask_targets == {0: "background", 3: "cat", 7: "dog"}
    assert gt.classes == ["cat", "dog"]
    label = gt.predict(np.zeros((40, 50, 3), np.uint8))
    assert set(np.unique(label.mask)) <= {0, 3, 7}


def test_plugin_works_from_a_downloaded_copy_without_the_package_installed(tmp_path):
    """What `fiftyone plugins download <url>` leaves: the repository's files in the plugins
    directory, the package not installed. The operators must load from that copy, and
    `fiftyone plugins requirements` must find the requirements."""
    import subprocess
    import sys

    plugins = tmp_path / "plugins"
    copy = plugins / "fiftyone_cass"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout
    for rel in files.split():
        if rel.startswith(("__init__.py", "fiftyone.yml", "requirements.txt", "manifest.json", "fiftyone_cass/")):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / rel, copy / rel)
    code = f"""
import sys
# forget the editable install of this checkout: the plugin must bring its own package
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r}) and "__editable__" not in p]
try:
    import fiftyone_cass
    raise SystemExit("fiftyone_cass is still importable from " + fiftyone_cass.__file__)
except ImportError:
    pass
import fiftyone.operators as foo
import fiftyone.plugins as fop
print("REQS", fop.load_plugin_requirements("@fiftyone-cass/cass"))
fop.ensure_plugin_requirements("@fiftyone-cass/cass", error_level=0)
op = foo.get_operator("@fiftyone-cass/cass/auto_label")
print("OP", op.config.name)
print("PKG", sys.modules["fiftyone_cass"].__file__)
"""
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(plugins), "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OP auto_label" in out.stdout
    assert f"PKG {copy / 'fiftyone_cass' / '__init__.py'}" in out.stdout
    reqs = out.stdout.split("REQS", 1)[1].splitlines()[0]
    assert "open_clip_torch" in reqs and "timm" in reqs and "torch" in reqs


def test_plugin_registers_its_zoo_entry_for_the_app_server(tmp_path, monkeypatch):
    """Issue 21 item 10: text search in the App embeds the query with the zoo model in the App
    server, which knew it only after a manual copy or register_zoo_model_source. Loading the
    plugin (its register()) now makes the entry known, once, and leaves an existing one alone."""
    from fiftyone_cass.app.support import register_zoo_entry

    zoo = tmp_path / "zoo"
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(zoo))
    assert ZOO_MODEL_NAME not in foz.list_zoo_models()
    assert register_zoo_entry(str(REPO_ROOT), environ={"FIFTYONE_CASS_NO_ZOO_REGISTER": "1"}) is None
    dest = register_zoo_entry(str(REPO_ROOT), environ={})
    assert dest == str(zoo / "fiftyone-cass")
    assert ZOO_MODEL_NAME in foz.list_zoo_models()
    model = foz.load_zoo_model(ZOO_MODEL_NAME, classes=CLASSES, batch_size=BATCH, **OPTS)
    assert isinstance(model, CassModel)
    assert register_zoo_entry(str(REPO_ROOT), environ={}) is None  # known: not written again
    # a source registered elsewhere (e.g. register_zoo_model_source from GitHub) is left alone
    other = tmp_path / "zoo2"
    (other / "fiftyone-cass" / "fiftyone_cass").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "manifest.json", other / "fiftyone-cass" / "fiftyone_cass" / "manifest.json")
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(other))
    assert register_zoo_entry(str(REPO_ROOT), environ={}) is None
    assert not (other / "fiftyone-cass" / "manifest.json").exists()
