"""Text embeddings (SPEC F): the truncated-context encoder equals open_clip's encode_text, and the
80-template average is computed as specified."""

import open_clip
import torch
import torch.nn.functional as F

from fiftyone_cass.models.backbones import BACKBONES, load_clip
from fiftyone_cass.models.text import TextEmbedder


def test_truncated_context_equals_encode_text():
    model = load_clip(BACKBONES["tiny"])
    tok = open_clip.get_tokenizer("ViT-B-16")
    emb = TextEmbedder(model, tok)
    tokens = tok(["a photo of a dog.", "a bad photo of the person in jacket.", "x"])
    with torch.no_grad():
        full = model.encode_text(tokens)
        short = emb._encode(tokens)
    assert (tokens != 0).sum(1).max() < 20  # the context really was cut
    assert torch.allclose(full, short, atol=1e-5)


def test_template_average_and_cache():
    model = load_clip(BACKBONES["tiny"])
    tok = open_clip.get_tokenizer("ViT-B-16")
    emb = TextEmbedder(model, tok)
    out = emb(["dog", "cat"])
    templates = open_clip.OPENAI_IMAGENET_TEMPLATES
    assert len(templates) == 80
    with torch.no_grad():
        each = F.normalize(model.encode_text(tok([t("dog") for t in templates])), dim=-1)
    want = F.normalize(each.mean(0), dim=-1)
    assert torch.allclose(out[0], want, atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))
    assert emb(["cat"]).data_ptr() != out.data_ptr() and torch.equal(emb(["cat"])[0], out[1])
    assert set(emb._cache) == {"dog", "cat"}


def _fail_if_encoding(*_a, **_k):
    raise AssertionError("the text tower ran although the embeddings were on disk")


def test_disk_cache_survives_the_process_and_is_keyed_by_weights(tmp_path, monkeypatch):
    from fiftyone_cass.models.text import text_tower_fingerprint

    tok = open_clip.get_tokenizer("ViT-B-16")
    model = load_clip(BACKBONES["tiny"])
    first = TextEmbedder(model, tok, cache_dir=str(tmp_path))
    out = first(["dog", "cat"])
    path = first.disk_path
    assert path.exists() and path.parent == tmp_path / "text"

    # a new embedder (as in a new process) reads them instead of running the model
    again = TextEmbedder(model, tok, cache_dir=str(tmp_path))
    monkeypatch.setattr(again, "_embed_names", _fail_if_encoding)
    assert torch.equal(again(["cat", "dog"]), out[[1, 0]])
    monkeypatch.undo()

    # new names are added to the same file; old ones stay
    third = TextEmbedder(model, tok, cache_dir=str(tmp_path))
    third(["dog", "frisbee"])
    stored = torch.load(path, weights_only=True)["embeddings"]
    assert set(stored) == {"dog", "cat", "frisbee"}

    # other text-tower weights: another file, recomputed
    other = load_clip(BACKBONES["tiny"])
    with torch.no_grad():
        other.token_embedding.weight.add_(0.1 * torch.randn_like(other.token_embedding.weight))
    assert text_tower_fingerprint(other) != text_tower_fingerprint(model)
    emb_other = TextEmbedder(other, tok, cache_dir=str(tmp_path))
    assert emb_other.disk_path != path
    assert not torch.allclose(emb_other(["dog"])[0], out[0])
    # image-tower weights do not matter to text embeddings: same file
    vis = load_clip(BACKBONES["tiny"])
    with torch.no_grad():
        next(vis.visual.parameters()).add_(1.0)
    assert TextEmbedder(vis, tok, cache_dir=str(tmp_path)).disk_path == path


def test_disk_cache_off_and_broken_cache_are_handled(tmp_path, monkeypatch, caplog):
    tok = open_clip.get_tokenizer("ViT-B-16")
    model = load_clip(BACKBONES["tiny"])
    monkeypatch.setenv("FIFTYONE_CASS_TEXT_CACHE", "0")
    monkeypatch.setenv("FIFTYONE_CASS_CACHE_DIR", str(tmp_path / "off"))
    off = TextEmbedder(model, tok)
    off(["dog"])
    assert off.disk_path is None and not (tmp_path / "off").exists()

    monkeypatch.setenv("FIFTYONE_CASS_TEXT_CACHE", "1")
    monkeypatch.setenv("FIFTYONE_CASS_CACHE_DIR", str(tmp_path / "on"))
    on = TextEmbedder(model, tok)
    good = on(["dog"])
    assert on.disk_path.parent == tmp_path / "on" / "text"
    on.disk_path.write_bytes(b"not a torch file")  # corrupted (e.g. disk full at some point)
    fresh = TextEmbedder(model, tok)
    with caplog.at_level("WARNING", logger="fiftyone_cass"):
        again = fresh(["dog"])
    assert torch.allclose(again, good, atol=1e-6)
    assert "unreadable text-embedding cache" in caplog.text
    assert torch.load(fresh.disk_path, weights_only=True)["version"] == 1  # rewritten whole

    # an unwritable cache directory: a warning, and the embeddings still come back
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    ro = TextEmbedder(model, tok, cache_dir=str(blocker))
    with caplog.at_level("WARNING", logger="fiftyone_cass"):
        assert torch.allclose(ro(["dog"]), good, atol=1e-6)
    assert "could not write the text-embedding cache" in caplog.text


