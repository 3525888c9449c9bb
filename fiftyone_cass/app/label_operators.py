"""FiftyOne plugin operators for auto-labelling (thin shells over :mod:`.apply`).

* ``@fiftyone-cass/cass/auto_label`` (:class:`AutoLabel`): Segmentation labels, presence scores and
  concept tags for the dataset, the current view or the selected samples
  (:func:`fiftyone_cass.fo.apply.apply`). Immediate execution reports progress to the
  App between batches (generator execution); delegated execution reports it through
  ``ctx.set_progress``. From Python::

      op = foo.get_operator("@fiftyone-cass/cass/auto_label")
      op(dataset_or_view, classes=["dog", "frisbee"], delegate=True)   # queues a delegated run

* ``@fiftyone-cass/cass/retag_presence`` (:class:`RetagPresence`): re-derives the concept tags from
  the stored presence scores with a new threshold, without running the model
  (:func:`fiftyone_cass.fo.apply.retag`).
* ``@fiftyone-cass/cass/show_class_colors`` (:class:`ShowClassColors`): the dataset's stored class
  colours in an App that was opened before a delegated or CLI run wrote a field.

The model stays loaded across calls in one process (FiftyOne App server or delegated worker):
backbones are cached per process and :func:`~.apply.get_segmenter` keeps recent Segmenters.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators import types

from fiftyone_cass.models.backbones import BACKBONES as BACKBONE_RECORDS, backbone_names
from fiftyone_cass.errors import InvalidInputError, WeightsUnavailableError, kw
from fiftyone_cass.models.vocabulary import vocabulary_of
from fiftyone_cass.models.weights import ensure_weights
from fiftyone_cass.config.options import SegmenterOptions, options_from_json
from fiftyone_cass.config.schema import choices_of, coerce_settings, setting_fields, setting_is_optional, setting_type
from fiftyone_cass.config.settings import (DEFAULT_PRESENCE_THRESHOLD, GROUP_TITLES, LabelSettings, build_settings,
                                           format_field, label_setting_names)
from fiftyone_cass.app.support import (
    AUTO_LABEL_FIELDS,
    OPTIONS_JSON_FIELDS,
    add_target,
    OPEN_APP_COLORS_HINT,
    FormError,
    active_fields_after_run,
    color_scheme_params,
    form_message,
    refresh_app_server_colors,
)
from fiftyone_cass.fo.apply import (
    AutoLabelRun,
    check_regions_field,
    check_threshold,
    default_tag_prefix,
    recorded_tag_prefix,
    recorded_threshold,
    retag,
    run_key_for,
)
from fiftyone_cass.fo.delegation import AUTO_LABEL_URI  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

PLUGIN_NAME = "@fiftyone-cass/cass"
RETAG_URI = f"{PLUGIN_NAME}/retag_presence"
#: backbones offered in the form, from the one registry (models/backbones.py); the test-only ones
#: (random weights: "tiny*", "random-base") are accepted from Python/CLI but not offered
BACKBONES = backbone_names(include_test=False)
TEST_BACKBONES = tuple(n for n in backbone_names() if n not in BACKBONES)
#: immediate runs on larger targets default to delegated execution in the App
DELEGATE_FROM = 100
#: what the Backbone help adds for a test backbone (random weights): why nothing is drawn by default
_TEST_MASKS = ('test model with random weights: masks mean nothing, and with the default background rule '
               '(entropy) every pixel is background: set {"bg_rule": "none"} in “Advanced options (JSON)” '
               'to see masks')
_MISSING = object()


def backbone_help(chosen: Optional[str]) -> str:
    """The Backbone input's help: the chosen record's description, and for a test backbone why its
    default draws nothing (issue 21 item 7)."""
    name = chosen if chosen in BACKBONE_RECORDS else "openai"
    text = BACKBONE_RECORDS[name].description
    return f"{text}; {_TEST_MASKS}" if name in TEST_BACKBONES else text


def _fields_of(collection, doc_type):
    return sorted(collection.get_field_schema(embedded_doc_type=doc_type).keys())


def _gt_fields(dataset):
    """Segmentation fields whose (or the default) mask_targets have integer ids."""
    out = []
    for f in _fields_of(dataset, fo.Segmentation):
        t = dataset.mask_targets.get(f) or dataset.default_mask_targets
        if t and all(isinstance(k, int) for k in t):
            out.append(f)
    return out


def _default_gt_field(dataset, candidates, label_field):
    """The ground truth to preselect: ``ground_truth`` if it is one, else the first field that no
    auto_label run wrote (predictions are not ground truth), else the first."""
    if "ground_truth" in candidates:
        return "ground_truth"
    runs = set(dataset.list_runs())
    written = {f for f in candidates if run_key_for(f) in runs or f == label_field}
    return next((f for f in candidates if f not in written), candidates[0])


def _devices():
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(n)]


def _dropdown(inputs, name, values, default, label, description=None, required=False):
    view = types.DropdownView()
    for v in values:
        view.add_choice(v, label=v)
    return inputs.enum(name, view.values(), default=default, required=required, label=label,
                       description=description, view=view)


def form_classes(value):
    """The "Class names" text area's value as the ``classes`` setting: several lines are one
    class each (a line ``animal, cat, dog`` is one class with synonyms; lines are never merged);
    a single line is comma-separated classes; a list (Python callers) is class lines as given."""
    if not isinstance(value, str):
        return value
    lines = [line.strip() for line in value.splitlines() if line.strip()]
    return lines if len(lines) > 1 else (lines[0] if lines else value)


def auto_label_kwargs(params: Dict[str, Any]) -> Dict[str, Any]:
    """Operator params -> :func:`~.apply.apply` keyword arguments: every
    :class:`~fiftyone_cass.config.settings.LabelSettings` field the form (or a Python caller) gave,
    the vocabulary of the chosen source (:func:`form_classes`) and the Segmenter options (the
    JSON input, a dict from Python, and the options with inputs of their own: :func:`form_options`,
    merged into the JSON's). Values are checked once, when the run's settings are built."""
    p = params
    kw: Dict[str, Any] = {}
    for name in label_setting_names():
        if name in _VOCABULARY or name not in p or not _shown(p, name):
            continue
        if p[name] is None and not _optional(name):
            continue  # a cleared input: the default
        kw[name] = p[name]
    source = _source(p)
    kw[source] = _classes_param(p) if source == "classes" else p.get(source)
    kw.update(form_options(p))  # Segmenter options by name: build_settings merges them into "options"
    return kw


def form_options(params: Dict[str, Any]) -> Dict[str, Any]:
    """The Segmenter options given in inputs of their own (:data:`FORM_OPTIONS`: PAMR's), those
    whose input is shown (``shown_with``). One path with the JSON input: they are merged into its
    options; an option given in both with different values is refused
    (:class:`~fiftyone_cass.errors.InvalidInputError` naming both inputs), equal values are fine.
    An input left at its declared default (the App always sends one) leaves the JSON's value in
    force: ``{"pamr_steps": 10}`` typed in the JSON still turns PAMR on."""
    given = {n: params[n] for n in FORM_OPTIONS if params.get(n) not in (None, "") and _shown(params, n)
             and not (_at_default(n, params[n]) and n in _json_options(params))}
    for name in given:
        twice = _given_twice(params, name)
        if twice is not None:
            raise twice
    return given


def _json_options(params: Dict[str, Any]) -> Dict[str, Any]:
    """The options typed in the JSON input ({} when there are none or the JSON is bad: that
    input's own check marks it)."""
    try:
        return options_from_json(params.get("options"))
    except InvalidInputError:
        return {}


def _at_default(name: str, value) -> bool:
    """Whether ``value`` of Segmenter option ``name`` is its declared default."""
    try:
        return coerce_settings(SegmenterOptions, {name: value})[name] == _OPTIONS[name].default
    except InvalidInputError:
        return False


def _given_twice(params: Dict[str, Any], name: str) -> Optional[InvalidInputError]:
    """The error of option ``name`` given in its input (not left at its default) and, with
    another value, in the JSON input."""
    typed = _json_options(params)
    if name not in typed or params.get(name) in (None, "") or _at_default(name, params[name]):
        return None
    try:
        mine, theirs = (coerce_settings(SegmenterOptions, {name: v})[name] for v in (params[name], typed[name]))
    except InvalidInputError:
        return None  # a bad value: marked by that input's own check
    if mine == theirs:
        return None
    return InvalidInputError(f"{kw(name)} is given twice: {_shown_value(mine)} in its input and "
                             f"{_shown_value(theirs)} in {kw('options')}; give it in one place")


def _shown_value(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, tuple) else repr(value)


def _classes_param(params):
    """The ``classes`` setting of the params: the class lines a Python caller gave as a list
    (``class_lines``), else the text area's text (:func:`form_classes`)."""
    if params.get("class_lines"):
        return json.loads(params["class_lines"])
    return form_classes(params.get("classes"))


_SETTINGS = setting_fields(LabelSettings)
_OPTIONS = setting_fields(SegmenterOptions)
#: the Segmenter options with an input of their own in the form (declared with a ``group``: PAMR's)
FORM_OPTIONS = tuple(n for n, f in _OPTIONS.items() if f.metadata.get("group"))
_VOCABULARY = ("classes", "preset", "gt_field")
#: the form's sections, in order (the settings' ``group``)
_GROUPS = ("vocabulary", "output", "model", "refinement")


def _declaration(name: str):
    """``(settings class, field)`` of a form input: a LabelSettings field or a Segmenter option."""
    return (LabelSettings, _SETTINGS[name]) if name in _SETTINGS else (SegmenterOptions, _OPTIONS[name])


def _is_on(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "none", "null", "0", "false", "off", "no")
    return value not in (None, 0, False)


def _shown(params: Dict[str, Any], name: str) -> bool:
    """Whether the input of ``name`` is in the form (and its value used): always, unless it is
    declared ``shown_with`` another setting that is off (PAMR's guide without PAMR steps)."""
    parent = _declaration(name)[1].metadata.get("shown_with")
    if parent is None:
        return True
    return _is_on(params[parent] if params.get(parent) is not None else _declaration(parent)[1].default)


def _source(params) -> str:
    p = params
    return p.get("class_source") or ("gt_field" if p.get("gt_field") else "preset" if p.get("preset") else "classes")


def _optional(name: str) -> bool:
    return _SETTINGS[name].default is None or setting_is_optional(LabelSettings, name)  # None means "none"


def _add_setting(ctx, inputs, name: str, default: Any = _MISSING, choices=None, **overrides):
    """The form input of :class:`~fiftyone_cass.config.settings.LabelSettings` field ``name``,
    generated from its declaration: type, label, help text, default, choices (a dropdown, or radio
    buttons where it declares ``form_choices``), ranges (``min``/``max``), a text area where the
    value is a list of lines (``multiline``). A value outside the declaration marks the input
    invalid with the checker's message in the form's words."""
    cls, f = _declaration(name)
    meta = f.metadata
    kw = dict(label=meta.get("label", name), description=meta.get("help"))
    kw.update(overrides)
    value = f.default if default is _MISSING else default
    value = format_field(value, ctx.params.get("label_field") or LabelSettings.label_field) if isinstance(value, str) else value
    value = ", ".join(map(str, value)) if isinstance(value, tuple) else value  # a list: typed comma separated
    choices = choices if choices is not None else choices_of(meta)
    base = setting_type(cls, name)
    if meta.get("form_choices"):
        radio = types.RadioGroup()
        for v, label, description in meta["form_choices"]:
            radio.add_choice(v, label=label, description=description)
        prop = inputs.enum(name, radio.values(), default=value, view=radio, **kw)
    elif choices is not None:
        prop = _dropdown(inputs, name, [c for c in choices], value, kw.pop("label"), **kw)
    elif base is bool:
        prop = inputs.bool(name, default=value, **kw)
    elif base is int:
        prop = inputs.int(name, default=value, min=meta.get("min"), max=meta.get("max"), **kw)
    elif base is float:
        prop = inputs.float(name, default=value, min=meta.get("min"), max=meta.get("max"), **kw)
    elif meta.get("multiline"):
        prop = inputs.str(name, default=value, view=types.TextFieldView(multiline=True, rows=4), **kw)
    else:
        prop = inputs.str(name, default=value, **kw)
    return _check_given(ctx, prop, name)


def _mark(prop, exc: BaseException, fields=AUTO_LABEL_FIELDS) -> None:
    prop.invalid = True
    prop.error_message = form_message(exc, fields)


def _check_given(ctx, prop, name: str):
    """Marks ``prop`` invalid, with the checker's message in the form's words, when the value
    given for setting ``name`` is outside its declaration (the JSON input's options are named as
    typed there, also those with an input of their own)."""
    given = ctx.params.get(name)
    if given not in (None, ""):
        try:
            coerce_settings(_declaration(name)[0], {name: given})
        except InvalidInputError as exc:
            _mark(prop, exc, OPTIONS_JSON_FIELDS if name == "options" else AUTO_LABEL_FIELDS)
    return prop


def _check_vocabulary(ctx, prop) -> None:
    """The typed classes checked as the run will (duplicates, empty names, 'background', a
    background word that is a class, names too long for CLIP): an invalid "Class names" input
    before Execute, the user's text kept."""
    from fiftyone_cass.models.vocabulary import Vocabulary

    text = ctx.params.get("classes")
    if text is None or prop.invalid:
        return
    if not str(text).strip():
        prop.invalid = True
        prop.error_message = "Type at least one class name"
        return
    try:
        background = coerce_settings(LabelSettings, {"background": ctx.params.get("background")})["background"]
    except InvalidInputError:
        background = None  # the background input says so
    try:
        Vocabulary.from_classes(_classes_param(ctx.params), background)
    except InvalidInputError as exc:
        _mark(prop, exc.prefixed(f"{kw('classes')}: "))


def _check_label_field(ds, prop, label_field: str) -> bool:
    """An existing label field must be a Segmentation field (invalid input otherwise). Returns
    whether the field exists and can be written."""
    if prop.invalid or not ds.has_sample_field(label_field):
        return False
    f = ds.get_field(label_field)
    if isinstance(f, fo.EmbeddedDocumentField) and issubclass(f.document_type or object, fo.Segmentation):
        return True
    what = f.document_type.__name__ if isinstance(f, fo.EmbeddedDocumentField) and f.document_type else type(f).__name__
    _mark(prop, InvalidInputError(f"{kw('label_field')} {label_field!r} exists and holds {what}, not Segmentation "
                                  "labels: choose another"))
    return False


def _vocabulary_inputs(ctx, inputs) -> None:
    """Where the classes come from (exactly one of the three vocabulary settings, a radio of
    their labels) and the chosen one's input, then the background words of a free vocabulary."""
    ds = ctx.dataset
    radio = types.RadioGroup()
    radio.add_choice("classes", label=_SETTINGS["classes"].metadata["label"],
                     description="Type the classes: one per line, or comma separated on one line")
    radio.add_choice("gt_field", label="Classes of a ground-truth field",
                     description=_SETTINGS["gt_field"].metadata["help"])
    radio.add_choice("preset", label=_SETTINGS["preset"].metadata["label"],
                     description=_SETTINGS["preset"].metadata["help"])
    inputs.enum("class_source", radio.values(), default="classes", label="Classes", view=radio)
    source = _source(ctx.params)
    if source == "classes":
        prop = _add_setting(ctx, inputs, "classes", required=True,
                            description="One class per line; a line 'animal, cat, dog' is one class with synonyms "
                                        "(or one line of comma-separated classes: dog, frisbee, person)")
        _check_vocabulary(ctx, prop)
    elif source == "gt_field":
        gts = _gt_fields(ds)
        if not gts:
            inputs.view("no_gt", types.Warning(label="No Segmentation field with integer mask_targets",
                                               description="Set dataset.mask_targets[field] first"))
        else:
            default_gt = _default_gt_field(ds, gts, ctx.params.get("label_field") or "cass")
            _add_setting(ctx, inputs, "gt_field", default=default_gt, choices=gts, required=True)
    else:
        _add_setting(ctx, inputs, "preset", default="coco_object", required=True)
    prop = _add_setting(ctx, inputs, "background")
    if source == "preset" and ctx.params.get("background") not in (None, "") and not prop.invalid:
        try:  # the one check of the Segmenter: a preset has its own background
            vocabulary_of(None, ctx.params.get("preset") or "coco_object",
                          coerce_settings(LabelSettings, {"background": ctx.params["background"]})["background"])
        except InvalidInputError as exc:
            _mark(prop, exc)


def _output_inputs(ctx, inputs) -> None:
    ds = ctx.dataset
    label_field = ctx.params.get("label_field") or LabelSettings.label_field
    prop = _add_setting(ctx, inputs, "label_field", required=True)
    if _check_label_field(ds, prop, label_field):
        _add_setting(ctx, inputs, "skip_existing")
        _add_setting(ctx, inputs, "overwrite", label=f"Overwrite existing labels in '{label_field}'")
        if not (ctx.params.get("overwrite") or ctx.params.get("skip_existing")):
            inputs.view("field_exists", types.Notice(
                label=f"Field '{label_field}' exists: a run with its settings resumes it; other settings "
                      "need “Overwrite existing labels” or “Skip samples that already have labels”"))
    for name in _group_fields("output"):
        if name in ("label_field", "skip_existing", "overwrite"):
            continue
        if name == "mask_dir" and (ctx.params.get("masks") or "auto") == "database":
            continue
        _add_setting(ctx, inputs, name)


def model_kwargs(params: Dict[str, Any]) -> Dict[str, Any]:
    """The Model section's values of ``params`` as keywords of the engine (for the operators that
    run the model without labelling, e.g. ``concept_heatmap``): each setting given, and the JSON
    input's Segmenter options by name."""
    out = {n: params[n] for n in _group_fields("model") if params.get(n) not in (None, "") and n != "options"}
    out.update(options_from_json(params.get("options")))
    return out


def model_inputs(ctx, inputs) -> None:
    """The form's Model section (method, backbone, device, ...; the options' JSON input), from the
    declarations; also the ``concept_heatmap`` form's."""
    inputs.view("section_model", types.HeaderView(label=GROUP_TITLES["model"], divider=True))
    _model_inputs(ctx, inputs)


def _model_inputs(ctx, inputs) -> None:
    chosen = ctx.params.get("backbone")
    if os.environ.get("FIFTYONE_CASS_FORM_TEST_BACKBONES", "").lower() in ("1", "true", "yes", "on"):
        backbones = list(BACKBONES) + list(TEST_BACKBONES)  # the browser test's server offers them
    else:
        backbones = list(BACKBONES) + ([chosen] if chosen in TEST_BACKBONES else [])  # Python callers' test models
    devices = _devices()
    dev = ctx.params.get("device")
    if dev and dev not in devices:
        devices.append(dev)
    dynamic = {  # choices known only on the server
        "backbone": dict(choices=backbones, description=backbone_help(chosen)),
        "device": dict(default="auto", choices=devices),
    }
    for name in _group_fields("model"):
        _add_setting(ctx, inputs, name, **dynamic.get(name, {}))


def _group_fields(group: str):
    """The form's inputs of ``group``, in declaration order: the Segmenter options of the group
    (:data:`FORM_OPTIONS`), then its settings."""
    return [n for n in FORM_OPTIONS if _OPTIONS[n].metadata.get("group") == group] + [
        n for n, f in _SETTINGS.items()
        if f.metadata.get("group") == group and f.metadata.get("form") is not False and n not in _VOCABULARY]


def regions_fields(dataset, label_field: Optional[str] = None):
    """``{field: kind}``: the dataset's fields a run can vote in (``fo.Detections``: instance
    masks; ``fo.Segmentation``: region ids), except ``label_field`` (the field being written)."""
    out = {f: "instance masks" for f in _fields_of(dataset, fo.Detections)}
    out.update({f: "region ids" for f in _fields_of(dataset, fo.Segmentation)})
    return {f: out[f] for f in sorted(out) if f != label_field}


def _regions_input(ctx, inputs, label_field: str) -> None:
    """``regions_field`` as a choice among :func:`regions_fields` (or none: no voting); a given
    field that is not one of them is kept and marked invalid with the reason."""
    ds = ctx.dataset
    candidates = regions_fields(ds, label_field)
    given = ctx.params.get("regions_field") or ""
    meta = _SETTINGS["regions_field"].metadata
    view = types.DropdownView()
    view.add_choice("", label="(none: no region voting)")
    for f, kind in candidates.items():
        view.add_choice(f, label=f"{f} ({kind})")
    if given and given not in candidates:
        view.add_choice(given, label=given)
    prop = inputs.enum("regions_field", view.values(), default="", label=meta["label"], view=view,
                       description=meta["help"])
    if given and given not in candidates:
        try:  # the run's own check, in the form's words
            check_regions_field(ds, given, label_field)
        except InvalidInputError as exc:
            _mark(prop, exc)
    else:
        _check_given(ctx, prop, "regions_field")
    if not candidates:
        inputs.view("no_regions", types.Notice(
            label="No field to vote in: compute SAM / SAM2 instance masks (fo.Detections) or region ids "
                  "(fo.Segmentation) into a field first (README, \"Refinement\")"))


def _refinement_inputs(ctx, inputs) -> None:
    """PAMR (its Segmenter options) and region voting; the inputs declared ``shown_with`` another
    setting only while that one is on."""
    label_field = ctx.params.get("label_field") or LabelSettings.label_field
    for name in _group_fields("refinement"):
        if not _shown(ctx.params, name):
            continue
        if name == "regions_field":  # choices known only on the server
            _regions_input(ctx, inputs, label_field)
            continue
        prop = _add_setting(ctx, inputs, name)
        twice = _given_twice(ctx.params, name) if name in FORM_OPTIONS and not prop.invalid else None
        if twice is not None:
            _mark(prop, twice)


def auto_label_form(ctx, inputs) -> None:
    """The auto_label form's settings, generated from their declarations, in sections (the
    settings' groups): vocabulary, output, model, refinement."""
    adders = (_vocabulary_inputs, _output_inputs, _model_inputs, _refinement_inputs)
    for group, add in zip(_GROUPS, adders):
        inputs.view(f"section_{group}", types.HeaderView(label=GROUP_TITLES[group], divider=True))
        add(ctx, inputs)


class AutoLabel(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="auto_label",
            label="Auto-label segmentations (CASS)",
            description=(
                "Training-free open-vocabulary semantic segmentation (CASS + CDAM): Segmentation "
                "labels, per-class presence scores and concept tags"
            ),
            icon="auto_awesome",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_delegation(self, ctx):
        d = ctx.params.get("delegate")
        return None if d is None else bool(d)

    def resolve_execution_options(self, ctx):
        from fiftyone.operators.executor import ExecutionOptions

        forced = self.resolve_delegation(ctx)
        if forced is not None:
            return super().resolve_execution_options(ctx)
        try:
            big = len(ctx.target_view(param_name="target")) >= DELEGATE_FROM
        except Exception:  # noqa: BLE001 - options only
            big = False
        return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                                default_choice_to_delegated=big)

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target(inputs, ctx, "Label")
        auto_label_form(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Auto-label segmentations (CASS)"))

    def execute(self, ctx):
        if ctx.delegated or ctx.params.get("return_summary"):
            return self._execute_plain(ctx)
        return self._execute_streaming(ctx)

    @staticmethod
    def _label(done, total):
        return f"Labeled {done} of {total} samples"

    @staticmethod
    def _prepare(ctx) -> AutoLabelRun:
        """The run's settings, built and checked once (here: the request enters), then the weights
        (fails fast; the error references the checkpoint settings, which the form names by its
        fields, Python callers by their keywords), then the run with those settings."""
        python = bool(ctx.params.get("return_summary")) and not ctx.delegated
        settings = build_settings(LabelSettings, auto_label_kwargs(ctx.params))
        try:
            ensure_weights(settings.backbone, settings.method, settings.device, settings.clip_checkpoint,
                           settings.dino_checkpoint, server=not python)
        except WeightsUnavailableError as exc:
            if python:
                raise
            raise FormError(form_message(exc, AUTO_LABEL_FIELDS)) from None
        return AutoLabelRun(ctx.target_view(param_name="target", require_flat=True), settings=settings)

    def _execute_plain(self, ctx):
        """Delegated (and Python) execution: progress through ``ctx.set_progress`` (stored on the
        delegated run), the summary as the result. Errors raise (a delegated run shows them in
        the App's Runs list, in the form's words)."""

        def report(pb):
            ctx.set_progress(progress=pb.progress, label=self._label(pb.iteration, pb.total))

        try:
            run = self._prepare(ctx)
            summary = run.run(progress=fo.report_progress(report, dt=2.0))
        except Exception as exc:
            if not ctx.delegated:
                raise  # Python callers get the library's exception
            raise FormError(form_message(exc, AUTO_LABEL_FIELDS)) from exc
        ctx.set_progress(progress=1.0, label=self._label(summary.num_processed, summary.num_processed))
        _compute_metadata(run.view)
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        result = summary.to_dict()
        # a delegated run cannot reach the App: the App server keeps the colours it read when it
        # opened the dataset (see support.color_scheme_params)
        result["shown"] = OPEN_APP_COLORS_HINT
        return result

    def _execute_streaming(self, ctx):
        """Immediate execution from the App: a generator that updates the App's progress bar
        after every batch, then shows the summary. Any error, raised before or during the
        streamed progress, ends the stream with an error notification and an error summary in
        the form's words (FiftyOne drops exceptions raised inside a streamed generator: the App
        would show nothing)."""
        run = None
        try:
            yield ctx.trigger("set_progress", dict(progress=0.0, label="Loading the model"))
            run = self._prepare(ctx)
            for done, total in run.iter_progress():
                yield ctx.trigger("set_progress", dict(progress=(done / total) if total else 1.0,
                                                       label=self._label(done, total)))
        except Exception as exc:  # noqa: BLE001 - reported to the App user below
            msg = form_message(exc, AUTO_LABEL_FIELDS)
            logger.warning("auto_label failed: %s", msg, exc_info=not isinstance(exc, ValueError))
            if run is not None and run.summary.num_processed:
                yield ctx.trigger("reload_dataset")
            yield ctx.ops.notify(f"Auto-labelling failed: {msg}", variant="error")
            yield ctx.trigger("show_output", dict(outputs=self._error_outputs(msg).to_json(), results={"error": msg}))
            return
        _compute_metadata(run.view)
        yield ctx.trigger("reload_dataset")
        # only the new field ticked (older runs' masks would pile up under it), in its class colours:
        # the App server built its colour scheme when the dataset was opened, before this field existed
        ds = run.view._root_dataset
        yield ctx.ops.set_active_fields(active_fields_after_run(ds, list(ctx.active_fields or []), run.label_field))
        refresh_app_server_colors(ds)
        yield ctx.trigger("set_color_scheme", color_scheme_params(ds))
        results = run.summary.to_dict()
        results["shown"] = (f"'{run.label_field}' is now the only ticked label field, one colour per class "
                            "(tick other fields in the sidebar to compare)")
        results["mask_dir"] = results.get("mask_dir") or "none: masks are in the database"
        yield ctx.trigger("show_output", dict(outputs=self._outputs().to_json(), results=results))

    @staticmethod
    def _error_outputs(msg):
        outputs = types.Object()
        outputs.view("error_notice", types.Error(label="Auto-labelling failed", description=msg))
        return types.Property(outputs, view=types.View(label="Auto-labelling failed"))

    def _outputs(self):
        outputs = types.Object()
        outputs.str("label_field", label="Label field")
        outputs.int("num_labeled", label="Labeled")
        outputs.int("num_already_done", label="Already done")
        outputs.int("num_failed", label="Failed")
        outputs.list("failed_files", types.String(), label="Failed files (path: reason)")
        outputs.list("failure_reasons", types.List(types.String()), label="Failures by reason ([reason, count])",
                     view=types.JSONView())
        outputs.str("mask_dir", label="Mask directory")
        outputs.str("shown", label="In the App")
        return types.Property(outputs, view=types.View(label="Auto-labelling summary"))

    def resolve_output(self, ctx):
        results = ctx.results or {}
        if results.get("error"):
            return self._error_outputs(results["error"])
        if not results and not ctx.delegated:
            return None  # immediate App runs show their summary themselves (show_output)
        return self._outputs()

    def __call__(
        self,
        sample_collection,
        classes=None,
        preset: Optional[str] = None,
        gt_field: Optional[str] = None,
        label_field: str = "cass",
        delegate: bool = False,
        delegation_target: Optional[str] = None,
        selected=None,
        options: Optional[Dict[str, Any]] = None,
        **kwargs,
    ):
        """Runs the operator from Python (``delegate=True`` queues a delegated operation).

        Arguments as :func:`fiftyone_cass.fo.apply.apply` (``options``: dict of Segmenter
        options). ``selected``: sample ids to label within ``sample_collection``. Returns the
        :class:`fiftyone.operators.executor.ExecutionResult` (``.result`` is the summary dict, or
        the queued operation when delegated)."""
        # settings go in as the form's parameters, Segmenter options into "options"; anything else
        # is a typo that the form would drop silently
        from fiftyone_cass.models.segmenter import SegmenterOptions

        option_names = set(setting_fields(SegmenterOptions))
        unknown = sorted(k for k in kwargs if k not in label_setting_names() and k not in option_names)
        if unknown:
            raise InvalidInputError(f"unknown argument(s) {', '.join(unknown)}: the settings are "
                                    f"{', '.join(label_setting_names())}; Segmenter options go in options={{...}} "
                                    "or as keywords")
        options = dict(options or {}, **{k: kwargs.pop(k) for k in list(kwargs) if k in option_names})
        params: Dict[str, Any] = dict(kwargs, label_field=label_field, return_summary=True)
        if sum(x is not None for x in (classes, preset, gt_field)) != 1:
            raise ValueError("give exactly one of classes, preset or gt_field")
        if gt_field is not None:
            params.update(class_source="gt_field", gt_field=gt_field)
        elif preset is not None:
            params.update(class_source="preset", preset=preset)
        else:
            # a list of class lines travels as it is (", " synonyms stay within their class, a
            # one-entry list stays one class), shown in the text area one per line
            params.update(class_source="classes", classes=classes if isinstance(classes, str) else "\n".join(classes))
            if not isinstance(classes, str):
                params["class_lines"] = json.dumps(list(classes))
        if options:
            params["options"] = json.dumps(options)
        return _call(self.uri, sample_collection, params, delegate, delegation_target, selected)


def _compute_metadata(view):
    """Image width/height for the App's sidebar (samples without metadata only; never fails)."""
    try:
        view.exists("metadata", False).compute_metadata(skip_failures=True, warn_failures=False, progress=False)
    except Exception as exc:  # noqa: BLE001 - cosmetic
        logger.warning("could not compute metadata: %s", exc)


def _call(uri, sample_collection, params, delegate, delegation_target, selected):
    if isinstance(sample_collection, fo.Dataset):
        ctx = dict(dataset=sample_collection)
        target = "DATASET"
    else:
        ctx = dict(view=sample_collection)
        target = "CURRENT_VIEW"
    if selected:
        ctx["selected"] = list(selected)
        target = "SELECTED_SAMPLES"
    params = dict(params, target=target)
    return foo.execute_operator(uri, ctx, params=params, request_delegation=bool(delegate),
                                delegation_target=delegation_target)


#: retag's Python keyword -> label of the retag_presence form
RETAG_FIELDS = {"presence_field": "Presence score field", "threshold": "Threshold", "tag_prefix": "Tag prefix"}


class RetagPresence(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="retag_presence",
            label="Re-tag concepts from presence scores (CASS)",
            description="Recompute the <prefix>:<class> sample tags from stored presence scores with a new threshold",
            icon="sell",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        add_target(inputs, ctx, "Re-tag")
        fields = _fields_of(ctx.dataset, fo.Classifications)
        if not fields:
            inputs.view("none", types.Warning(label="No presence scores",
                                              description="Run auto_label first (it writes <field>_presence)"))
            return types.Property(inputs, view=types.View(label="Re-tag concepts"))
        default = next((f for f in fields if f.endswith("_presence")), fields[0])
        _dropdown(inputs, "presence_field", fields, default, "Presence score field", required=True)
        pf = ctx.params.get("presence_field") or default
        current = (recorded_threshold(ctx.dataset, pf) if pf in fields else None)
        prop = inputs.float("threshold", default=DEFAULT_PRESENCE_THRESHOLD if current is None else current,
                            required=True, label="Threshold", min=0, max=1,
                            description="Classes scoring at least this get a tag (default: the threshold the "
                                        "field's tags were last made with)")
        if ctx.params.get("threshold") not in (None, ""):
            try:
                check_threshold(ctx.params["threshold"])
            except InvalidInputError as exc:
                prop.invalid = True
                prop.error_message = form_message(exc, RETAG_FIELDS)
        default_prefix = (recorded_tag_prefix(ctx.dataset, pf) if pf in fields else None) or default_tag_prefix(pf)
        inputs.str("tag_prefix", default=default_prefix, label="Tag prefix",
                   description="Tags <prefix>:<class> (default: the prefix the labelling run used)")
        return types.Property(inputs, view=types.View(label="Re-tag concepts"))

    def execute(self, ctx):
        try:
            counts = retag(
                ctx.target_view(param_name="target", require_flat=True),
                presence_field=ctx.params["presence_field"],
                threshold=ctx.params.get("threshold", DEFAULT_PRESENCE_THRESHOLD),
                tag_prefix=ctx.params.get("tag_prefix") or None,
            )
        except InvalidInputError as exc:
            raise FormError(form_message(exc, RETAG_FIELDS)) from exc
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        changed = counts.pop("_samples_changed")
        return {"samples_changed": changed, "tag_counts": counts}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("samples_changed", label="Samples whose tags changed")
        outputs.obj("tag_counts", label="Samples per tag", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="Re-tagged"))

    def __call__(self, sample_collection, presence_field="cass_presence", threshold=DEFAULT_PRESENCE_THRESHOLD,
                 tag_prefix=None, delegate=False, delegation_target=None, selected=None):
        params = dict(presence_field=presence_field, threshold=threshold)
        if tag_prefix:
            params["tag_prefix"] = tag_prefix
        return _call(self.uri, sample_collection, params, delegate, delegation_target, selected)


class ShowClassColors(foo.Operator):
    """Draws the dataset's stored colours (one per class of every auto-labelled field) in an App
    that was opened before a delegated or command-line run wrote the field: FiftyOne 1.22's App
    server reads ``dataset.app_config.color_scheme`` only when the dataset is opened."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="show_class_colors",
            label="Show class colours (CASS)",
            description="Draw labelled fields in their class colours (mask_targets), e.g. after a run from the CLI",
            icon="palette",
            allow_immediate_execution=True,
            allow_delegated_execution=False,
        )

    def execute(self, ctx):
        ds = ctx.dataset
        ds.reload()
        refresh_app_server_colors(ds)
        params = color_scheme_params(ds)
        ctx.trigger("set_color_scheme", params)
        return {"fields": [f["path"] for f in params["fields"] if f.get("maskTargetsColors")]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.list("fields", types.String(), label="Fields drawn in their class colours")
        return types.Property(outputs, view=types.View(label="Class colours"))


OPERATORS = [AutoLabel, RetagPresence, ShowClassColors]

__all__ = ["AUTO_LABEL_URI", "AutoLabel", "OPERATORS", "RETAG_URI", "RetagPresence", "ShowClassColors",
           "auto_label_kwargs"]
