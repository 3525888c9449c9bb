"""Concept heatmaps for any text: where in each image is "a red car"?

:func:`concept_heatmap` writes, for every target sample, an ``fo.Heatmap`` of the per-pixel
probability of ``prompt`` against a vocabulary (the classes given, or those of a labelled field's
``mask_targets``; with none, against the reference's background words), at the original image
size, through the one inference path (:meth:`~fiftyone_cass.fo.model.CassModel.segment`, the
engine's ``probability_maps``). Like labelling runs: batches, progress, per-sample errors in
``<heatmap_field>_error``, PNG files written atomically (``map_path``, when masks go to disk) or
maps in the database, and resume: a sample whose heatmap was made with the same prompt, vocabulary
and settings (``config_id`` on the Heatmap) and whose file is valid is not computed again.
Values 0..1 are stored as 0..255 (``range`` [0, 255]), as the uncertainty maps.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import fiftyone as fo
import fiftyone.core.fields as fof
import fiftyone.core.utils as fou
from fiftyone import ViewField as F

from fiftyone_cass.config.settings import ModelSettings, format_field, resolve_masks
from fiftyone_cass.config.schema import split_settings
from fiftyone_cass.errors import InvalidInputError, kw, use
from fiftyone_cass.fileio import is_valid_png, write_mask_png
from fiftyone_cass.fo.claims import ClaimedRun
from fiftyone_cass.fo.outputs import HEATMAP_RANGE, heatmap_bytes
from fiftyone_cass.fo.model import CONFIG_ATTR, CassModel, load_item
from fiftyone_cass.fo.shards import shard_index, validate_shard
from fiftyone_cass.models.vocabulary import BACKGROUND_NAMES, IGNORE_NAMES, name_key

logger = logging.getLogger(__name__)
#: prefix of a concept-heatmap run's settings in its field claim: a labelling run never shares it
CLAIM_PREFIX = "heatmap:"


@dataclass
class ConceptSummary:
    heatmap_field: str
    prompt: str
    config_id: str
    num_target: int = 0
    num_already_done: int = 0
    num_computed: int = 0
    num_failed: int = 0
    failures: List[Tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> Dict:
        return dict(heatmap_field=self.heatmap_field, prompt=self.prompt, config_id=self.config_id,
                    num_target=self.num_target, num_already_done=self.num_already_done,
                    num_computed=self.num_computed, num_failed=self.num_failed,
                    failures=[list(f) for f in self.failures[:20]], seconds=round(self.seconds, 3))


def _vocabulary(dataset, prompt: str, classes, label_field) -> Tuple[List[str], bool]:
    """``(classes, has_vocabulary)``: the classes the prompt competes with."""
    if classes is not None:
        from fiftyone_cass.models.vocabulary import parse_classes

        return [c for c in parse_classes(classes) if c], True
    if label_field:
        targets = dataset.mask_targets.get(label_field) or {}
        if not targets:
            raise InvalidInputError(f"{kw('label_field')} {label_field!r} has no mask_targets to take the vocabulary from")
        names = [str(v) for k, v in sorted(targets.items(), key=lambda kv: int(kv[0]))]
        return [n for n in names if name_key(n) not in BACKGROUND_NAMES | IGNORE_NAMES], True
    return [], False


class ConceptHeatmapRun(ClaimedRun):
    """One concept-heatmap run; :func:`concept_heatmap` is ``ConceptHeatmapRun(...).run()``."""

    def __init__(self, sample_collection, prompt: str, heatmap_field: str = "concept_heatmap", *,
                 classes=None, label_field: Optional[str] = None, background=None, masks: str = "auto",
                 mask_dir: Optional[str] = None, error_field: Optional[str] = "{label_field}_error",
                 shard=None, overwrite: bool = False, **settings):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError(f"{kw('prompt')} {prompt!r} is not a non-empty text")
        if not isinstance(heatmap_field, str) or not heatmap_field.isidentifier() or heatmap_field.startswith("_"):
            raise InvalidInputError(f"{kw('heatmap_field')} {heatmap_field!r} is not a plain field name")
        if not isinstance(overwrite, bool):
            raise InvalidInputError(f"{kw('overwrite')} must be True or False, got {overwrite!r}")
        self.view = sample_collection
        self.dataset = sample_collection._root_dataset
        if self.dataset.media_type != "image":
            raise InvalidInputError(f"dataset {self.dataset.name!r} is not an image dataset")
        self.prompt = prompt.strip()
        self.field = heatmap_field
        self.error_field = format_field(error_field, heatmap_field) if error_field else None
        self.shard = validate_shard(shard) if shard is not None else None
        self.overwrite = overwrite
        model_settings, options = split_settings(ModelSettings, dict(settings))
        vocab, has_vocab = _vocabulary(self.dataset, self.prompt, classes, label_field)
        keys = [name_key(c.split(",")[0]) for c in vocab]
        if name_key(self.prompt) in keys:
            all_classes = vocab
            self.label = keys.index(name_key(self.prompt)) + 1
        else:
            all_classes = vocab + [self.prompt]
            self.label = len(all_classes)
        kw = {n: getattr(model_settings, n) for n in ("method", "backbone", "device", "batch_size", "precision",
                                                       "clip_checkpoint", "dino_checkpoint")}
        kw["background"] = background if (background is not None or has_vocab) else "default"
        self.model = CassModel(all_classes, presence=False, confidence=False, **kw, **options)
        self.config_id = self.model.config_id
        self.batch_size = model_settings.batch_size
        self.masks, self._mask_dir_arg = masks, mask_dir
        self.summary = ConceptSummary(heatmap_field, self.prompt, self.config_id)
        self._todo: Optional[List[Tuple[str, str]]] = None
        self.started = time.monotonic()

    # -------------------------------------------------------------- planning
    def plan(self) -> int:
        """Claims the heatmap field (as a labelling run claims its label field,
        :mod:`fiftyone_cass.fo.claims`: a run of the same prompt and settings joins, one of others
        is refused while this one runs), checks the fields and decides which samples to compute.
        Refuses (before writing anything) heatmaps of another prompt, vocabulary or settings on
        target samples unless ``overwrite``. Returns how many samples to compute."""
        return self.claimed_plan(self.dataset, self.field, CLAIM_PREFIX + self.config_id, self._plan)

    def _plan(self) -> int:
        from fiftyone_cass.fo.apply import check_field_type, declare_field, default_mask_dir

        ds = self.dataset
        ds.reload()
        check_field_type(ds, self.field, embedded=fo.Heatmap)
        if self.error_field:
            check_field_type(ds, self.error_field, ftype=fof.StringField)
        ids, paths = self.view.values(["id", "filepath"])
        self.summary.num_target = len(ids)
        done = set()
        if ds.has_sample_field(self.field):
            sids, cfgs, mpaths, in_db = ds.select(ids).exists(self.field).values(
                ["id", f"{self.field}.{CONFIG_ATTR}", f"{self.field}.map_path", F(f"{self.field}.map").exists()])
            foreign = sum(1 for c in cfgs if c != self.config_id)
            if foreign and not self.overwrite:
                raise InvalidInputError(
                    f"field {self.field!r} of dataset {ds.name!r} already holds heatmaps of another prompt, vocabulary "
                    f"or settings on {foreign} of the {len(ids)} target samples; {use('overwrite', True)} to replace "
                    "them, or choose another heatmap field (a run of the same prompt and settings resumes by itself)")
            done = {s for s, c, p, d in zip(sids, cfgs, mpaths, in_db)
                    if c == self.config_id and ((p and is_valid_png(p)) or (not p and d))}
        if self.shard is not None:  # by file path, as every entry point (fiftyone_cass.fo.shards)
            i, n = self.shard
            keep = [k for k, p in enumerate(paths) if shard_index(p, n) == i]
            ids, paths = [ids[k] for k in keep], [paths[k] for k in keep]
        self.summary.num_already_done = sum(1 for s in ids if s in done)
        use_disk = resolve_masks(self.masks, self.summary.num_target, self._mask_dir_arg) == "disk"
        self.mask_dir = os.path.abspath(os.path.expanduser(self._mask_dir_arg or default_mask_dir(ds))) if use_disk else None
        declare_field(ds, self.field, ftype=fof.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap)
        if self.error_field:
            declare_field(ds, self.error_field, ftype=fof.StringField)
        self._todo = [(s, p) for s, p in zip(ids, paths) if s not in done]
        return len(self._todo)

    # -------------------------------------------------------------- computing
    def iter_progress(self) -> Iterator[Tuple[int, int]]:
        """Computes the planned samples batch by batch through the labelling's batch loop
        (:func:`~fiftyone_cass.fo.apply.run_batches`: the same batches, pixel budget and
        overlapped load / segment / save), yielding ``(done, total)`` after each saved batch (the
        heatmaps of a batch: files first, then the field). Releases the claim at the end."""
        from fiftyone_cass.fo.apply import run_batches

        if self._todo is None:
            self.plan()
        try:
            yield from run_batches(self._todo, self.batch_size, self._load_batch, self._segment, self._write_batch)
        finally:
            self.release()
        self.summary.seconds = time.monotonic() - self.started

    @staticmethod
    def _load_batch(batch: Sequence[Tuple[str, str]]):
        return [load_item(p, p) for _, p in batch]

    def _segment(self, batch: Sequence[Tuple[str, str]], loaded):
        return self.model.segment(loaded, [p for _, p in batch], probability_maps=(self.label,))

    def _write_batch(self, batch: Sequence[Tuple[str, str]], outputs) -> int:
        """Saves one batch: the heatmap files (each written atomically), then the error and
        heatmap fields; then removes the files the new heatmaps replaced (written by this plugin
        for the sample, and pointed at by no label of any dataset). Returns the samples processed."""
        from fiftyone_cass.fo.apply import mask_file_path, remove_unreferenced, written_by_apply

        ds = self.dataset
        ds_id = str(ds._doc.id)
        ids = [s for s, _ in batch]
        old = dict(zip(*ds.select(ids).values(["id", f"{self.field}.map_path"]))) if ds.has_sample_field(self.field) else {}
        maps, errors = {}, {}
        for (sid, path), (res, err) in zip(batch, outputs):
            if res is not None:
                try:
                    q = heatmap_bytes(res.probabilities[self.label])
                    meta = {CONFIG_ATTR: self.config_id, "prompt": self.prompt}
                    if self.mask_dir:
                        mpath = mask_file_path(self.mask_dir, self.field, sid, ds_id, self.config_id)
                        write_mask_png(mpath, q)
                        maps[sid] = fo.Heatmap(map_path=mpath, range=list(HEATMAP_RANGE), **meta)
                    else:
                        maps[sid] = fo.Heatmap(map=q, range=list(HEATMAP_RANGE), **meta)
                    errors[sid] = None
                    self.summary.num_computed += 1
                    continue
                except OSError as exc:  # e.g. disk full: reported per sample (anything else is a bug: raised)
                    err = f"{path}: cannot write the heatmap ({type(exc).__name__}: {exc})"
            errors[sid] = err or f"{path}: unknown error"
            self.summary.num_failed += 1
            self.summary.failures.append((sid, path, errors[sid]))
            logger.warning("sample %s skipped: %s", sid, errors[sid])
        if self.error_field:
            ds.set_values(self.error_field, errors, key_field="id")
        if maps:
            ds.set_values(self.field, maps, key_field="id")
        replaced = [p for sid, p in old.items()
                    if p and sid in maps and maps[sid].map_path != p and written_by_apply(p, sid, ds_id)]
        remove_unreferenced(replaced)
        return len(batch)

    def run(self, progress=None) -> ConceptSummary:
        total = self.plan() if self._todo is None else len(self._todo)
        with fou.ProgressBar(total=total, progress=progress) as pb:
            for done, _ in self.iter_progress():
                pb.set_iteration(done)
        return self.summary


def concept_heatmap(collection, prompt: str, heatmap_field: str = "concept_heatmap", *, progress=None,
                    **kwargs) -> ConceptSummary:
    """Writes ``heatmap_field``: an ``fo.Heatmap`` per sample of ``collection`` with the
    per-pixel probability of ``prompt`` (0..1 stored as 0..255, ``range`` [0, 255]) at the
    original image size.

    Keywords: ``classes`` (the vocabulary the prompt competes with) or ``label_field`` (take it
    from that field's ``mask_targets``); with neither, the reference's background words.
    ``background``, ``masks`` (auto/disk/database), ``mask_dir``, ``error_field``
    (``"{label_field}_error"`` = ``<heatmap_field>_error``; None: log only), ``shard=(i, n)``,
    any :class:`~fiftyone_cass.config.settings.ModelSettings` field (``backbone``, ``device``,
    ``batch_size``, ...) and Segmenter option. Reruns compute only the samples without a valid
    heatmap of the same prompt, vocabulary and settings. Returns a :class:`ConceptSummary`."""
    return ConceptHeatmapRun(collection, prompt, heatmap_field, **kwargs).run(progress=progress)


__all__ = ["ConceptHeatmapRun", "ConceptSummary", "concept_heatmap"]
