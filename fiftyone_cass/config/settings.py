"""Every labelling setting, declared once: name, type, default, allowed values, help text.

Three layers, each a dataclass of :func:`~fiftyone_cass.config.schema.setting` fields:

* :class:`EngineSettings` -- how :class:`~fiftyone_cass.Segmenter` runs (method, backbone,
  device, batch size, precision, checkpoints, background words);
* :class:`ModelSettings` -- :class:`~fiftyone_cass.CassModel`'s addition (presence threshold);
* :class:`LabelSettings` -- a labelling run's additions (:func:`~fiftyone_cass.apply`: vocabulary
  source, fields, where masks go, resume/overwrite, shard).

What the algorithm computes is :class:`~fiftyone_cass.SegmenterOptions` (``-o``/``--options``).
The entry points are derived from these declarations: ``Segmenter(**kw)``, ``CassModel(**kw)``
and ``apply(**kw)`` check their keywords here; the command line's flags
(:func:`add_settings_arguments`, used by :mod:`fiftyone_cass.cli`) and the ``auto_label`` form's inputs
(:mod:`fiftyone_cass.app.label_operators`) are generated from the fields; one checker
(:func:`~fiftyone_cass.config.schema.coerce_settings`) turns any bad value into an error naming the
setting, the value and what is allowed.

A new setting is one field here (with ``label`` for the App's form and ``group`` for the command
line's help) and the code that uses it. Metadata keys beyond :mod:`fiftyone_cass.config.schema`'s:
``label`` (the form's label), ``group`` (the command line's argument group), ``flag`` (False: no
command-line flag), ``off_flag`` (a flag that sets the value to None, e.g. ``--no-tags``; ``off_help`` its help),
``metavar``, ``hidden`` (a flag or input for tests only: not listed), ``form`` (False: not in the
form).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from fiftyone_cass.config.schema import setting, setting_fields
from fiftyone_cass.fo.shards import validate_shard

DEFAULT_METHOD = "cass+cdam"
DEFAULT_PRESENCE_THRESHOLD = 0.1
#: target samples from which ``masks="auto"`` writes PNG files instead of database masks
DISK_THRESHOLD = 1000
#: sample fields a run never writes
RESERVED_FIELDS = frozenset({"id", "_id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at"})


def _methods():
    from fiftyone_cass.methods import method_names  # registered families (imported late: they import the models)

    return method_names()


def _presets():
    from fiftyone_cass.models.presets import PRESETS

    return tuple(sorted(PRESETS))


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

    from fiftyone_cass.errors import InvalidInputError

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device={device!r}: CUDA is not available on this machine (use device='cpu')")
    return str(dev)


def parse_segmenter_options(json_text: Optional[str] = None, pairs: Sequence[str] = ()) -> Dict[str, Any]:
    """Segmenter options given as text (the command line's ``--options JSON`` and ``-o key=value``):
    a JSON object and ``key=value`` strings (``true``/``false``, numbers, ``0.25,0.5`` for lists),
    converted to the types of :class:`~fiftyone_cass.SegmenterOptions` and range-checked. An
    :class:`~fiftyone_cass.errors.InvalidInputError` names ``--options`` or ``-o`` and the option."""
    from fiftyone_cass.errors import InvalidInputError
    from fiftyone_cass.models.segmenter import SegmenterOptions, options_from_json
    from fiftyone_cass.config.schema import coerce_settings

    try:
        given_json = options_from_json(json_text)
    except InvalidInputError as exc:  # "options must be a JSON object" -> "--options must be ..."
        raise InvalidInputError(f"--{exc}") from None
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


def _shard(value) -> Optional[Tuple[int, int]]:
    if isinstance(value, str):
        value = value.split("/")
    from fiftyone_cass.errors import InvalidInputError

    try:
        return validate_shard(value)
    except InvalidInputError:
        raise ValueError(value) from None


@dataclass
class EngineSettings:
    """How the Segmenter runs."""

    method: str = setting(DEFAULT_METHOD, "segmentation method (a family, optionally +cdam)", choices=_methods,
                          label="Method", group="model")
    backbone: str = setting("openai", "openai: the published CLIP ViT-B/16 (OpenAI) + DINO ViT-B/8 weights "
                            "(tiny, random-base: random weights for tests)", label="Backbone", group="model", hidden=True)
    device: Optional[str] = setting(None, "auto (the first GPU if there is one, else the CPU), cpu, cuda, cuda:1, ...",
                                    parse=_device, allowed="auto, cpu, cuda or cuda:N", label="Device", group="model")
    batch_size: int = setting(4, "images per forward pass and per save", min=1, max=4096, label="Batch size",
                              group="model")
    window_batch: int = setting(32, "sliding windows per forward pass", min=1, max=4096, label="Windows per forward pass",
                                group="model", form=False)
    precision: str = setting("fp32", "precision of the backbones (fp16 agrees with fp32 on >= 99.9% of pixels)",
                             choices=("fp32", "fp16", "bf16"), label="Precision", group="model")
    clip_checkpoint: Optional[str] = setting(None, "local open_clip ViT-B-16 OpenAI weights for offline machines "
                                             "(or FIFTYONE_CASS_CLIP_CHECKPOINT)", label="CLIP checkpoint file",
                                             group="model", metavar="FILE")
    dino_checkpoint: Optional[str] = setting(None, "local DINO ViT-B/8 weights for offline machines "
                                             "(or FIFTYONE_CASS_DINO_CHECKPOINT)", label="DINO checkpoint file",
                                             group="model", metavar="FILE")
    background: Any = setting(None, "background words of a free vocabulary: none (background only from the "
                              "threshold), default (the reference's 26 words) or comma-separated words",
                              parse=_background, allowed="none, default or comma-separated words",
                              label="Background words", group="vocabulary", metavar="none|default|WORDS")


@dataclass
class ModelSettings(EngineSettings):
    """The FiftyOne model's additions."""

    presence_threshold: float = setting(DEFAULT_PRESENCE_THRESHOLD, "presence score from which a class is shown "
                                        "and tagged", min=0, max=1, label="Presence threshold", group="output")
    # region voting (SPEC K.5): part of the settings hash when regions_field is set
    regions_field: Optional[str] = setting(None, "vote labels inside the regions of this field: fo.Detections with "
                                           "instance masks (SAM / SAM2 from FiftyOne's zoo) or an fo.Segmentation "
                                           "of region ids (0: no region)", parse=_field_name,
                                           allowed="a plain field name", label="Regions field", group="model",
                                           metavar="FIELD", form=False)
    region_vote: str = setting("majority", "how a region picks its label: majority (most frequent label of its "
                               "pixels) or mean (argmax of their mean class probabilities)",
                               choices=("majority", "mean"), label="Region vote", group="model", form=False)
    region_min_area: int = setting(0, "regions smaller than this many pixels are ignored", min=0, max=2**40,
                                   label="Smallest region (pixels)", group="model", form=False)


@dataclass
class LabelSettings(ModelSettings):
    """A labelling run's additions (:func:`fiftyone_cass.apply`)."""

    classes: Any = setting(None, 'class names, comma separated ("dog, frisbee, person"); a class with synonyms '
                           "takes a line of its own (a list entry, a --classes-file line): \"person, people\"", label="Class names", group="vocabulary",
                           allowed="class names")
    preset: Optional[str] = setting(None, "a published benchmark vocabulary and protocol", choices=_presets,
                                    label="Preset", group="vocabulary")
    gt_field: Optional[str] = setting(None, "use the mask_targets of this ground-truth Segmentation field "
                                      "(predicted ids = its ids)", label="Ground-truth field", group="vocabulary",
                                      metavar="FIELD")
    label_field: str = setting("cass", "the Segmentation field to write", parse=_field_name,
                               allowed="a plain field name, not a reserved one (" + ", ".join(sorted(RESERVED_FIELDS)) + ")",
                               label="Label field", group="output")
    masks: str = setting("auto", f"disk: PNG files (mask_path); database; auto: files from {DISK_THRESHOLD} "
                         "target samples on or when a mask directory is given", parse=_masks,
                         allowed="auto, disk or database", label="Where masks go", group="output",
                         metavar="auto|disk|database")
    mask_dir: Optional[str] = setting(None, "root of the mask files (default <FiftyOne's default_dataset_dir>/"
                                      "fiftyone_cass_masks/<dataset>)", label="Mask directory", group="output",
                                      metavar="DIR")
    skip_existing: bool = setting(False, "leave samples that already have a valid label of any settings",
                                  label="Skip samples that already have labels", group="output")
    overwrite: bool = setting(False, "replace labels made with other settings (a run with the same settings "
                              "resumes by itself)", label="Overwrite existing labels", group="output")
    presence_field: Optional[str] = setting("{label_field}_presence", "Classifications of the presence scores "
                                            "(none: neither scores nor tags)", parse=_template_field,
                                            allowed="a plain field name or none", label="Presence score field",
                                            group="output", off_flag="--no-presence", off_help="write neither presence scores nor tags")
    tag_prefix: Optional[str] = setting("{label_field}", "sample tags <prefix>:<class> for classes at or above the "
                                        "presence threshold (none: no tags)", label="Tag prefix", group="output",
                                        off_flag="--no-tags", off_help="no presence tags")
    error_field: Optional[str] = setting("{label_field}_error", "per-sample failure message (none: log only)",
                                         parse=_template_field, allowed="a plain field name or none",
                                         label="Error field", group="output", form=False)
    embeddings_field: Optional[str] = setting("{label_field}_embedding", "the global CLIP image embedding, for text "
                                              "search with FiftyOne Brain (none: not stored)", parse=_template_field,
                                              allowed="a plain field name or none", label="Image embedding field",
                                              group="output", off_flag="--no-embeddings", off_help="do not store image embeddings")
    shard: Any = setting(None, "this worker's part: the samples (and the files of a folder to import) whose file "
                         "path hashes to i mod N; run N workers with i = 0..N-1 on one dataset", parse=_shard,
                         allowed="i/N with 0 <= i < N", label="Shard", group="run", metavar="i/N", form=False)


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

    from fiftyone_cass.config.schema import choices_of, coerce_settings, setting_type

    fields = setting_fields(LabelSettings)
    groups: Dict[str, Any] = {}
    for group in ("vocabulary", "model", "output", "run"):  # the help's order
        if any(fields[n].metadata.get("group") == group for n in names):
            groups[group] = p.add_argument_group(titles.get(group, group))
    for name in names:
        f = fields[name]
        meta = f.metadata
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
            except InvalidInputError as exc:  # argparse prints "argument --flag: <this>"
                raise argparse.ArgumentTypeError(f"{text!r} is not allowed: {str(exc).partition(' is not allowed: ')[2]}") from None

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
