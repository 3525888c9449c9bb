"""Importing a folder of images into a FiftyOne dataset: every image file once, whatever else the
folder holds and however many processes import it at the same time.

* :func:`scan_images` lists the image files (FiftyOne's :func:`fiftyone.core.media.get_media_type`
  decides what an image is) and reports, per path, what cannot be imported: folders that cannot be
  read, names that are not valid UTF-8 (FiftyOne stores file paths as UTF-8 text), fifos, sockets,
  devices, broken symbolic links, links to folders (not followed). Hidden files and folders are
  skipped, as FiftyOne's own directory importers do.
* :func:`import_images` adds the files that are not in the dataset yet. The dataset gets a unique
  index on ``filepath`` (what FiftyOne's own ``merge_samples(key_field="filepath")`` creates), so
  two processes importing the same folder at once add each file once: an insert that collides
  with the other process's is dropped, and the rest of the batch is inserted.
* :func:`import_directory` does both for a folder and a dataset name (optionally for one shard of
  the files: :mod:`fiftyone_cass.fo.shards`); :func:`open_or_create_dataset`, :func:`load_dataset`,
  :func:`directory_view` and :func:`default_dataset_name` are the dataset steps around it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.shards import shard_index

logger = logging.getLogger(__name__)

#: samples per ``add_samples`` call
IMPORT_BATCH = 1000
_DUPLICATE_KEY = 11000


@dataclass
class SkippedPath:
    """A path under the folder that was not imported, and why. ``path`` is printable: bytes of
    a name that is not valid UTF-8 appear as ``\\xNN``."""

    path: str
    reason: str


@dataclass
class ImportReport:
    dataset: object
    added: int = 0
    found: int = 0
    skipped: List[SkippedPath] = field(default_factory=list)
    #: folders left out on purpose (the run's mask folder): said, but not a failure
    excluded: List[SkippedPath] = field(default_factory=list)

    def skipped_lines(self, max_listed: int = 20) -> List[str]:
        """The skipped paths with their reasons, the first ``max_listed`` of them, then a count."""
        lines = [f"SKIPPED {x.path}: {x.reason}" for x in (self.excluded + self.skipped)[:max_listed]]
        if len(self.excluded) + len(self.skipped) > max_listed:
            lines.append(f"... and {len(self.excluded) + len(self.skipped) - max_listed} more paths skipped")
        return lines


def printable(path: str) -> str:
    """``path`` as text that can be printed and stored (undecodable bytes as ``\\xNN``)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def scan_images(directory: str, exclude: Iterable[str] = (), excluded: Optional[List[SkippedPath]] = None,
                exclude_reason: str = "excluded, not imported") -> Tuple[List[str], List[SkippedPath]]:
    """``(image files, skipped paths)`` under ``directory`` (recursively), the files as sorted,
    normalised absolute paths. Folders in ``exclude`` (and below them) are left out; each one met
    is appended to ``excluded`` (if given) with ``exclude_reason``."""
    import fiftyone.core.media as fom
    import fiftyone.core.storage as fos

    root = fos.normalize_path(directory)
    excluded_dirs = [fos.normalize_path(e) for e in exclude if e]
    files: List[str] = []
    skipped: List[SkippedPath] = []

    def unreadable(exc: OSError) -> None:
        where = exc.filename if isinstance(exc.filename, str) else root
        skipped.append(SkippedPath(printable(where), f"folder cannot be read ({exc.strerror or type(exc).__name__})"))

    for d, dirs, names in os.walk(root, onerror=unreadable):
        keep = []
        for x in sorted(dirs):
            p = os.path.join(d, x)
            if x.startswith("."):
                continue
            if any(p == e or p.startswith(e + os.sep) for e in excluded_dirs):
                if excluded is not None:
                    excluded.append(SkippedPath(printable(p), exclude_reason))
                continue
            if not _is_utf8(x):
                skipped.append(SkippedPath(printable(p), "folder name is not valid UTF-8 (FiftyOne stores file "
                                                         "paths as UTF-8 text); its files are not imported"))
            elif os.path.islink(p):
                skipped.append(SkippedPath(printable(p), "link to a folder (not followed)"))
            else:
                keep.append(x)
        dirs[:] = keep
        for name in names:
            if name.startswith("."):
                continue
            p = os.path.join(d, name)
            if not _is_utf8(name):
                skipped.append(SkippedPath(printable(p), "file name is not valid UTF-8 (FiftyOne stores file paths "
                                                         "as UTF-8 text); rename the file"))
                continue
            try:
                st = os.stat(p)  # follows symbolic links
            except FileNotFoundError:
                skipped.append(SkippedPath(p, "broken symbolic link" if os.path.islink(p) else "vanished"))
                continue
            except OSError as exc:
                skipped.append(SkippedPath(p, f"cannot be read ({exc.strerror or type(exc).__name__})"))
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append(SkippedPath(p, f"{_kind(st.st_mode)}, not an image file"))
            elif fom.get_media_type(p) == fom.IMAGE:
                files.append(p)
    return sorted(files), skipped


