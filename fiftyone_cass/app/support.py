"""What the FiftyOne App needs from the plugin beyond the library calls.

* :func:`form_message`: an exception as one short message in the words of the operator's form
  (field labels instead of Python keywords), for the App user;
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
import re
import sys
from typing import Dict, Mapping, Optional

from fiftyone_cass.errors import CassError
from fiftyone_cass.models.segmenter import SegmenterOptions
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
        msg = f"Unexpected error: {type(exc).__name__}: {msg} (details in the FiftyOne server log)"
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 1] + "…"
    return msg


class FormError(CassError, ValueError):
    """An error whose message already uses the form's wording."""


def _is_on(value: Optional[str]) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


# App config: the labelling run sets it (fiftyone_cass.fo.app_config), re-exported here
from fiftyone_cass.fo.app_config import PALETTE, class_colors, show_labels_in_app  # noqa: E402,F401


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
