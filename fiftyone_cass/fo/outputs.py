"""The output fields of a labelling run, in one table (:data:`OUTPUTS`).

Every surface that writes or offers an output reads this table: the labelling run
(:class:`~fiftyone_cass.fo.apply.AutoLabelRun`: which fields to check, declare, compute and
write, in which order, and when a sample is done), the FiftyOne model's post-processing
(:meth:`~fiftyone_cass.fo.model.CassModel.finalize` after ``dataset.apply_model``), :func:`retag`
(the tag rule) and the ``auto_label`` form (its output inputs). A new output is one
:class:`Output` entry plus its computation; its field-name setting is a plain declaration in
:class:`~fiftyone_cass.config.settings.LabelSettings`.

One rule decides which classes become tags (:func:`tag_classes`): the classes that
``<field>_presence`` shows, i.e. a finite presence score at least the threshold, never the
vocabulary's background label (which every vocabulary names ``"background"``, and which no class
may be named). The labelling run, ``apply_model`` and :func:`retag` all call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import fiftyone as fo
import fiftyone.core.fields as fof

from fiftyone import ViewField as F

from fiftyone_cass.config.settings import format_field
from fiftyone_cass.fileio import is_valid_png, write_mask_png

BACKGROUND_NAME = "background"


# ------------------------------------------------------------------------------------------------
# Presence scores and the one tag rule
# ------------------------------------------------------------------------------------------------
def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def background_label_of(names: Sequence[str]) -> Optional[int]:
    """The background label of stored class names: every vocabulary names its background label
    ``"background"`` (and refuses it as a class name), so the name identifies it."""
    names = list(names)
    return names.index(BACKGROUND_NAME) if BACKGROUND_NAME in names else None


def tag_classes(names: Sequence[str], scores: Sequence[Optional[float]], threshold: float,
                background_label: Optional[int] = None) -> List[str]:
    """THE rule for which classes are shown and tagged: a finite score at least ``threshold``,
    and not the background label (None: found by its name, :func:`background_label_of`)."""
    if background_label is None:
        background_label = background_label_of(names)
    return [n for j, (n, s) in enumerate(zip(names, scores))
            if j != background_label and _finite(s) and s >= threshold]


def presence_label(names: Sequence[str], scores: Sequence[float], threshold: float,
                   background_label: Optional[int] = None) -> fo.Classifications:
    """``fo.Classifications`` whose labels are the classes of :func:`tag_classes` (with their
    score as confidence, best first), and whose attributes ``all_labels`` / ``all_scores`` keep
    every class's score (None: no query, e.g. an empty background line), so thresholds and tags
    can be changed later from stored data (:func:`fiftyone_cass.retag`)."""
    shown = set(tag_classes(names, scores, threshold, background_label))
    visible = [(float(s), n) for n, s in zip(names, scores) if n in shown]
    visible.sort(key=lambda x: -x[0])
    return fo.Classifications(
        classifications=[fo.Classification(label=n, confidence=s) for s, n in visible],
        all_labels=list(names),
        all_scores=[float(s) if _finite(s) else None for s in scores],
    )


def stored_scores(label) -> List[Tuple[str, Optional[float]]]:
    """``[(class, score)]`` of a stored presence label: the full vector when it has one, else its
    classifications (labels written before the full vector was stored)."""
    if label is None:
        return []
    if label.has_field("all_labels") and label.has_field("all_scores"):
        return list(zip(label["all_labels"], label["all_scores"]))
    return [(c.label, c.confidence) for c in (label.classifications or [])]


def presence_tags(prefix: str, names: Sequence[str], scores: Sequence[Optional[float]], threshold: float,
                  skip: Sequence[str] = (), background_label: Optional[int] = None) -> List[str]:
    """``<prefix>:<class>`` for each class of :func:`tag_classes` (minus the names in ``skip``)."""
    skip = set(skip or ())
    return [f"{prefix}:{n}" for n in tag_classes(names, scores, threshold, background_label) if n not in skip]


def replace_prefixed_tags(dataset, ids: Sequence[str], prefix: str, new_tags: Dict[str, List[str]]) -> int:
    """Replaces the tags starting with ``<prefix>:`` of the samples ``ids`` by ``new_tags[id]``,
    keeping every other tag. Returns the number of samples whose tags changed."""
    pre = prefix + ":"
    cur_ids, cur_tags = dataset.select(list(ids)).values(["id", "tags"])
    updates = {}
    for sid, tags in zip(cur_ids, cur_tags):
        tags = list(tags or [])
        kept = [t for t in tags if not t.startswith(pre)]
        merged = kept + [t for t in new_tags.get(sid, []) if t not in kept]
        if sorted(merged) != sorted(tags):  # (the same tags in another order: nothing to write)
            updates[sid] = merged
    if updates:
        dataset.set_values("tags", updates, key_field="id")
    return len(updates)


# ------------------------------------------------------------------------------------------------
# Confidence
# ------------------------------------------------------------------------------------------------
def _unit(x) -> Optional[float]:
    if x is None or not math.isfinite(float(x)):
        return None
    return min(1.0, max(0.0, float(x)))


def per_class_confidence(names: Sequence[str], per_class, label_map: np.ndarray) -> fo.Classifications:
    """One ``fo.Classification`` per label that got pixels: ``label`` its name, ``confidence``
    the mean top-1 class probability of its pixels, ``share`` its share of the image's pixels."""
    counts = np.bincount(np.asarray(label_map).reshape(-1).astype(np.int64), minlength=len(names))
    total = max(int(counts.sum()), 1)
    out = []
    for j, n in enumerate(names):
        c = _unit(per_class[j]) if j < len(per_class) else None
        if counts[j] and c is not None:
            out.append(fo.Classification(label=n, confidence=c, share=float(counts[j]) / total))
    return fo.Classifications(classifications=out)