def ensure_unique_filepaths(dataset) -> bool:
    """Gives ``dataset`` a unique index on ``filepath`` (FiftyOne converts its default index).
    Returns False, with a warning, if the dataset already holds a file twice."""
    def unique() -> bool:
        info = dataset.get_index_information()
        return bool(info.get("filepath", {}).get("unique"))

    if unique():
        return True
    fo_log = logging.getLogger("fiftyone.core.collections")
    level = fo_log.level
    fo_log.setLevel(logging.WARNING)  # "Converting existing index 'filepath' to unique": an internal step
    try:
        dataset.create_index("filepath", unique=True)
    except Exception as exc:  # noqa: BLE001 - duplicates, or another process converting it right now
        if unique():
            return True
        logger.warning("dataset %r: no unique index on filepath (%s: %s); concurrent imports into it may add a "
                       "file twice", dataset.name, type(exc).__name__, exc)
        return False
    finally:
        fo_log.setLevel(level)
    return True


def _duplicate_key_details(exc: BaseException) -> Optional[dict]:
    """The ``BulkWriteError`` details behind FiftyOne's ``ValueError`` when only duplicate keys failed."""
    cause = exc.__cause__
    details = getattr(cause, "details", None)
    if not isinstance(details, dict):
        return None
    errors = details.get("writeErrors") or []
    if errors and all(e.get("code") == _DUPLICATE_KEY for e in errors):
        return details
    return None


def _add_new(dataset, paths: Sequence[str]) -> int:
    """Adds samples for ``paths``; a path that another process inserted meanwhile is dropped.
    Returns how many samples this call added."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    added = 0
    pending = list(paths)
    while pending:
        samples = [fo.Sample(filepath=p) for p in pending]
        try:
            dataset.add_samples(samples, progress=False)
            return added + len(samples)
        except ValueError as exc:
            details = _duplicate_key_details(exc)
            if details is None:
                raise
            # earlier batches of this call are in; of the failed batch, those before the duplicate
            added += sum(1 for s in samples if s.in_dataset) + int(details.get("nInserted", 0))
        present = set(dataset.match(F("filepath").is_in(pending)).values("filepath"))
        pending = [p for p in pending if p not in present]
    return added


def import_images(dataset, paths: Sequence[str], batch: int = IMPORT_BATCH) -> int:
    """Adds the image files ``paths`` that ``dataset`` does not hold yet; safe to run in several
    processes at once. Returns how many this call added."""
    ensure_unique_filepaths(dataset)
    existing = set(dataset.values("filepath"))
    todo = [p for p in paths if p not in existing]
    added = 0
    for start in range(0, len(todo), batch):
        added += _add_new(dataset, todo[start : start + batch])
    # width/height for the App's grid and the sidebar; unreadable files keep metadata None
    dataset.exists("metadata", False).compute_metadata(skip_failures=True, progress=False)
    return added


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------
#: the longest dataset name accepted for a new dataset: the name also names the folder of its
#: masks (``default_mask_dir``), and file systems allow 255 bytes per file name
MAX_DATASET_NAME = 200


def check_dataset_name(name: str, what: str = "dataset name") -> None:
    """Refuses (:class:`InvalidInputError`, before anything is created) a name for a new dataset
    that is blank, that FiftyOne cannot turn into its URL name (no letter or digit), or longer
    than :data:`MAX_DATASET_NAME` characters."""
    import fiftyone.core.utils as fou

    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"{what} {name!r} is blank: give a name with letters or digits")
    if len(name) > MAX_DATASET_NAME:
        raise InvalidInputError(f"{what} of {len(name)} characters is too long: at most {MAX_DATASET_NAME} "
                                "(it also names the folder of its masks)")
    try:
        fou.to_slug(name)
    except ValueError:
        raise InvalidInputError(f"{what} {name!r} cannot name a FiftyOne dataset: it needs at least one letter or "
                                "digit") from None


def open_or_create_dataset(name: str):
    """Loads dataset ``name``, or creates it persistent (tolerating another process creating it
    at the same moment)."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        ds.reload()  # another process may have changed it since this process loaded it
        return ds
    try:
        return fo.Dataset(name, persistent=True)
    except Exception:
        if fo.dataset_exists(name):  # lost a creation race with another worker
            return fo.load_dataset(name)
        raise


def load_dataset(name: str, missing: str = "{name!r} is not a FiftyOne dataset"):
    """Loads (and reloads: another process may have changed it) dataset ``name``; if there is no
    such dataset, :class:`~fiftyone_cass.errors.InvalidInputError` says ``missing`` and lists the
    datasets there are."""
    import fiftyone as fo

    if not fo.dataset_exists(name):
        known = fo.list_datasets()
        hint = f" (datasets: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''})" if known else " (there are no datasets)"
        raise InvalidInputError(missing.format(name=name) + hint)
    ds = fo.load_dataset(name)
    ds.reload()
    return ds


