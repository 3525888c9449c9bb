"""Auto-labelling of FiftyOne samples with CASS (+ CDAM): the library function behind the
``auto_label`` / ``retag_presence`` operators (and the CLI).

``apply(sample_collection, classes=[...])`` writes, for every target sample,

* ``<label_field>``: a :class:`fiftyone.core.labels.Segmentation` at the image's original size,
  its mask in a PNG file (``mask_path``, ``<mask_dir>/<label_field>/<sample id>.png``) or in the
  database (``mask``); ``dataset.mask_targets[label_field]`` names the ids (0 = background for a
  free vocabulary);
* ``<label_field>_presence``: ``fo.Classifications`` of the classes whose presence score (the
  object-presence prior of CASS, a softmax over the classes of the global image-text similarity)
  is at least ``presence_threshold``, with every class's score in ``all_labels``/``all_scores``;
* sample tags ``<tag_prefix>:<class>`` for the classes whose score is at least
  ``presence_threshold`` (re-tag from the stored scores with :func:`retag`);
* ``<label_field>_error``: why the sample could not be labelled (cleared on success);
* ``<label_field>_embedding``: the global CLIP image embedding, for text search;
* ``<label_field>_confidence`` (float in [0, 1]) with ``_margin``, ``_removed`` and ``_per_class``:
  how sure the engine is of the label map (on by default);
* ``uncertainty_field`` (off by default): a per-pixel uncertainty ``fo.Heatmap``.

Which outputs exist, how each is computed and written, and in which order, is the table
:data:`fiftyone_cass.fo.outputs.OUTPUTS`; this run reads it (as ``CassModel.finalize``,
:func:`retag` and the form do).

Reliability (a run can be killed at any point and started again):

* samples go through in batches: masks are written first (temp file + ``os.replace``, so a mask
  file is complete or absent), then the batch's samples are saved, the label field last;
* every label records ``config_id``, a hash of the settings that determine the masks, and
  ``source_filepath``, the image it was made from. A sample is *done* when its label has the
  current ``config_id``, was made from the sample's current file path, and its mask is present
  and valid: a mask in the database, or a PNG file (not a symbolic link, named for the sample) of
  the image's size whose values are ids of the vocabulary's ``mask_targets`` (:func:`mask_fits`). Running again with the same settings labels
  only the samples that are not done, so a killed run resumes and a finished run is a no-op;
  nothing is labelled twice and no sample points at a missing or truncated mask file;
* ``shard=(i, n)`` keeps the samples whose file path hashes to ``i`` modulo ``n``
  (:mod:`fiftyone_cass.fo.shards`, the key of every entry point): ``n`` processes with
  ``i = 0..n-1`` label one dataset concurrently without overlap;
* an unreadable image is skipped with its error in ``<label_field>_error`` (the reason first,
  without the sample's own path) and the log; the returned :class:`ApplySummary` lists the failed
  files and counts the failures by reason;
* memory stays flat: only ids/filepaths of the target are listed up front, images and masks are
  held one batch at a time.

Vocabulary (``classes``, ``preset`` or ``gt_field``, exactly one):

* ``classes``: free text; label ids 1..C in order, 0 = background;
* ``preset``: a published protocol (``voc21``, ``ade20k``, ...) with its class file and ids;
* ``gt_field``: the ``mask_targets`` of an existing ground-truth field, so that the predicted ids
  *equal* the GT ids. The GT id 0 is background when it is named like one (``background``,
  ``unlabeled``, ...); otherwise (``reduce_zero_label`` label spaces) every GT id is a real class
  and the background threshold is switched off (``bg_rule="none"``), so that every pixel gets a
  class. Ids named ``ignore``/``void`` (e.g. 255) are not predicted. The Segmenter vocabulary is
  the GT classes in id order and its output ids are mapped to the GT ids with a lookup table.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

import fiftyone as fo
import fiftyone.core.fields as fof
import fiftyone.core.utils as fou
from fiftyone import ViewField as F

from fiftyone_cass.fo.app_config import show_labels_in_app
from fiftyone_cass.errors import SOME_LIST, SOME_TEXT, InvalidInputError, RunAbortedError, SettingError, kw, use
from fiftyone_cass.images import displayed_size
from fiftyone_cass.fileio import atomic_write, is_valid_png, remove_orphaned_temp_files, write_mask_png  # noqa: F401 - re-exported
from fiftyone_cass.fo.shards import shard_index, validate_shard  # noqa: F401 - re-exported
from fiftyone_cass.models.segmenter import Segmenter
from fiftyone_cass.config.schema import coerce_settings, settings_doc
from fiftyone_cass.config.settings import (DISK_THRESHOLD, RESERVED_FIELDS, LabelSettings, ModelSettings,  # noqa: F401
                                           format_field, replace_settings, resolve_masks, settings_for)
from fiftyone_cass.fo.outputs import (
    OUTPUTS,
    OutputContext,
    check_types,
    compute_outputs,
    declarations,
    engine_needs,
    failed_outputs,
    get_output,
    resolve_fields,
    tag_classes,
    write_outputs,
)
from fiftyone_cass.fo.claims import ClaimedRun, FieldClaim, FieldClaimedError, release_field  # noqa: F401 - re-exported
from fiftyone_cass.fo.model import (  # noqa: F401 - re-exported: the vocabulary and model cache live with the model
    CONFIG_ATTR,
    DEFAULT_PRESENCE_THRESHOLD,
    CassModel,
    clear_segmenter_cache,
    get_segmenter,
    load_item,
    presence_label,
    presence_tags,
    replace_prefixed_tags,
    stored_scores,
    written_by_apply,
)

logger = logging.getLogger(__name__)
#: warnings about shards (not silenced by the command line, which keeps this module's log quiet)
shard_logger = logging.getLogger("fiftyone_cass.fo.shards")

#: run key (``dataset.list_runs()``) under which the settings of a label field are recorded
RUN_KEY_PREFIX = "cass_"
#: keys of the presence field's ``info`` (FiftyOne field metadata) recording the label field and the
#: tag prefix of the run that wrote it: :func:`retag`'s default prefix
LABEL_FIELD_INFO = "cass_label_field"
TAG_PREFIX_INFO = "cass_tag_prefix"
#: the presence threshold the field's labels and tags were made with (apply, then retag)
THRESHOLD_INFO = "cass_presence_threshold"
_MAX_LISTED_FAILURES = 1000
#: failed files listed by ``str(ApplySummary)``
MAX_LISTED_FILES = 20
#: attribute of a label recording the file path of the image it was made from (a sample whose
#: ``filepath`` changed is labelled again)
SOURCE_ATTR = "source_filepath"


# ------------------------------------------------------------------------------------------------
# Small helpers (public: the CLI and the tests use them)
# ------------------------------------------------------------------------------------------------
def mask_fits(mask_path: str, sample_id: str, image_path: str, allowed: np.ndarray) -> bool:
    """Whether the mask file ``mask_path`` of sample ``sample_id`` can stand for the label of
    ``image_path``: a regular file (not a symbolic link) named for this sample, a one-channel PNG of
    the image's displayed size (EXIF orientation applied, as the masks are) whose every value ``v``
    has ``allowed[v]``."""
    try:
        if os.path.islink(mask_path) or not re.match(re.escape(sample_id) + r"[-.]", os.path.basename(mask_path)):
            return False
        w, h = displayed_size(image_path)
        with Image.open(mask_path) as m:
            if m.format != "PNG" or m.size != (w, h):
                return False
            arr = np.asarray(m)
        if arr.ndim != 2 or arr.dtype.kind not in "iu" or (arr.size and int(arr.min()) < 0):
            return False
        return bool(arr.size == 0 or (int(arr.max()) < len(allowed) and allowed[arr].all()))
    except Exception:  # noqa: BLE001 - unreadable image or mask: not done (the run reports the image)
        return False


def mask_file_path(mask_dir: str, label_field: str, sample_id: str, dataset_id: str, config_id: str) -> str:
    """Where a sample's mask is written: ``<mask_dir>/<label_field>/<sample id>-<dataset id>-<config id>.png``.
    The name holds everything that makes the mask unique, so a clone of the dataset (same sample
    ids), another vocabulary or other settings never rewrite a file that a label points at."""
    return os.path.join(mask_dir, label_field, f"{sample_id}-{dataset_id}-{config_id}.png")


#: the label types whose files this plugin writes, and the attribute naming the file
_FILE_ATTRS = {"fiftyone.core.labels.Segmentation": "mask_path", "fiftyone.core.labels.Heatmap": "map_path"}


def _file_label_paths(fields, prefix: str = "") -> Iterator[Tuple[str, str]]:
    """``(field path, file attribute)`` of the Segmentation (``mask_path``) and Heatmap
    (``map_path``) fields (also inside embedded documents) of a dataset document's ``sample_fields``."""
    for f in fields or []:
        path = prefix + f.get("name", "")
        doc_type = f.get("embedded_doc_type") or ""
        if doc_type in _FILE_ATTRS:
            yield path, _FILE_ATTRS[doc_type]
        elif f.get("fields"):
            yield from _file_label_paths(f["fields"], path + ".")