def confidence_values(names: Sequence[str], result) -> Dict[str, Any]:
    """The confidence fields of one result (suffixes of :data:`CONFIDENCE_PARTS`)."""
    conf = result.confidence
    if conf is None:  # a segmenter without confidence outputs (e.g. a ready object with its interface)
        return {"": None, "_margin": None, "_removed": None, "_per_class": None}
    return {"": _unit(conf.mean), "_margin": _unit(conf.margin), "_removed": _unit(conf.removed),
            "_per_class": per_class_confidence(names, conf.per_class, result.label_map)}


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------
@dataclass
class OutputContext:
    """What an output's computation needs besides the result (one per run / model)."""

    vocab: Any  # fiftyone_cass.models.vocabulary.Vocabulary
    threshold: float
    config_id: Optional[str] = None
    label_field: str = "cass"
    #: ``entry name -> field name`` of the outputs this run writes
    fields: Dict[str, str] = field(default_factory=dict)
    #: where files go (None: in the database); ``file_path(field, sample_id)`` names a file
    file_path: Optional[Callable[[str, str], str]] = None
    #: ``(sample_id, label_map) -> fo.Segmentation``: the label entry's computation, from the model
    segmentation_label: Optional[Callable[..., Any]] = None
    #: what the uncertainty maps show (``uncertainty_kind``: margin or entropy), recorded on each map
    uncertainty_kind: Optional[str] = None


@dataclass(frozen=True)
class Output:
    """One output of a labelling run.

    ``setting``: the :class:`~fiftyone_cass.config.settings.LabelSettings` field naming it (a
    template with ``{label_field}``; None turns the output off). ``parts``: ``(suffix, field
    declaration)`` of the fields it writes (the setting's field name + suffix). ``compute(ctx,
    sample_id, result)`` -> ``{suffix: value}`` (may write files: files are written before any
    field). ``failed`` the values of a sample that failed. ``engine``: the Segmenter outputs it
    needs (``embeddings``, ``confidence``, ``uncertainty``). ``model``: written by
    ``CassModel.finalize`` after ``apply_model``. ``form``: the form's inputs (settings) for it.
    ``files``: the attribute of the output's label that names its file (``mask_path``,
    ``map_path``; None: no file): files are written before any field, and a file that a rerun
    replaces (``overwrite``) is removed once the new label is stored.
    ``present(dataset, field, ids, settings)``: the ids whose output is there as the run's
    settings ask for it (a sample missing it is labelled again on a rerun); None: not part of
    "done"."""

    name: str
    setting: str
    doc: str
    parts: Tuple[Tuple[str, Dict[str, Any]], ...]
    compute: Callable[[OutputContext, str, Any], Dict[str, Any]]
    failed: Callable[[str], Dict[str, Any]] = lambda err: {}
    engine: Tuple[str, ...] = ()
    model: bool = False
    form: Tuple[str, ...] = ()
    files: Optional[str] = None
    present: Optional[Callable[[Any, str, Sequence[str], Any], set]] = None
    write: Optional[Callable[[Any, OutputContext, str, Dict[str, Dict[str, Any]]], None]] = None

    def field_names(self, base: str) -> List[str]:
        return [base + s for s, _ in self.parts]


