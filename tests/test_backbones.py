"""Production loaders: local checkpoints (the offline path) go through the same code as the hub
weights, proven with random tiny models saved to files; no network is ever touched."""

import time

import numpy as np
import pytest
import torch

from fiftyone_cass import Segmenter, WeightsUnavailableError
from fiftyone_cass.models.backbones import BACKBONES, load_clip, load_dino
from fiftyone_cass.models import clip_visual as cv

TINY = BACKBONES["tiny"]


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_clip_local_checkpoint_roundtrip(tmp_path, fmt):
    saved = _perturbed(load_clip(TINY), 1)
    path = tmp_path / f"clip.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, str(path))
    else:
        torch.save(saved.state_dict(), path)
    loaded = load_clip(TINY, checkpoint=str(path))
    assert _same(saved, loaded)
    assert not _same(load_clip(TINY), loaded)  # really came from the file
    # QuickGELU as the OpenAI weights need
    assert type(loaded.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_dino_local_checkpoint_roundtrip(tmp_path, fmt):
    saved = _perturbed(load_dino(TINY), 2)
    path = tmp_path / f"dino.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, str(path))
    else:
        torch.save(saved.state_dict(), path)
    loaded = load_dino(TINY, checkpoint=str(path))
    assert _same(saved, loaded)
    assert not _same(load_dino(TINY), loaded)


def test_pickled_checkpoint_is_refused(tmp_path):
    """weights_only loading: a checkpoint holding arbitrary Python objects is not unpickled."""
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": load_clip(TINY).state_dict(), "obj": _Payload()}, path)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        load_clip(TINY, checkpoint=str(path))


class _Payload:
    """An arbitrary class: unpickling it would run code from the checkpoint."""


def test_segmenter_with_local_checkpoints(tmp_path):
    clip = _perturbed(load_clip(TINY), 3)
    dino = _perturbed(load_dino(TINY), 4)
    torch.save(clip.state_dict(), tmp_path / "c.pt")
    torch.save(dino.state_dict(), tmp_path / "d.pt")
    seg = Segmenter(classes=["a", "b"], method="cass", backbone="tiny", device="cpu",
                    clip_checkpoint=str(tmp_path / "c.pt"), dino_checkpoint=str(tmp_path / "d.pt"))
    assert _same(seg.clip, clip) and _same(seg.dino, dino)
    (r,) = seg([np.full((64, 64, 3), 100, np.uint8)])
    assert r.label_map.shape == (64, 64)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_clip(TINY, checkpoint=str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_dino(TINY, checkpoint=str(tmp_path / "nope.pth"))


def test_hub_weights_offline_fail_fast_with_instructions(monkeypatch):
    """No hub access here (HF_HUB_OFFLINE=1 in conftest): the real 'openai' path must fail fast
    and say how to provide local checkpoints."""
    monkeypatch.delenv("FIFTYONE_CASS_CLIP_CHECKPOINT", raising=False)
    t = time.time()
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip(BACKBONES["openai"])
    assert "clip_checkpoint" in str(info.value)
    with pytest.raises(WeightsUnavailableError) as info:
        load_dino(BACKBONES["openai"])
    assert "dino_checkpoint" in str(info.value)
    assert time.time() - t < 120


def test_full_size_architecture_geometry():
    """The published architectures (random weights, no download): 12 heads x 64 on both sides,
    the SPEC's patch sizes and position tables."""
    clip = load_clip(BACKBONES["random-base"])
    dino = load_dino(BACKBONES["random-base"])
    assert cv.num_heads(clip.visual) == 12 and cv.width(clip.visual) == 768
    assert cv.patch_size(clip.visual) == (16, 16)
    assert clip.visual.positional_embedding.shape == (197, 768)
    assert dino.blocks[-1].attn.num_heads == 12 and dino.embed_dim == 768
    assert dino.pos_embed.shape == (1, 785, 768) and len(dino.blocks) == 12
    assert dino.blocks[0].norm1.eps == 1e-6


def test_position_interpolation_rule():
    """A.5: identity at the native grid; otherwise the (h+0.1)/g0 bicubic rule, CLS untouched."""
    pos = torch.randn(197, 8)
    assert cv.interpolate_clip_pos(pos, (14, 14)) is pos
    out = cv.interpolate_clip_pos(pos, (21, 28))
    assert out.shape == (1 + 21 * 28, 8)
    assert torch.equal(out[0], pos[0])
    ref = torch.nn.functional.interpolate(
        pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), scale_factor=(21.1 / 14, 28.1 / 14),
        mode="bicubic", align_corners=False, recompute_scale_factor=False)
    assert torch.allclose(out[1:], ref.permute(0, 2, 3, 1).reshape(-1, 8))
