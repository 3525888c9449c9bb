"""Backbone registry and loaders (open_clip CLIP, timm DINO).

Like open_clip's factory: a small registry of named backbone pairs. ``openai`` is the published
setting (CLIP ViT-B/16 OpenAI weights + DINO ViT-B/8); ``tiny`` is the same architecture family
with a few narrow layers and random weights, for tests and smoke runs.

Weights come from the libraries' own hubs/caches (open_clip ``pretrained='openai'``, timm
``vit_base_patch8_224.dino``) or from local checkpoint files for offline machines. Local files are
read with ``weights_only=True`` or safetensors, never unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from fiftyone_cass.errors import CheckpointError, WeightsUnavailableError

_CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class BackboneSpec:
    clip_model: str
    clip_pretrained: Optional[str]  # open_clip tag, or None for random weights
    dino_model: str
    dino_pretrained: bool
    dino_kwargs: Dict[str, Any] = field(default_factory=dict)
    random_seed: Optional[int] = None  # seed for random-weight backbones (deterministic tests)


BACKBONES: Dict[str, BackboneSpec] = {
    "openai": BackboneSpec("ViT-B-16", "openai", "vit_base_patch8_224.dino", True),
    "random-base": BackboneSpec("ViT-B-16", None, "vit_base_patch8_224.dino", False, random_seed=0),
    "tiny": BackboneSpec(
        "cass-tiny-clip",
        None,
        "vit_base_patch8_224.dino",
        False,
        dict(embed_dim=64, depth=2, num_heads=4),
        random_seed=0,
    ),
}


def _register_configs() -> None:
    import open_clip

    if "cass-tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def _offline_hint(what: str, exc: BaseException) -> WeightsUnavailableError:
    err = _offline_error(what, exc)
    err.model = what  # "CLIP" or "DINO": which weights are missing
    return err


def _offline_error(what: str, exc: BaseException) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"could not obtain the {what} weights ({type(exc).__name__}: {exc}). This machine may have no "
        "access to the model hub. Download them elsewhere and pass local files: "
        "Segmenter(clip_checkpoint='open_clip_model.safetensors' (open_clip ViT-B-16 OpenAI state dict, "
        "e.g. from the hub repo timm/vit_base_patch16_clip_224.openai), "
        "dino_checkpoint='dino_vitbase8_pretrain.pth' or timm's vit_base_patch8_224.dino weights), "
        "or the CLI options --clip-checkpoint/--dino-checkpoint, or the environment variables "
        "FIFTYONE_CASS_CLIP_CHECKPOINT / FIFTYONE_CASS_DINO_CHECKPOINT."
    )


def _check_file(path, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailableError(f"{what} checkpoint not found: {p}")
    return str(p)


def _checkpoint_problem(path: str, exc: BaseException) -> str:
    """Why a checkpoint file could not be loaded, in a few words (never torch's advice to unpickle)."""
    import re
    import zipfile

    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, OSError):
        return f"it cannot be read ({exc.strerror or name})"
    if "Error(s) in loading state_dict" in text or isinstance(exc, (StopIteration, KeyError)):
        m = re.search(r'Missing key\(s\) in state_dict: ((?:"[^"]+"(?:, )?){1,3})', text)
        return "its tensors do not match the model" + (f" (missing {m.group(1).rstrip(', ')}, ...)" if m else "")
    if name == "SafetensorError" or str(path).endswith(".safetensors"):
        return "it is not a valid safetensors file"
    if "size mismatch" in text:
        return "its tensors have other shapes than the model's"
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        head = b""
    if "weights_only" in text or "Unpickl" in name or "pickle" in text.lower():
        if zipfile.is_zipfile(path) or head[:1] == b"\x80":
            return "it holds pickled Python objects besides tensors, which are not loaded (unsafe)"
        return "it is neither a safetensors file nor a torch checkpoint"
    return f"it could not be loaded ({name})"


def _bad_checkpoint(what: str, path: str, expected: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot use the {what} checkpoint {path}: {_checkpoint_problem(path, exc)}; expected a safetensors "
        f"file or a weights-only torch state dict of {expected}"
    )