def _seg_compute(ctx: OutputContext, sid: str, res) -> Dict[str, Any]:
    if ctx.file_path is None:
        return {"": ctx.segmentation_label(res)}
    path = ctx.file_path(ctx.fields["segmentation"], sid)
    write_mask_png(path, ctx.vocab.map(res.label_map))
    return {"": ctx.segmentation_label(res, mask_path=path)}


def _tags_write(dataset, ctx: OutputContext, prefix: str, values: Dict[str, Dict[str, Any]]) -> None:
    new = {sid: [f"{prefix}:{c}" for c in v.get("", [])] for sid, v in values.items()}
    replace_prefixed_tags(dataset, list(values), prefix, new)


#: attribute of an uncertainty ``fo.Heatmap`` recording what it shows (``margin`` / ``entropy``)
UNCERTAINTY_KIND_ATTR = "kind"
#: how a heatmap of values in [0, 1] is stored, in the database and in files alike: 8-bit,
#: ``stored = round(value * 255)``, with ``range`` [0, 255] (so ``value = stored / 255``, to
#: 1/510). FiftyOne's own export writes every heatmap file as 8-bit PNG, and a float32 map in the
#: database would take 4 bytes a pixel (48 MB at 12 MP: over MongoDB's 16 MB document limit)
HEATMAP_RANGE = (0, 255)


