"""Backbone registry and loaders (open_clip CLIP, timm DINO).

Like open_clip's pretrained table: :data:`BACKBONES` maps a name to a :class:`BackboneSpec` record
(the CLIP model and weights tag, the vision foundation model with its input rule, an optional
prior CLIP, the weight sources and offline file names, the zoo name). ``openai`` is the published
setting (CLIP ViT-B/16 OpenAI weights + DINO ViT-B/8); ``openai-l14-prior``, ``openai-dinov2`` and
``openai-dinov3`` are the seeds' variants and DINOv3 (SPEC L); ``tiny*`` and ``random-base`` are
the same architecture families with random weights, for tests and smoke runs. Every surface (the
Segmenter, the CLI, the App form, the zoo, ``fiftyone-cass backbones``) reads this one registry.

Weights come from the libraries' own hubs/caches or from local checkpoint files for offline
machines (:func:`checkpoint_path`). Local files are read with ``weights_only=True`` or
safetensors, never unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from fiftyone_cass.errors import CheckpointError, WeightsUnavailableError

_CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ClipWeights:
    """An open_clip model and where its weights come from."""

    model: str  # open_clip architecture name
    pretrained: Optional[str]  # open_clip weights tag; None: random weights (test records)
    quick_gelu: bool = True  # the OpenAI weights were trained with QuickGELU (open_clip's plain names use GELU)
    hub: str = ""  # the hub repository holding the tag's weights (for messages)
    file: str = ""  # offline file name, looked up in FIFTYONE_CASS_WEIGHTS_DIR


@dataclass(frozen=True)
class VfmWeights:
    """The vision foundation model (VFM) whose last-block keys form the CASS graph (SPEC B.6, L.2),
    its weights, and its input rule."""

    model: str  # timm architecture name
    tag: Optional[str]  # timm pretrained tag; None: random weights (test records)
    patch: int  # patch size in pixels
    registers: int = 0  # register tokens after CLS, dropped with it from the keys
    #: square side the crop's pixels are resized to (PIL bicubic); None: min(H, W) of the crop (A.6c)
    input_size: Optional[int] = None
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)  # input normalisation (ImageNet)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    #: "plain": keys as the qkv projection gives them; "rope": with the rotary position encoding
    #: applied (timm's Eva models; see README "Backbones")
    keys: str = "plain"
    kwargs: Dict[str, Any] = field(default_factory=dict)  # timm.create_model overrides (tiny test models)
    hub: str = ""
    file: str = ""

    @property
    def timm_name(self) -> str:
        return f"{self.model}.{self.tag}" if self.tag else self.model


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone record (like open_clip's pretrained table): the CLIP model, the VFM, an
    optional CLIP that computes only the object-presence prior (SPEC L.1), and the zoo name."""

    name: str
    clip: ClipWeights
    vfm: VfmWeights
    prior: Optional[ClipWeights] = None
    description: str = ""
    zoo_name: Optional[str] = None  # FiftyOne zoo model name (None: not in the zoo)
    test: bool = False  # random weights: accepted from Python/CLI, not offered in the form or the zoo
    random_seed: Optional[int] = None  # seed for random-weight backbones (deterministic tests)

    # the fields the loaders had before the records (kept for callers)
    @property
    def clip_model(self) -> str:
        return self.clip.model

    @property
    def clip_pretrained(self) -> Optional[str]:
        return self.clip.pretrained

    @property
    def dino_model(self) -> str:
        return self.vfm.timm_name

    @property
    def dino_pretrained(self) -> bool:
        return self.vfm.tag is not None

    @property
    def dino_kwargs(self) -> Dict[str, Any]:
        return self.vfm.kwargs

    def components(self):
        """``[(what, weights), ...]``: ("CLIP", ClipWeights), ("DINO", VfmWeights) and, with a
        prior, ("PRIOR", ClipWeights); ``what`` names the checkpoint setting (``dino_checkpoint``
        is the VFM's, whichever it is)."""
        out = [("CLIP", self.clip), ("DINO", self.vfm)]
        if self.prior is not None:
            out.append(("PRIOR", self.prior))
        return out

    def summary(self) -> Dict[str, Any]:
        """A JSON-able description (the ``fiftyone-cass backbones`` listing)."""
        def clip(c):
            return None if c is None else {"model": c.model, "pretrained": c.pretrained, "quick_gelu": c.quick_gelu,
                                           "hub": c.hub, "file": c.file}
        v = self.vfm
        return {
            "name": self.name, "description": self.description, "zoo_name": self.zoo_name, "test": self.test,
            "clip": clip(self.clip), "prior": clip(self.prior),
            "vfm": {"model": v.timm_name, "patch": v.patch, "registers": v.registers,
                    "input_size": v.input_size or "min(H, W) of the crop", "mean": list(v.mean), "std": list(v.std),
                    "keys": v.keys, "hub": v.hub, "file": v.file},
        }


