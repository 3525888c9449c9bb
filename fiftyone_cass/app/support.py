"""What the FiftyOne App needs from the plugin beyond the library calls.

* :func:`form_message`: an exception as one short message in the words of the operator's form
  (field labels instead of Python keywords, from the settings the error references:
  :class:`FormWording`), for the App user;
* :class:`FormError`: an error already in the form's words (the weights check,
  :func:`fiftyone_cass.models.weights.ensure_weights`, words its messages for the form);
* :func:`show_labels_in_app`: makes a freshly written Segmentation field visible in the App, one
  colour per class (``dataset.app_config.color_scheme`` from ``mask_targets``), the only label
  field ticked in the sidebar, with its class names in the field's description;
  :func:`color_scheme_params` / :func:`refresh_app_server_colors` bring those colours to an App
  that is already running;
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

_JSON = "Advanced options (JSON)"
#: Python keyword -> label of the auto_label form (the labels declared with the settings; the
#: Segmenter options are typed in the JSON input, those declared with a form ``group`` (PAMR's)
#: also have an input of their own)
AUTO_LABEL_FIELDS: Dict[str, str] = {
    **{name: f.metadata.get("label", name) for name, f in setting_fields(LabelSettings).items()},
    "error_field": "Label field",  # derived from the label field in the form
    "options": _JSON,
    **{name: (f.metadata["label"] if f.metadata.get("group") else _JSON)
       for name, f in setting_fields(SegmenterOptions).items()},
}
#: the words of the JSON input's own errors: every Segmenter option as typed there
OPTIONS_JSON_FIELDS: Dict[str, str] = {**AUTO_LABEL_FIELDS, **{n: _JSON for n in setting_fields(SegmenterOptions)}}

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
        if self.fields[err.setting] == _JSON:  # typed in the JSON input: name the option
            return f"“{self.fields[err.setting]}”: {err.setting}={err.value!r} is not allowed: {err.allowed}"
        return f"“{self.fields[err.setting]}” {err.value!r} is not allowed: {err.allowed}"


def form_message(exc: BaseException, fields: Mapping[str, str], action: str = "The run") -> str:
    """``exc`` as one short paragraph naming the form's fields (``“Label”``) where the library's
    error references settings (:class:`FormWording`; never parsed from its text). Errors that are
    not the library's own input/weights errors are prefixed with their type and point at the
    server log."""
    msg = " ".join(render(exc, FormWording(fields)).split()) or type(exc).__name__
    if not isinstance(exc, (CassError, ValueError)):
        msg = f"Unexpected error: {type(exc).__name__}: {msg} (details in the FiftyOne server log)"
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 1] + "…"
    return msg


class FormError(CassError, ValueError):
    """An error whose message already uses the form's wording."""


def add_target(inputs, ctx, verb: str) -> None:
    """The operators' "target" input (whole dataset, current view or selected samples), worded
    with ``verb`` ("Label", "Evaluate", ...)."""
    inputs.view_target(ctx, name="target", action_description=verb, dataset_description=f"{verb} the entire dataset",
                       current_view_description=f"{verb} the current view",
                       selected_samples_description=f"{verb} the selected samples", require_flat=True)


def _is_on(value: Optional[str]) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


# App config: the labelling run sets it (fiftyone_cass.fo.app_config), re-exported here
from fiftyone_cass.fo.app_config import PALETTE, active_fields_after_run, class_colors, show_labels_in_app  # noqa: E402,F401


def color_scheme_params(dataset) -> dict:
    """The parameters of the App's built-in ``set_color_scheme`` operator that give a running App
    the dataset's stored colours (``dataset.app_config.color_scheme``: ``color_by`` and the
    per-field colours, e.g. the ``maskTargetsColors`` of :func:`show_labels_in_app`).

    FiftyOne 1.22's App server builds its session's colour scheme from the dataset's App config
    only when the dataset is opened (App start, or another dataset opened); a page reload keeps
    the session's scheme, so a field labelled while the App runs is drawn with pool colours
    (which a reload may reshuffle). Triggering ``set_color_scheme`` with these parameters (the
    operator spreads keys it does not know, such as ``fields``, into the scheme) sets them."""
    scheme = dataset.app_config.color_scheme
    fields = []
    for f in (scheme.fields if scheme is not None else None) or []:
        f = dict(f)
        fields.append({"path": f.get("path"), "fieldColor": f.get("fieldColor"),
                       "colorByAttribute": f.get("colorByAttribute"), "valueColors": f.get("valueColors"),
                       "maskTargetsColors": f.get("maskTargetsColors")})
    params = {"fields": fields}
    if scheme is not None and scheme.color_by:
        params["color_by"] = scheme.color_by
    return params


