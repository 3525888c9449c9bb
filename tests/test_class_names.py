"""Class names the text encoder cannot tell apart are refused up front, naming the class:
names cut by CLIP's 77-token context in a template sentence, and the same name in two Unicode
forms (NFC / NFD) or spacings."""

import open_clip
import pytest
import torch

from fiftyone_cass import Segmenter
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.models.backbones import BACKBONES, load_clip
from fiftyone_cass.models.text import TextEmbedder, check_name_lengths

NFC, NFD = "caf\u00e9", "cafe\u0301"


def _longest_fitting_name(tok):
    """The longest 'word word ...' name that still fits every template sentence."""
    n = 1
    while True:
        try:
            check_name_lengths([" ".join(["dog"] * (n + 1))], tok)
        except InvalidInputError:
            return " ".join(["dog"] * n)
        n += 1


def test_two_long_names_would_get_the_same_tokens_and_are_refused():
    tok = open_clip.get_tokenizer("ViT-B-16")
    fits = _longest_fitting_name(tok)
    # the name that fits is really at the limit: its longest sentence has exactly 77 tokens
    longest = max(len(tok.encode(t(fits))) + 2 for t in open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert longest == 77
    a, b = fits + " big cat sitting", fits + " big cat running"
    # what the truncation would do: the same tokens for two different names
    sentence = open_clip.OPENAI_IMAGENET_TEMPLATES[0]
    worst = max(open_clip.OPENAI_IMAGENET_TEMPLATES, key=lambda t: len(tok.encode(t(a))))
    assert torch.equal(tok([worst(a)]), tok([worst(b)]))
    for name in (a, b):
        with pytest.raises(InvalidInputError, match="too long") as e:
            check_name_lengths([name], tok)
        assert name in str(e.value) and "77" in str(e.value)
    check_name_lengths([fits, sentence("x")], tok)  # fitting names pass


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a backbone fails the test: the vocabulary is refused before any weights are read."""
    import fiftyone_cass.models.segmenter as segmenter_module

    def boom(*args, **kwargs):
        raise AssertionError("the models were loaded before the vocabulary was checked")

    monkeypatch.setattr(segmenter_module, "cached_models", boom)


def test_segmenter_refuses_an_over_long_class_name_before_loading_models(no_model_loading):
    long_name = "a very " + "very " * 80 + "long dog"
    with pytest.raises(InvalidInputError, match="too long"):
        Segmenter(classes=["cat", long_name], backbone="tiny", method="cass")
    # in a synonym and a background word too
    with pytest.raises(InvalidInputError, match="too long"):
        Segmenter(classes=["cat", f"dog, {long_name}"], backbone="tiny", method="cass")
    with pytest.raises(InvalidInputError, match="too long"):
        Segmenter(classes=["cat"], background=[long_name], backbone="tiny", method="cass")


def test_text_embedder_refuses_over_long_names():
    tok = open_clip.get_tokenizer("ViT-B-16")
    emb = TextEmbedder(load_clip(BACKBONES["tiny"]), tok, cache_dir=None)
    with pytest.raises(InvalidInputError, match="too long"):
        emb(["dog", "dog " * 80])
    assert emb(["dog"]).shape[0] == 1


@pytest.mark.parametrize(
    "classes, background, match",
    [
        ([NFC, NFD], None, "two Unicode forms"),
        ([f"{NFC}, {NFD}"], None, "duplicate synonym.*two Unicode forms"),
        (["hot dog", "Hot   dog"], None, "duplicate class name"),
        ([NFC, "dog"], [NFD], "background word.*two Unicode forms"),
    ],
)
def test_unicode_and_spacing_equivalent_names_are_duplicates(classes, background, match, no_model_loading):
    with pytest.raises(InvalidInputError, match=match) as e:
        Segmenter(classes=classes, background=background, backbone="tiny", method="cass")
    assert NFD in str(e.value) or "dog" in str(e.value).lower()


def test_nfc_and_nfd_embed_identically():
    # why they are duplicates: the tokenizer normalises Unicode, so both get one embedding
    tok = open_clip.get_tokenizer("ViT-B-16")
    assert torch.equal(tok([NFC]), tok([NFD]))