_B16 = ClipWeights("ViT-B-16", "openai", True, "timm/vit_base_patch16_clip_224.openai", "clip-vit-b16-openai.safetensors")
_L14 = ClipWeights("ViT-L-14", "openai", True, "timm/vit_large_patch14_clip_224.openai", "clip-vit-l14-openai.safetensors")
_DINO = VfmWeights("vit_base_patch8_224", "dino", 8, hub="timm/vit_base_patch8_224.dino", file="dino_vitbase8_pretrain.pth")
_DINOV2 = VfmWeights("vit_base_patch14_reg4_dinov2", "lvd142m", 14, registers=4, input_size=518,
                     hub="timm/vit_base_patch14_reg4_dinov2.lvd142m", file="dinov2_vitb14_reg4_pretrain.pth")
#: DINOv3 ViT-B/16: 448x448 gives a 28x28 grid (DINO ViT-B/8's on 224 crops); keys without RoPE
_DINOV3 = VfmWeights("vit_base_patch16_dinov3", "lvd1689m", 16, registers=4, input_size=448,
                     hub="timm/vit_base_patch16_dinov3.lvd1689m", file="dinov3_vitb16_lvd1689m.safetensors")
_TINY_CLIP = ClipWeights("cass-tiny-clip", None)
_TINY_PRIOR = ClipWeights("cass-tiny-clip-l14", None)
_TINY = dict(embed_dim=64, depth=2, num_heads=4)


def _random(v: VfmWeights, **kw) -> VfmWeights:
    return replace(v, tag=None, hub="", file="", **kw)


_RECORDS = (
    BackboneSpec("openai", _B16, _DINO, None,
                 "the published setting: CLIP ViT-B/16 (OpenAI) + DINO ViT-B/8", "cass-vit-b16-torch"),
    BackboneSpec("openai-l14-prior", _B16, _DINO, _L14,
                 "openai + a CLIP ViT-L/14 (OpenAI) object-presence prior (CASS scale_up, SPEC L.1)",
                 "cass-vit-b16-l14prior-torch"),
    BackboneSpec("openai-dinov2", _B16, _DINOV2, None,
                 "CLIP ViT-B/16 (OpenAI) + DINOv2 ViT-B/14 with 4 registers, 518x518 input (SPEC L.2)",
                 "cass-vit-b16-dinov2-torch"),
    BackboneSpec("openai-dinov3", _B16, _DINOV3, None,
                 "CLIP ViT-B/16 (OpenAI) + DINOv3 ViT-B/16 (4 registers, RoPE), 448x448 input, keys without RoPE",
                 "cass-vit-b16-dinov3-torch"),
    BackboneSpec("random-base", ClipWeights("ViT-B-16", None), _random(_DINO), None,
                 "openai's architectures with random weights (tests, benchmarks)", test=True, random_seed=0),
    BackboneSpec("tiny", _TINY_CLIP, _random(_DINO, kwargs=_TINY), None,
                 "a narrow 2-layer CLIP + DINO ViT-B/8 family, random weights (tests)", test=True, random_seed=0),
    BackboneSpec("tiny-l14-prior", _TINY_CLIP, _random(_DINO, kwargs=_TINY), _TINY_PRIOR,
                 "tiny + a tiny patch-14 prior CLIP of its own text space, random weights (tests)",
                 test=True, random_seed=0),
    BackboneSpec("tiny-dinov2", _TINY_CLIP, _random(_DINOV2, kwargs=_TINY), None,
                 "tiny CLIP + a 2-layer DINOv2-with-registers VFM, random weights (tests)", test=True, random_seed=0),
    BackboneSpec("tiny-dinov3", _TINY_CLIP, _random(_DINOV3, kwargs=_TINY), None,
                 "tiny CLIP + a 2-layer DINOv3 (RoPE, registers) VFM, random weights (tests)", test=True, random_seed=0),
)

