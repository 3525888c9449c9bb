"""Auto-labelling of FiftyOne samples with CASS (+ CDAM): the library function behind the
``auto_label`` / ``retag_presence`` operators (and the CLI).

``apply(sample_collection, classes=[...])`` writes, for every target sample,

* ``<label_field>``: a :class:`fiftyone.core.labels.Segmentation` at the image's original size,
  its mask in a PNG file (``mask_path``, ``<mask_dir>/<label_field>/<sample id>.png``) or in the
  database (``mask``); ``dataset.mask_targets[label_field]`` names the ids (0 = background for a
  free vocabulary);
* ``<label_field>_presence``: ``fo.Classifications`` with every class's presence score (the
  object-presence prior of CASS, a softmax over the classes of the global image-text similarity);
* sample tags ``<tag_prefix>:<class>`` for the classes whose score is at least
  ``presence_threshold`` (re-tag from the stored scores with :func:`retag`);
* ``<label_field>_error``: why the sample could not be labelled (cleared on success).

Reliability (a run can be killed at any point and started again):

* samples go through in batches: masks are written first (temp file + ``os.replace``, so a mask
  file is complete or absent), then the batch's samples are saved, the label field last;
* every label records ``config_id``, a hash of the settings that determine the masks. A sample is
  *done* when its label has the current ``config_id`` and its mask is present and valid (a PNG
  with its end chunk, or a mask in the database). Running again with the same settings labels
  only the samples that are not done, so a killed run resumes and a finished run is a no-op;
  nothing is labelled twice and no sample points at a missing or truncated mask file;
* ``shard=(i, n)`` keeps the samples whose id hashes to ``i`` modulo ``n``: ``n`` processes with
  ``i = 0..n-1`` label one dataset concurrently without overlap;
* an unreadable image is skipped with its error in ``<label_field>_error`` and the log; the
  returned :class:`ApplySummary` counts the failures by reason;
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

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

import fiftyone as fo
import fiftyone.core.fields as fof
import fiftyone.core.utils as fou
from fiftyone import ViewField as F

from .app_support import show_labels_in_app
from ..errors import InvalidInputError
from ..fileio import atomic_write
from ..models.segmenter import DEFAULT_METHOD, METHODS, Segmenter

logger = logging.getLogger(__name__)

#: masks go to disk by default ("auto") from this many target samples on
DISK_THRESHOLD = 1000
#: default presence-score threshold for the concept tags
DEFAULT_PRESENCE_THRESHOLD = 0.1
#: names of a ground-truth id 0 that mean "background"
BACKGROUND_NAMES = {"background", "bg", "_background_", "__background__", "unlabeled", "unlabelled", "none"}
#: names of ground-truth ids that are never predicted (e.g. 255)
IGNORE_NAMES = {"ignore", "ignored", "void", "unlabeled", "unlabelled", "_ignore_", "__ignore__"}
#: attribute of each written Segmentation that identifies the settings that made it
CONFIG_ATTR = "config_id"
#: run key (``dataset.list_runs()``) under which the settings of a label field are recorded
RUN_KEY_PREFIX = "cass_"
_MAX_LISTED_FAILURES = 1000
_RESERVED_FIELDS = {"id", "_id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


# ------------------------------------------------------------------------------------------------
# Small helpers (public: the CLI and the tests use them)
# ------------------------------------------------------------------------------------------------
def shard_index(sample_id: str, num_shards: int) -> int:
    """The shard (``0..num_shards-1``) of a sample id: a stable hash, the same in every process."""
    return int(hashlib.md5(str(sample_id).encode("ascii")).hexdigest()[:12], 16) % int(num_shards)


def validate_shard(shard) -> Optional[Tuple[int, int]]:
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise InvalidInputError(f"shard must be a pair (index, count), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InvalidInputError(f"shard {shard!r}: need count >= 1 and 0 <= index < count")
    return i, n


def is_valid_png(path: Optional[str]) -> bool:
    """Cheap check that a mask file is present and complete: PNG signature and IEND trailer."""
    if not path:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head != _PNG_SIGNATURE:
                return False
            f.seek(0, os.SEEK_END)
            if f.tell() < 8 + 25 + 12:
                return False
            f.seek(-12, os.SEEK_END)
            return f.read(12) == _PNG_END
    except OSError:
        return False


def write_mask_png(path: str, label_map: np.ndarray) -> None:
    """Writes ``label_map`` (uint8, or uint16 for > 256 labels) to ``path`` atomically
    (:func:`fiftyone_cass.fileio.atomic_write`: hidden temp file, fsync, ``os.replace``)."""
    arr = np.ascontiguousarray(label_map)
    if arr.dtype not in (np.uint8, np.uint16):
        arr = arr.astype(np.uint16 if int(arr.max(initial=0)) > 255 else np.uint8)
    atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"))


def mask_file_path(mask_dir: str, label_field: str, sample_id: str) -> str:
    """The deterministic mask location of a sample: ``<mask_dir>/<label_field>/<sample_id>.png``."""
    return os.path.join(mask_dir, label_field, f"{sample_id}.png")


def default_mask_dir(dataset) -> str:
    """``<fo.config.default_dataset_dir>/fiftyone_cass_masks/<dataset name>``."""
    safe = re.sub(r"[^\w.-]+", "_", dataset.name).strip("._") or "dataset"
    return os.path.join(fo.config.default_dataset_dir, "fiftyone_cass_masks", safe)


def run_key_for(label_field: str) -> str:
    return RUN_KEY_PREFIX + label_field


def _format(template: Optional[str], label_field: str) -> Optional[str]:
    if template is None:
        return None
    return str(template).format(label_field=label_field)


# ------------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------------
@dataclass
class Vocabulary:
    """How the Segmenter's output relates to what is written.

    ``names[j]`` is the name of Segmenter label ``j``; ``lut`` (or None = identity) maps Segmenter
    label ``j`` to the written id ``lut[j]``; ``mask_targets`` names the written ids."""

    names: List[str]
    mask_targets: Dict[int, str]
    lut: Optional[np.ndarray] = None
    background_label: Optional[int] = None  # Segmenter label of background (not tagged)
    source: str = "classes"

    def map(self, label_map: np.ndarray) -> np.ndarray:
        return label_map if self.lut is None else self.lut[label_map]


def _norm_name(name: str) -> str:
    return str(name).strip().lower()


def vocabulary_from_mask_targets(mask_targets: Dict[Any, str], field_name: str = "ground truth"):
    """Class lines and id mapping that make the predictions use the ids of ``mask_targets``.

    Returns ``(classes, lut, background_id, mask_targets_out)``: ``classes`` for
    ``Segmenter(classes=...)`` (GT classes in id order), ``lut`` mapping Segmenter label ``j``
    (0 = background, ``k`` = ``classes[k-1]``) to the GT id, ``background_id`` the GT background id
    or None (then the background threshold must be off), and the ``mask_targets`` of the output.
    """
    if not mask_targets:
        raise InvalidInputError(
            f"{field_name} has no mask_targets: set dataset.mask_targets[{field_name!r}] or pass classes=[...]"
        )
    targets: Dict[int, str] = {}
    for k, v in mask_targets.items():
        if isinstance(k, str) and k.lstrip("-").isdigit():
            k = int(k)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise InvalidInputError(
                f"{field_name}: mask_targets key {k!r} is not an integer id (RGB mask targets are not supported)"
            )
        if int(k) < 0 or int(k) > 65535:
            raise InvalidInputError(f"{field_name}: mask_targets id {k} is outside 0..65535")
        targets[int(k)] = str(v)
    background_id = 0 if (0 in targets and _norm_name(targets[0]) in BACKGROUND_NAMES) else None
    classes, gt_ids = [], []
    for k in sorted(targets):
        if k == background_id:
            continue
        name = targets[k].strip()
        if not name or _norm_name(name) in IGNORE_NAMES or _norm_name(name) == "background":
            continue
        classes.append(name)
        gt_ids.append(k)
    if not classes:
        raise InvalidInputError(f"{field_name}: mask_targets {targets!r} name no class to predict")
    top = max(gt_ids + [background_id or 0])
    lut = np.zeros(len(classes) + 1, dtype=np.uint8 if top <= 255 else np.uint16)
    lut[0] = background_id if background_id is not None else 0  # never produced without background
    lut[1:] = gt_ids
    out = {k: targets[k] for k in gt_ids}
    if background_id is not None:
        out[background_id] = targets[background_id]
    return classes, lut, background_id, dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------
# Segmenters kept loaded across calls (the backbones themselves are cached per process too)
# ------------------------------------------------------------------------------------------------
_SEGMENTERS: "collections.OrderedDict[str, Segmenter]" = collections.OrderedDict()
_SEGMENTERS_LOCK = threading.Lock()
_MAX_SEGMENTERS = 4


def get_segmenter(**kwargs) -> Segmenter:
    """A :class:`Segmenter` for these arguments, reused across calls in this process (an LRU of
    the last few configurations). ``batch_size`` is not part of the key."""
    batch_size = int(kwargs.pop("batch_size", 4))
    key = json.dumps(kwargs, sort_keys=True, default=repr)
    with _SEGMENTERS_LOCK:
        seg = _SEGMENTERS.get(key)
        if seg is not None:
            _SEGMENTERS.move_to_end(key)
    if seg is None:
        seg = Segmenter(batch_size=batch_size, **kwargs)
        with _SEGMENTERS_LOCK:
            _SEGMENTERS[key] = seg
            while len(_SEGMENTERS) > _MAX_SEGMENTERS:
                _SEGMENTERS.popitem(last=False)
    if batch_size < 1:
        raise InvalidInputError("batch_size must be >= 1")
    seg.batch_size = batch_size
    return seg


def clear_segmenter_cache() -> None:
    with _SEGMENTERS_LOCK:
        _SEGMENTERS.clear()


def _vocabulary_for(seg: Segmenter, source: str, gt=None) -> Vocabulary:
    names = list(seg.class_names)
    bg = seg.background_id
    if source == "gt_field":
        classes, lut, gt_bg, targets = gt
        names = ["background"] + list(classes)
        return Vocabulary(names, targets, lut, 0, source)
    if bg is not None:
        names[bg] = "background"  # the class line of background holds background *words*
    return Vocabulary(names, {i: n for i, n in enumerate(names)}, None, bg, source)


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
    failure_reasons: Dict[str, int] = field(default_factory=dict)
    failures: List[Tuple[str, str, str]] = field(default_factory=list)  # (id, filepath, error), capped
    mask_dir: Optional[str] = None  # None: masks in the database
    mask_targets: Dict[int, str] = field(default_factory=dict)
    presence_field: Optional[str] = None
    error_field: Optional[str] = None
    shard: Optional[Tuple[int, int]] = None
    seconds: float = 0.0

    @property
    def num_processed(self) -> int:
        return self.num_labeled + self.num_failed

    def to_dict(self, max_failures: int = 20) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failures"] = [list(f) for f in self.failures[:max_failures]]
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
        if self.num_failed:
            lines.append(f"{self.num_failed} failed (see the '{self.error_field}' field):")
            for reason, n in sorted(self.failure_reasons.items(), key=lambda x: -x[1]):
                lines.append(f"  {n} x {reason}")
        else:
            lines.append("0 failed")
        return "\n".join(lines)


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
class AutoLabelRun:
    """One labelling run. ``apply()`` is ``AutoLabelRun(...).run(progress)``; the operators drive
    :meth:`iter_progress` to report progress between batches. Arguments: see :func:`apply`."""

    def __init__(
        self,
        sample_collection,
        classes: Union[None, str, Sequence[str]] = None,
        *,
        preset: Optional[str] = None,
        gt_field: Optional[str] = None,
        label_field: str = "cass",
        method: str = DEFAULT_METHOD,
        backbone: str = "openai",
        device: Optional[str] = None,
        batch_size: int = 4,
        precision: str = "fp32",
        masks: str = "auto",
        mask_dir: Optional[str] = None,
        skip_existing: bool = False,
        overwrite: bool = False,
        presence_field: Optional[str] = "{label_field}_presence",
        tag_prefix: Optional[str] = "{label_field}",
        presence_threshold: float = DEFAULT_PRESENCE_THRESHOLD,
        error_field: Optional[str] = "{label_field}_error",
        shard=None,
        clip_checkpoint: Optional[str] = None,
        dino_checkpoint: Optional[str] = None,
        background=None,
        segmenter: Optional[Segmenter] = None,
        **options,
    ):
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
        if not isinstance(label_field, str) or not label_field.isidentifier() or label_field.startswith("_"):
            raise InvalidInputError(f"label_field must be a plain field name, got {label_field!r}")
        if label_field in _RESERVED_FIELDS:
            raise InvalidInputError(f"label_field {label_field!r} is a reserved sample field")
        self.label_field = label_field
        self.presence_field = _format(presence_field, label_field) or None
        self.tag_prefix = (_format(tag_prefix, label_field) or None) if self.presence_field else None
        self.error_field = _format(error_field, label_field) or None
        for name, f in (("presence_field", self.presence_field), ("error_field", self.error_field)):
            if f is not None and (not f.isidentifier() or f in _RESERVED_FIELDS or f == label_field):
                raise InvalidInputError(f"{name} {f!r} is not a usable field name")
        if self.presence_field and self.presence_field == self.error_field:
            raise InvalidInputError("presence_field and error_field must differ")
        self.presence_threshold = float(presence_threshold)
        self.skip_existing = bool(skip_existing)
        self.overwrite = bool(overwrite)
        self.shard = validate_shard(shard)
        if masks not in ("auto", "disk", "database", "db"):
            raise InvalidInputError(f"masks must be 'auto', 'disk' or 'database', got {masks!r}")
        self.masks = "database" if masks == "db" else masks
        self._mask_dir_arg = mask_dir
        if int(batch_size) < 1:
            raise InvalidInputError("batch_size must be >= 1")
        self.batch_size = int(batch_size)

        # vocabulary + segmenter (before any write: a bad vocabulary fails here)
        given = [x for x in (("classes", classes), ("preset", preset), ("gt_field", gt_field)) if x[1] is not None]
        if segmenter is not None:
            if given:
                raise InvalidInputError("give either a segmenter or classes/preset/gt_field, not both")
            self.segmenter = segmenter
            segmenter.batch_size = self.batch_size
            self.vocab = _vocabulary_for(segmenter, "segmenter")
            checkpoints = (None, None)
        else:
            if len(given) != 1:
                raise InvalidInputError(
                    "give exactly one of classes=[...], preset='...' or gt_field='...' "
                    f"(got {', '.join(g[0] for g in given) or 'none'})"
                )
            if method not in METHODS:
                raise InvalidInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
            kw = dict(method=method, backbone=backbone, device=None if device in (None, "", "auto") else str(device),
                      precision=precision, clip_checkpoint=clip_checkpoint, dino_checkpoint=dino_checkpoint,
                      batch_size=self.batch_size)
            gt = None
            if preset is not None:
                kw["preset"] = preset
            elif classes is not None:
                kw.update(classes=classes if isinstance(classes, str) else list(classes), background=background)
            else:
                if not self.dataset.has_sample_field(gt_field):
                    raise InvalidInputError(f"gt_field {gt_field!r} is not a field of dataset {self.dataset.name!r}")
                targets = self.dataset.mask_targets.get(gt_field) or self.dataset.default_mask_targets
                gt = vocabulary_from_mask_targets(targets, gt_field)
                kw.update(classes=gt[0], background=background)
                if gt[2] is None:
                    if options.get("bg_rule", "none") != "none":
                        raise InvalidInputError(
                            f"{gt_field}: its id 0 is a class, not background, so bg_rule must be 'none'"
                        )
                    options = {**options, "bg_rule": "none"}
            try:
                self.segmenter = get_segmenter(**kw, **options)
            except InvalidInputError as exc:
                where = f"gt_field {gt_field!r} mask_targets" if gt_field else "vocabulary"
                raise InvalidInputError(f"{where}: {exc}") from exc
            self.vocab = _vocabulary_for(self.segmenter, "gt_field" if gt_field else ("preset" if preset else "classes"), gt)
            checkpoints = (clip_checkpoint, dino_checkpoint)
        seg = self.segmenter
        self.settings = {
            "version": 1,
            "class_lines": list(seg.class_lines),
            "lut": None if self.vocab.lut is None else [int(x) for x in self.vocab.lut],
            "method": seg.method,
            "backbone": seg.backbone,
            "precision": seg.precision,
            "clip_checkpoint": checkpoints[0],
            "dino_checkpoint": checkpoints[1],
            "options": json.loads(json.dumps(dataclasses.asdict(seg.options), default=list)),
        }
        self.config_id = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        self.summary = ApplySummary(label_field, self.config_id, mask_targets=dict(self.vocab.mask_targets),
                                    presence_field=self.presence_field, error_field=self.error_field,
                                    shard=self.shard)
        self._todo: Optional[List[Tuple[str, str]]] = None

    # -------------------------------------------------------------- planning
    def _check_field_type(self, name: str, embedded=None, ftype=None):
        f = self.dataset.get_field(name)
        if f is None:
            return False
        if embedded is not None:
            ok = isinstance(f, fof.EmbeddedDocumentField) and issubclass(f.document_type, embedded)
            what = embedded.__name__
        else:
            ok = isinstance(f, ftype)
            what = ftype.__name__
        if not ok:
            raise InvalidInputError(f"field {name!r} of dataset {self.dataset.name!r} exists and is not a {what} field")
        return True

    def _declare(self, name, **kwargs):
        if self.dataset.has_sample_field(name):
            return
        try:
            self.dataset.add_sample_field(name, **kwargs)
        except ValueError:  # another process declared it meanwhile
            self.dataset.reload()
            if not self.dataset.has_sample_field(name):
                raise

    def plan(self) -> int:
        """Decides which samples to label and prepares the dataset. Returns how many to label.
        Raises :class:`InvalidInputError` (before writing anything) when the label field holds
        labels of other settings and neither ``overwrite`` nor ``skip_existing`` is set."""
        ds = self.dataset
        ds.reload()  # fields/runs/mask_targets another process may have written
        lf = self.label_field
        exists = self._check_field_type(lf, embedded=fo.Segmentation)
        if self.presence_field:
            self._check_field_type(self.presence_field, embedded=fo.Classifications)
        if self.error_field:
            self._check_field_type(self.error_field, ftype=fof.StringField)

        ids = self.view.values("id")
        self.summary.num_target = len(ids)
        target = set(ids)
        done: set = set()
        if exists:
            # read from the dataset (the target view may exclude the field), keep the target's
            lids, cfgs, paths, has_mask = ds.exists(lf).values(
                ["id", f"{lf}.{CONFIG_ATTR}", f"{lf}.mask_path", F(f"{lf}.mask").exists()]
            )
            keep = [k for k, sid in enumerate(lids) if sid in target]
            lids, cfgs, paths, has_mask = ([x[k] for k in keep] for x in (lids, cfgs, paths, has_mask))
            foreign = sum(1 for c in cfgs if c != self.config_id)
            if foreign and not (self.overwrite or self.skip_existing):
                raise InvalidInputError(
                    f"field {lf!r} of dataset {ds.name!r} already holds labels of other settings on "
                    f"{foreign} of the {len(ids)} target samples; pass overwrite=True to replace them "
                    "or skip_existing=True to label only the samples without labels "
                    "(a run with the same settings resumes by itself)"
                )
            for sid, cfg, path, in_db in zip(lids, cfgs, paths, has_mask):
                if cfg != self.config_id and not self.skip_existing:
                    continue
                if (path and is_valid_png(path)) or (not path and in_db):
                    done.add(sid)
            old_targets = ds.mask_targets.get(lf)
            if foreign and old_targets and {int(k): v for k, v in old_targets.items()} != self.vocab.mask_targets:
                logger.warning(
                    "%s: the mask_targets of field %r change from %s to %s; samples outside this run keep "
                    "labels in the old id space", ds.name, lf, old_targets, self.vocab.mask_targets,
                )

        if self.shard is not None:
            i, n = self.shard
            ids = [s for s in ids if shard_index(s, n) == i]
        self.summary.num_in_shard = len(ids)
        self.summary.num_already_done = sum(1 for s in ids if s in done)
        todo_ids = set(s for s in ids if s not in done)

        # storage
        if self.masks == "auto":
            use_disk = self.summary.num_target >= DISK_THRESHOLD or self._mask_dir_arg is not None
        else:
            use_disk = self.masks == "disk"
        self.mask_dir = os.path.abspath(os.path.expanduser(self._mask_dir_arg or default_mask_dir(ds))) if use_disk else None
        self.summary.mask_dir = self.mask_dir

        # schema, mask_targets, run record (idempotent: concurrent workers write the same)
        self._declare(lf, ftype=fof.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
        self._declare(f"{lf}.{CONFIG_ATTR}", ftype=fof.StringField)
        if self.presence_field:
            self._declare(self.presence_field, ftype=fof.EmbeddedDocumentField, embedded_doc_type=fo.Classifications)
        if self.error_field:
            self._declare(self.error_field, ftype=fof.StringField)
        if todo_ids:
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
        todo = self._todo
        total = len(todo)
        yield 0, total
        batches = [todo[start : start + self.batch_size] for start in range(0, total, self.batch_size)]
        done = 0
        if batches:
            with ThreadPoolExecutor(1, thread_name_prefix="cass-load") as loader, ThreadPoolExecutor(
                1, thread_name_prefix="cass-write"
            ) as writer:
                loading = loader.submit(self._load_batch, batches[0])
                writing = None
                for i, batch in enumerate(batches):
                    loaded = loading.result()
                    if i + 1 < len(batches):
                        loading = loader.submit(self._load_batch, batches[i + 1])
                    paths = [p for _, p in batch]
                    outputs = self.segmenter.segment_loaded(loaded, paths)
                    del loaded
                    if writing is not None:
                        done += writing.result()
                        yield done, total
                    writing = writer.submit(self._write_batch, batch, outputs)
                    del outputs
                done += writing.result()
                yield done, total
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
        paths = [p for _, p in batch]
        return self.segmenter.load_safe(paths, paths)

    def _write_batch(self, batch: List[Tuple[str, str]], outputs) -> int:
        """Saves one batch's results and errors; returns the number of samples processed."""
        vocab, lf = self.vocab, self.label_field
        ids = [s for s, _ in batch]
        paths = [p for _, p in batch]

        labels: Dict[str, Any] = {}
        presence: Dict[str, Any] = {}
        new_tags: Dict[str, List[str]] = {}
        errors: Dict[str, Optional[str]] = {}
        # 1. masks (files first, atomically)
        for sid, path, (res, err) in zip(ids, paths, outputs):
            if res is not None:
                try:
                    mask = vocab.map(res.label_map)
                    if self.mask_dir:
                        mpath = mask_file_path(self.mask_dir, lf, sid)
                        write_mask_png(mpath, mask)
                        labels[sid] = fo.Segmentation(mask_path=mpath, **{CONFIG_ATTR: self.config_id})
                    else:
                        labels[sid] = fo.Segmentation(mask=mask, **{CONFIG_ATTR: self.config_id})
                except Exception as exc:  # noqa: BLE001 - e.g. disk full: reported per sample
                    res, err = None, f"{path}: cannot write mask ({type(exc).__name__}: {exc})"
            if res is None:
                err = err or f"{path}: unknown error"
                errors[sid] = err
                labels[sid] = None
                presence[sid] = None
                new_tags[sid] = []
                self._record_failure(sid, path, err)
                continue
            errors[sid] = None
            scores = res.presence
            presence[sid] = fo.Classifications(
                classifications=[
                    fo.Classification(label=vocab.names[j], confidence=float(scores[j]))
                    for j in range(len(scores)) if np.isfinite(scores[j])
                ]
            )
            new_tags[sid] = [
                f"{self.tag_prefix}:{vocab.names[j]}"
                for j in range(len(scores))
                if j != vocab.background_label and np.isfinite(scores[j]) and scores[j] >= self.presence_threshold
            ]
            self.summary.num_labeled += 1

        # 2. everything but the label, 3. the label (a sample is done once its label is saved)
        ds = self.dataset
        if self.error_field:
            ds.set_values(self.error_field, errors, key_field="id")
        if self.presence_field:
            ds.set_values(self.presence_field, presence, key_field="id")
            if self.tag_prefix:
                self._write_tags(ids, new_tags)
        ds.set_values(lf, labels, key_field="id")
        return len(batch)

    def _write_tags(self, ids: List[str], new_tags: Dict[str, List[str]]):
        prefix = self.tag_prefix + ":"
        cur_ids, cur_tags = self.dataset.select(ids).values(["id", "tags"])
        updates = {}
        for sid, tags in zip(cur_ids, cur_tags):
            tags = list(tags or [])
            kept = [t for t in tags if not t.startswith(prefix)]
            merged = kept + [t for t in new_tags.get(sid, []) if t not in kept]
            if merged != tags:
                updates[sid] = merged
        if updates:
            self.dataset.set_values("tags", updates, key_field="id")

    def _record_failure(self, sid: str, path: str, err: str):
        self.summary.num_failed += 1
        reason = _reason(err, path)
        self.summary.failure_reasons[reason] = self.summary.failure_reasons.get(reason, 0) + 1
        if len(self.summary.failures) < _MAX_LISTED_FAILURES:
            self.summary.failures.append((sid, path, err))
        logger.warning("sample %s skipped: %s", sid, err)