def refresh_app_server_colors(dataset) -> bool:
    """In the App server's process (an immediate operator run), the server's session state takes
    the dataset's stored colour scheme, so that later page loads draw it too (see
    :func:`color_scheme_params`). Elsewhere (a delegated run, the CLI, tests) it does nothing.
    Returns whether the state was updated. Never raises."""
    try:
        mod = sys.modules.get("fiftyone.server.events.state")
        state = getattr(mod, "_state", None) if mod is not None else None
        if state is None or state.dataset is None or state.dataset.name != dataset.name:
            return False
        import fiftyone.core.state as fos

        state.color_scheme = fos.build_color_scheme(None, dataset, state.config)
        return True
    except Exception as exc:  # noqa: BLE001 - cosmetic only
        logger.warning("could not refresh the App server's colours: %s", exc)
        return False


#: what a user with an App opened before the run does to see its colours (delegated runs, CLI)
OPEN_APP_COLORS_HINT = ("In an App opened before this run, run “Show class colours (CASS)” (operator browser: "
                        "press ` and search CASS) to draw its classes in their colours (or restart the App)")


# ------------------------------------------------------------------------------------------------
# The zoo entry for the App server (text search in the grid embeds the query with the zoo model)
# ------------------------------------------------------------------------------------------------
ZOO_SOURCE_DIR = "fiftyone-cass"
ZOO_FILES = ("manifest.json", "__init__.py")


def zoo_entry_known(model_name: str, zoo_dir: str) -> bool:
    """Whether a manifest under ``zoo_dir`` (FiftyOne's ``model_zoo_dir``, walked as FiftyOne
    walks it) lists ``model_name``."""
    for root, dirs, files in os.walk(zoo_dir, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if "manifest.json" in files:
            try:
                with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
                    if f'"{model_name}"' in f.read(1 << 20):
                        return True
            except OSError:
                pass
            dirs[:] = []
    return False


def register_zoo_entry(plugin_dir: str, environ=None) -> Optional[str]:
    """Makes the plugin's zoo model (``manifest.json`` + the root ``__init__.py`` of ``plugin_dir``)
    known to this process's FiftyOne, as ``foz.register_zoo_model_source`` would: the two files are
    copied to ``<model_zoo_dir>/fiftyone-cass`` unless a manifest there already lists the model.
    Called when FiftyOne loads the plugin, so that the App server can embed text queries of a
    similarity index made with ``model="cass-vit-b16-torch"`` without a restart or a manual copy.
    ``FIFTYONE_CASS_NO_ZOO_REGISTER=1`` turns it off. Returns the folder written, or None.
    Never raises (text search is an extra)."""
    environ = os.environ if environ is None else environ
    if _is_on(environ.get("FIFTYONE_CASS_NO_ZOO_REGISTER")):
        return None
    try:
        import json
        import shutil

        import fiftyone as fo

        zoo_dir = fo.config.model_zoo_dir
        with open(os.path.join(plugin_dir, "manifest.json"), encoding="utf-8") as f:
            names = [m["base_name"] for m in json.load(f)["models"]]
        if not zoo_dir or all(zoo_entry_known(n, zoo_dir) for n in names):
            return None
        dest = os.path.join(zoo_dir, ZOO_SOURCE_DIR)
        os.makedirs(dest, exist_ok=True)
        for name in reversed(ZOO_FILES):  # the manifest last: a half-made entry is never listed
            tmp = os.path.join(dest, f".{name}.tmp{os.getpid()}")
            shutil.copyfile(os.path.join(plugin_dir, name), tmp)
            os.replace(tmp, os.path.join(dest, name))
        try:
            import fiftyone.zoo.models as fozm

            getattr(fozm, "_invalidate_zoo_models_manifest", lambda: None)()
        except Exception:  # noqa: BLE001
            pass
        logger.info("registered the zoo model(s) %s for this FiftyOne in %s", names, dest)
        return dest
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not register the plugin's zoo model (text search in the App needs it: "
                       "copy manifest.json and __init__.py of the plugin into a folder under "
                       "fo.config.model_zoo_dir): %s", exc)
        return None


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