def referenced_mask_paths(paths: Sequence[str]) -> set:
    """The ``paths`` that a Segmentation (``mask_path``) or Heatmap (``map_path``) of *any*
    dataset in the database points at: clones, merged or copied samples share their mask and
    heatmap files with the dataset that wrote them, so a file is unreferenced only when no dataset
    refers to it."""
    import fiftyone.core.odm as foo

    paths = list(set(p for p in paths if p))
    found: set = set()
    if not paths:
        return found
    conn = foo.get_db_conn()
    for doc in conn.datasets.find({}, {"sample_collection_name": 1, "sample_fields": 1}):
        fields = list(_file_label_paths(doc.get("sample_fields")))
        coll = doc.get("sample_collection_name")
        if not fields or not coll:
            continue
        query = {"$or": [{f"{f}.{attr}": {"$in": paths}} for f, attr in fields]}
        for d in conn[coll].find(query, {f: 1 for f, _ in fields}):
            for f, attr in fields:
                v = d
                for part in f.split("."):
                    v = v.get(part) if isinstance(v, dict) else None
                if isinstance(v, dict) and v.get(attr) in paths:
                    found.add(v[attr])
    return found


def remove_unreferenced(paths: Sequence[str]) -> int:
    """Removes those of ``paths`` (mask and heatmap files) that no label of any dataset points at
    (:func:`referenced_mask_paths`); returns how many were removed. A file that cannot be removed
    is logged and left."""
    removed = 0
    for p in set(paths) - referenced_mask_paths(paths):
        try:
            os.remove(p)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove the file %s: %s", p, exc)
    return removed


def default_mask_dir(dataset) -> str:
    """``<fo.config.default_dataset_dir>/fiftyone_cass_masks/<dataset name>``."""
    safe = re.sub(r"[^\w.-]+", "_", dataset.name).strip("._") or "dataset"
    return os.path.join(fo.config.default_dataset_dir, "fiftyone_cass_masks", safe)


def run_key_for(label_field: str) -> str:
    return RUN_KEY_PREFIX + label_field


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------
@dataclass
class ApplySummary:
    """What a call of :func:`apply` did. ``str(summary)`` is a human-readable report."""

    label_field: str
    config_id: str
    num_target: int = 0  # samples in the target collection
    num_in_shard: int = 0  # of those, in this process's shard
    num_already_done: int = 0  # skipped: labelled already (same settings, or skip_existing)
    num_labeled: int = 0
    num_failed: int = 0
    num_vanished: int = 0  # samples deleted from the dataset while the run labelled it (no mask file left)
    failure_reasons: Dict[str, int] = field(default_factory=dict)
    failures: List[Tuple[str, str, str]] = field(default_factory=list)  # (id, filepath, error), capped
    mask_dir: Optional[str] = None  # None: masks in the database
    mask_targets: Dict[int, str] = field(default_factory=dict)
    presence_field: Optional[str] = None
    error_field: Optional[str] = None
    shard: Optional[Tuple[int, int]] = None
    seconds: float = 0.0
    regions_field: Optional[str] = None  # region voting's field (None: no voting)
    num_without_regions: int = 0  # labelled without voting: the sample had no regions there

    @property
    def num_processed(self) -> int:
        return self.num_labeled + self.num_failed

    def to_dict(self, max_failures: int = 20) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failures"] = [list(f) for f in self.failures[:max_failures]]
        # "<path>: <reason>", what the App's result lists
        d["failed_files"] = [f"{p}: {e}" for _, p, e in self.failures[:max_failures]]
        # [reason, count] pairs, most frequent first (reasons may hold characters that are not
        # valid database keys, and the dict is stored as the result of delegated runs)
        d["failure_reasons"] = [[r, n] for r, n in sorted(self.failure_reasons.items(), key=lambda x: -x[1])]
        d["mask_targets"] = {str(k): v for k, v in self.mask_targets.items()}
        d["shard"] = list(self.shard) if self.shard else None
        d["num_processed"] = self.num_processed
        return d

    def __str__(self) -> str:
        where = f"PNG files under {os.path.join(self.mask_dir, self.label_field)}" if self.mask_dir else "the database"
        shard = f" (shard {self.shard[0]}/{self.shard[1]}: {self.num_in_shard} samples)" if self.shard else ""
        lines = [
            f"{self.label_field}: labeled {self.num_labeled} of {self.num_target} target samples{shard} "
            f"in {self.seconds:.1f}s, masks in {where}; {self.num_already_done} already done",
        ]
        if self.regions_field:
            lines.append(f"regions from {self.regions_field!r}: {self.num_without_regions} labelled sample(s) had "
                         "none and were labelled without voting")
        if self.num_failed:
            lines.append(f"{self.num_failed} failed (see the '{self.error_field}' field):")
            for _, path, err in self.failures[:MAX_LISTED_FILES]:
                lines.append(f"  {path}: {err}")
            if self.num_failed > MAX_LISTED_FILES:
                lines.append(f"  ... and {self.num_failed - MAX_LISTED_FILES} more")
            lines.append("failures by reason:")
            for reason, n in sorted(self.failure_reasons.items(), key=lambda x: -x[1]):
                lines.append(f"  {n} x {reason}")
        else:
            lines.append("0 failed")
        if self.num_vanished:
            lines.append(f"{self.num_vanished} sample(s) were deleted from the dataset during the run (not labelled, "
                         "no mask file left)")
        return "\n".join(lines)


