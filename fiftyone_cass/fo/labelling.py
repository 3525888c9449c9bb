"""Labelling a collection under one progress bar, and what the command line reports about it.

:func:`label_collection` runs :class:`~fiftyone_cass.fo.apply.AutoLabelRun` on a view
(optionally one shard of it) and returns a :class:`LabelReport`: the run's summary plus what the
folder import found, the presence tags written and the time taken. :func:`read_classes_file`
reads a vocabulary file (``--classes-file``). :meth:`LabelReport.text` is
the summary the ``fiftyone-cass label``/``demo`` commands print, :meth:`LabelReport.to_dict` the
one ``--summary-json`` writes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fiftyone_cass.errors import SOME_LIST, InvalidInputError, kw, use
from fiftyone_cass.config.settings import LabelSettings, replace_settings, resolve_masks, settings_for

#: failures and skipped paths listed one by one in :meth:`LabelReport.text`
MAX_LISTED = 20


#: the largest classes file read (a 2,000-class vocabulary with synonyms is ~100 KB)
MAX_CLASSES_FILE_BYTES = 4 * 1024 * 1024


def read_classes_text(data: bytes, where: str) -> List[str]:
    """The classes of a classes file's bytes (see :func:`read_classes_file`); ``where`` names the
    file in errors. Also what a form's uploaded file goes through."""
    if len(data) > MAX_CLASSES_FILE_BYTES:
        raise InvalidInputError(f"{where} is larger than {MAX_CLASSES_FILE_BYTES // (1024 * 1024)} MiB; "
                                "a classes file lists one class per line")
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte-order mark is not part of the first class
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{where} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise InvalidInputError(f"{where} names no class")
    return lines