def apply(sample_collection, classes=None, *, progress=None, **kwargs) -> ApplySummary:
    """Labels the samples of ``sample_collection`` with open-vocabulary semantic segmentation.

    Args:
        sample_collection: a FiftyOne dataset or view of images (exactly its samples are labelled)
        classes: class names (list, or one string separated by commas/new lines; in a list an
            entry may hold ", "-separated synonyms). Or give ``preset=`` or ``gt_field=``.
        preset: a published protocol (``voc21``, ``voc20``, ``context60``, ``context59``,
            ``coco_object``, ``coco_stuff``, ``ade20k``, ``cityscapes``)
        gt_field: use the ``mask_targets`` of this ground-truth field (output ids = GT ids)
        label_field ("cass"): the Segmentation field to write
        method ("cass+cdam"), backbone ("openai"), device (None: cuda if available), batch_size
            (4), precision ("fp32"), clip_checkpoint, dino_checkpoint, background: see
            :class:`fiftyone_cass.Segmenter`
        masks ("auto"): ``"disk"`` (PNG files, ``mask_path``), ``"database"``, or ``"auto"``
            (disk from :data:`DISK_THRESHOLD` target samples on, or when ``mask_dir`` is given)
        mask_dir (None): root of the mask files (default :func:`default_mask_dir`); files are
            ``<mask_dir>/<label_field>/<sample id>.png``
        skip_existing (False): leave samples that already have a valid label of any settings
        overwrite (False): replace labels of other settings (else such labels raise an error)
        presence_field ("{label_field}_presence"): ``fo.Classifications`` of presence scores
            (None: neither scores nor tags)
        tag_prefix ("{label_field}"): sample tags ``<prefix>:<class>`` (None: no tags)
        presence_threshold (0.1): score from which a class is tagged
        error_field ("{label_field}_error"): per-sample failure message (None: log only)
        shard (None): ``(i, n)``: label only the samples of shard ``i`` of ``n``
        segmenter (None): a ready :class:`Segmenter` instead of classes/preset/gt_field
        progress (None): FiftyOne progress convention (bool or callable receiving the ProgressBar)
        **options: any :class:`fiftyone_cass.SegmenterOptions` field

    Returns:
        an :class:`ApplySummary` (``print(summary)`` for a report)
    """
    return AutoLabelRun(sample_collection, classes, **kwargs).run(progress=progress)