#: the one backbone registry: every surface (Segmenter, CLI, form, zoo, listing) reads it
BACKBONES: Dict[str, BackboneSpec] = {r.name: r for r in _RECORDS}
DEFAULT_BACKBONE = "openai"


def backbone_names(include_test: bool = True) -> Tuple[str, ...]:
    """The registered names, the published ones first."""
    return tuple(n for n, r in BACKBONES.items() if include_test or not r.test)


def zoo_names() -> Dict[str, str]:
    """``{zoo model name: backbone name}`` of the records in the FiftyOne zoo."""
    return {r.zoo_name: r.name for r in BACKBONES.values() if r.zoo_name}


def backbone_for_zoo_name(model_name: str) -> str:
    """The backbone of a zoo model name (``NAME`` or ``NAME@version``); ValueError if unknown."""
    names = zoo_names()
    base = model_name.split("@")[0]
    if base not in names:
        raise ValueError(f"unknown model {model_name!r}; this source provides {', '.join(sorted(names))}")
    return names[base]


def listing(include_test: bool = False, as_json: bool = False) -> str:
    """What ``fiftyone-cass backbones`` prints: :func:`describe_backbones`, or the records'
    :meth:`BackboneSpec.summary` as a JSON list."""
    if as_json:
        import json

        return json.dumps([BACKBONES[n].summary() for n in backbone_names(include_test)], indent=2)
    return describe_backbones(include_test)


def describe_backbones(include_test: bool = False) -> str:
    """The live listing (``fiftyone-cass backbones``): one block per record."""
    lines = []
    for name in backbone_names(include_test):
        r = BACKBONES[name]
        lines.append(f"{name}{'  (default)' if name == DEFAULT_BACKBONE else ''}{'  [test: random weights]' if r.test else ''}")
        lines.append(f"    {r.description}")
        for what, w in r.components():
            if isinstance(w, ClipWeights):
                src = f"open_clip {w.model}" + (f" pretrained={w.pretrained!r}" if w.pretrained else " (random)")
                src += " QuickGELU" if w.quick_gelu else ""
            else:
                src = (f"timm {w.timm_name}" + ("" if w.tag else " (random)") +
                       f"; input {w.input_size or 'min(H,W)'}px, patch {w.patch}, registers {w.registers}, keys {w.keys}")
            lines.append(f"    {what.lower():<5} {src}")
            if w.hub or w.file:
                flag = "" if what == "PRIOR" else f"--{what.lower()}-checkpoint / "
                lines.append(f"          hub {w.hub or '-'}; offline file {w.file or '-'} ({flag}{CHECKPOINT_ENV[what]})")
        if r.zoo_name:
            lines.append(f"    zoo   {r.zoo_name}")
    return "\n".join(lines)


def _register_configs() -> None:
    import open_clip

    if "cass-tiny-clip-l14" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


#: environment variables of the local checkpoint files, per component
CHECKPOINT_ENV = {"CLIP": "FIFTYONE_CASS_CLIP_CHECKPOINT", "DINO": "FIFTYONE_CASS_DINO_CHECKPOINT",
                  "PRIOR": "FIFTYONE_CASS_PRIOR_CHECKPOINT"}
#: a directory holding the records' offline files under their names (``fiftyone-cass backbones``)
WEIGHTS_DIR_ENV = "FIFTYONE_CASS_WEIGHTS_DIR"


def checkpoint_path(what: str, weights, given: Optional[str] = None) -> Optional[str]:
    """The local file of one component (``what``: CLIP, DINO or PRIOR), or None (the hub): the
    given path, else ``FIFTYONE_CASS_<what>_CHECKPOINT``, else the record's offline file name in
    ``FIFTYONE_CASS_WEIGHTS_DIR`` (when that is set; a file missing there is reported, not looked
    up on the hub). Not checked for existence here."""
    if given:
        return str(given)
    env = os.environ.get(CHECKPOINT_ENV[what])
    if env:
        return env
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if root and getattr(weights, "file", "") and _is_pretrained(weights):
        return str(Path(root).expanduser() / weights.file)
    return None


def _is_pretrained(weights) -> bool:
    return (weights.pretrained if isinstance(weights, ClipWeights) else weights.tag) is not None


