"""Every labelling setting, declared once: name, type, default, allowed values, help text.

Three layers, each a dataclass of :func:`~fiftyone_cass.config.schema.setting` fields:

* :class:`EngineSettings` -- how :class:`~fiftyone_cass.Segmenter` runs (method, backbone,
  device, batch size, precision, checkpoints, background words);
* :class:`ModelSettings` -- :class:`~fiftyone_cass.CassModel`'s addition (presence threshold);
* :class:`LabelSettings` -- a labelling run's additions (:func:`~fiftyone_cass.apply`: vocabulary
  source, fields, where masks go, resume/overwrite, shard).

What the algorithm computes is :class:`~fiftyone_cass.SegmenterOptions` (``-o``/``--options``,
the ``options`` setting; :mod:`fiftyone_cass.config.options`).

One settings object per request: where a request enters (the command line, the operator,
``apply``, ``CassModel``, ``Segmenter``), :func:`build_settings` builds and checks it once (the
device resolved, the Segmenter options merged into ``options``) and each layer hands it down
unchanged (``settings=``; :func:`settings_for`). The command line's flags
(:func:`add_settings_arguments`, used by :mod:`fiftyone_cass.cli`) and the ``auto_label`` form's
inputs (:mod:`fiftyone_cass.app.label_operators`) are generated from the fields; one checker
(:func:`~fiftyone_cass.config.schema.coerce_settings`) turns any bad value into a
:class:`~fiftyone_cass.errors.SettingError` (the setting, the value, what is allowed), which each
surface words itself.

A new setting is one field here and the code that uses it. Every field declares ``output``
(whether it changes what a run writes; the settings hash is made of exactly those:
:func:`settings_hash_values`). Metadata keys beyond :mod:`fiftyone_cass.config.schema`'s:
``label`` (the form's label), ``group`` (the form's section and the command line's argument group:
:data:`GROUP_TITLES`), ``flag`` (False: no command-line flag), ``off_flag`` (a flag that sets the
value to None, e.g. ``--no-tags``; ``off_help`` its help), ``metavar``, ``hidden`` (a flag or input
for tests only: not listed), ``form`` (False: not in the form), ``multiline`` (the value is a list
of lines: a text area), ``form_choices`` (``(value, label, description)``: radio buttons),
``shown_with`` (the name of another setting: the input is in the form, and its value used, only
while that setting is on: not None, empty, 0 or False). The Segmenter options declared with a
``group`` (:mod:`fiftyone_cass.config.options`: PAMR's) are inputs of that form section too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import argparse
import dataclasses

from fiftyone_cass.config import registry
from fiftyone_cass.config.options import SegmenterOptions, options_from_json
from fiftyone_cass.config.schema import coerce_settings, make_settings, output_settings, setting, setting_fields
from fiftyone_cass.errors import InvalidInputError

DEFAULT_METHOD = "cass+cdam"
#: the settings' groups (``group`` metadata), in order: the form's sections and the command line's help
GROUP_TITLES = {"vocabulary": "Vocabulary", "output": "Output", "model": "Model", "refinement": "Refinement",
                "run": "Run"}
DEFAULT_PRESENCE_THRESHOLD = 0.1
#: target samples from which ``masks="auto"`` writes PNG files instead of database masks
DISK_THRESHOLD = 1000
#: sample fields a run never writes
RESERVED_FIELDS = frozenset({"id", "_id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at"})


def _backbones():
    return registry.BACKBONES.names()  # the one registry (models/backbones.py fills it), at the time of the check


def _methods():
    return registry.method_names()  # the registered families, at the time of the check


def _presets():
    return tuple(sorted(registry.PRESETS))


def _device(value) -> Optional[str]:
    text = str(value).strip()
    if text.lower() == "auto":
        return None
    import torch

    try:
        return str(torch.device(text))
    except RuntimeError:
        raise ValueError(text) from None


def resolve_device(device: Optional[str]) -> str:
    """The device a run uses: ``None``/``"auto"`` -> the first GPU if there is one, else the CPU.
    A CUDA device where CUDA is not available is an :class:`~fiftyone_cass.errors.InvalidInputError`."""
    import torch

    from fiftyone_cass.errors import kw

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"{kw('device', device)}: CUDA is not available on this machine (use {kw('device', 'cpu')})")
    return str(dev)


def parse_segmenter_options(json_text: Optional[str] = None, pairs: Sequence[str] = ()) -> Dict[str, Any]:
    """Segmenter options given as text (the command line's ``--options JSON`` and ``-o key=value``):
    a JSON object and ``key=value`` strings (``true``/``false``, numbers, ``0.25,0.5`` for lists),
    converted to the types of :class:`~fiftyone_cass.SegmenterOptions` and range-checked. An
    :class:`~fiftyone_cass.errors.InvalidInputError` names ``--options`` or ``-o`` and the option."""
    from fiftyone_cass.errors import InvalidInputError
    from fiftyone_cass.config.schema import coerce_settings

    try:
        given_json = options_from_json(json_text)
    except InvalidInputError as exc:  # "options must be a JSON object" -> "--options must be ..."
        raise exc.prefixed("--") from None
    out = coerce_settings(SegmenterOptions, given_json, what="--options")  # names --options itself
    given = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"-o/--option takes key=value, got {pair!r}")
        given[key.strip()] = value
    out.update(coerce_settings(SegmenterOptions, given, what="-o"))
    return out


def _background(value):
    """None (threshold only), ``"default"`` (the reference's words) or a list of words."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("none", "null", ""):
            return None
        if text.lower() == "default":
            return "default"
        words = [w.strip() for w in text.split(",") if w.strip()]
    elif isinstance(value, (list, tuple)):
        words = [str(w).strip() for w in value]
    else:
        raise ValueError(value)
    if not words or not all(words):
        raise ValueError(value)
    return words


def _options(value) -> Dict[str, Any]:
    """Segmenter options (a dict or a JSON object's text), each checked against its declaration."""
    return coerce_settings(SegmenterOptions, options_from_json(value))


def _field_name(value) -> str:
    if not isinstance(value, str) or not value.strip().isidentifier() or value.strip().startswith("_"):
        raise ValueError(value)
    if value.strip() in RESERVED_FIELDS:
        raise ValueError(value)
    return value.strip()


def _template_field(value) -> str:
    """A field name that may contain ``{label_field}``."""
    if not isinstance(value, str):
        raise ValueError(value)
    _field_name(value.replace("{label_field}", "x"))
    return value.strip()


def _masks(value) -> str:
    text = str(value).strip().lower()
    text = "database" if text == "db" else text
    if text not in ("auto", "disk", "database"):
        raise ValueError(value)
    return text


def validate_shard(shard) -> Optional[Tuple[int, int]]:
    """``(index, count)`` from a pair, or None; a clear error for anything else."""
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise InvalidInputError(f"shard must be a pair (index, count), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InvalidInputError(f"shard {shard!r}: need count >= 1 and 0 <= index < count")
    return i, n


def _shard(value) -> Optional[Tuple[int, int]]:
    if isinstance(value, str):
        value = value.split("/")
    try:
        return validate_shard(value)
    except InvalidInputError:
        raise ValueError(value) from None


@dataclass
class EngineSettings:
    """How the Segmenter runs."""

    method: str = setting(DEFAULT_METHOD, "segmentation method (a family, optionally +cdam)", choices=_methods,
                          label="Method", group="model", output=True)
    backbone: str = setting("openai", "a backbone record: openai (the published CLIP ViT-B/16 (OpenAI) + DINO "
                            "ViT-B/8), openai-l14-prior, openai-dinov2 or openai-dinov3; `fiftyone-cass backbones` "
                            "lists them with their weights (tiny*, random-base: random weights for tests)",
                            choices=_backbones, label="Backbone", group="model", metavar="NAME", output=True)
    device: Optional[str] = setting(None, "auto (the first GPU if there is one, else the CPU), cpu, cuda, cuda:1, ...",
                                    parse=_device, allowed="auto, cpu, cuda or cuda:N", label="Device", group="model",
                                    output=False)
    batch_size: int = setting(4, "images per forward pass and per save", min=1, max=4096, label="Batch size",
                              group="model", output=False)
    window_batch: int = setting(32, "sliding windows per forward pass", min=1, max=4096, label="Windows per forward pass",
                                group="model", form=False, output=False)
    precision: str = setting("fp32", "precision of the backbones (fp16 agrees with fp32 on >= 99.9% of pixels)",
                             choices=("fp32", "fp16", "bf16"), label="Precision", group="model", output=True)
    clip_checkpoint: Optional[str] = setting(None, "local open_clip ViT-B-16 OpenAI weights for offline machines "
                                             "(or FIFTYONE_CASS_CLIP_CHECKPOINT; the backbone's record names the file)", label="CLIP checkpoint file",
                                             group="model", metavar="FILE", output=True)
    dino_checkpoint: Optional[str] = setting(None, "local weights of the backbone's DINO (ViT-B/8, or its "
                                             "DINOv2/DINOv3) for offline machines (or FIFTYONE_CASS_DINO_CHECKPOINT)", label="DINO checkpoint file",
                                             group="model", metavar="FILE", output=True)
    background: Any = setting(None, "background words of a free vocabulary: none (background only from the "
                              "threshold), default (the reference's 26 words) or comma-separated words",
                              parse=_background, allowed="none, default or comma-separated words",
                              label="Background words", group="vocabulary", metavar="none|default|WORDS",
                              output=True)
    options: Any = setting(None, "Segmenter options (fiftyone_cass.SegmenterOptions fields) as a JSON object or a "
                           'dict, e.g. {"mode": "whole", "short_side": 448}', parse=_options,
                           allowed="a JSON object of Segmenter options", label="Advanced options (JSON)",
                           group="model", flag=False, output=True)


@dataclass
class ModelSettings(EngineSettings):
    """The FiftyOne model's additions."""

    presence_threshold: float = setting(DEFAULT_PRESENCE_THRESHOLD, "presence score from which a class is shown "
                                        "and tagged", min=0, max=1, label="Presence threshold", group="output", output=False)
    # region voting (SPEC K.5): part of the settings hash when regions_field is set
    regions_field: Optional[str] = setting(None, "vote labels inside the regions of this field: fo.Detections with "
                                           "instance masks (SAM / SAM2 from FiftyOne's zoo) or an fo.Segmentation "
                                           "of region ids (0: no region)", parse=_field_name,
                                           allowed="a plain field name", label="Regions field", group="refinement",
                                           metavar="FIELD")
    region_vote: str = setting("majority", "how a region picks its label: majority (most frequent label of its "
                               "pixels) or mean (argmax of their mean class probabilities)",
                               choices=("majority", "mean"), label="Region vote", group="refinement",
                               shown_with="regions_field")
    region_min_area: int = setting(0, "regions smaller than this many pixels are ignored", min=0, max=2**40,
                                   label="Smallest region (pixels)", group="refinement", shown_with="regions_field")


@dataclass
class LabelSettings(ModelSettings):
    """A labelling run's additions (:func:`fiftyone_cass.apply`)."""

    classes: Any = setting(None, 'class names, comma separated ("dog, frisbee, person"); a class with synonyms '
                           "takes a line of its own (a list entry, a --classes-file line): \"person, people\"", label="Class names", group="vocabulary",
                           allowed="class names", multiline=True, output=True)
    preset: Optional[str] = setting(None, "a published benchmark vocabulary and protocol", choices=_presets,
                                    label="Preset", group="vocabulary", output=True)
    gt_field: Optional[str] = setting(None, "use the mask_targets of this ground-truth Segmentation field "
                                      "(predicted ids = its ids)", label="Ground-truth field", group="vocabulary",
                                      metavar="FIELD", output=True)
    label_field: str = setting("cass", "the Segmentation field to write", parse=_field_name,
                               allowed="a plain field name, not a reserved one (" + ", ".join(sorted(RESERVED_FIELDS)) + ")",
                               label="Label field", group="output", output=False)
    masks: str = setting("auto", f"disk: PNG files (mask_path); database; auto: files from {DISK_THRESHOLD} "
                         "target samples on or when a mask directory is given", parse=_masks,
                         allowed="auto, disk or database", label="Where masks go", group="output",
                         metavar="auto|disk|database", output=False,
                         form_choices=(("auto", "Auto", f"On disk from {DISK_THRESHOLD} samples on, else in the database"),
                                       ("disk", "On disk (PNG, mask_path)", None), ("database", "In the database", None)))
    mask_dir: Optional[str] = setting(None, "root of the mask files (default <FiftyOne's default_dataset_dir>/"
                                      "fiftyone_cass_masks/<dataset>)", label="Mask directory", group="output",
                                      metavar="DIR", output=False)
    skip_existing: bool = setting(False, "leave samples that already have a valid label of any settings",
                                  label="Skip samples that already have labels", group="output", output=False)
    overwrite: bool = setting(False, "replace labels made with other settings (a run with the same settings "
                              "resumes by itself)", label="Overwrite existing labels", group="output", output=False)
    presence_field: Optional[str] = setting("{label_field}_presence", "Classifications of the presence scores "
                                            "(none: neither scores nor tags)", parse=_template_field,
                                            allowed="a plain field name or none", label="Presence score field",
                                            group="output", off_flag="--no-presence", off_help="write neither presence scores nor tags", output=False)
    tag_prefix: Optional[str] = setting("{label_field}", "sample tags <prefix>:<class> for classes at or above the "
                                        "presence threshold (none: no tags)", label="Tag prefix", group="output",
                                        off_flag="--no-tags", off_help="no presence tags", output=False)
    error_field: Optional[str] = setting("{label_field}_error", "per-sample failure message (none: log only)",
                                         parse=_template_field, allowed="a plain field name or none",
                                         label="Error field", group="output", form=False, output=False)
    embeddings_field: Optional[str] = setting("{label_field}_embedding", "the global CLIP image embedding, for text "
                                              "search with FiftyOne Brain (none: not stored)", parse=_template_field,
                                              allowed="a plain field name or none", label="Image embedding field",
                                              group="output", off_flag="--no-embeddings", off_help="do not store image embeddings", output=False)
    confidence_field: Optional[str] = setting("{label_field}_confidence", "per-sample confidence in [0, 1] (mean "
                                              "top-1 class probability), with <field>_margin, <field>_removed and "
                                              "<field>_per_class (none: not stored)", parse=_template_field,
                                              allowed="a plain field name or none", label="Confidence field",
                                              group="output", off_flag="--no-confidence", off_help="do not store confidence", output=False)
    uncertainty_field: Optional[str] = setting(None, "a per-pixel uncertainty Heatmap at the original size (a PNG "
                                               "file when masks go to disk; none: off)", parse=_template_field,
                                               allowed="a plain field name or none", label="Uncertainty map field",
                                               group="output", output=False)
    uncertainty_kind: str = setting("margin", "what the uncertainty map shows: margin (1 - top-1 + top-2 class "
                                    "probability) or entropy (query entropy / log Q)", choices=("margin", "entropy"),
                                    label="Uncertainty measure", group="output", output=False)
    shard: Any = setting(None, "this worker's part: the samples (and the files of a folder to import) whose file "
                         "path hashes to i mod N; run N workers with i = 0..N-1 on one dataset", parse=_shard,
                         allowed="i/N with 0 <= i < N", label="Shard", group="run", metavar="i/N", form=False, output=False)


# ------------------------------------------------------------------------------------------------
# One settings object per request
# ------------------------------------------------------------------------------------------------
def build_settings(cls, values: Mapping[str, Any], what: str = "option"):
    """The settings object of a request, built and checked once where it enters (the command
    line, the operator, :func:`~fiftyone_cass.apply`, ``CassModel``, ``Segmenter``) and handed
    down unchanged: an instance of ``cls`` (:class:`EngineSettings` or a subclass) from
    ``values``, each value checked against its declaration; the names of ``values`` that are
    not fields of ``cls`` are Segmenter options (merged into ``options``, checked too); the
    device is resolved (``auto`` -> ``cuda``/``cpu``). Raises :class:`InvalidInputError`."""
    names = setting_fields(cls)
    mine = {k: v for k, v in values.items() if k in names}
    rest = {k: v for k, v in values.items() if k not in names}
    known = setting_fields(SegmenterOptions)
    unknown = sorted(set(rest) - set(known))
    if unknown:
        raise InvalidInputError(
            f"unknown option(s): {', '.join(unknown)} (settings: {', '.join(names)}; "
            f"Segmenter options: {', '.join(known)})")
    options = dict(options_from_json(mine.pop("options", None)))
    options.update(rest)
    mine["options"] = options
    out = make_settings(cls, mine, what)
    out.device = resolve_device(out.device)
    object.__setattr__(out, "_checked", True)
    return out


def settings_for(cls, settings, values: Mapping[str, Any]):
    """The settings of an entry point that takes either a built settings object (``settings=``,
    from the layer above: used as it is) or keywords (built here, :func:`build_settings`)."""
    if settings is None:
        return build_settings(cls, values)
    if not isinstance(settings, cls):
        raise InvalidInputError(f"settings must be a {cls.__name__}, not {type(settings).__name__}")
    if values:
        raise InvalidInputError(f"give settings=... or keywords, not both (got {', '.join(sorted(values))})")
    if getattr(settings, "_checked", False):
        return settings
    return build_settings(type(settings), {f: getattr(settings, f) for f in setting_fields(type(settings))})


def replace_settings(settings, **changes):
    """A copy of a built settings object with ``changes`` (already checked values)."""
    out = dataclasses.replace(settings, **changes)
    object.__setattr__(out, "_checked", getattr(settings, "_checked", False))
    return out


def engine_values(settings) -> Dict[str, Any]:
    """The :class:`EngineSettings` fields of a settings object of any layer."""
    return {f: getattr(settings, f) for f in setting_fields(EngineSettings)}


def settings_hash_values(settings, options: SegmenterOptions) -> Dict[str, Any]:
    """What the settings hash of a run (``config_id``) is made of, besides the vocabulary's class
    lines and ids (which stand for ``classes``/``preset``/``gt_field``/``background``): exactly the
    :class:`EngineSettings` fields and the Segmenter ``options`` declared ``output=True``. A rerun
    that changes only memory, placement, batching, progress or device has the same hash."""
    import json

    vocabulary = ("background", "options")
    out = {n: getattr(settings, n) for n in output_settings(EngineSettings) if n not in vocabulary}
    out["options"] = json.loads(json.dumps({n: getattr(options, n) for n in output_settings(SegmenterOptions)},
                                           default=list))
    return out


def resolve_masks(masks: str, num_target: int, mask_dir: Optional[str] = None) -> str:
    """Where a run's masks go: ``"disk"`` or ``"database"``; ``masks="auto"`` is decided on the
    whole target (so that every shard, chunk and delegated worker of it decides alike): disk from
    :data:`DISK_THRESHOLD` target samples on, or when a mask directory is given."""
    masks = "database" if masks == "db" else masks
    if masks == "auto":
        return "disk" if (num_target >= DISK_THRESHOLD or mask_dir) else "database"
    return masks


def label_setting_names():
    """Names of every :class:`LabelSettings` field (the rest of a run's keywords are Segmenter options)."""
    return tuple(setting_fields(LabelSettings))


def format_field(template: Optional[str], label_field: str) -> Optional[str]:
    """``"{label_field}_presence"`` -> ``"cass_presence"`` (None stays None)."""
    return None if template is None else template.replace("{label_field}", label_field)


def add_settings_arguments(p, names: Sequence[str], titles: Dict[str, str]):
    """Command-line flags on the ``argparse`` parser ``p`` for the :class:`LabelSettings` fields
    ``names``, generated from their declarations: ``--batch-size`` for ``batch_size``, choices,
    help text and default from the field, the field's ``off_flag`` (``--no-tags``) setting it to None. Each value is checked
    by the settings' own checker as it is parsed (a bad one ends in a usage error naming the flag).
    Returns ``{group name: argument group}``."""
    import argparse

    from fiftyone_cass.config.schema import choices_of, setting_type
    from fiftyone_cass.errors import SettingError

    fields = setting_fields(LabelSettings)
    groups: Dict[str, Any] = {}
    for group in ("vocabulary", "model", "refinement", "output", "run"):  # the help's order
        if any(fields[n].metadata.get("group") == group and fields[n].metadata.get("flag") is not False for n in names):
            groups[group] = p.add_argument_group(titles.get(group, group))
    for name in names:
        f = fields[name]
        meta = f.metadata
        if meta.get("flag") is False:
            continue
        group = meta.get("group", "options")
        g = groups.get(group) or groups.setdefault(group, p.add_argument_group(titles.get(group, group)))
        flag = "--" + name.replace("_", "-")
        shown = str(f.default).replace("{label_field}", "<label-field>")
        default = f" (default {shown})" if f.default not in (None, False) else ""
        help_text = argparse.SUPPRESS if meta.get("hidden") else ((meta.get("help") or "") + default).replace("%", "%%")

        def check(text, name=name):
            from fiftyone_cass.errors import InvalidInputError

            try:
                return coerce_settings(LabelSettings, {name: text})[name]
            except SettingError as exc:  # argparse prints "argument --flag: <this>"
                raise argparse.ArgumentTypeError(f"{exc.value!r} is not allowed: {exc.allowed}") from None

        if setting_type(LabelSettings, name) is bool:
            g.add_argument(flag, dest=name, action="store_true", default=f.default, help=help_text)
        else:
            choices = choices_of(meta)
            g.add_argument(flag, dest=name, type=check, default=f.default, help=help_text,
                           choices=list(choices) if choices else None, metavar=meta.get("metavar"))
        if meta.get("off_flag"):
            g.add_argument(meta["off_flag"], dest=name, action="store_const", const=None,
                           help=meta.get("off_help"))
    return groups


# the reverse of add_settings_arguments: which flag of a parser sets a setting (the CLI's error wording)
class SettingFlags(dict):
    """``{dest: action}``: per setting the flag that takes its value (``--presence-field``, not
    ``--no-presence``); ``off`` holds the flags that set a setting to None (``{dest: --no-...}``)."""

    def __init__(self, actions):
        super().__init__()
        self.off: Dict[str, argparse.Action] = {}
        for a in actions:
            if isinstance(a, argparse._StoreConstAction) and not isinstance(
                    a, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and a.const is None:
                self.off.setdefault(a.dest, a)
            if a.dest not in self or (self[a.dest].nargs == 0 and a.nargs != 0):  # prefer one taking a value
                self[a.dest] = a


def setting_flags(parser: argparse.ArgumentParser, command: Optional[str]) -> Dict[str, argparse.Action]:
    """``{dest: action}`` of the options of ``command``'s sub-parser (with an option string): where
    several flags share a setting, the one that takes a value (see :class:`SettingFlags`)."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    p = sub.choices.get(command) if (sub is not None and command) else parser
    return SettingFlags(a for a in (p._actions if p else ()) if a.option_strings)


def flag_text(a: argparse.Action) -> str:
    return next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