def _bad_cache_entries(good_dim):
    """Entries that load fine but cannot be used, by name."""
    unit = F.normalize(torch.randn(good_dim), dim=0)
    return {
        "dog": torch.randn(good_dim + 3),                     # wrong shape
        "cat": torch.full((good_dim,), float("nan")),         # not finite
        "grass": 5.0 * unit,                                  # not unit norm
        "sky": unit.half(),                                   # wrong dtype
        "tree": unit.reshape(1, -1),                          # wrong shape, right values
        "road": [0.0] * good_dim,                             # not a tensor
    }


def test_invalid_cache_entries_are_recomputed_and_the_file_repaired(tmp_path, caplog):
    tok = open_clip.get_tokenizer("ViT-B-16")
    model = load_clip(BACKBONES["tiny"])
    names = ["dog", "cat", "grass", "sky", "tree", "road", "person"]
    want = TextEmbedder(model, tok, cache_dir=None)(names)  # freshly computed, no cache
    dim = want.shape[1]

    first = TextEmbedder(model, tok, cache_dir=str(tmp_path))
    first(["person"])  # a valid entry the repair must keep
    path = first.disk_path
    stored = torch.load(path, weights_only=True)
    stored["embeddings"].update(_bad_cache_entries(dim))
    stored["embeddings"]["unasked"] = torch.zeros(dim)  # invalid and not requested: dropped too
    torch.save(stored, path)

    emb = TextEmbedder(model, tok, cache_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="fiftyone_cass"):
        got = emb(names)
    assert torch.allclose(got, want, atol=1e-6)
    for name, problem in [("dog", "shape"), ("cat", "non-finite"), ("grass", "norm"), ("sky", "dtype"),
                          ("tree", "shape"), ("road", "not a tensor"), ("unasked", "norm")]:
        line = next((l for l in caplog.text.splitlines() if f"invalid entry {name!r}" in l), None)
        assert line is not None and problem in line, (name, caplog.text)

    repaired = torch.load(path, weights_only=True)["embeddings"]
    assert set(repaired) == set(names)
    for i, n in enumerate(names):
        assert repaired[n].dtype == torch.float32 and torch.allclose(repaired[n], want[i], atol=1e-6)

    # the repaired file is read without a warning and without running the text tower
    caplog.clear()
    again = TextEmbedder(model, tok, cache_dir=str(tmp_path))
    again._embed_names = _fail_if_encoding
    with caplog.at_level("WARNING", logger="fiftyone_cass"):
        assert torch.equal(again(names), got)
    assert "invalid entry" not in caplog.text


def test_segmenter_runs_on_a_cache_with_invalid_entries(tmp_path, monkeypatch, caplog):
    import numpy as np

    from fiftyone_cass import Segmenter

    monkeypatch.setenv("FIFTYONE_CASS_CACHE_DIR", str(tmp_path))
    classes = ["dog", "grass"]
    img = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    from fiftyone_cass.models.backbones import cached_models

    clip = cached_models("tiny", device="cpu", need_dino=True)[0]
    # every Segmenter on one CLIP model shares its embedder: start without one (as a new process)
    from fiftyone_cass.models import text as text_mod

    text_mod._EMBEDDERS.pop(clip, None)
    seg = Segmenter(classes=classes, backbone="tiny", device="cpu", method="cass")
    ref = seg([img])[0].label_map
    path = seg.embedder.disk_path
    assert path is not None and str(path).startswith(str(tmp_path))
    stored = torch.load(path, weights_only=True)
    for k in list(stored["embeddings"]):
        stored["embeddings"][k] = torch.full_like(stored["embeddings"][k], float("nan"))
    torch.save(stored, path)

    text_mod._EMBEDDERS.pop(clip, None)
    fresh = Segmenter(classes=classes, backbone="tiny", device="cpu", method="cass")
    with caplog.at_level("WARNING", logger="fiftyone_cass"):
        out = fresh([img])[0].label_map
    assert "invalid entry" in caplog.text and "non-finite" in caplog.text
    np.testing.assert_array_equal(out, ref)
    assert all(torch.isfinite(v).all() for v in torch.load(path, weights_only=True)["embeddings"].values())