def default_dataset_name(directory: str) -> str:
    """The dataset a folder is imported into by default: the folder's name."""
    return os.path.basename(os.path.abspath(os.path.expanduser(directory)).rstrip(os.sep)) or "images"


def directory_view(dataset, directory: str):
    """The samples of ``dataset`` whose files lie under ``directory``."""
    from fiftyone import ViewField as F

    prefix = os.path.abspath(os.path.expanduser(directory)).rstrip(os.sep) + os.sep
    return dataset.match(F("filepath").starts_with(prefix))


def mask_folder_exclusion(directory: str, mask_dir: Optional[str], label_field: str) -> List[str]:
    """The folders of an import of ``directory`` that hold the masks of a run writing to
    ``<mask_dir>/<label_field>``: ``mask_dir`` itself when it lies inside ``directory``, only the
    run's ``<mask_dir>/<label_field>`` when ``mask_dir`` is ``directory`` (or a folder above it),
    so that the images of the other subfolders are imported."""
    if not mask_dir:
        return []
    root = os.path.abspath(os.path.expanduser(directory)).rstrip(os.sep)
    md = os.path.abspath(os.path.expanduser(mask_dir)).rstrip(os.sep)
    if md == root or root.startswith(md + os.sep):
        return [os.path.join(md, label_field)]
    return [md]


def import_directory(directory: str, dataset_name: str, shard: Optional[Tuple[int, int]] = None,
                     exclude: Iterable[str] = (), exclude_reason: str = "excluded, not imported") -> ImportReport:
    """Adds the images of ``directory`` that are not in the persistent dataset ``dataset_name``
    yet (created if needed; of shard ``(i, N)`` only, if given). Idempotent, safe to interrupt and
    to run in several processes at once; paths that cannot be imported are reported, not fatal.
    A folder without images, or a dataset of other media, is an
    :class:`~fiftyone_cass.errors.InvalidInputError`."""
    import fiftyone.core.storage as fos

    root = fos.normalize_path(directory)
    if printable(root) != root:
        raise InvalidInputError(f"the folder name {printable(root)} is not valid UTF-8; FiftyOne stores file paths "
                                "as UTF-8 text")
    excluded: List[SkippedPath] = []
    import fiftyone as fo

    if not fo.dataset_exists(dataset_name):
        check_dataset_name(dataset_name)
    files, skipped = scan_images(root, exclude, excluded, exclude_reason)
    if not files:
        why = f" ({len(skipped)} path(s) skipped: {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise InvalidInputError(f"no image files found under {directory}{why}")
    ds = open_or_create_dataset(dataset_name)
    if ds.media_type not in (None, "image"):
        raise InvalidInputError(f"dataset {dataset_name!r} holds {ds.media_type} samples, not images")
    if not ds.persistent:
        ds.persistent = True
    mine = [p for p in files if shard is None or shard_index(p, shard[1]) == shard[0]]
    report = ImportReport(ds, found=len(files), skipped=skipped, excluded=excluded)
    report.added = import_images(ds, mine)
    return report


def select_view(collection, saved_view: Optional[str] = None, tags=None):
    """``collection``, or its dataset's saved view ``saved_view``, restricted to the samples with
    one of ``tags`` (a list, or one comma-separated string) if given."""
    view = collection
    if saved_view:
        if not collection.has_saved_view(saved_view):
            raise InvalidInputError(f"dataset {collection.name!r} has no saved view {saved_view!r} "
                                    f"(has: {collection.list_saved_views()})")
        view = collection.load_saved_view(saved_view)
    if tags:
        tags = tags.split(",") if isinstance(tags, str) else tags
        view = view.match_tags([t.strip() for t in tags if t.strip()])
    return view


def open_target(source: str, dataset: Optional[str] = None, saved_view: Optional[str] = None, tags=None,
                shard: Optional[Tuple[int, int]] = None, exclude: Iterable[str] = (),
                exclude_reason: str = "excluded, not imported",
                missing: str = "{name!r} is neither a directory nor a FiftyOne dataset"):
    """What ``source`` denotes: a folder (its images imported into the persistent dataset
    ``dataset``, default the folder's name, of ``shard`` only if given; the target is its files
    with one of ``tags``) or the name of a dataset (its ``saved_view`` if given, with one of
    ``tags``). Returns ``(dataset, target view, ImportReport or None)``."""
    if os.path.isdir(source):
        imported = import_directory(source, dataset or default_dataset_name(source), shard=shard, exclude=exclude,
                                    exclude_reason=exclude_reason)
        return imported.dataset, select_view(directory_view(imported.dataset, source), tags=tags), imported
    ds = load_dataset(source, missing)
    return ds, select_view(ds, saved_view, tags), None