def offline_instructions(spec: BackboneSpec) -> str:
    """How to run ``spec`` without the hub: each component's hub repository and offline file."""
    parts = []
    for what, w in spec.components():
        if not _is_pretrained(w):
            continue
        flag = "" if what == "PRIOR" else f"--{what.lower()}-checkpoint / {what.lower()}_checkpoint= / "
        parts.append(f"{what} {w.file} (from the hub repo {w.hub}; {flag}{CHECKPOINT_ENV[what]})")
    if not parts:
        return ""
    return (f"Offline, the '{spec.name}' backbone reads: " + "; ".join(parts) +
            f"; or put the files under those names in the directory {WEIGHTS_DIR_ENV} names.")


def _offline_hint(what: str, exc: BaseException, spec: Optional[BackboneSpec] = None) -> WeightsUnavailableError:
    spec = spec or BACKBONES[DEFAULT_BACKBONE]
    w = dict(spec.components()).get(what, spec.clip)
    setting = "FIFTYONE_CASS_PRIOR_CHECKPOINT" if what == "PRIOR" else f"{what.lower()}_checkpoint="
    err = WeightsUnavailableError(
        f"could not obtain the {what} weights ({type(exc).__name__}: {exc}). This machine may have no "
        f"access to the model hub. Download them elsewhere and pass a local file: {setting}'{w.file}' "
        f"(the weights of {w.hub}). " + offline_instructions(spec)
    )
    err.model = what  # which weights are missing (CLIP, DINO, PRIOR), for the messages built on it
    return err


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


def load_clip(spec: BackboneSpec, checkpoint: Optional[str] = None, device="cpu", *,
              weights: Optional[ClipWeights] = None, random_weights: bool = False, what: str = "CLIP"):
    """A CLIP through ``open_clip.create_model`` (QuickGELU where the record says so, as the OpenAI
    weights need). ``weights``: the record's component (default ``spec.clip``; the prior passes
    ``spec.prior``). ``checkpoint``: a local open_clip state-dict file (.safetensors/.pt/.bin),
    loaded by open_clip with ``weights_only=True`` (see :func:`checkpoint_path`); otherwise the
    weights tag from open_clip's hub cache. ``random_weights``: the architecture with seeded
    random weights, whatever the record's tag (benchmarks, tests)."""
    import open_clip

    _register_configs()
    w = weights or spec.clip
    checkpoint = None if random_weights and not checkpoint else checkpoint_path(what, w, checkpoint)
    pretrained = _check_file(checkpoint, what) if checkpoint else (None if random_weights else w.pretrained)
    if pretrained is None:
        seed = spec.random_seed if spec.random_seed is not None else 0
        torch.manual_seed(seed if what == "CLIP" else seed + 2)
    try:
        model = open_clip.create_model(
            w.model,
            pretrained=pretrained,
            force_quick_gelu=w.quick_gelu,
            weights_only=True,
            device=device,
            require_pretrained=pretrained is not None,
        )
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # network/hub errors surface as many types
        if checkpoint:
            expected = f"open_clip {w.model}" + (f" ({w.pretrained} weights)" if w.pretrained else "")
            raise _bad_checkpoint(what, pretrained, expected, exc) from None
        if pretrained is None:
            raise
        raise _offline_hint(what, exc, spec) from exc
    return model.eval()


def load_prior(spec: BackboneSpec, checkpoint: Optional[str] = None, device="cpu", *, random_weights: bool = False):
    """The record's prior CLIP (SPEC L.1), or None when it has none."""
    if spec.prior is None:
        return None
    return load_clip(spec, checkpoint, device, weights=spec.prior, random_weights=random_weights, what="PRIOR")