#: decoded pixels of one batch at most: a batch holds ``batch_size`` samples or fewer, so that
#: memory does not grow with ``batch_size`` on large images (at most three batches are in flight)
BATCH_PIXEL_BUDGET = 24 * 2**20


def image_pixels(path: str) -> int:
    """Width x height from the image file's header (0 when it cannot be read: loading reports it)."""
    try:
        w, h = displayed_size(path)
        return w * h
    except Exception:  # noqa: BLE001 - the load of the batch names the problem
        return 0


def split_batches(todo: Sequence[Tuple[str, str]], batch_size: int, budget: Optional[int] = None,
                  pixels_of=image_pixels) -> Iterator[List[Tuple[str, str]]]:
    """``(id, filepath)`` pairs in batches of at most ``batch_size`` samples and at most ``budget``
    decoded pixels (:data:`BATCH_PIXEL_BUDGET`); an image larger than the budget is a batch alone."""
    budget = BATCH_PIXEL_BUDGET if budget is None else budget
    batch: List[Tuple[str, str]] = []
    pixels = 0
    for item in todo:
        n = pixels_of(item[1])
        if batch and (len(batch) >= batch_size or pixels + n > budget):
            yield batch
            batch, pixels = [], 0
        batch.append(item)
        pixels += n
    if batch:
        yield batch


def run_batches(todo: Sequence[Tuple[str, str]], batch_size: int, load, segment, write,
                finish=None) -> Iterator[Tuple[int, int]]:
    """THE batch loop of every run over samples (labelling, concept heatmaps): ``todo``'s
    ``(id, filepath)`` pairs in :func:`split_batches` batches, yielding ``(done, total)`` first and
    after each saved batch. ``load(batch)`` -> what ``segment(batch, loaded)`` takes; it returns
    the batch's outputs, which ``write(batch, outputs)`` saves, returning the samples processed.
    ``finish()`` runs after the last batch is saved, before the last yield.

    Three stages overlap: while the engine segments batch i, a loader thread decodes batch i + 1
    and a writer thread saves batch i - 1. Batches are saved in order, one at a time, so an
    interrupted run still leaves whole batches only (a consumer that stops at a yield leaves the
    batches after the yielded one unsaved). At most three batches are in memory."""
    total = len(todo)
    yield 0, total
    batches = split_batches(todo, batch_size)  # lazily: an image's header is read when its batch is made
    batch = next(batches, None)
    if batch is None:
        return
    done = 0
    with ThreadPoolExecutor(1, thread_name_prefix="cass-load") as loader, ThreadPoolExecutor(
        1, thread_name_prefix="cass-write"
    ) as writer:
        loading = loader.submit(load, batch)
        writing = None
        while batch is not None:
            loaded = loading.result()
            following = next(batches, None)
            if following is not None:
                loading = loader.submit(load, following)
            outputs = segment(batch, loaded)
            del loaded
            if writing is not None:
                done += writing.result()
                yield done, total
            writing = writer.submit(write, batch, outputs)
            del outputs
            batch = following
        done += writing.result()
        if finish is not None:
            finish()
        yield done, total


def check_field_type(dataset, name: str, embedded=None, ftype=None) -> bool:
    """Whether ``dataset`` has field ``name``; :class:`InvalidInputError` when it exists with
    another type than the one a run writes there (``embedded``: a label class, else ``ftype``)."""
    f = dataset.get_field(name)
    if f is None:
        return False
    if embedded is not None:
        ok = isinstance(f, fof.EmbeddedDocumentField) and issubclass(f.document_type, embedded)
        what = embedded.__name__
    else:
        ok = isinstance(f, ftype)
        what = ftype.__name__
    if not ok:
        raise InvalidInputError(f"field {name!r} of dataset {dataset.name!r} exists and is not a {what} field")
    return True


def declare_field(dataset, name: str, **kwargs) -> None:
    """Adds sample field ``name`` (``add_sample_field``'s keywords) unless it is there, also when
    another process declares it at the same time."""
    if dataset.has_sample_field(name):
        return
    try:
        dataset.add_sample_field(name, **kwargs)
    except ValueError:  # another process declared it meanwhile
        dataset.reload()
        if not dataset.has_sample_field(name):
            raise


def check_regions_field(dataset, name: str, label_field: str) -> None:
    """Region voting's field (SPEC K.5) exists on ``dataset``, holds ``fo.Detections`` (instance
    masks) or an ``fo.Segmentation`` (region ids), and is not ``label_field`` (the field the run
    writes); :class:`InvalidInputError` naming the setting otherwise (the run's check and the form's)."""
    f = dataset.get_field(name) if name else None
    if f is None:
        raise InvalidInputError(f"{kw('regions_field')} {name!r} is not a field of dataset {dataset.name!r} "
                                "(compute SAM / SAM2 masks into it first, see the README)")
    if not (isinstance(f, fof.EmbeddedDocumentField) and f.document_type
            and issubclass(f.document_type, (fo.Detections, fo.Segmentation))):
        held = f.document_type.__name__ if isinstance(f, fof.EmbeddedDocumentField) and f.document_type else type(f).__name__
        raise InvalidInputError(f"{kw('regions_field')} {name!r} holds {held}, not Detections with instance masks or "
                                "a Segmentation of region ids")
    if name == label_field:
        raise InvalidInputError(f"{kw('regions_field')} {name!r} is the label field this run writes "
                                f"({kw('label_field')}): choose another")


def sample_error(error: str, filepath: str) -> str:
    """What ``<label_field>_error`` stores: the reason first, without the sample's own path in
    front (the App shows the field as a chip cut after a few words; the path is the sample's
    ``filepath``)."""
    if filepath and error.startswith(filepath + ": "):
        error = error[len(filepath) + 2:]
    return error.strip() or "unknown error"


