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
from typing import Optional

from fiftyone_cass.bootstrap import hub_offline
from fiftyone_cass.errors import WeightsUnavailableError, kw
from fiftyone_cass.config.settings import resolve_device

_HELP = (
    "The 'openai' backbone needs CLIP ViT-B/16 (OpenAI weights; hub repo timm/vit_base_patch16_clip_224.openai) "
    "and DINO ViT-B/8 (timm vit_base_patch8_224.dino), downloaded from the Hugging Face hub on first use and "
    f"cached. To use local files instead: {kw('clip_checkpoint', '/path/open_clip_model.safetensors')} "
    f"{kw('dino_checkpoint', '/path/dino_vitbase8_pretrain.pth')} (or export FIFTYONE_CASS_CLIP_CHECKPOINT and "
    "FIFTYONE_CASS_DINO_CHECKPOINT)."
)


def _missing_file(what: str, path: str, server: bool) -> str:
    return (f"{what} checkpoint file not found: {path}. Fix {kw(what.lower() + '_checkpoint')} (or "
            f"FIFTYONE_CASS_{what}_CHECKPOINT{' on the server' if server else ''}).")


def _local_message(exc: BaseException, hub_unreachable: bool, what: str) -> str:
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
    msg = f"the {what} weights are missing: {reason}. {_HELP}"
    return msg + (f" [details: {detail}]" if detail else "")


def _server_message(exc: BaseException, hub_unreachable: bool, backbone: str) -> str:
    what = getattr(exc, "model", "model")
    if hub_unreachable:
        why = "the model hub (huggingface.co) cannot be reached from the FiftyOne server and they are not in its cache"
    elif hub_offline():
        why = "HF_HUB_OFFLINE is set on the FiftyOne server and they are not in its cache"
    else:
        cause = exc.__cause__ or exc
        why = f"the download failed ({type(cause).__name__}: {' '.join(str(cause).split())[:200]})"
    return (
        f"The {what} weights of the '{backbone}' backbone are missing: {why}. Download them elsewhere "
        "(CLIP: open_clip_model.safetensors from timm/vit_base_patch16_clip_224.openai; DINO: "
        "dino_vitbase8_pretrain.pth), copy them to the server and give their paths as "
        f"{kw('clip_checkpoint')} and {kw('dino_checkpoint')} (or FIFTYONE_CASS_CLIP_CHECKPOINT / "
        "FIFTYONE_CASS_DINO_CHECKPOINT on the server)."
    )


def ensure_weights(backbone: str, method: str, device: Optional[str] = None, clip_checkpoint=None,
                   dino_checkpoint=None, server: bool = False) -> None:
    """Loads the backbones of a run (``method`` decides whether DINO is needed) on ``device``
    (``None``/``"auto"``: the first GPU if there is one), or raises
    :class:`~fiftyone_cass.errors.WeightsUnavailableError` referencing the checkpoint settings
    (each surface names them in its words: :meth:`~fiftyone_cass.errors.InvalidInputError.render`);
    ``server``: the run is on a FiftyOne server (the App's operator), not the user's machine.
    An unknown backbone raises ``ValueError``."""
    from fiftyone_cass.methods import get_family
    from fiftyone_cass.models.backbones import cached_models, get_backbone_spec, load_dino

    clip = clip_checkpoint or os.environ.get("FIFTYONE_CASS_CLIP_CHECKPOINT") or None
    dino = dino_checkpoint or os.environ.get("FIFTYONE_CASS_DINO_CHECKPOINT") or None
    need_dino = get_family(method).needs_dino
    for what, path in (("CLIP", clip), ("DINO", dino if need_dino else None)):
        if path and not Path(path).expanduser().is_file():
            raise WeightsUnavailableError(_missing_file(what, path, server))
    was_offline = hub_offline()
    dev = resolve_device(device)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.CRITICAL)  # open_clip/timm log the download failure reported below
    try:
        cached_models(backbone, clip_checkpoint, dino_checkpoint, dev, need_dino)
    except WeightsUnavailableError as exc:
        # cached_models checks the hub before a download and switches to the local cache where it
        # cannot be reached: offline mode that this call turned on says so
        hub_unreachable = not was_offline and hub_offline()
        if server:
            raise WeightsUnavailableError(_server_message(exc, hub_unreachable, backbone)) from None
        what = getattr(exc, "model", "model")
        if what == "CLIP" and need_dino and not dino and hub_offline():
            # offline, so this is only a cache lookup: say whether DINO is missing as well
            try:
                load_dino(get_backbone_spec(backbone), None, "cpu")
            except WeightsUnavailableError:
                what = "CLIP and DINO"
            except Exception:  # noqa: BLE001 - the CLIP message stands
                pass
        raise WeightsUnavailableError(_local_message(exc, hub_unreachable, what)) from None
    finally:
        root.setLevel(old_level)