def load_dino(spec: BackboneSpec, checkpoint: Optional[str] = None, device="cpu", *, random_weights: bool = False):
    """The VFM through ``timm.create_model``; a local ``checkpoint`` goes through timm's own
    pretrained loader (``pretrained_cfg_overlay=dict(file=...)``: weights_only / safetensors,
    with timm's checkpoint filter, so the original ``dino_vitbase8_pretrain.pth`` and
    ``dinov2_vitb14_reg4_pretrain.pth`` files and timm's hub files all work)."""
    import timm

    v = spec.vfm
    checkpoint = None if random_weights and not checkpoint else checkpoint_path("DINO", v, checkpoint)
    kwargs = dict(v.kwargs)
    if checkpoint:
        kwargs["pretrained_cfg_overlay"] = dict(file=_check_file(checkpoint, "DINO"))
    pretrained = bool(checkpoint) or (v.tag is not None and not random_weights)
    if not pretrained:
        torch.manual_seed((spec.random_seed if spec.random_seed is not None else 0) + 1)
    try:
        model = timm.create_model(v.timm_name, pretrained=pretrained, num_classes=0, **kwargs)
    except Exception as exc:
        if checkpoint:
            raise _bad_checkpoint("DINO", kwargs["pretrained_cfg_overlay"]["file"], f"timm {v.timm_name}",
                                  exc) from None
        if not pretrained:
            raise
        raise _offline_hint("DINO", exc, spec) from exc
    if int(getattr(model, "num_prefix_tokens", 1)) != 1 + v.registers:
        raise CheckpointError(f"timm {v.timm_name} has {model.num_prefix_tokens} prefix tokens; the '{spec.name}' "
                              f"record expects CLS + {v.registers} registers")
    return model.to(device).eval()


def get_backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())} "
                         "(fiftyone-cass backbones lists them)")
    return BACKBONES[name]


_LOADED: Dict[tuple, Any] = {}


def _offline_if_hub_unreachable(timeout: float = 3.0) -> None:
    """Before weights are fetched from the model hub: where it cannot be reached, Hugging Face's
    offline mode goes on, so that weights missing from the local cache fail in seconds (a clear
    WeightsUnavailableError) instead of after a minute of download retries."""
    from fiftyone_cass import bootstrap

    if not bootstrap.hub_offline() and not bootstrap.hub_reachable(timeout):
        bootstrap.go_offline()


def cached_models(name: str, clip_checkpoint=None, dino_checkpoint=None, device="cpu", need_dino: bool = True,
                  need_prior: bool = False):
    """``(clip, dino | None, tokenizer)``, loaded once per process and reused by every
    :class:`Segmenter` asking for the same backbone/checkpoints/device (the FiftyOne operators
    keep the model loaded across calls this way); ``need_prior``: the record's prior CLIP is loaded
    (and cached) too (:func:`cached_prior`). Text embeddings are kept per CLIP model
    (:func:`fiftyone_cass.models.text.text_embedder`)."""
    import open_clip

    spec = get_backbone_spec(name)
    dev = str(torch.device(device))
    ckey = ("clip", name, checkpoint_path("CLIP", spec.clip, clip_checkpoint), dev)
    dkey = ("dino", name, checkpoint_path("DINO", spec.vfm, dino_checkpoint), dev)
    pkey = _prior_key(spec, dev)
    downloads = (ckey not in _LOADED and spec.clip_pretrained and not ckey[2]) or (
        need_dino and dkey not in _LOADED and spec.dino_pretrained and not dkey[2]) or (
        need_prior and pkey is not None and pkey not in _LOADED and not pkey[2])
    if downloads:
        _offline_if_hub_unreachable()
    if ckey not in _LOADED:
        _LOADED[ckey] = load_clip(spec, clip_checkpoint, device)
    dino = None
    if need_dino:
        if dkey not in _LOADED:
            _LOADED[dkey] = load_dino(spec, dino_checkpoint, device)
        dino = _LOADED[dkey]
    if need_prior:
        cached_prior(name, device)
    return _LOADED[ckey], dino, open_clip.get_tokenizer("ViT-B-16")


def _prior_key(spec: BackboneSpec, dev: str):
    if spec.prior is None:
        return None
    return ("prior", spec.name, checkpoint_path("PRIOR", spec.prior), dev)


def cached_prior(name: str, device="cpu"):
    """``(prior clip, tokenizer)`` of the record (SPEC L.1), loaded once per process; None when
    the record has no prior. Its file: ``FIFTYONE_CASS_PRIOR_CHECKPOINT`` or the weights directory."""
    import open_clip

    spec = get_backbone_spec(name)
    key = _prior_key(spec, str(torch.device(device)))
    if key is None:
        return None
    if key not in _LOADED:
        if spec.prior.pretrained and not key[2]:
            _offline_if_hub_unreachable()
        _LOADED[key] = load_prior(spec, None, device)
    return _LOADED[key], open_clip.get_tokenizer(spec.prior.model)


def clear_model_cache() -> None:
    """Drop every cached backbone (frees their memory)."""
    _LOADED.clear()
