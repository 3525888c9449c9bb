"""What the FiftyOne App needs from the plugin beyond the library calls.

* :func:`form_message`: an exception as one short message in the words of the operator's form
  (field labels instead of Python keywords), for the App user;
* :func:`ensure_weights`: loads the backbones before any dataset work and fails within seconds
  when weights are missing and the hub is unreachable (the CLI's check, with the form's wording);
* :func:`show_labels_in_app`: makes a freshly written Segmentation field visible in the App, one
  colour per class (``dataset.app_config.color_scheme`` from ``mask_targets``), ticked in the
  sidebar, with its class names in the field's description.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional

from ..errors import CassError, WeightsUnavailableError
from ..models.segmenter import SegmenterOptions
from ..schema import setting_fields
from ..settings import LabelSettings

logger = logging.getLogger(__name__)

#: Python keyword -> label of the auto_label form (the labels declared with the settings; the
#: Segmenter options are typed in the JSON input)
AUTO_LABEL_FIELDS: Dict[str, str] = {
    **{name: f.metadata.get("label", name) for name, f in setting_fields(LabelSettings).items()},
    "error_field": "Label field",  # derived from the label field in the form
    "options": "Advanced options (JSON)",
    **{name: "Advanced options (JSON)" for name in setting_fields(SegmenterOptions)},
}

#: Python keyword -> label of the evaluate_iou form
EVALUATE_FIELDS: Dict[str, str] = {
    "pred_field": "Predictions",
    "gt_field": "Ground truth",
    "eval_key": "Evaluation key",
    "overwrite": "Overwrite the existing evaluation",
    "ignore_index": "Ignore index",
    "resize": "Resize mismatched predictions",
    "skip_missing": "Skip samples without predictions",
}

#: keywords that are checkboxes in the forms ("tick" them)
CHECKBOXES = {"overwrite", "skip_existing", "resize", "skip_missing"}

MAX_MESSAGE = 600


def form_message(exc: BaseException, fields: Mapping[str, str], action: str = "The run") -> str:
    """``exc`` as one short paragraph naming the form's fields (``“Label”``) where the library's
    message names Python keywords (``overwrite=True``, ``gt_field 'x'``). Errors that are not the
    library's own input/weights errors are prefixed with their type and point at the server log."""
    msg = " ".join(str(exc).split()) or type(exc).__name__

    def label(name: str) -> str:
        return f"“{fields[name]}”"

    # "pass overwrite=True to ..." -> "tick “Overwrite existing labels” to ..."
    def on_true(m):
        name = m.group(2)
        return f"tick {label(name)}" if name in fields else m.group(0)

    msg = re.sub(r"(pass )?\b([a-z_]+)=True\b", on_true, msg)

    # the settings' checker: "option batch_size=0 is not allowed: ..." -> "“Batch size” 0 is not allowed: ..."
    def on_option(m):
        name = m.group(1)
        return f"{label(name)} {m.group(2)} is not allowed" if name in fields else m.group(0)

    msg = re.sub(r"\boption ([a-z_]+)=('[^']*'|\[[^\]]*\]|\"[^\"]*\"|\S+) is not allowed", on_option, msg)
    # "resize='nearest'" / "classes=[...]" -> the field's label
    def on_value(m):
        name = m.group(2)
        if name not in fields:
            return m.group(0)
        if not m.group(1):
            return label(name)
        return ("tick " if name in CHECKBOXES else "set ") + label(name)

    msg = re.sub(r"(pass )?\b([a-z_]+)=(?:'[^']*'|\[[^\]]*\]|\"[^\"]*\"|[\w.]+)", on_value, msg)
    # bare keywords with an underscore (gt_field, label_field, ...) are unambiguous
    for name in sorted(fields, key=len, reverse=True):
        if "_" in name:
            msg = re.sub(rf"(?<![\w“]){re.escape(name)}(?![\w”])", label(name), msg)
    if not isinstance(exc, (CassError, ValueError)):
        msg = f"{type(exc).__name__}: {msg} (details in the FiftyOne server log)"
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 1] + "…"
    return msg


class FormError(CassError, ValueError):
    """An error whose message already uses the form's wording."""


def _is_on(value: Optional[str]) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # read at call time by huggingface_hub
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True


