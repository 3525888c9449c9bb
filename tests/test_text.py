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