# ------------------------------------------------------------------------------------------------
# Re-tagging from stored scores
# ------------------------------------------------------------------------------------------------
def default_tag_prefix(presence_field: str) -> str:
    return presence_field[: -len("_presence")] if presence_field.endswith("_presence") else presence_field


def retag(
    sample_collection,
    presence_field: str = "cass_presence",
    threshold: float = DEFAULT_PRESENCE_THRESHOLD,
    tag_prefix: Optional[str] = None,
    skip_labels: Sequence[str] = ("background",),
) -> Dict[str, int]:
    """Re-derives the ``<tag_prefix>:<class>`` sample tags of ``sample_collection`` from the stored
    presence scores (no model is run): tags with the prefix are removed from every sample with
    scores, and each class whose score is at least ``threshold`` is tagged.

    ``tag_prefix`` defaults to ``presence_field`` without its ``_presence`` suffix. Returns
    ``{tag: number of samples}`` over the collection (plus ``"_samples_changed"``)."""
    ds = sample_collection._root_dataset
    if not ds.has_sample_field(presence_field):
        raise InvalidInputError(f"dataset {ds.name!r} has no field {presence_field!r}")
    f = ds.get_field(presence_field)
    if not (isinstance(f, fof.EmbeddedDocumentField) and issubclass(f.document_type, fo.Classifications)):
        raise InvalidInputError(f"field {presence_field!r} is not a Classifications field")
    prefix = (tag_prefix or default_tag_prefix(presence_field)) + ":"
    threshold = float(threshold)
    skip = set(skip_labels or ())
    target = set(sample_collection.values("id"))
    # read from the dataset (the view may exclude the field), keep the collection's samples
    ids, labels, confs, tags = ds.exists(presence_field).values(
        ["id", f"{presence_field}.classifications.label", f"{presence_field}.classifications.confidence", "tags"]
    )
    updates: Dict[str, List[str]] = {}
    counts: Dict[str, int] = {}
    for sid, ls, cs, ts in zip(ids, labels, confs, tags):
        if sid not in target:
            continue
        ts = list(ts or [])
        kept = [t for t in ts if not t.startswith(prefix)]
        new = [prefix + l for l, c in zip(ls or [], cs or []) if l not in skip and c is not None and c >= threshold]
        for t in new:
            counts[t] = counts.get(t, 0) + 1
        merged = kept + [t for t in new if t not in kept]
        if merged != ts:
            updates[sid] = merged
    if updates:
        ds.set_values("tags", updates, key_field="id")
    counts = dict(sorted(counts.items()))
    counts["_samples_changed"] = len(updates)
    return counts


__all__ = [
    "ApplySummary",
    "AutoLabelRun",
    "DISK_THRESHOLD",
    "Vocabulary",
    "apply",
    "clear_segmenter_cache",
    "default_mask_dir",
    "get_segmenter",
    "is_valid_png",
    "mask_file_path",
    "retag",
    "shard_index",
    "validate_shard",
    "vocabulary_from_mask_targets",
    "write_mask_png",
]