def read_classes_file(path: str, what: str = "classes file") -> List[str]:
    """The classes listed in a text file, one per line (a line may list synonyms: ``person,
    people``); blank lines and lines starting with ``#`` (after leading spaces) are comments,
    skipped (the documented rule of ``--classes-file``). UTF-8 (a byte-order mark is skipped);
    ``what`` names the file in errors. Only a regular file of at most
    :data:`MAX_CLASSES_FILE_BYTES` is read: a device (``/dev/zero``), a FIFO or a directory is
    refused before it is opened (a FIFO would block, ``/dev/zero`` never ends), and a file that grows
    past the limit while read is refused too."""
    import stat

    where = f"{what} {path}"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file")
            raise InvalidInputError(f"{where} is {kind}, not a regular file; give a text file with one class per line")
        if st.st_size > MAX_CLASSES_FILE_BYTES:
            raise InvalidInputError(f"{where} is larger than {MAX_CLASSES_FILE_BYTES // (1024 * 1024)} MiB; "
                                    "a classes file lists one class per line")
        # O_NONBLOCK: a path swapped for a FIFO after the check does not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InvalidInputError(f"{where} is not a regular file; give a text file with one class per line")
            data = f.read(MAX_CLASSES_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {where}: {exc.strerror or exc}") from None
    return read_classes_text(data, where)


@dataclass
class LabelReport:
    """The combined summary of the runs of one ``label`` command."""

    dataset: str
    label_field: str
    num_target: int = 0
    num_in_shard: int = 0
    num_already_done: int = 0
    num_labeled: int = 0
    num_failed: int = 0
    num_vanished: int = 0  # samples deleted from the dataset during the run
    failure_reasons: Dict[str, int] = field(default_factory=dict)
    failures: List[Tuple[str, str, str]] = field(default_factory=list)
    mask_dir: Optional[str] = None
    masks: str = "database"
    config_id: Optional[str] = None
    mask_targets: Dict[int, str] = field(default_factory=dict)
    shard: Optional[Tuple[int, int]] = None
    imported: Optional[int] = None
    image_files: Optional[int] = None
    tags: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error_field: Optional[str] = None
    #: (path, reason) of the paths of an imported folder that could not be imported
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    regions_field: Optional[str] = None  # region voting's field (None: no voting)
    num_without_regions: int = 0  # labelled without voting: no regions in that field
    #: (path, reason) of the folders left out of the import on purpose (the mask folder): not a failure
    excluded: List[Tuple[str, str]] = field(default_factory=list)

    def add_import(self, imported) -> None:
        """Adds a :class:`~fiftyone_cass.fo.folders.ImportReport` (or None: no import)."""
        if imported is not None:
            self.imported, self.image_files = imported.added, imported.found
            self.skipped = [(x.path, x.reason) for x in imported.skipped]
            self.excluded = [(x.path, x.reason) for x in getattr(imported, "excluded", ())]

    def add(self, s) -> None:
        """Adds a run's :class:`~fiftyone_cass.fo.apply.ApplySummary`."""
        self.num_already_done += s.num_already_done
        self.num_labeled += s.num_labeled
        self.num_failed += s.num_failed
        self.num_vanished += s.num_vanished
        for k, v in s.failure_reasons.items():
            self.failure_reasons[k] = self.failure_reasons.get(k, 0) + v
        self.failures.extend(s.failures)
        self.mask_dir = s.mask_dir
        self.config_id = s.config_id
        self.mask_targets = dict(s.mask_targets)
        self.error_field = s.error_field
        self.regions_field = s.regions_field
        self.num_without_regions += s.num_without_regions

    @property
    def complete(self) -> bool:
        """Every target sample labelled (none deleted under the run) and every file of the folder imported."""
        return not (self.num_failed or self.skipped or self.num_vanished)

    def to_dict(self) -> Dict[str, Any]:
        return dict(
            dataset=self.dataset, label_field=self.label_field, num_target=self.num_target,
            num_in_shard=self.num_in_shard, num_already_done=self.num_already_done,
            num_labeled=self.num_labeled, num_failed=self.num_failed, num_vanished=self.num_vanished,
            failure_reasons=self.failure_reasons,
            failures=[dict(id=i, filepath=p, error=e) for i, p, e in self.failures],
            mask_dir=self.mask_dir, masks=self.masks, config_id=self.config_id,
            mask_targets={str(k): v for k, v in self.mask_targets.items()},
            shard=list(self.shard) if self.shard else None, imported=self.imported,
            image_files=self.image_files, tags=self.tags, seconds=round(self.seconds, 3),
            error_field=self.error_field,
            skipped=[dict(path=p, reason=r) for p, r in self.skipped],
            regions_field=self.regions_field, num_without_regions=self.num_without_regions,
            excluded=[dict(path=p, reason=r) for p, r in self.excluded],
        )

    def text(self, max_listed: int = MAX_LISTED) -> str:
        """The summary in a few lines: counts, where the masks are, the presence tags, and the
        first ``max_listed`` skipped paths and failed samples with their reasons."""
        shard = f" (shard {self.shard[0]}/{self.shard[1]}: {self.num_in_shard} of them)" if self.shard else ""
        where = f"PNG files under {os.path.join(self.mask_dir, self.label_field)}" if self.mask_dir else "the database"
        lines = []
        if self.imported is not None:
            lines.append(f"dataset {self.dataset!r}: {self.image_files} image files found, {self.imported} newly imported")
        lines.append(
            f"{self.label_field}: {self.num_labeled} labelled now, {self.num_already_done} already done, "
            f"{self.num_failed} failed; {self.num_target} target samples{shard}; "
            f"{f'new masks in {where}' if self.num_labeled else 'no mask written'}; "
            f"{self.seconds:.1f}s"
        )
        if self.regions_field:
            lines.append(f"region voting in {self.regions_field!r}: {self.num_without_regions} labelled sample(s) "
                         "had no regions there and were labelled without voting")
        if self.num_vanished:
            lines.append(f"{self.num_vanished} sample(s) were deleted from the dataset during the run: not labelled, "
                         "no mask file left for them")
        if self.tags:
            lines.append("presence tags: " + ", ".join(f"{t} ({n})" for t, n in self.tags.items()))
        lines += [f"  SKIPPED {p}: {r}" for p, r in self.excluded[:max_listed]]
        if self.skipped:
            lines.append(f"{len(self.skipped)} path(s) of the folder could not be imported:")
            lines += [f"  SKIPPED {p}: {r}" for p, r in self.skipped[:max_listed]]
            if len(self.skipped) > max_listed:
                lines.append(f"  ... and {len(self.skipped) - max_listed} more (--summary-json lists them all)")
        if self.num_failed:
            lines.append(f"{self.num_failed} sample(s) could not be labelled (error in the field '{self.error_field}'):")
            for _, path, err in self.failures[:max_listed]:
                msg = err[len(path) + 2 :] if err.startswith(path + ": ") else err
                lines.append(f"  FAILED {path}: {msg}")
            if self.num_failed > max_listed:
                lines.append(f"  ... and {self.num_failed - max_listed} more; by reason:")
                for reason, n in sorted(self.failure_reasons.items(), key=lambda x: -x[1]):
                    lines.append(f"    {n} x {reason}")
        return "\n".join(lines)


def label_collection(view, shard=None, progress=None, settings: Optional[LabelSettings] = None,
                     **apply_kwargs) -> LabelReport:
    """Labels ``view`` (only the samples of ``shard=(i, N)`` by file path, if given) with
    :class:`~fiftyone_cass.fo.apply.AutoLabelRun`, under one progress bar. ``settings``: the
    run's built :class:`~fiftyone_cass.config.settings.LabelSettings` (the command line builds
    them once), or the :func:`~fiftyone_cass.fo.apply.apply` keywords."""
    import fiftyone.core.utils as fou

    from fiftyone_cass.fo.apply import AutoLabelRun

    t0 = time.monotonic()
    ds = view._root_dataset
    s = settings_for(LabelSettings, settings, apply_kwargs)
    report = LabelReport(ds.name, s.label_field, shard=shard)
    if s.masks == "auto":
        report.num_target = len(view)
    report.masks = resolve_masks(s.masks, report.num_target, s.mask_dir)
    s = replace_settings(s, masks=report.masks, shard=shard if shard is not None else s.shard)
    run = AutoLabelRun(view, settings=s)
    total = run.plan()
    report.num_target = run.summary.num_target
    report.num_in_shard = run.summary.num_in_shard
    with fou.ProgressBar(total=total, progress=progress) as pb:
        for done, _ in run.iter_progress():
            pb.set_iteration(done)
    report.add(run.summary)
    prefix = run.tag_prefix
    if prefix:
        counts = view.count_sample_tags()
        report.tags = {t: n for t, n in sorted(counts.items()) if t.startswith(prefix + ":")}
    report.seconds = time.monotonic() - t0
    return report


def check_gt_field(dataset, name: Optional[str]) -> None:
    """``gt_field``, when the dataset has it, must be a Segmentation field with ``mask_targets``
    (they are the vocabulary); otherwise an :class:`InvalidInputError` names the field's type."""
    import fiftyone as fo

    field = dataset.get_field(name) if name else None
    if field is None:
        return  # none, or not a field: the labelling run says so
    kind = getattr(field, "document_type", None)
    if isinstance(field, fo.EmbeddedDocumentField) and kind is not None and issubclass(kind, fo.Segmentation):
        if not (dataset.mask_targets.get(name) or dataset.default_mask_targets):
            raise InvalidInputError(
                f"{kw('gt_field')} {name!r} has no mask_targets (the classes and ids to label with): set "
                f"dataset.mask_targets[{name!r}] = {{id: name, ...}} in Python, or {use('classes', SOME_LIST)}")
        return
    what = f"{kind.__name__} field" if isinstance(field, fo.EmbeddedDocumentField) and kind else type(field).__name__
    article = "an" if what[0].lower() in "aeiou" else "a"
    raise InvalidInputError(f"{kw('gt_field')} {name!r} is {article} {what}, not a Segmentation field with mask_targets "
                            "(the classes and ids to label with)")
