"""Are the model weights of a run available? :func:`ensure_weights` answers before any dataset
work, for the command line and the ``auto_label`` operator alike: it loads the backbones into the
per-process cache the Segmenter reuses, or raises :class:`~fiftyone_cass.errors.WeightsUnavailableError`
with one self-contained message saying which weights are missing, why, and how to provide them.
Where the model hub cannot be reached, Hugging Face's offline mode is switched on first, so a
missing cache fails in seconds instead of minutes of retries."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional

from fiftyone_cass.bootstrap import hub_offline
from fiftyone_cass.errors import WeightsUnavailableError, kw
from fiftyone_cass.config.settings import resolve_device


def _describe(what: str, w) -> str:
    from fiftyone_cass.models.backbones import ClipWeights

    if isinstance(w, ClipWeights):
        name = {"CLIP": "CLIP", "PRIOR": "the prior CLIP"}[what]
        return f"{name} {w.model} ({w.pretrained} weights; hub repo {w.hub})"
    return f"{what} (timm {w.timm_name})"


def cli_help(backbone: str) -> str:
    """How to obtain the weights of ``backbone`` on this machine (from its record); the checkpoint
    settings are references (:func:`~fiftyone_cass.errors.kw`) each surface names in its words."""
    from fiftyone_cass.models.backbones import CHECKPOINT_ENV, WEIGHTS_DIR_ENV, get_backbone_spec

    spec = get_backbone_spec(backbone)
    comps = [(what, w) for what, w in spec.components()
             if (w.pretrained if what != "DINO" else w.tag) is not None]
    if not comps:
        return ""
    needs = " and ".join(_describe(what, w) for what, w in comps)
    flags = " ".join(kw(f"{what.lower()}_checkpoint", f"/path/{w.file}") for what, w in comps if what != "PRIOR")
    envs = " and ".join(CHECKPOINT_ENV[what] for what, _ in comps if what != "PRIOR")
    prior = [w for what, w in comps if what == "PRIOR"]
    return (
        f"The '{backbone}' backbone needs {needs}, downloaded from the Hugging Face hub on first use and cached. "
        f"To use local files instead: {flags} (or export {envs})"
        + (f"; the prior: export {CHECKPOINT_ENV['PRIOR']}=/path/{prior[0].file}" if prior else "")
        + f"; or put the files under these names in the directory ${WEIGHTS_DIR_ENV}."
    )


def _missing_file(what: str, path: str, server: bool, from_dir: bool = False) -> str:
    from fiftyone_cass.models.backbones import WEIGHTS_DIR_ENV

    if from_dir:
        return f"{what} checkpoint not found: {path} (the offline file named in ${WEIGHTS_DIR_ENV})"
    if what == "PRIOR":
        return f"PRIOR checkpoint not found: {path} (FIFTYONE_CASS_PRIOR_CHECKPOINT)"
    return (f"{what} checkpoint file not found: {path}. Fix {kw(what.lower() + '_checkpoint')} (or "
            f"FIFTYONE_CASS_{what}_CHECKPOINT{' on the server' if server else ''}).")


def _local_message(exc: BaseException, hub_unreachable: bool, backbone: str, what: str) -> str:
    cause = exc.__cause__
    detail = " ".join((f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)).split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    if hub_unreachable:
        reason = "the model hub (huggingface.co) cannot be reached from this machine and they are not in the local cache"
    elif hub_offline():
        reason = "HF_HUB_OFFLINE is set and they are not in the local cache"
    else:
        reason, detail = f"the download failed ({detail})", ""
    msg = f"the {what} weights are missing: {reason}. {cli_help(backbone)}"
    return msg + (f" [details: {detail}]" if detail else "")


def _server_message(exc: BaseException, hub_unreachable: bool, backbone: str) -> str:
    from fiftyone_cass.models.backbones import get_backbone_spec

    what = getattr(exc, "model", "model")
    if hub_unreachable:
        why = "the model hub (huggingface.co) cannot be reached from the FiftyOne server and they are not in its cache"
    elif hub_offline():
        why = "HF_HUB_OFFLINE is set on the FiftyOne server and they are not in its cache"
    else:
        cause = exc.__cause__ or exc
        why = f"the download failed ({type(cause).__name__}: {' '.join(str(cause).split())[:200]})"
    spec = get_backbone_spec(backbone)
    files = "; ".join(f"{'prior CLIP' if k == 'PRIOR' else k}: {w.file} from {w.hub}" for k, w in spec.components() if w.file)
    prior = " The prior CLIP's file goes in FIFTYONE_CASS_PRIOR_CHECKPOINT." if spec.prior is not None else ""
    return (
        f"The {what} weights of the '{backbone}' backbone are missing: {why}. Download them elsewhere "
        f"({files}), copy them to the server and give their paths as {kw('clip_checkpoint')} and "
        f"{kw('dino_checkpoint')} (or FIFTYONE_CASS_CLIP_CHECKPOINT / FIFTYONE_CASS_DINO_CHECKPOINT on the server)."
        + prior + " Or put them under these names in the directory FIFTYONE_CASS_WEIGHTS_DIR names."
    )


def missing_files(backbone: str, method: str, clip_checkpoint=None, dino_checkpoint=None,
                  server: bool = False) -> List[str]:
    """One message per local file that the run would read and that does not exist (every
    component of the record the method needs: CLIP, the VFM, the prior CLIP)."""
    from fiftyone_cass.methods import get_family
    from fiftyone_cass.models.backbones import checkpoint_path, get_backbone_spec

    spec = get_backbone_spec(backbone)
    need_dino = get_family(method).needs_dino
    given = {"CLIP": clip_checkpoint, "DINO": dino_checkpoint, "PRIOR": None}
    out = []
    for what, w in spec.components():
        if what == "DINO" and not need_dino:
            continue
        path = checkpoint_path(what, w, given[what])
        if path and not Path(path).expanduser().is_file():
            from_dir = not given[what] and not os.environ.get(f"FIFTYONE_CASS_{what}_CHECKPOINT")
            out.append(_missing_file(what, path, server, from_dir))
    return out


def ensure_weights(backbone: str, method: str, device: Optional[str] = None, clip_checkpoint=None,
                   dino_checkpoint=None, server: bool = False) -> None:
    """Loads the backbones of a run (``method`` decides whether DINO is needed; the record whether
    a prior CLIP is) on ``device`` (``None``/``"auto"``: the first GPU if there is one), or raises
    :class:`~fiftyone_cass.errors.WeightsUnavailableError` naming every missing local file and
    referencing the checkpoint settings (each surface names them in its words:
    :meth:`~fiftyone_cass.errors.InvalidInputError.render`); ``server``: the run is on a FiftyOne
    server (the App's operator), not the user's machine. An unknown backbone raises ``ValueError``."""
    from fiftyone_cass.methods import get_family
    from fiftyone_cass.models.backbones import cached_models, get_backbone_spec, load_dino, load_prior

    spec = get_backbone_spec(backbone)
    need_dino = get_family(method).needs_dino
    missing = missing_files(backbone, method, clip_checkpoint, dino_checkpoint, server)
    if missing:
        raise WeightsUnavailableError("; ".join(missing))
    dino = dino_checkpoint or os.environ.get("FIFTYONE_CASS_DINO_CHECKPOINT") or None
    was_offline = hub_offline()
    dev = resolve_device(device)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.CRITICAL)  # open_clip/timm log the download failure reported below
    try:
        cached_models(backbone, clip_checkpoint, dino_checkpoint, dev, need_dino, need_prior=spec.prior is not None)
    except WeightsUnavailableError as exc:
        # cached_models checks the hub before a download and switches to the local cache where it
        # cannot be reached: offline mode that this call turned on says so
        hub_unreachable = not was_offline and hub_offline()
        if server:
            raise WeightsUnavailableError(_server_message(exc, hub_unreachable, backbone)) from None
        what = getattr(exc, "model", "model")
        if what == "CLIP" and hub_offline():
            # offline, so these are only cache lookups: say what else is missing
            others = []
            checks = [("DINO", need_dino and not dino, lambda: load_dino(spec, None, "cpu")),
                      ("PRIOR", spec.prior is not None, lambda: load_prior(spec, None, "cpu"))]
            for what, needed, load in checks:
                if not needed:
                    continue
                try:
                    load()
                except WeightsUnavailableError:
                    others.append(what)
                except Exception:  # noqa: BLE001 - the CLIP message stands
                    pass
            what = " and ".join(["CLIP"] + others)
        raise WeightsUnavailableError(_local_message(exc, hub_unreachable, backbone, what)) from None
    finally:
        root.setLevel(old_level)