def ensure_weights(backbone: str, method: str, device: Optional[str] = None, clip_checkpoint=None,
                   dino_checkpoint=None, hub_check_timeout: float = 3.0, wording: str = "form") -> None:
    """Loads (into the per-process cache the Segmenter reuses) the backbones of a run, before any
    dataset work, and raises :class:`FormError` naming the form's checkpoint fields when weights
    are missing. Where the model hub cannot be reached, Hugging Face's offline mode is switched on
    first (as the CLI does), so a missing cache fails in seconds instead of minutes of retries.
    ``wording="python"`` names the keyword arguments instead (for Python callers of the operator)."""
    import torch

    from ..cli import _hub_reachable
    from ..models.backbones import cached_models

    clip = clip_checkpoint or os.environ.get("FIFTYONE_CASS_CLIP_CHECKPOINT") or None
    dino = dino_checkpoint or os.environ.get("FIFTYONE_CASS_DINO_CHECKPOINT") or None
    need_dino = (method or "").partition("+")[0] == "cass"
    for what, path in (("CLIP", clip), ("DINO", dino if need_dino else None)):
        if path and not Path(path).expanduser().is_file():
            where = (f"the form's “{what} checkpoint file” field" if wording == "form"
                     else f"{what.lower()}_checkpoint=")
            raise FormError(f"{what} checkpoint file not found: {path}. Fix {where} "
                            f"(or FIFTYONE_CASS_{what}_CHECKPOINT on the server).")
    hub_unreachable = False
    if backbone == "openai" and not (clip and (dino or not need_dino)):
        if not _is_on(os.environ.get("HF_HUB_OFFLINE")) and not _hub_reachable(hub_check_timeout):
            _go_offline()
            hub_unreachable = True
    dev = torch.device(device if device not in (None, "", "auto") else ("cuda" if torch.cuda.is_available() else "cpu"))
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.CRITICAL)  # open_clip/timm log the download failure reported below
    try:
        cached_models(backbone, clip_checkpoint, dino_checkpoint, dev, need_dino)
    except WeightsUnavailableError as exc:
        m = re.search(r"the (CLIP|DINO) weights", str(exc))
        what = m.group(1) if m else "model"
        if hub_unreachable:
            why = "the model hub (huggingface.co) cannot be reached from the FiftyOne server and they are not in its cache"
        elif _is_on(os.environ.get("HF_HUB_OFFLINE")):
            why = "HF_HUB_OFFLINE is set on the FiftyOne server and they are not in its cache"
        else:
            cause = exc.__cause__ or exc
            why = f"the download failed ({type(cause).__name__}: {' '.join(str(cause).split())[:200]})"
        raise FormError(
            f"The {what} weights of the '{backbone}' backbone are missing: {why}. Download them elsewhere "
            "(CLIP: open_clip_model.safetensors from timm/vit_base_patch16_clip_224.openai; DINO: "
            "dino_vitbase8_pretrain.pth), copy them to the server and give their paths "
            + ("in the form's “CLIP checkpoint file” and “DINO checkpoint file” fields." if wording == "form"
               else "as clip_checkpoint= and dino_checkpoint= (or FIFTYONE_CASS_CLIP_CHECKPOINT / "
                    "FIFTYONE_CASS_DINO_CHECKPOINT).")
        ) from None
    finally:
        root.setLevel(old_level)


# ------------------------------------------------------------------------------------------------
# App config: one colour per class, field ticked, class names in the field description
# ------------------------------------------------------------------------------------------------
#: distinct colours (Tableau 20 then more), class i gets PALETTE[(i - 1) % len]
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39",
]


def class_colors(mask_targets: Mapping) -> list:
    """``maskTargetsColors`` for FiftyOne's ColorScheme: one colour per non-zero integer id
    (0 is background, which the App never draws)."""
    ids = sorted(int(k) for k in mask_targets if int(k) != 0)
    return [{"intTarget": i, "color": PALETTE[(n) % len(PALETTE)]} for n, i in enumerate(ids)]


def show_labels_in_app(dataset, label_field: str, mask_targets: Optional[Mapping] = None) -> None:
    """Dataset App config for ``label_field``: coloured by value with one colour per class of
    ``mask_targets`` (default: ``dataset.mask_targets[label_field]``), the field ticked in the
    sidebar, and its classes listed in the field's description (shown by the sidebar). Other
    fields' settings are kept. Never raises: the labels matter more than their looks."""
    import fiftyone as fo

    try:
        targets = mask_targets if mask_targets is not None else dataset.mask_targets.get(label_field)
        if not targets or not all(str(k).lstrip("-").isdigit() for k in targets):
            return
        cfg = dataset.app_config
        scheme = cfg.color_scheme or fo.ColorScheme()
        colors = class_colors(targets)
        old = next((f for f in (scheme.fields or []) if f.get("path") == label_field), None)
        old_ids = sorted(c.get("intTarget") for c in (old or {}).get("maskTargetsColors") or [])
        if old is None or old_ids != [c["intTarget"] for c in colors]:  # keep a user's colours for the same classes
            fields = [dict(f) for f in (scheme.fields or []) if f.get("path") != label_field]
            fields.append({"path": label_field, "maskTargetsColors": colors})
            scheme.fields = fields
        scheme.color_by = "value"
        cfg.color_scheme = scheme

        active = cfg.active_fields
        if active is None:  # the App's default ticks label fields: keep them ticked
            labels = sorted(dataset.get_field_schema(embedded_doc_type=fo.Label))
            cfg.active_fields = fo.ActiveFields(paths=labels + ([] if label_field in labels else [label_field]))
        elif active.exclude:
            active.paths = [p for p in (active.paths or []) if p != label_field]
        elif label_field not in (active.paths or []):
            active.paths = list(active.paths or []) + [label_field]
        dataset.save()

        names = ", ".join(f"{int(k)} {v}" for k, v in sorted(targets.items(), key=lambda kv: int(kv[0])))
        field = dataset.get_field(label_field)
        if field is not None:
            desc = f"Classes: {names}"
            if field.description != desc:
                field.description = desc
                field.save()
    except Exception as exc:  # noqa: BLE001 - cosmetic only
        logger.warning("could not set the App colours of field %r: %s", label_field, exc)


# ------------------------------------------------------------------------------------------------
# Delegation ("Schedule" in the App's Execute menu)
# ------------------------------------------------------------------------------------------------
SCHEDULING_ENV = "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"


def enable_scheduling(environ=None) -> bool:
    """Lets the App offer "Schedule" for delegated operations, run later by
    ``fiftyone delegated launch``. Open-source FiftyOne (>= 1.x) offers it only with its config
    ``allow_legacy_orchestrators`` (env ``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS``); without it the
    Execute menu shows "Schedule: NOT AVAILABLE" (orchestrator registration is an Enterprise
    feature). Sets the variable unless the user set it (App servers started afterwards inherit
    it) and this process's config. Returns whether scheduling is on."""
    environ = os.environ if environ is None else environ
    environ.setdefault(SCHEDULING_ENV, "true")
    on = _is_on(environ.get(SCHEDULING_ENV))
    if "fiftyone.core.config" in sys.modules:
        import fiftyone as fo

        fo.config.allow_legacy_orchestrators = on
    return on