def _identity(folder: str) -> Optional[Tuple[int, int]]:
    """``(device, inode)`` of a folder (None if it is gone): a removed and re-created folder differs."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _reason(error: str, filepath: str) -> str:
    """An error message without the sample's own path, to group failures by cause."""
    r = error.replace(filepath, "<image>") if filepath else error
    if r.startswith("<image>: "):
        r = r[len("<image>: "):]
    r = r.strip()
    return (r[:160] + "...") if len(r) > 160 else (r or "unknown error")


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
class AutoLabelRun(ClaimedRun):
    """One labelling run. ``apply()`` is ``AutoLabelRun(...).run(progress)``; the operators drive
    :meth:`iter_progress` to report progress between batches. Arguments: see :func:`apply`."""

    def __init__(
        self,
        sample_collection,
        classes: Union[None, str, Sequence[str]] = None,
        *,
        segmenter: Optional[Segmenter] = None,
        settings: Optional[LabelSettings] = None,
        **keywords,
    ):
        # one settings object for the whole run, checked once (here, or by the caller: the CLI,
        # the operator) and handed down unchanged to the model and its Segmenter
        if classes is not None:
            if settings is not None:
                settings = replace_settings(settings, classes=classes)
            else:
                keywords = dict(keywords, classes=classes)
        run = self.run_settings = settings_for(LabelSettings, settings, keywords)
        classes, preset, gt_field, label_field = run.classes, run.preset, run.gt_field, run.label_field
        self.started = time.monotonic()
        self.view = sample_collection
        self.dataset = sample_collection._root_dataset
        if self.dataset.media_type != "image" or sample_collection.media_type != "image":
            raise InvalidInputError(
                f"dataset {self.dataset.name!r} has media type {sample_collection.media_type!r}; "
                "only image collections can be labelled (for grouped datasets pass a flat view, "
                "e.g. dataset.select_group_slices('left'))"
            )
        if sample_collection._is_generated or sample_collection._is_dynamic_groups:
            raise InvalidInputError(
                "patches/frames/clips views and dynamic groups cannot be labelled: pass a view of the "
                "dataset's samples (e.g. the base view)"
            )
        self.label_field = label_field
        # the outputs this run writes: {output name: field name} (fiftyone_cass.fo.outputs.OUTPUTS)
        self.fields = resolve_fields(run, label_field)
        self.presence_field = self.fields.get("presence")
        self.tag_prefix = self.fields.get("tags")
        self.error_field = self.fields.get("error")
        self.embeddings_field = self.fields.get("embedding")
        self.confidence_field = self.fields.get("confidence")
        self.uncertainty_field = self.fields.get("uncertainty")
        self.uncertainty_kind = run.uncertainty_kind
        named = [(get_output(n).setting, f) for n, f in self.fields.items() if n not in ("segmentation", "tags")]
        for name, base in named:
            for f in get_output(dict((o.setting, o.name) for o in OUTPUTS)[name]).field_names(base):
                if not f.isidentifier() or f in RESERVED_FIELDS or f == label_field:
                    raise InvalidInputError(f"{kw(name)} {base!r} is not a usable field name: " + (
                        f"it is the same as {kw('label_field')}" if f == label_field else "it is a built-in FiftyOne field"
                        if f in RESERVED_FIELDS else "it is not a valid Python identifier"))
        owner: Dict[str, List[str]] = {}
        for n, b in self.fields.items():
            if n not in ("tags", "segmentation"):
                for f in get_output(n).field_names(b):
                    owner.setdefault(f, []).append(get_output(n).setting)
        clash = {s for names in owner.values() if len(names) > 1 for s in names}
        if clash:
            listed = [s for s in ("presence_field", "error_field", "embeddings_field")] + sorted(
                clash - {"presence_field", "error_field", "embeddings_field"})
            used = [b for n, b in self.fields.items() if n not in ("tags", "segmentation")]
            raise InvalidInputError(f"{', '.join(kw(x) for x in listed[:-1])} and {kw(listed[-1])} must differ, got {used}")
        if run.skip_existing and run.overwrite:  # which one would win is not what the caller meant
            raise InvalidInputError(f"{kw('skip_existing', True)} and {kw('overwrite', True)} exclude each other: "
                                    f"{kw('skip_existing')} keeps the labels of other settings, {kw('overwrite')} "
                                    "replaces them; choose one")
        self.skip_existing = run.skip_existing
        self.overwrite = run.overwrite
        self.shard = run.shard
        self.masks = run.masks
        self._mask_dir_arg = run.mask_dir
        self.batch_size = run.batch_size

        # the model (before any write: a bad vocabulary or missing weights fail here)
        given = [x for x in (("classes", classes), ("preset", preset), ("gt_field", gt_field)) if x[1] is not None]
        if segmenter is None and len(given) != 1:
            raise InvalidInputError(
                f"give exactly one of {kw('classes', SOME_LIST)}, {kw('preset', SOME_TEXT)} or {kw('gt_field', SOME_TEXT)} "
                f"(got {', '.join(g[0] for g in given) or 'none'})"
            )
        gt_targets = None
        if gt_field is not None and gt_field == label_field:
            raise InvalidInputError(
                f"{kw('label_field')} {label_field!r} is the {kw('gt_field')}: the predictions would replace the "
                f"ground truth they take their classes from; choose another {kw('label_field')}"
            )
        if gt_field is not None:
            if not self.dataset.has_sample_field(gt_field):
                raise InvalidInputError(f"{kw('gt_field')} {gt_field!r} is not a field of dataset {self.dataset.name!r}")
            gt_targets = self.dataset.mask_targets.get(gt_field) or self.dataset.default_mask_targets or {}
        self.model = CassModel(
            classes if (classes is None or isinstance(classes, str)) else list(classes),
            preset=preset, mask_targets=gt_targets, mask_targets_name=f"{kw('gt_field')} {gt_field!r} mask_targets",
            segmenter=segmenter, settings=run,
        )
        self.presence_threshold = self.model.presence_threshold
        self.segmenter = self.model.segmenter
        self.vocab = self.model.vocab
        self.settings = self.model.settings
        self.config_id = self.model.config_id
        self.summary = ApplySummary(label_field, self.config_id, mask_targets=dict(self.vocab.mask_targets),
                                    presence_field=self.presence_field, error_field=self.error_field,
                                    shard=self.shard, regions_field=self.model.regions_field)
        if self.model.regions_field:
            self._check_regions_field(self.model.regions_field)
        self._todo: Optional[List[Tuple[str, str]]] = None
        self._claim: Optional[FieldClaim] = None
        self._folder_id: Optional[Tuple[int, int]] = None  # (device, inode) of the mask folder at the start

    # -------------------------------------------------------------- planning
    def _check_regions_field(self, name: str) -> None:
        check_regions_field(self.dataset, name, self.label_field)

    def _check_field_type(self, name: str, embedded=None, ftype=None):
        return check_field_type(self.dataset, name, embedded, ftype)

    def _declare(self, name, **kwargs):
        declare_field(self.dataset, name, **kwargs)

    def plan(self) -> int:
        """Decides which samples to label and prepares the dataset. Returns how many to label.
        Raises :class:`InvalidInputError` (before writing anything) when the label field holds
        labels of other settings and neither ``overwrite`` nor ``skip_existing`` is set, and when
        the run's classes would rename the field's ids under labels it keeps (samples outside the
        target, or kept by ``skip_existing``)."""
        ds = self.dataset
        ds.reload()  # fields/runs/mask_targets another process may have written
        return self.claimed_plan(ds, self.label_field, self.config_id, self._plan, self._warn_overlapping_shards)

    def _warn_overlapping_shards(self) -> None:
        """Records this run's shard on its claim and warns when a live run of the same settings on
        the same field takes samples that this one takes too (``0/2`` with ``0/3``, a shard with a
        run on everything, two runs of one shard): those samples would be labelled twice."""
        from fiftyone_cass.fo import claims

        try:
            coll, key = claims._collection(), claims._key(self.dataset, self.label_field)
            mine = list(self.shard) if self.shard else None
            coll.update_one({"_id": key, "holders.run": self._claim.run_id}, {"$set": {"holders.$.shard": mine}})
            doc = coll.find_one({"_id": key}) or {}
        except Exception as exc:  # noqa: BLE001 - a warning only
            logger.debug("could not record the shard on the claim: %s", exc)
            return
        what = lambda s: f"shard {s[0]}/{s[1]}" if s else "all samples (no shard)"  # noqa: E731
        for h in doc.get("holders", []):
            if h.get("run") == self._claim.run_id or "shard" not in h or claims.holder_is_dead(h):
                continue
            theirs = h.get("shard")
            if mine and theirs and mine[1] == theirs[1] and mine[0] != theirs[0]:
                continue  # disjoint shards of one split
            shard_logger.warning(
                "field %r of dataset %r: this run takes %s and the run of pid %s on %s, with the same settings, "
                "takes %s: the samples of both overlap and are labelled twice at the same time; run the shards "
                "i/N of one N", self.label_field, self.dataset.name, what(mine), h.get("pid"), h.get("host"),
                what(theirs))

    def _plan(self) -> int:
        ds, lf = self.dataset, self.label_field
        exists = self._check_field_type(lf, embedded=fo.Segmentation)
        check_types(ds, {n: f for n, f in self.fields.items() if n != "segmentation"})

        ids = self.view.values("id")
        self.summary.num_target = len(ids)
        target = set(ids)
        done: set = set()
        if exists:
            # read from the dataset (the target view may exclude the field), keep the target's
            lids, cfgs, paths, has_mask = ds.exists(lf).values(
                ["id", f"{lf}.{CONFIG_ATTR}", f"{lf}.mask_path", F(f"{lf}.mask").exists()]
            )
            # labels of other settings that this run leaves as they are (checked below)
            outside = sum(1 for sid, c in zip(lids, cfgs) if sid not in target and c != self.config_id)
            keep = [k for k, sid in enumerate(lids) if sid in target]
            lids, cfgs, paths, has_mask = ([x[k] for k in keep] for x in (lids, cfgs, paths, has_mask))
            foreign = sum(1 for c in cfgs if c != self.config_id)
            if foreign and not (self.overwrite or self.skip_existing):
                raise InvalidInputError(
                    f"field {lf!r} of dataset {ds.name!r} already holds labels of other settings on "
                    f"{foreign} of the {len(ids)} target samples; {use('overwrite', True)} to replace them "
                    f"or {kw('skip_existing', True)} to label only the samples without labels "
                    "(a run with the same settings resumes by itself)"
                )
            for sid, cfg, path, in_db in zip(lids, cfgs, paths, has_mask):
                if cfg != self.config_id and not self.skip_existing:
                    continue
                if (path and is_valid_png(path)) or (not path and in_db):
                    done.add(sid)
            done -= self._stale(ds.select(sorted(done & set(lids))))
            skipped_old = {sid for sid, cfg in zip(lids, cfgs) if sid in done and cfg != self.config_id}
            # a sample of these settings is done when every output this run asks for is there too
            mine = [sid for sid in done if sid not in skipped_old]
            for name, f in self.fields.items():
                check = get_output(name).present
                if check is not None and mine and ds.has_sample_field(f):
                    have = check(ds, f, mine, self.run_settings)
                    done -= set(mine) - have
                elif check is not None and mine:
                    done -= set(mine)

        if self.shard is not None:  # by file path, as every entry point (fiftyone_cass.fo.shards)
            i, n = self.shard
            paths = dict(zip(*self.view.values(["id", "filepath"])))
            ids = [s for s in ids if shard_index(paths[s], n) == i]
        self.summary.num_in_shard = len(ids)
        self.summary.num_already_done = sum(1 for s in ids if s in done)
        todo_ids = set(s for s in ids if s not in done)
        if exists and todo_ids:  # (mask_targets are written only when there is something to label)
            self._check_kept_labels(outside, len(skipped_old & set(ids)))

        # storage
        use_disk = resolve_masks(self.masks, self.summary.num_target, self._mask_dir_arg) == "disk"
        self.mask_dir = os.path.abspath(os.path.expanduser(self._mask_dir_arg or default_mask_dir(ds))) if use_disk else None
        self.summary.mask_dir = self.mask_dir
        if self.mask_dir and todo_ids:
            self._check_mask_dir()

        # schema, mask_targets, run record (idempotent: concurrent workers write the same)
        self._declare(lf, ftype=fof.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
        self._declare(f"{lf}.{CONFIG_ATTR}", ftype=fof.StringField)
        self._declare(f"{lf}.{SOURCE_ATTR}", ftype=fof.StringField)
        for name, decl in declarations({n: f for n, f in self.fields.items() if n != "segmentation"}):
            self._declare(name, **decl)
        if todo_ids:
            if self.presence_field:
                self._record_tag_prefix()
            targets = dict(ds.mask_targets)
            if targets.get(lf) != self.vocab.mask_targets:
                targets[lf] = dict(self.vocab.mask_targets)
                ds.mask_targets = targets
                ds.save()
            self._record_run()
            show_labels_in_app(ds, lf, self.vocab.mask_targets)  # one colour per class, field ticked

        # (id, filepath) of the samples to label, in the order of the target collection
        if todo_ids:
            all_ids, all_paths = self.view.values(["id", "filepath"])
            self._todo = [(s, p) for s, p in zip(all_ids, all_paths) if s in todo_ids]
        else:
            self._todo = []
        return len(self._todo)

    def _stale(self, view) -> set:
        """The samples of ``view`` (labelled with these settings, their mask present) whose label
        does not fit what they are now: made from another file path (recorded in the label), or a
        mask file that is a symbolic link, named for another sample, not of the image's size (as
        displayed: EXIF orientation) or holding ids outside this vocabulary's ``mask_targets``."""
        lf = self.label_field
        fields = ["id", "filepath", f"{lf}.{CONFIG_ATTR}", f"{lf}.mask_path"]
        has_source = self.dataset.get_field(f"{lf}.{SOURCE_ATTR}") is not None
        values = view.values(fields + ([f"{lf}.{SOURCE_ATTR}"] if has_source else []))
        sources = values[4] if has_source else [None] * len(values[0])
        allowed = np.zeros(1 << 16, dtype=bool)
        allowed[list(self.vocab.mask_targets)] = True
        stale, check = set(), []
        for sid, fp, cfg, mpath, src in zip(*values[:4], sources):
            if cfg != self.config_id:
                continue  # labels of other settings kept by skip_existing: kept as they are
            if src is not None and src != fp:
                stale.add(sid)
            elif mpath:
                check.append((sid, fp, mpath))
        if check:
            with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="cass-check") as pool:
                fits = pool.map(lambda x: mask_fits(x[2], x[0], x[1], allowed), check)
                stale.update(x[0] for x, ok in zip(check, fits) if not ok)
        if stale:
            logger.info("%s: %d label(s) of these settings do not fit their sample any more and are redone",
                        lf, len(stale))
        return stale

    def _check_kept_labels(self, outside: int, skipped: int) -> None:
        """``dataset.mask_targets[label_field]`` names the ids of the whole field. Refuses (before
        anything is written) to change it while labels of other settings stay in the field: the
        ``outside`` samples not in the target and the ``skipped`` ones kept by ``skip_existing``
        would have their ids read with the new names. A new vocabulary that keeps every old id's
        name (classes added at the end) changes nothing for them and is allowed."""
        old = {int(k): v for k, v in (self.dataset.mask_targets.get(self.label_field) or {}).items()}
        new = self.vocab.mask_targets
        kept = outside + skipped
        if not kept or not old or all(new.get(k) == v for k, v in old.items()):
            return
        changed = [f"{k}: {v!r} -> {new[k]!r}" if k in new else f"{k}: {v!r} -> unnamed"
                   for k, v in sorted(old.items()) if new.get(k) != v]
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        where = " and ".join(w for w in (
            f"{outside} outside this run's target" if outside else "",
            f"{skipped} kept by {kw('skip_existing')}" if skipped else "") if w)
        raise InvalidInputError(
            f"field {self.label_field!r} of dataset {self.dataset.name!r} holds labels of other classes on "
            f"{kept} sample(s) that this run would not relabel ({where}); their masks use the field's current "
            f"class ids, which this run's classes would rename for the whole field (id {shown}). To relabel "
            f"every sample of the field, run on the whole dataset and {use('overwrite', True)}; or choose another "
            f"{kw('label_field')}"
        )

    def _check_mask_dir(self) -> None:
        """Fails once, before the model runs, when masks cannot be written (read-only or missing
        permissions, not a directory, full); removes the temp files of killed runs."""
        folder = os.path.join(self.mask_dir, self.label_field)
        probe = os.path.join(folder, f".write-check-{os.getpid()}")
        try:
            atomic_write(probe, lambda f: f.write(b"\x00" * 4096))
            os.remove(probe)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot write masks to {folder!r} ({type(exc).__name__}: {exc}); choose another mask "
                f"directory ({kw('mask_dir')}) or keep masks in the database ({kw('masks', 'database')})"
            ) from None
        self._folder_id = _identity(folder)
        removed = remove_orphaned_temp_files(folder)
        if removed:
            logger.info("%s: removed %d temp file(s) left by killed runs", folder, len(removed))

    def _record_tag_prefix(self) -> None:
        """Records the label field and tag prefix on the presence field's ``info`` (retag's default prefix)."""
        try:
            f = self.dataset.get_field(self.presence_field)
            info = dict(f.info or {})
            want = {LABEL_FIELD_INFO: self.label_field, TAG_PREFIX_INFO: self.tag_prefix,
                    THRESHOLD_INFO: float(self.presence_threshold)}
            if any(info.get(k) != v for k, v in want.items()):
                f.info = {**info, **want}
                f.save()
        except Exception as exc:  # noqa: BLE001 - retag falls back to the run record
            logger.warning("could not record the tag prefix on field %r of %s: %s", self.presence_field,
                           self.dataset.name, exc)

    def _record_run(self):
        key = run_key_for(self.label_field)
        cfg = self.dataset.init_run(
            method="fiftyone_cass.auto_label",
            label_field=self.label_field,
            config_id=self.config_id,
            settings=self.settings,
            mask_targets={str(k): v for k, v in self.vocab.mask_targets.items()},
            presence_field=self.presence_field,
            tag_prefix=self.tag_prefix,
            presence_threshold=self.presence_threshold,
            mask_dir=self.mask_dir,
        )
        try:
            if self.dataset.has_run(key):
                info = self.dataset.get_run_info(key)
                if getattr(info.config, "config_id", None) == self.config_id:
                    return
            self.dataset.register_run(key, cfg, overwrite=True, cleanup=False)
        except Exception as exc:  # noqa: BLE001 - the record is informative only
            logger.warning("could not record run %r on %s: %s", key, self.dataset.name, exc)

    # -------------------------------------------------------------- labelling
    def iter_progress(self) -> Iterator[Tuple[int, int]]:
        """Labels the planned samples batch by batch, yielding ``(done, total)`` after each batch
        is saved (plans first if :meth:`plan` was not called). :attr:`summary` is complete at
        the end.

        Three stages overlap: while the engine segments batch i, a loader thread decodes batch
        i + 1 and a writer thread saves batch i - 1 (PNG encoding and database writes). Batches
        are saved in order, one at a time, each as before (masks, then the other fields, then
        the label), so an interrupted run still leaves whole samples only. At most three batches
        are in memory."""
        if self._todo is None:
            self.plan()
        try:
            yield from self._iter_batches()
        finally:
            self.release()

    def _iter_batches(self) -> Iterator[Tuple[int, int]]:
        def segment(batch, loaded):
            images, regions = loaded
            return self.model.segment(images, [p for _, p in batch], regions=regions, **self._engine)

        yield from run_batches(self._todo, self.batch_size, self._load_batch, segment, self._write_batch,
                               finish=self._check_still_there)
        self.summary.seconds = time.monotonic() - self.started
        level = logging.WARNING if self.summary.num_failed else logging.INFO
        logger.log(level, "%s", self.summary)

    def run(self, progress=None) -> ApplySummary:
        """Runs to the end. ``progress``: FiftyOne's convention (None: ``fo.config.show_progress_bars``,
        a bool, or a callable receiving the :class:`fiftyone.core.utils.ProgressBar`)."""
        total = self.plan() if self._todo is None else len(self._todo)
        with fou.ProgressBar(total=total, progress=progress) as pb:
            for done, _ in self.iter_progress():
                pb.set_iteration(done)
        return self.summary

    def _load_batch(self, batch: List[Tuple[str, str]]):
        """The decoded images, and the regions field's values (None when not voting)."""
        loaded = [load_item(p, p) for _, p in batch]
        field = self.model.regions_field
        if not field:
            return loaded, None
        ids = [s for s, _ in batch]
        got = dict(zip(*self.dataset.select(ids).values(["id", field])))
        return loaded, [got.get(s) for s in ids]

    def _output_context(self) -> OutputContext:
        ds_id = str(self.dataset._doc.id)
        file_path = None
        if self.mask_dir:
            def file_path(f, sid):
                return mask_file_path(self.mask_dir, f, sid, ds_id, self.config_id)
        return OutputContext(self.vocab, self.presence_threshold, self.config_id, self.label_field, dict(self.fields),
                             file_path, self.model.segmentation_label, self.uncertainty_kind)

    @property
    def _engine(self) -> Dict[str, Any]:
        """What the engine computes besides the labels, for the outputs of this run."""
        needs = engine_needs(self.fields)
        return dict(embeddings="embeddings" in needs, confidence="confidence" in needs,
                    uncertainty=self.uncertainty_kind if "uncertainty" in needs else None)

    def _write_batch(self, batch: List[Tuple[str, str]], outputs) -> int:
        """Saves one batch's results and errors; returns the number of samples processed. The
        outputs (:data:`fiftyone_cass.fo.outputs.OUTPUTS`) are computed per sample, their files
        written first (each under a new name: nothing a label points at is rewritten), then the
        fields in the table's order, the label field last (a sample is done once it is saved)."""
        lf = self.label_field
        ids = [s for s, _ in batch]
        paths = [p for _, p in batch]
        ds = self.dataset
        ds_id = str(ds._doc.id)
        ctx = self._output_context()
        # the dataset, the samples and the mask folder may have been deleted since the plan
        self._check_still_there()
        present = self._present(ids)
        if len(present) < len(ids):
            self.summary.num_vanished += len(ids) - len(present)
            keep = [k for k, sid in enumerate(ids) if sid in present]
            ids, paths, outputs = [ids[k] for k in keep], [paths[k] for k in keep], [outputs[k] for k in keep]
            if not ids:
                return len(batch)
        old_files = self._stored_files(ids)
        values: Dict[str, Dict[str, Dict[str, Any]]] = {}
        failed: List[str] = []
        for sid, path, (res, err) in zip(ids, paths, outputs):
            if res is not None:
                try:
                    values[sid] = compute_outputs(ctx, self.fields, sid, res)
                except OSError as exc:  # e.g. disk full: reported per sample (anything else is a bug: raised)
                    res, err = None, f"{path}: cannot write its outputs ({type(exc).__name__}: {exc})"
            if res is None:
                err = sample_error(err or "unknown error", path)
                values[sid] = failed_outputs(self.fields, err)
                failed.append(sid)
                self._record_failure(sid, path, err)
                continue
            values[sid]["segmentation"][""][SOURCE_ATTR] = path
            if self.model.regions_field and getattr(res, "regions_voted", None) is None:
                self.summary.num_without_regions += 1
            self.summary.num_labeled += 1
        for sid in self._labels_of_other_settings(failed):  # an overwrite that failed keeps what was there
            values[sid] = {n: v for n, v in values[sid].items() if n == "error"}
        write_outputs(ds, ctx, self.fields, values)
        labels = {sid: v["segmentation"][""] for sid, v in values.items() if "segmentation" in v}
        self._check_saved(labels, values)
        # the files (masks, heatmaps) the labels pointed at before, now replaced by new ones, if
        # this dataset wrote them and no label of any dataset points there now
        replaced = []
        for (name, sid), p in old_files.items():
            new = values.get(sid, {}).get(name, {}).get("")
            if labels.get(sid) is not None and new is not None and getattr(new, get_output(name).files) != p \
                    and written_by_apply(p, sid, ds_id):
                replaced.append(p)
        if replaced:
            remove_unreferenced(replaced)
        return len(batch)

    def _labels_of_other_settings(self, ids: Sequence[str]) -> List[str]:
        """Those of ``ids`` whose label field holds a label of other settings (an ``overwrite``
        run replaces it): a sample that fails keeps that label and its outputs (and their files),
        only its error field says why the new labels are missing."""
        if not ids or not self.overwrite or not self.dataset.has_sample_field(self.label_field):
            return []
        sids, cfgs = self.dataset.select(list(ids)).values(["id", f"{self.label_field}.{CONFIG_ATTR}"])
        return [sid for sid, c in zip(sids, cfgs) if c is not None and c != self.config_id]

    def _file_outputs(self) -> Dict[str, str]:
        """``{output name: field}`` of this run's outputs that are written as files."""
        return {n: f for n, f in self.fields.items() if get_output(n).files}

    def _stored_files(self, ids: Sequence[str]) -> Dict[Tuple[str, str], str]:
        """``{(output name, sample id): file path}`` that the samples' file outputs point at now."""
        out: Dict[Tuple[str, str], str] = {}
        for name, f in self._file_outputs().items():
            if not self.dataset.has_sample_field(f):
                continue
            for sid, p in zip(*self.dataset.select(list(ids)).values(["id", f"{f}.{get_output(name).files}"])):
                if p:
                    out[(name, sid)] = p
        return out

    # -------------------------------------------------------------- what vanished under the run
    def _dataset_exists(self) -> bool:
        import fiftyone.core.odm as foo

        return foo.get_db_conn().datasets.count_documents({"_id": self.dataset._doc.id}, limit=1) > 0

    def _present(self, ids: Sequence[str], projection=None) -> Dict[str, dict]:
        """``{id: document}`` of the samples of ``ids`` that are still in the dataset."""
        from bson import ObjectId

        coll = self.dataset._sample_collection
        docs = coll.find({"_id": {"$in": [ObjectId(s) for s in ids]}}, projection or {"_id": 1})
        return {str(d["_id"]): d for d in docs}

    def _check_still_there(self) -> None:
        """Stops the run (:class:`RunAbortedError`) when its dataset was deleted or its mask folder
        removed (or replaced) since the plan."""
        if not self._dataset_exists():
            self._abort_dataset_deleted()
        if self.mask_dir and self._folder_id is not None:
            folder = os.path.join(self.mask_dir, self.label_field)
            if _identity(folder) != self._folder_id:
                self._abort_folder_removed(folder)

    def _check_saved(self, labels: Dict[str, Any], values: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        """After the labels of a batch are saved: a sample deleted meanwhile got no label, so its new
        mask file (and heatmap files) are removed (and the run stopped if the whole dataset is gone)."""
        written = {sid: lab.mask_path for sid, lab in labels.items() if lab is not None}
        if not written:
            return
        lf = self.label_field
        docs = self._present(list(written), {f"{lf}.mask_path": 1})
        if len(docs) == len(written):
            return
        if not self._dataset_exists():
            self._abort_dataset_deleted()
        gone = [sid for sid in written if sid not in docs]
        self.summary.num_vanished += len(gone)
        self.summary.num_labeled -= len(gone)
        files = [written[sid] for sid in gone if written[sid]]
        for name in self._file_outputs():
            if name != "segmentation":
                files += [getattr(v, get_output(name).files, None) for sid in gone
                          for v in [(values or {}).get(sid, {}).get(name, {}).get("")] if v is not None]
        remove_unreferenced([p for p in files if p])

    def _abort_dataset_deleted(self) -> None:
        ds_id = str(self.dataset._doc.id)
        removed = 0
        if self.mask_dir:  # every mask this job wrote for the deleted dataset, unless another dataset uses it
            folder = os.path.join(self.mask_dir, self.label_field)
            try:
                names = os.listdir(folder)
            except OSError:
                names = []
            mine = [os.path.join(folder, n) for n in names if n.endswith(f"-{ds_id}-{self.config_id}.png")]
            removed = remove_unreferenced(mine)
        raise RunAbortedError(
            f"dataset {self.dataset.name!r} was deleted while it was being labelled: the run stopped"
            + (f"; the {removed} mask file(s) written for its samples were removed" if self.mask_dir else "")
        )

    def _abort_folder_removed(self, folder: str) -> None:
        """The mask folder vanished: the labels of these settings whose files went with it are
        removed (no sample points at a missing file) and the run stops; a rerun relabels them."""
        lf = self.label_field
        ds = self.dataset
        ids, cfgs, paths = ds.exists(lf).values(["id", f"{lf}.{CONFIG_ATTR}", f"{lf}.mask_path"])
        lost = {sid: None for sid, c, p in zip(ids, cfgs, paths)
                if c == self.config_id and p and os.path.dirname(p) == folder and not os.path.exists(p)}
        if lost:
            ds.set_values(lf, lost, key_field="id")
        raise RunAbortedError(
            f"the mask folder {folder!r} was removed during the run: the run stopped, and the {len(lost)} label(s) "
            f"of field {lf!r} of dataset {ds.name!r} whose mask files were in it were removed (no sample points at "
            "a missing file); run the same command again to label them"
        )

    def _record_failure(self, sid: str, path: str, err: str):
        self.summary.num_failed += 1
        reason = _reason(err, path)
        self.summary.failure_reasons[reason] = self.summary.failure_reasons.get(reason, 0) + 1
        if len(self.summary.failures) < _MAX_LISTED_FAILURES:
            self.summary.failures.append((sid, path, err))
        logger.warning("sample %s skipped: %s", sid, err)


def apply(sample_collection, classes=None, *, progress=None, **kwargs) -> ApplySummary:
    """Labels the samples of ``sample_collection`` with open-vocabulary semantic segmentation.

    Give the vocabulary as ``classes`` (list, or one string separated by commas/new lines; in a
    list an entry may hold ", "-separated synonyms), ``preset=`` or ``gt_field=``. Masks go to
    ``<mask_dir>/<label_field>/<sample id>-<dataset id>-<settings id>.png`` when on disk.

    Args:
        sample_collection: a FiftyOne dataset or view of images (exactly its samples are labelled)
        progress (None): FiftyOne progress convention (bool or callable receiving the ProgressBar)
        segmenter (None): a ready :class:`Segmenter` instead of classes/preset/gt_field
        **kwargs: the :class:`~fiftyone_cass.config.settings.LabelSettings` below (each value is checked
            against its declaration: :class:`~fiftyone_cass.InvalidInputError` names the setting, the
            value and what is allowed) and any :class:`fiftyone_cass.SegmenterOptions` field

    Settings (``name (default): meaning; allowed values``):
{settings}

    Returns:
        an :class:`ApplySummary` (``print(summary)`` for a report)
    """
    return AutoLabelRun(sample_collection, classes, **kwargs).run(progress=progress)


apply.__doc__ = apply.__doc__.replace("{settings}", settings_doc(LabelSettings, indent="        "))


# ------------------------------------------------------------------------------------------------
# Re-tagging from stored scores
# ------------------------------------------------------------------------------------------------
def default_tag_prefix(presence_field: str) -> str:
    return presence_field[: -len("_presence")] if presence_field.endswith("_presence") else presence_field


def recorded_tag_prefix(dataset, presence_field: str) -> Optional[str]:
    """The tag prefix of the :func:`apply` run that wrote ``presence_field`` (its label field when
    that run wrote no tags), from the field's ``info`` or, for fields written before it was
    recorded there, the run records; None when neither says."""
    f = dataset.get_field(presence_field)
    info = (getattr(f, "info", None) or {}) if f is not None else {}
    if info.get(TAG_PREFIX_INFO) or info.get(LABEL_FIELD_INFO):
        return info.get(TAG_PREFIX_INFO) or info.get(LABEL_FIELD_INFO)
    for cfg in _run_configs(dataset, presence_field):
        return getattr(cfg, "tag_prefix", None) or getattr(cfg, "label_field", None)
    return None


def recorded_threshold(dataset, presence_field: str) -> Optional[float]:
    """The presence threshold ``presence_field``'s labels and tags were last made with (by
    :func:`apply` or :func:`retag`), from the field's ``info`` or the run records; None when
    neither says."""
    f = dataset.get_field(presence_field)
    info = (getattr(f, "info", None) or {}) if f is not None else {}
    if info.get(THRESHOLD_INFO) is not None:
        return float(info[THRESHOLD_INFO])
    for cfg in _run_configs(dataset, presence_field):
        if getattr(cfg, "presence_threshold", None) is not None:
            return float(cfg.presence_threshold)
    return None


def _run_configs(dataset, presence_field: str):
    """The configs of this plugin's run records that wrote ``presence_field`` (records of other
    tools or versions that cannot be read are passed over)."""
    for key in dataset.list_runs():
        if not key.startswith(RUN_KEY_PREFIX):
            continue
        try:
            cfg = dataset.get_run_info(key).config
        except Exception:  # noqa: BLE001 - a record of another tool or version
            continue
        if getattr(cfg, "presence_field", None) == presence_field:
            yield cfg


def _record_threshold(dataset, presence_field: str, threshold: float) -> None:
    try:
        f = dataset.get_field(presence_field)
        info = dict(f.info or {})
        if info.get(THRESHOLD_INFO) != threshold:
            f.info = {**info, THRESHOLD_INFO: float(threshold)}
            f.save()
    except Exception as exc:  # noqa: BLE001 - only the form's default depends on it
        logger.warning("could not record the threshold on field %r: %s", presence_field, exc)


def check_threshold(threshold, name: str = "threshold") -> float:
    """``threshold`` as a float, checked as the ``presence_threshold`` setting (a finite number from
    0 to 1); the :class:`InvalidInputError` names ``name``."""
    try:
        return coerce_settings(LabelSettings, {"presence_threshold": threshold})["presence_threshold"]
    except SettingError as exc:  # the same check, under this caller's name
        raise SettingError(name, exc.value, exc.allowed, exc.help, exc.what) from None


def retag(
    sample_collection,
    presence_field: str = "cass_presence",
    threshold: float = DEFAULT_PRESENCE_THRESHOLD,
    tag_prefix: Optional[str] = None,
    skip_labels: Sequence[str] = ("background",),
) -> Dict[str, int]:
    """Re-derives the ``<tag_prefix>:<class>`` sample tags of ``sample_collection`` from the stored
    presence scores (no model is run): tags with the prefix are removed from every sample with
    scores, and the classes of :func:`fiftyone_cass.fo.outputs.tag_classes` (the one rule of every
    surface: score at least ``threshold``, never background; ``skip_labels``: further names not
    to tag) are tagged. Where the full score
    vector is stored (``all_labels``/``all_scores``), the visible presence labels are redone with
    the new threshold too.

    ``threshold`` is checked as apply's ``presence_threshold`` (a finite number from 0 to 1).
    ``tag_prefix`` defaults to the prefix of the :func:`apply` run that wrote ``presence_field``
    (:func:`recorded_tag_prefix`), else ``presence_field`` without its ``_presence`` suffix. Returns
    ``{tag: number of samples}`` over the collection (plus ``"_samples_changed"``)."""
    ds = sample_collection._root_dataset
    if not ds.has_sample_field(presence_field):
        raise InvalidInputError(f"dataset {ds.name!r} has no field {presence_field!r}")
    f = ds.get_field(presence_field)
    if not (isinstance(f, fof.EmbeddedDocumentField) and issubclass(f.document_type, fo.Classifications)):
        raise InvalidInputError(f"field {presence_field!r} is not a Classifications field")
    threshold = check_threshold(threshold)
    prefix = tag_prefix or recorded_tag_prefix(ds, presence_field) or default_tag_prefix(presence_field)
    skip = set(skip_labels or ())
    target = set(sample_collection.values("id"))
    # read from the dataset (the view may exclude the field), keep the collection's samples
    ids, stored = ds.exists(presence_field).values(["id", presence_field])
    new_tags: Dict[str, List[str]] = {}
    relabel: Dict[str, Any] = {}
    counts: Dict[str, int] = {}
    for sid, label in zip(ids, stored):
        if sid not in target:
            continue
        pairs = stored_scores(label)
        names = [n for n, _ in pairs]
        scores = [np.nan if s is None else float(s) for _, s in pairs]
        new_tags[sid] = presence_tags(prefix, names, scores, threshold, skip=skip)
        for t in new_tags[sid]:
            counts[t] = counts.get(t, 0) + 1
        if label.has_field("all_scores"):  # the full vector is stored: the visible labels follow
            new = presence_label(names, scores, threshold)  # the one rule (fo.outputs.tag_classes)
            if [(c.label, c.confidence) for c in new.classifications] != [
                (c.label, c.confidence) for c in label.classifications or []
            ]:
                relabel[sid] = new
    if relabel:
        ds.set_values(presence_field, relabel, key_field="id")
    changed = replace_prefixed_tags(ds, list(new_tags), prefix, new_tags) if new_tags else 0
    _record_threshold(ds, presence_field, threshold)  # the retag form's next default
    counts = dict(sorted(counts.items()))
    counts["_samples_changed"] = changed
    return counts


__all__ = [
    "ApplySummary",
    "AutoLabelRun",
    "DISK_THRESHOLD",
    "apply",
    "check_threshold",
    "clear_segmenter_cache",
    "default_mask_dir",
    "get_segmenter",
    "is_valid_png",
    "mask_file_path",
    "mask_fits",
    "recorded_tag_prefix",
    "referenced_mask_paths",
    "retag",
    "shard_index",
    "validate_shard",
    "write_mask_png",
]
