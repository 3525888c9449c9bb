"""One TextEmbedder per CLIP model, kept in a weak-keyed registry beside the model (nothing is
attached to open_clip's objects): shared by Segmenters, replaceable by a given embedder, and gone
with its model."""

import gc
import weakref

import open_clip
import torch

from _label_helpers import OPTS
from fiftyone_cass import Segmenter
from fiftyone_cass.models import text as text_mod
from fiftyone_cass.models.backbones import BACKBONES, load_clip
from fiftyone_cass.models.text import TextEmbedder, install_text_embedder, text_embedder


def test_segmenters_on_one_model_share_its_embedder_and_nothing_is_attached():
    a = Segmenter(classes="dog, cat", method="maskclip", **OPTS)
    b = Segmenter(classes="cat, bird", method="maskclip", **OPTS)
    assert a.embedder is b.embedder is text_embedder(a.clip, a.tokenizer, a.device)
    assert "cat" in a.embedder._cache  # embedded once, for both
    assert not any(isinstance(v, TextEmbedder) for v in vars(a.clip).values())


def test_an_installed_embedder_is_used_and_the_entry_goes_with_its_model():
    model = load_clip(BACKBONES["tiny"])
    tok = open_clip.get_tokenizer("ViT-B-16")
    mine = TextEmbedder(model, tok, cache_dir=None)
    fixed = torch.nn.functional.normalize(torch.ones(model.visual.output_dim), dim=0)
    mine._cache["zebra"] = fixed
    install_text_embedder(model, mine)
    seg = Segmenter(classes="zebra", method="maskclip", models=(model, None, tok), **OPTS)
    assert seg.embedder is mine and torch.equal(seg.text[0], fixed)
    assert text_embedder(model, tok, "cpu") is mine
    assert text_embedder(model, tok, "meta") is not mine  # another device: another embedder

    ref = weakref.ref(model)
    n = len(text_mod._EMBEDDERS)
    del model, seg, mine
    gc.collect()
    assert ref() is None  # the registry does not keep the model alive
    assert len(text_mod._EMBEDDERS) == n - 1
