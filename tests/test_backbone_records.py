"""Backbone records (issue 23): the one registry every surface reads; the seeds' variants (ViT-L/14
prior, DINOv2 with registers) and DINOv3 built through the production loaders as tiny random
models saved to and reloaded from checkpoint files; their head geometry at full size; the VFM key
paths against timm's own forward; the fast errors naming each missing offline file."""

import importlib.util
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiftyone_cass import Segmenter, WeightsUnavailableError
from fiftyone_cass.core.graphs import resample_dino_keys
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.models import backbones as bb
from fiftyone_cass.models import clip_visual as cv
from fiftyone_cass.models.backbones import BACKBONES, load_clip, load_dino, load_prior
from fiftyone_cass.models.dino import dino_keys, dino_pixels_from_clip

from conftest import REPO_ROOT

from test_backbones import _perturbed, _same  # noqa: E402 - the same helpers

PUBLISHED = ("openai", "openai-l14-prior", "openai-dinov2", "openai-dinov3")
IMAGE = np.random.RandomState(0).randint(0, 255, (150, 260, 3)).astype(np.uint8)
SMALL = dict(device="cpu", short_side=112, long_side=256, crop=112, stride=56)


# ------------------------------------------------------------------ one registry
def test_every_surface_reads_the_one_registry(capsys):
    from fiftyone_cass import cli
    from fiftyone_cass.app import label_operators
    from fiftyone_cass.config.schema import choices_of, setting_fields
    from fiftyone_cass.config.settings import EngineSettings

    assert bb.backbone_names(include_test=False) == PUBLISHED
    assert tuple(choices_of(setting_fields(EngineSettings)["backbone"].metadata)) == bb.backbone_names()
    assert label_operators.BACKBONES == PUBLISHED
    assert set(label_operators.TEST_BACKBONES) == {n for n, r in BACKBONES.items() if r.test}
    manifest = json.loads((REPO_ROOT / "manifest.json").read_text())
    assert {m["base_name"] for m in manifest["models"]} == set(bb.zoo_names())
    assert sorted(bb.zoo_names().values()) == sorted(PUBLISHED)  # one zoo name per published record
    assert cli.main(["backbones", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == list(PUBLISHED)
    assert listed[2]["vfm"]["model"] == "vit_base_patch14_reg4_dinov2.lvd142m" and listed[2]["vfm"]["input_size"] == 518
    assert cli.main(["backbones", "--all"]) == 0
    text = capsys.readouterr().out
    for name, r in BACKBONES.items():
        assert name in text
        for _, w in r.components():
            assert not w.file or w.file in text


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="backbone.*openai-dinov2"):
        Segmenter(classes=["a"], backbone="dinov9", device="cpu")


def test_records_say_what_the_spec_says():
    """SPEC L.1/L.2 and the issue: the weights tags, QuickGELU, input rules, registers."""
    o, p, d2, d3 = (BACKBONES[n] for n in PUBLISHED)
    assert o.clip == p.clip == d2.clip == d3.clip and o.clip.model == "ViT-B-16" and o.clip.pretrained == "openai"
    assert o.clip.quick_gelu and p.prior.quick_gelu and p.prior.model == "ViT-L-14" and p.prior.pretrained == "openai"
    assert o.vfm == p.vfm and o.vfm.timm_name == "vit_base_patch8_224.dino" and o.vfm.input_size is None
    assert d2.vfm.timm_name == "vit_base_patch14_reg4_dinov2.lvd142m"
    assert (d2.vfm.input_size, d2.vfm.patch, d2.vfm.registers, d2.vfm.keys) == (518, 14, 4, "plain")
    assert d3.vfm.timm_name == "vit_base_patch16_dinov3.lvd1689m"
    assert (d3.vfm.input_size, d3.vfm.patch, d3.vfm.registers, d3.vfm.keys) == (448, 16, 4, "plain")
    assert all(r.prior is None for r in (o, d2, d3))
    files = [w.file for n in PUBLISHED for _, w in BACKBONES[n].components()]
    assert all(files) and len(set(files)) == 5  # B/16, L/14, DINO, DINOv2, DINOv3


# ------------------------------------------------------------------ tiny variants, checkpoints
@pytest.mark.parametrize("name", ["tiny-l14-prior", "tiny-dinov2", "tiny-dinov3"])
def test_tiny_variant_from_saved_checkpoints(tmp_path, monkeypatch, name):
    """Each architecture through the production loaders, saved (safetensors / torch) and reloaded
    as the checkpoint files a Segmenter reads; the labels come from those weights."""
    from safetensors.torch import save_file

    spec = BACKBONES[name]
    clip = _perturbed(load_clip(spec), 11)
    dino = _perturbed(load_dino(spec), 12)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    save_file({k: v.contiguous() for k, v in dino.state_dict().items()}, str(tmp_path / "vfm.safetensors"))
    prior = None
    if spec.prior is not None:
        prior = _perturbed(load_prior(spec), 13)
        save_file({k: v.contiguous() for k, v in prior.state_dict().items()}, str(tmp_path / "prior.safetensors"))
        monkeypatch.setenv("FIFTYONE_CASS_PRIOR_CHECKPOINT", str(tmp_path / "prior.safetensors"))
    monkeypatch.setattr(bb, "_LOADED", {})
    seg = Segmenter(classes=["dog", "cat, kitten"], backbone=name, method="cass+cdam",
                    clip_checkpoint=str(tmp_path / "clip.pt"), dino_checkpoint=str(tmp_path / "vfm.safetensors"), **SMALL)
    assert _same(seg.clip, clip) and _same(seg.dino, dino)
    assert (seg.prior is None) == (prior is None)
    if prior is not None:
        assert _same(seg.prior, prior) and not _same(seg.prior, load_prior(spec, random_weights=True))
    (r,) = seg([IMAGE])
    assert r.label_map.shape == IMAGE.shape[:2] and np.isfinite(r.presence[1:]).all()
    # the same weights given as models: the same labels (the files were really used)
    models = (clip, dino, seg.tokenizer) + (((prior, seg.prior_tokenizer),) if prior is not None else ())
    ref = Segmenter(classes=["dog", "cat, kitten"], backbone=name, method="cass+cdam", models=models, **SMALL)
    (r2,) = ref([IMAGE])
    assert np.array_equal(r.label_map, r2.label_map) and np.allclose(r.presence[1:], r2.presence[1:])


def test_full_size_head_geometry():
    """Random full-size weights through the loaders: 12 heads x 64 on CLIP and each VFM, the
    patch sizes, registers and position tables of SPEC L; the prior's own 768-d text space."""
    d2 = load_dino(BACKBONES["openai-dinov2"], random_weights=True)
    assert d2.blocks[-1].attn.num_heads == 12 and d2.embed_dim == 768 and len(d2.blocks) == 12
    assert d2.patch_embed.patch_size == (14, 14) and d2.num_prefix_tokens == 5 and d2.reg_token.shape[1] == 4
    assert d2.no_embed_class and d2.pos_embed.shape == (1, 37 * 37, 768)
    del d2
    d3 = load_dino(BACKBONES["openai-dinov3"], random_weights=True)
    assert type(d3).__name__ == "Eva" and d3.rope is not None and d3.pos_embed is None
    assert d3.blocks[-1].attn.num_heads == 12 and d3.embed_dim == 768 and len(d3.blocks) == 12
    assert d3.patch_embed.patch_size == (16, 16) and d3.num_prefix_tokens == 5
    del d3
    prior = load_prior(BACKBONES["openai-l14-prior"], random_weights=True)
    assert cv.patch_size(prior.visual) == (14, 14) and cv.width(prior.visual) == 1024
    assert prior.visual.positional_embedding.shape == (257, 1024) and prior.text_projection.shape[1] == 768
    assert type(prior.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    # every VFM's grid on a 224 crop resamples to CLIP's 14 x 14
    for name, grid in (("openai-dinov2", 37), ("openai-dinov3", 28)):
        v = BACKBONES[name].vfm
        assert v.input_size // v.patch == grid


# ------------------------------------------------------------------ key paths vs timm's forward
def _timm_keys(model, pixels, registers):
    """Keys of the last block as timm's own forward computes them: the qkv output, hooked."""
    seen = {}
    handle = model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
    try:
        with torch.no_grad():
            model.forward_features(pixels)
    finally:
        handle.remove()
    qkv = seen["qkv"]
    heads = model.blocks[-1].attn.num_heads
    k = qkv[..., qkv.shape[-1] // 3 : 2 * qkv.shape[-1] // 3]
    k = k.reshape(k.shape[0], k.shape[1], heads, -1).permute(0, 2, 1, 3)
    return k[:, :, 1 + registers :]


def test_dinov2_keys_match_timms_forward():
    model = _perturbed(load_dino(BACKBONES["tiny-dinov2"]), 21)
    crops = torch.randn(2, 3, 224, 224)
    pixels = dino_pixels_from_clip(crops, size=518)
    assert pixels.shape == (2, 3, 518, 518)
    keys, grid = dino_keys(model, pixels, registers=4)
    assert grid == (37, 37) and keys.shape == (2, 4, 37 * 37, 16)
    ref = _timm_keys(model, pixels, 4)
    assert torch.allclose(keys, ref, atol=1e-5), (keys - ref).abs().max()
    # resampled to CLIP's grid by plain bilinear interpolation of the key maps (B.6)
    seg = Segmenter(classes=["a", "b"], backbone="tiny-dinov2", models=(load_clip(BACKBONES["tiny-dinov2"]), model,
                    bb.cached_models("tiny")[2]), **SMALL)
    on_grid = seg._dino_keys_on_grid(crops, (14, 14))
    maps = ref.reshape(2, 4, 37, 37, 16).permute(0, 1, 4, 2, 3).reshape(2, 64, 37, 37)
    want = F.interpolate(maps, size=(14, 14), mode="bilinear", align_corners=False)
    want = want.reshape(2, 4, 16, 196).transpose(2, 3)
    assert torch.allclose(on_grid, want, atol=1e-5)
    assert torch.allclose(on_grid, resample_dino_keys(keys, grid, (14, 14)), atol=1e-6)


def test_dinov3_keys_match_timms_forward_with_and_without_rope(monkeypatch):
    """Plain keys: the qkv output of timm's forward. RoPE keys: the k that timm's attention
    actually used (captured in scaled_dot_product_attention)."""
    model = _perturbed(load_dino(BACKBONES["tiny-dinov3"]), 22)
    pixels = dino_pixels_from_clip(torch.randn(2, 3, 224, 224), size=448)
    keys, grid = dino_keys(model, pixels, registers=4)
    assert grid == (28, 28) and keys.shape == (2, 4, 28 * 28, 16)
    assert torch.allclose(keys, _timm_keys(model, pixels, 4), atol=1e-5)

    used = []
    sdpa = F.scaled_dot_product_attention

    def capture(q, k, v, *a, **kw):
        used.append(k.detach().clone())
        return sdpa(q, k, v, *a, **kw)

    for blk in model.blocks:
        blk.attn.fused_attn = True
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", capture)
    with torch.no_grad():
        model.forward_features(pixels)
    monkeypatch.undo()
    rope_ref = used[-1][:, :, 5:]
    rope_keys, _ = dino_keys(model, pixels, registers=4, rope_keys=True)
    assert torch.allclose(rope_keys, rope_ref, atol=1e-5)
    assert not torch.allclose(rope_keys, keys, atol=1e-3)  # the encoding does rotate them
    with pytest.raises(ValueError, match="registers"):
        dino_keys(model, pixels, registers=0)


# ------------------------------------------------------------------ the prior (SPEC L.1)
def test_prior_with_the_clip_itself_reproduces_the_default():
    """The prior path (its own forward, its own text embeddings) with the CLIP as the prior gives
    the default's labels and presence exactly: only g's source changes."""
    clip, dino, tok = bb.cached_models("tiny")
    for method in ("cass", "cass+cdam"):
        kw = dict(classes=["dog", "cat, kitten", "sky"], method=method, **SMALL)
        a = Segmenter(backbone="tiny", models=(clip, dino, tok), **kw)
        b = Segmenter(backbone="tiny-l14-prior", models=(clip, dino, tok, (clip, tok)), **kw)
        assert b.prior is clip
        (ra,), (rb,) = a([IMAGE]), b([IMAGE])
        assert np.array_equal(ra.label_map, rb.label_map) and np.allclose(ra.presence[1:], rb.presence[1:], atol=1e-6)


def test_prior_gives_the_global_similarity_in_its_own_space():
    seg = Segmenter(classes=["dog", "cat, kitten"], backbone="tiny-l14-prior", method="cass", device="cpu",
                    short_side=224, long_side=224)
    seg.return_embeddings = True
    assert seg.prior is not None and seg.prior_embedder is not seg.embedder
    assert seg.prior_text.shape == (3, 48) and seg.text.shape == (3, 32)  # own text embeddings
    if seg.embedder.disk_path is not None:  # own text cache
        assert seg.prior_embedder.disk_path != seg.embedder.disk_path
    img = IMAGE[:, :150]
    import cv2

    img = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR)
    (r,) = seg([img])
    from fiftyone_cass.core.preprocess import clip_normalize

    x = clip_normalize(torch.as_tensor(img).permute(2, 0, 1))[None]
    with torch.no_grad():
        v = F.normalize(seg.prior.encode_image(x), dim=-1)[0]  # open_clip's own forward, native grid
        e = F.normalize(seg.clip.encode_image(x), dim=-1)[0]
    g = v @ seg.prior_text.T
    per_class = torch.stack([g[0], g[1:].max()])
    want = torch.softmax(seg.options.logit_scale * per_class, 0).numpy()
    assert np.allclose(r.presence[1:] / r.presence[1:].sum(), want, atol=1e-4)
    assert np.allclose(r.embedding, e.numpy(), atol=1e-5)  # embeddings stay the CLIP's (text search)


# ------------------------------------------------------------------ offline files
def test_checkpoint_path_order(monkeypatch, tmp_path):
    spec = BACKBONES["openai-dinov2"]
    for var in ("FIFTYONE_CASS_DINO_CHECKPOINT", "FIFTYONE_CASS_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert bb.checkpoint_path("DINO", spec.vfm) is None  # the hub
    monkeypatch.setenv("FIFTYONE_CASS_WEIGHTS_DIR", str(tmp_path))
    assert bb.checkpoint_path("DINO", spec.vfm) == str(tmp_path / "dinov2_vitb14_reg4_pretrain.pth")
    monkeypatch.setenv("FIFTYONE_CASS_DINO_CHECKPOINT", "/x/env.pth")
    assert bb.checkpoint_path("DINO", spec.vfm) == "/x/env.pth"
    assert bb.checkpoint_path("DINO", spec.vfm, "/x/given.pth") == "/x/given.pth"
    assert bb.checkpoint_path("DINO", BACKBONES["tiny-dinov2"].vfm) == "/x/env.pth"
    monkeypatch.delenv("FIFTYONE_CASS_DINO_CHECKPOINT")
    assert bb.checkpoint_path("DINO", BACKBONES["tiny-dinov2"].vfm) is None  # random weights: no file


@pytest.mark.parametrize("server", [False, True])
def test_missing_offline_files_are_each_named_fast(monkeypatch, tmp_path, server):
    from fiftyone_cass.models.weights import ensure_weights

    for var in bb.CHECKPOINT_ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FIFTYONE_CASS_WEIGHTS_DIR", str(tmp_path))
    t = time.time()
    with pytest.raises(WeightsUnavailableError) as e:
        ensure_weights("openai-l14-prior", "cass", "cpu", server=server)
    msg = str(e.value)
    for f in ("clip-vit-b16-openai.safetensors", "dino_vitbase8_pretrain.pth", "clip-vit-l14-openai.safetensors"):
        assert str(tmp_path / f) in msg, f
    with pytest.raises(WeightsUnavailableError) as e:
        ensure_weights("openai-dinov3", "maskclip", "cpu", clip_checkpoint=str(tmp_path / "mine.pt"), server=server)
    msg = str(e.value)
    assert str(tmp_path / "mine.pt") in msg and "dinov3" not in msg  # maskclip needs no VFM
    with pytest.raises(WeightsUnavailableError, match="dinov2_vitb14_reg4_pretrain.pth"):
        ensure_weights("openai-dinov2", "cass", "cpu", server=server)
    assert time.time() - t < 30


def test_hub_records_offline_say_which_files(monkeypatch):
    """No hub here (HF_HUB_OFFLINE=1): each new record fails fast naming its offline files."""
    for var in list(bb.CHECKPOINT_ENV.values()) + ["FIFTYONE_CASS_WEIGHTS_DIR"]:
        monkeypatch.delenv(var, raising=False)
    t = time.time()
    with pytest.raises(WeightsUnavailableError, match=r"dino_checkpoint=.*dinov3_vitb16_lvd1689m\.safetensors"):
        load_dino(BACKBONES["openai-dinov3"])
    with pytest.raises(WeightsUnavailableError, match=r"FIFTYONE_CASS_PRIOR_CHECKPOINT.*clip-vit-l14-openai"):
        load_prior(BACKBONES["openai-l14-prior"])
    assert time.time() - t < 60


# ------------------------------------------------------------------ zoo
def _zoo_module():
    spec = importlib.util.spec_from_file_location("fiftyone_cass_zoo_root", REPO_ROOT / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_zoo_names_map_to_records(tmp_path):
    from fiftyone_cass.fo.model import load_cass_model

    zoo = _zoo_module()
    for zoo_name, name in bb.zoo_names().items():
        path = tmp_path / zoo_name / "record.json"
        zoo.download_model(zoo_name, str(path))
        rec = json.loads(path.read_text())
        assert rec["backbone"] == name and BACKBONES[name].vfm.timm_name in rec["dino"]
    with pytest.raises(ValueError, match="cass-vit-b16-dinov2-torch"):
        zoo.download_model("cass-vit-b99-torch", str(tmp_path / "x.json"))
    with pytest.raises(InvalidInputError, match="cass-vit-b16-torch"):
        load_cass_model("cass-vit-b16-dinov2-torch", classes=["a"], backbone="openai")
    m = load_cass_model("cass-vit-b16-dinov3-torch", classes=["a"], backbone="tiny-dinov3", device="cpu")
    assert m.segmenter.backbone == "tiny-dinov3" and type(m.segmenter.dino).__name__ == "Eva"


def test_cli_backbone_flag_takes_the_registry_names(tmp_path, capsys):
    from fiftyone_cass import cli

    try:
        rc = cli.main(["label", str(tmp_path), "--classes", "cat", "--backbone", "dinov9"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert "--backbone" in err and "'dinov9' is not allowed" in err and "openai-dinov3" in err


def test_test_records_never_ask_the_hub(monkeypatch):
    from fiftyone_cass import bootstrap
    from fiftyone_cass.models.weights import ensure_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # else the reachability check is skipped
    asked = []
    monkeypatch.setattr(bootstrap, "hub_reachable", lambda timeout=3.0: asked.append(timeout) or False)
    monkeypatch.setattr(bb, "_LOADED", {})
    for name in ("tiny-l14-prior", "tiny-dinov2", "tiny-dinov3"):
        ensure_weights(name, "cass", "cpu")
    assert asked == []
