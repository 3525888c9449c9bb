"""Are the model weights of a run available? :func:`ensure_weights` answers before any dataset
work, for the command line and the ``auto_label`` operator alike: it loads the backbones into the
per-process cache the Segmenter reuses, or raises :class:`~fiftyone_cass.errors.WeightsUnavailableError`
with one self-contained message saying which weights are missing, why, and how to provide them.
Where the model hub cannot be reached, Hugging Face's offline mode is switched on first, so a
missing cache fails in seconds instead of minutes of retries."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import List, Optional

from fiftyone_cass.bootstrap import hub_offline
from fiftyone_cass.errors import WeightsUnavailableError
from fiftyone_cass.config.settings import resolve_device

#: how the message names the checkpoint settings: command-line flags, the App form's fields, or
#: the keyword arguments of Python callers
WORDINGS = ("cli", "form", "python")

def _describe(what: str, w) -> str:
    from fiftyone_cass.models.backbones import ClipWeights

    if isinstance(w, ClipWeights):
        name = {"CLIP": "CLIP", "PRIOR": "the prior CLIP"}[what]
        return f"{name} {w.model} ({w.pretrained} weights; hub repo {w.hub})"
    return f"{what} (timm {w.timm_name})"


def cli_help(backbone: str) -> str:
    """What the CLI says about obtaining the weights of ``backbone`` (from its record)."""
    from fiftyone_cass.models.backbones import CHECKPOINT_ENV, WEIGHTS_DIR_ENV, get_backbone_spec

    spec = get_backbone_spec(backbone)
    comps = [(what, w) for what, w in spec.components()
             if (w.pretrained if what != "DINO" else w.tag) is not None]
    if not comps:
        return ""
    needs = " and ".join(_describe(what, w) for what, w in comps)
    flags = " ".join(f"--{what.lower()}-checkpoint /path/{w.file}" for what, w in comps if what != "PRIOR")
    envs = " and ".join(CHECKPOINT_ENV[what] for what, _ in comps if what != "PRIOR")
    prior = [w for what, w in comps if what == "PRIOR"]
    return (
        f"The '{backbone}' backbone needs {needs}, downloaded from the Hugging Face hub on first use and cached. "
        f"To use local files instead: {flags} (or export {envs})"
        + (f"; the prior: export {CHECKPOINT_ENV['PRIOR']}=/path/{prior[0].file}" if prior else "")
        + f"; or put the files under these names in the directory ${WEIGHTS_DIR_ENV}."
    )


def _missing_file(what: str, path: str, wording: str, from_dir: bool = False) -> str:
    from fiftyone_cass.models.backbones import WEIGHTS_DIR_ENV

    if from_dir:
        return f"{what} checkpoint not found: {path} (the offline file named in ${WEIGHTS_DIR_ENV})"
    if what == "PRIOR":
        return f"PRIOR checkpoint not found: {path} (FIFTYONE_CASS_PRIOR_CHECKPOINT)"
    if wording == "cli":
        return f"{what} checkpoint not found: {path} (--{what.lower()}-checkpoint / FIFTYONE_CASS_{what}_CHECKPOINT)"
    where = f"the form's “{what} checkpoint file” field" if wording == "form" else f"{what.lower()}_checkpoint="
    return f"{what} checkpoint file not found: {path}. Fix {where} (or FIFTYONE_CASS_{what}_CHECKPOINT on the server)."


_WHAT = re.compile(r"the (CLIP|DINO|PRIOR) weights")


def _cli_message(exc: BaseException, hub_unreachable: bool, backbone: str) -> str:
    m = _WHAT.search(str(exc))
    what = m.group(1) if m else "model"
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


def _server_message(exc: BaseException, hub_unreachable: bool, backbone: str, wording: str) -> str:
    from fiftyone_cass.models.backbones import get_backbone_spec

    m = _WHAT.search(str(exc))
    what = m.group(1) if m else "model"
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
        f"({files}), copy them to the server and give their paths "
        + ("in the form's “CLIP checkpoint file” and “DINO checkpoint file” fields." if wording == "form"
           else "as clip_checkpoint= and dino_checkpoint= (or FIFTYONE_CASS_CLIP_CHECKPOINT / "
                "FIFTYONE_CASS_DINO_CHECKPOINT).")
        + prior + " Or put them under these names in the directory FIFTYONE_CASS_WEIGHTS_DIR names."
    )


def missing_files(backbone: str, method: str, clip_checkpoint=None, dino_checkpoint=None,
                  wording: str = "python") -> List[str]:
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
            out.append(_missing_file(what, path, wording, from_dir))
    return out


def ensure_weights(backbone: str, method: str, device: Optional[str] = None, clip_checkpoint=None,
                   dino_checkpoint=None, wording: str = "python") -> None:
    """Loads the backbones of a run (``method`` decides whether DINO is needed; the record whether
    a prior CLIP is) on ``device`` (``None``/``"auto"``: the first GPU if there is one), or raises
    :class:`~fiftyone_cass.errors.WeightsUnavailableError` naming the checkpoint settings in the
    caller's ``wording`` (:data:`WORDINGS`) and every missing local file. An unknown backbone
    raises ``ValueError``."""
    from fiftyone_cass.methods import get_family
    from fiftyone_cass.models.backbones import cached_models, get_backbone_spec, load_dino, load_prior

    spec = get_backbone_spec(backbone)
    need_dino = get_family(method).needs_dino
    missing = missing_files(backbone, method, clip_checkpoint, dino_checkpoint, wording)
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
        if wording != "cli":
            raise WeightsUnavailableError(_server_message(exc, hub_unreachable, backbone, wording)) from None
        msg = _cli_message(exc, hub_unreachable, backbone)
        if msg.startswith("the CLIP weights") and hub_offline():
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
            if others:
                msg = "the " + " and ".join(["CLIP"] + others) + " weights" + msg[len("the CLIP weights"):]
        raise WeightsUnavailableError(msg) from None
    finally:
        root.setLevel(old_level)
