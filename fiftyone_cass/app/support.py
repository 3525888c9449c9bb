"""What the FiftyOne App needs from the plugin beyond the library calls.

* :func:`form_message`: an exception as one short message in the words of the operator's form
  (field labels instead of Python keywords, from the settings the error references:
  :class:`FormWording`), for the App user;
* :class:`FormError`: an error already in the form's words (the weights check,
  :func:`fiftyone_cass.models.weights.ensure_weights`, words its messages for the form);
* :func:`show_labels_in_app`: makes a freshly written Segmentation field visible in the App, one
  colour per class (``dataset.app_config.color_scheme`` from ``mask_targets``), ticked in the
  sidebar, with its class names in the field's description;
* :func:`enable_scheduling` / :func:`launch_app`: the App offers "Schedule" for delegated runs.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Dict, Mapping, Optional

from fiftyone_cass.config.options import SegmenterOptions
from fiftyone_cass.errors import CassError, Wording, render
from fiftyone_cass.config.schema import setting_fields
from fiftyone_cass.config.settings import LabelSettings

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


class FormWording(Wording):
    """The library's setting references in a form's words: ``overwrite`` -> ``“Overwrite
    existing labels”`` (its label), ``pass overwrite=True`` -> ``tick “Overwrite existing
    labels”``, ``pass masks='database'`` -> ``set “Where masks go”``, a bad value -> ``“Batch
    size” 0 is not allowed: an integer from 1 to 4096`` (the input shows its help text already).
    Settings without a field in the form keep Python's words."""

    def __init__(self, fields: Mapping[str, str]):
        self.fields = fields

    def name(self, name, value, verb):
        if name not in self.fields:
            return super().name(name, value, verb)
        label = f"“{self.fields[name]}”"
        if verb != "use":
            return label
        return ("tick " if name in CHECKBOXES else "set ") + label

    def bad_value(self, err):
        if err.setting not in self.fields:
            return super().bad_value(err)
        if err.setting in setting_fields(SegmenterOptions):  # typed in the JSON input: name the option
            return f"“{self.fields[err.setting]}”: {err.setting}={err.value!r} is not allowed: {err.allowed}"
        return f"“{self.fields[err.setting]}” {err.value!r} is not allowed: {err.allowed}"


def form_message(exc: BaseException, fields: Mapping[str, str], action: str = "The run") -> str:
    """``exc`` as one short paragraph naming the form's fields (``“Label”``) where the library's
    error references settings (:class:`FormWording`; never parsed from its text). Errors that are
    not the library's own input/weights errors are prefixed with their type and point at the
    server log."""
    msg = " ".join(render(exc, FormWording(fields)).split()) or type(exc).__name__
    if not isinstance(exc, (CassError, ValueError)):
        msg = f"{type(exc).__name__}: {msg} (details in the FiftyOne server log)"
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 1] + "…"
    return msg


class FormError(CassError, ValueError):
    """An error whose message already uses the form's wording."""


def _is_on(value: Optional[str]) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


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


def launch_app(dataset, **launch_kwargs):
    """``fo.launch_app(dataset, **launch_kwargs)`` with "Schedule" offered for delegated operations
    (:func:`enable_scheduling`, before the App server starts). Returns the session."""
    import fiftyone as fo

    enable_scheduling()
    return fo.launch_app(dataset, **launch_kwargs)