def heatmap_bytes(values: np.ndarray) -> np.ndarray:
    """A map of values in [0, 1] as stored (:data:`HEATMAP_RANGE`): uint8 ``round(value * 255)``."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _uncertainty_compute(ctx: OutputContext, sid: str, res) -> Dict[str, Any]:
    u = res.uncertainty
    if u is None:  # a segmenter without confidence outputs
        return {"": None}
    q = heatmap_bytes(np.nan_to_num(u, nan=1.0))
    meta = {UNCERTAINTY_KIND_ATTR: ctx.uncertainty_kind}
    if ctx.file_path is not None:
        path = ctx.file_path(ctx.fields["uncertainty"], sid)
        write_mask_png(path, q)
        return {"": fo.Heatmap(map_path=path, range=list(HEATMAP_RANGE), **meta)}
    return {"": fo.Heatmap(map=q, range=list(HEATMAP_RANGE), **meta)}


def _uncertainty_present(dataset, name: str, ids: Sequence[str], settings=None) -> set:
    """The samples whose uncertainty map is there (a valid PNG file, or a map in the database)
    and shows what the run asks for: a map of another ``uncertainty_kind`` (recorded on it as
    ``kind``; none recorded: an older map, kind unknown) is computed again, as a missing one."""
    view = dataset.select(list(ids)).exists(name)
    sids, paths, in_db, kinds = view.values(["id", f"{name}.map_path", F(f"{name}.map").exists(),
                                             F(f"{name}.{UNCERTAINTY_KIND_ATTR}")])
    want = getattr(settings, "uncertainty_kind", None)
    return {s for s, p, d, k in zip(sids, paths, in_db, kinds)
            if ((p and is_valid_png(p)) or (not p and d)) and (want is None or k == want)}


def _confidence_present(dataset, name: str, ids: Sequence[str], settings=None) -> set:
    return set(dataset.select(list(ids)).exists(name).values("id"))


_FLOAT = dict(ftype=fof.FloatField)
_CLASSIFICATIONS = dict(ftype=fof.EmbeddedDocumentField, embedded_doc_type=fo.Classifications)

#: every output of a labelling run, in the order they are written (files first, in this order;
#: then the fields; the label field last, so that a sample is done only when all else is saved)
OUTPUTS: Tuple[Output, ...] = (
    Output("error", "error_field", "why the sample could not be labelled (cleared on success)",
           (("", dict(ftype=fof.StringField)),), lambda ctx, sid, res: {"": None},
           failed=lambda err: {"": err}),
    Output("embedding", "embeddings_field", "the global CLIP image embedding (unit norm), for text search",
           (("", dict(ftype=fof.VectorField)),), lambda ctx, sid, res: {"": res.embedding},
           engine=("embeddings",), form=("embeddings_field",)),
    Output("confidence", "confidence_field",
           "mean top-1 class probability over pixels, in [0, 1]; `_margin`: mean top-1 minus top-2; "
           "`_removed`: share of pixels the background rule removed; `_per_class`: Classifications, per "
           "class with pixels its mean top-1 probability (`confidence`) and pixel share (`share`)",
           (("", _FLOAT), ("_margin", _FLOAT), ("_removed", _FLOAT), ("_per_class", _CLASSIFICATIONS)),
           lambda ctx, sid, res: confidence_values(ctx.vocab.names, res),
           engine=("confidence",), model=True, form=("confidence_field",), present=_confidence_present),
    Output("uncertainty", "uncertainty_field",
           "per-pixel uncertainty `fo.Heatmap` at the original size (1 - margin or normalised entropy, in "
           "[0, 1], stored 8-bit as round(255 x value): `range` [0, 255]; `kind`: margin or entropy); a PNG "
           "file (`map_path`) when masks go to disk",
           (("", dict(ftype=fof.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap)),), _uncertainty_compute,
           engine=("uncertainty",), form=("uncertainty_field", "uncertainty_kind"), files="map_path",
           present=_uncertainty_present),
    Output("presence", "presence_field",
           "Classifications of the classes scoring at least the presence threshold; every score in "
           "`all_labels`/`all_scores`",
           (("", _CLASSIFICATIONS),),
           lambda ctx, sid, res: {"": presence_label(ctx.vocab.names, res.presence, ctx.threshold,
                                                     ctx.vocab.background_label)},
           model=True, form=("presence_field",)),
    Output("tags", "tag_prefix", "sample tags `<prefix>:<class>` for the classes that the presence field shows",
           (), lambda ctx, sid, res: {"": tag_classes(ctx.vocab.names, res.presence, ctx.threshold,
                                                      ctx.vocab.background_label)},
           failed=lambda err: {"": []}, model=True, form=("tag_prefix", "presence_threshold"), write=_tags_write),
    Output("segmentation", "label_field", "`fo.Segmentation` at the original size (`mask_path` or `mask`)",
           (("", dict(ftype=fof.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)),), _seg_compute,
           files="mask_path"),
)

OUTPUTS_BY_NAME: Dict[str, Output] = {o.name: o for o in OUTPUTS}


def get_output(name: str) -> Output:
    return OUTPUTS_BY_NAME[name]


def resolve_fields(settings, label_field: str) -> Dict[str, str]:
    """``{output name: field name}`` of the outputs a run's settings turn on (tags: the prefix;
    tags need the presence field)."""
    out: Dict[str, str] = {}
    for o in OUTPUTS:
        value = label_field if o.setting == "label_field" else format_field(getattr(settings, o.setting, None), label_field)
        if value:
            out[o.name] = value
    if "presence" not in out:
        out.pop("tags", None)
    return out


def engine_needs(fields: Dict[str, str]) -> set:
    """The Segmenter outputs the outputs ``fields`` need."""
    return {e for name in fields for e in OUTPUTS_BY_NAME[name].engine}


def form_settings() -> Tuple[str, ...]:
    """The settings of the form's output inputs, in the table's order (presence first)."""
    order = ("presence", "tags", "embedding", "confidence", "uncertainty")
    return tuple(s for name in order for s in OUTPUTS_BY_NAME[name].form)


def model_outputs(presence: bool = True, confidence: bool = True) -> Dict[str, str]:
    """The outputs ``CassModel.finalize`` writes for a label field ``{label_field}`` (name ->
    template), with the :class:`LabelSettings` defaults."""
    from fiftyone_cass.config.settings import LabelSettings

    want = {"presence": presence, "tags": presence, "confidence": confidence}
    return {o.name: getattr(LabelSettings, o.setting) for o in OUTPUTS if o.model and want.get(o.name)}


def compute_outputs(ctx: OutputContext, fields: Dict[str, str], sid: str, res) -> Dict[str, Dict[str, Any]]:
    """``{output name: {suffix: value}}`` of one result for the outputs ``fields`` (files written)."""
    ordered = sorted(fields, key=lambda n: (OUTPUTS_BY_NAME[n].files is None, _ORDER[n]))
    return {n: OUTPUTS_BY_NAME[n].compute(ctx, sid, res) for n in ordered}


def failed_outputs(fields: Dict[str, str], err: str) -> Dict[str, Dict[str, Any]]:
    out = {}
    for n in fields:
        o = OUTPUTS_BY_NAME[n]
        v = o.failed(err)
        out[n] = v if v else {s: None for s, _ in o.parts}
    return out


def write_outputs(dataset, ctx: OutputContext, fields: Dict[str, str],
                  values: Dict[str, Dict[str, Dict[str, Any]]], skip: Sequence[str] = ()) -> None:
    """Writes ``values[sample id][output name][suffix]`` in the table's order (the label field
    last); ``skip``: output names written elsewhere."""
    for o in OUTPUTS:
        if o.name not in fields or o.name in skip:
            continue
        per_sample = {sid: v[o.name] for sid, v in values.items() if o.name in v}
        if not per_sample:
            continue
        if o.write is not None:
            o.write(dataset, ctx, fields[o.name], per_sample)
            continue
        for suffix, _ in o.parts:
            dataset.set_values(fields[o.name] + suffix, {sid: v.get(suffix) for sid, v in per_sample.items()},
                               key_field="id")


def check_types(dataset, fields: Dict[str, str]) -> None:
    """Refuses (:class:`~fiftyone_cass.errors.InvalidInputError`) an existing field of another type."""
    from fiftyone_cass.errors import InvalidInputError

    for name, base in fields.items():
        for suffix, decl in OUTPUTS_BY_NAME[name].parts:
            f = dataset.get_field(base + suffix)
            if f is None:
                continue
            doc = decl.get("embedded_doc_type")
            if doc is not None:
                ok = isinstance(f, fof.EmbeddedDocumentField) and issubclass(f.document_type, doc)
                what = doc.__name__
            else:
                ok = isinstance(f, decl["ftype"])
                what = decl["ftype"].__name__
            if not ok:
                raise InvalidInputError(f"field {base + suffix!r} of dataset {dataset.name!r} exists and is not a {what} field")


def declarations(fields: Dict[str, str]) -> List[Tuple[str, Dict[str, Any]]]:
    """``(field name, add_sample_field kwargs)`` of every field the outputs ``fields`` write."""
    return [(base + s, decl) for name, base in fields.items() for s, decl in OUTPUTS_BY_NAME[name].parts]


_ORDER = {o.name: i for i, o in enumerate(OUTPUTS)}


def readme_table() -> str:
    """The README's table of output fields (kept equal to it by a test)."""
    rows = ["| output | setting (default) | written as | also by `apply_model` |", "|---|---|---|---|"]
    from fiftyone_cass.config.settings import LabelSettings

    for o in OUTPUTS:
        default = getattr(LabelSettings, o.setting)
        model = "yes" if (o.model or o.name == "segmentation") else "no"
        rows.append(f"| {o.name} | `{o.setting}` (`{default}`) | {o.doc} | {model} |")
    return "\n".join(rows)


__all__ = [
    "OUTPUTS",
    "Output",
    "OutputContext",
    "background_label_of",
    "presence_label",
    "presence_tags",
    "replace_prefixed_tags",
    "resolve_fields",
    "stored_scores",
    "tag_classes",
]