def load_clip(spec: BackboneSpec, checkpoint: Optional[str] = None, device="cpu"):
    """CLIP through ``open_clip.create_model`` (QuickGELU forced, as the OpenAI weights need).

    ``checkpoint``: a local open_clip state-dict file (.safetensors/.pt/.bin), loaded by open_clip
    with ``weights_only=True``; otherwise ``spec.clip_pretrained`` from open_clip's hub cache.
    """
    import open_clip

    _register_configs()
    checkpoint = checkpoint or os.environ.get("FIFTYONE_CASS_CLIP_CHECKPOINT") or None
    pretrained = _check_file(checkpoint, "CLIP") if checkpoint else spec.clip_pretrained
    if pretrained is None and spec.random_seed is not None:
        torch.manual_seed(spec.random_seed)
    try:
        model = open_clip.create_model(
            spec.clip_model,
            pretrained=pretrained,
            force_quick_gelu=True,
            weights_only=True,
            device=device,
            require_pretrained=pretrained is not None,
        )
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # network/hub errors surface as many types
        if checkpoint:
            expected = f"open_clip {spec.clip_model}" + (f" ({spec.clip_pretrained} weights)" if spec.clip_pretrained else "")
            raise _bad_checkpoint("CLIP", pretrained, expected, exc) from None
        if pretrained is None:
            raise
        raise _offline_hint("CLIP", exc) from exc
    return model.eval()


def load_dino(spec: BackboneSpec, checkpoint: Optional[str] = None, device="cpu"):
    """DINO through ``timm.create_model``; a local ``checkpoint`` goes through timm's own
    pretrained loader (``pretrained_cfg_overlay=dict(file=...)``: weights_only / safetensors,
    with timm's checkpoint filter, so DINO's original ``dino_vitbase8_pretrain.pth`` works)."""
    import timm

    checkpoint = checkpoint or os.environ.get("FIFTYONE_CASS_DINO_CHECKPOINT") or None
    kwargs = dict(spec.dino_kwargs)
    if checkpoint:
        kwargs["pretrained_cfg_overlay"] = dict(file=_check_file(checkpoint, "DINO"))
    pretrained = bool(checkpoint) or spec.dino_pretrained
    if not pretrained and spec.random_seed is not None:
        torch.manual_seed(spec.random_seed + 1)
    try:
        model = timm.create_model(spec.dino_model, pretrained=pretrained, num_classes=0, **kwargs)
    except Exception as exc:
        if checkpoint:
            raise _bad_checkpoint("DINO", kwargs["pretrained_cfg_overlay"]["file"], f"timm {spec.dino_model}",
                                  exc) from None
        if not pretrained:
            raise
        raise _offline_hint("DINO", exc) from exc
    return model.to(device).eval()


def get_backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


_LOADED: Dict[tuple, Any] = {}


def _offline_if_hub_unreachable(timeout: float = 3.0) -> None:
    """Before weights are fetched from the model hub: where it cannot be reached, Hugging Face's
    offline mode goes on, so that weights missing from the local cache fail in seconds (a clear
    WeightsUnavailableError) instead of after a minute of download retries."""
    from fiftyone_cass import bootstrap

    if not bootstrap.hub_offline() and not bootstrap.hub_reachable(timeout):
        bootstrap.go_offline()


def cached_models(name: str, clip_checkpoint=None, dino_checkpoint=None, device="cpu", need_dino: bool = True):
    """``(clip, dino | None, tokenizer)``, loaded once per process and reused by every
    :class:`Segmenter` asking for the same backbone/checkpoints/device (the FiftyOne operators
    keep the model loaded across calls this way). Text embeddings are kept per CLIP model
    (:func:`fiftyone_cass.models.text.text_embedder`)."""
    import open_clip

    spec = get_backbone_spec(name)
    dev = str(torch.device(device))
    ckey = ("clip", name, clip_checkpoint or os.environ.get("FIFTYONE_CASS_CLIP_CHECKPOINT"), dev)
    dkey = ("dino", name, dino_checkpoint or os.environ.get("FIFTYONE_CASS_DINO_CHECKPOINT"), dev)
    downloads = (ckey not in _LOADED and spec.clip_pretrained and not ckey[2]) or (
        need_dino and dkey not in _LOADED and spec.dino_pretrained and not dkey[2])
    if downloads:
        _offline_if_hub_unreachable()
    if ckey not in _LOADED:
        _LOADED[ckey] = load_clip(spec, clip_checkpoint, device)
    dino = None
    if need_dino:
        if dkey not in _LOADED:
            _LOADED[dkey] = load_dino(spec, dino_checkpoint, device)
        dino = _LOADED[dkey]
    return _LOADED[ckey], dino, open_clip.get_tokenizer("ViT-B-16")


def clear_model_cache() -> None:
    """Drop every cached backbone (frees their memory)."""
    _LOADED.clear()
