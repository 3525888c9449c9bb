"""``fiftyone-cass``: the command line of fiftyone_cass -- parsing and printing only.

One :class:`Command` per command (``label``, ``demo``, ``eval``, ``app``, ``release``): ``setup(parser)``
declares its flags (the labelling ones derived from :mod:`fiftyone_cass.config.settings`), ``execute(parser,
args)`` calls the library (:mod:`fiftyone_cass.fo`, :mod:`fiftyone_cass.protocols`) and prints what it returns.

Exit status: 0 = every target sample is labelled; 1 = some samples failed (listed, and in the
``<label_field>_error`` field), were deleted during the run, or the run stopped because its dataset
or mask folder was deleted under it; 2 = usage or configuration error (bad arguments, missing weights,
no database); 3 = unexpected internal error; 130 = interrupted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from typing import Any, Dict, Optional, Sequence

from fiftyone_cass.bootstrap import DATABASE_HELP, configure_logging, interrupt_on_signals, is_database_error, prepare_environment
from fiftyone_cass.errors import (InvalidInputError, RunAbortedError, WeightsUnavailableError, Wording, is_placeholder, render,
                                  typed_value)
from fiftyone_cass.fo.demo import DEMO_CLASSES, DEMO_DATASET
from fiftyone_cass.config.settings import (LabelSettings, add_settings_arguments, build_settings, flag_text, label_setting_names,
                                           parse_segmenter_options, resolve_device, setting_flags)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the arguments or the environment: exit status 2, message, no traceback."""


def _load_dataset(name: str):
    from fiftyone_cass.fo.folders import load_dataset

    return load_dataset(name, "{name!r} is neither a directory nor a FiftyOne dataset")


def _load_weights(args) -> None:
    """The weights before any dataset work: missing ones end the command saying what to do."""
    from fiftyone_cass.models.weights import ensure_weights

    try:  # missing weights: main() says so in the command line's words (exit 2)
        ensure_weights(args.backbone, args.method, args.device_resolved, args.clip_checkpoint, args.dino_checkpoint)
    except ValueError as exc:  # an unknown backbone
        if isinstance(exc, InvalidInputError):
            raise
        raise UsageError(str(exc)) from None


def _apply_kwargs(args, classes=None) -> Dict[str, Any]:
    """The :func:`~fiftyone_cass.fo.apply.apply` arguments of the ``label``/``demo``
    flags: every settings flag's (already checked) value, the vocabulary, the Segmenter options."""
    from fiftyone_cass.fo.labelling import read_classes_file

    kw: Dict[str, Any] = {n: getattr(args, n) for n in label_setting_names()
                          if hasattr(args, n) and n not in ("classes", "preset", "gt_field", "shard", "options")}
    sources = [x for x in ("classes", "classes_file", "preset", "gt_field") if getattr(args, x, None)]
    if classes is not None and not sources:
        kw["classes"] = list(classes)
    elif len(sources) != 1:
        raise UsageError("give exactly one of --classes, --classes-file, --preset or --gt-field")
    elif args.classes:
        kw["classes"] = args.classes
    elif args.classes_file:
        kw["classes"] = read_classes_file(args.classes_file, "--classes-file")
    elif getattr(args, "preset", None):
        kw["preset"] = args.preset
    else:
        kw["gt_field"] = args.gt_field
    kw.update(parse_segmenter_options(args.options, args.option))
    return kw


def _settings(args, kw: Dict[str, Any]):
    """The run's one settings object, built and checked here (the request's entry) and handed
    down unchanged; the device resolved once."""
    settings = build_settings(LabelSettings, kw)
    args.device_resolved = kw["device"] = settings.device
    return settings


def _write_summary(path: Optional[str], data: Dict[str, Any]) -> None:
    """``--summary-json``; a file that cannot be written is a warning (the work is stored)."""
    from fiftyone_cass.fileio import write_json

    try:
        if path:
            write_json(path, data)
    except OSError as exc:
        print(f"fiftyone-cass: warning: could not write --summary-json {path} ({type(exc).__name__}: "
              f"{exc.strerror or exc}); the results are stored in the dataset", file=sys.stderr)


def _add_label_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
    skip = {"preset", "gt_field", "shard"} if demo else set()
    titles = {"vocabulary": "vocabulary" + (" (default: the demo classes)" if demo else " (exactly one of --classes, --classes-file, --preset, --gt-field)")}
    groups = add_settings_arguments(p, [n for n in label_setting_names() if n not in skip], titles)
    groups["vocabulary"].add_argument("--classes-file", metavar="FILE",
                                      help="one class per line; a line may list synonyms: 'person, people'; blank lines and lines "
                                           "starting with '#' are comments (skipped)")
    _add_options_flags(groups["model"])
    groups["output"].add_argument("--summary-json", metavar="FILE", default=None, help="also write the summary as JSON")


def _add_options_flags(g) -> None:
    g.add_argument("--options", metavar="JSON", default=None,
                   help='Segmenter options as a JSON object, e.g. \'{"mode": "whole", "short_side": 448}\'')
    g.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="one Segmenter option (repeatable), e.g. -o mode=whole, -o pamr_steps=10")


def _add_common(p: argparse.ArgumentParser, progress: bool = True) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    if not progress:
        return
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show progress bars (default: FiftyOne's show_progress_bars setting)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------
class Command:
    """A command: ``setup(parser)`` declares its arguments, ``execute(parser, args)`` runs it and
    returns the exit status; ``help`` is its line in ``fiftyone-cass --help``."""

    name = help = description = ""
    progress = True  # whether it has --progress/--no-progress (it shows progress bars)

    def setup(self, parser: argparse.ArgumentParser) -> None:
        """Declares the command's arguments on its sub-parser."""

    def execute(self, parser: argparse.ArgumentParser, args) -> int:
        raise NotImplementedError


class LabelCommand(Command):
    name, help = "label", "label a directory of images or a FiftyOne dataset"
    description = ("Label every image of a directory (imported into a persistent FiftyOne dataset) or of an existing "
                   "dataset/view: Segmentation masks, per-class presence scores and <field>:<class> tags. Running "
                   "the same command again resumes: only samples without a valid label of these settings are labelled.")

    def setup(self, p):
        p.add_argument("source", help="a directory of images, or the name of a FiftyOne dataset")
        p.add_argument("--dataset", default=None, help="dataset to import a directory into (default: the directory's name)")
        p.add_argument("--saved-view", default=None, help="label only this saved view of the dataset")
        p.add_argument("--tags", default=None, help="label only samples with one of these tags (comma separated)")
        p.add_argument("--delegate", action="store_true",
                       help="queue FiftyOne delegated operations instead of running here (see --workers)")
        p.add_argument("--workers", type=int, default=1, help="with --delegate: queue one operation per shard (default 1)")
        _add_label_options(p)

    def execute(self, parser, args):
        from fiftyone_cass.fo.delegation import launch_hint, queue_auto_label
        from fiftyone_cass.fo.folders import mask_folder_exclusion, open_target
        from fiftyone_cass.fo.labelling import check_gt_field, label_collection

        kw = _apply_kwargs(args)
        settings = _settings(args, kw)
        source, is_dir = args.source, os.path.isdir(args.source)
        if args.workers != 1 and not args.delegate:
            raise UsageError("--workers goes with --delegate; to run workers yourself, start one command per --shard i/N")
        if args.workers < 1:
            raise UsageError("--workers must be >= 1")
        if is_dir and args.saved_view:
            raise UsageError("--saved-view applies to an existing dataset, not to a directory")
        if is_dir and args.dataset is not None:
            import fiftyone as fo

            from fiftyone_cass.fo.folders import check_dataset_name

            if not fo.dataset_exists(args.dataset):
                check_dataset_name(args.dataset, "--dataset")
        if not is_dir and args.dataset and args.dataset != source:
            raise UsageError(f"--dataset names the dataset to import a directory into; {source!r} is not a directory")
        if not is_dir:  # fails now, before the weights are loaded, if there is no such dataset
            check_gt_field(_load_dataset(source), args.gt_field)
        if args.delegate and args.shard is not None:
            raise UsageError("--delegate queues every shard itself (--workers N); do not combine it with --shard")
        if not args.delegate:
            _load_weights(args)
        ds, view, imported = open_target(
            source, args.dataset, args.saved_view, args.tags, args.shard,
            exclude=mask_folder_exclusion(source, kw.get("mask_dir"), kw.get("label_field") or "cass"),
            exclude_reason="the mask folder of this run (--mask-dir), not imported")
        check_gt_field(ds, args.gt_field)  # (a directory imported into an existing dataset)
        if args.delegate:  # queue --workers delegated runs for `fiftyone delegated launch`
            for line in imported.skipped_lines() if imported else ():
                print(f"fiftyone-cass: warning: {line}", file=sys.stderr)
            print(launch_hint(ds.name, queue_auto_label(view, args.workers, needed_for="to use --delegate", **kw)))
            return EXIT_OK
        if not len(view):
            print(f"fiftyone-cass: warning: no sample of dataset {ds.name!r} is selected (--saved-view / --tags): "
                  "nothing to label", file=sys.stderr)
        report = label_collection(view, shard=args.shard, progress=args.progress, settings=settings)
        report.add_import(imported)
        print(report.text())
        print(f"open it with: fiftyone-cass app {shlex.quote(ds.name)}")
        if report.num_labeled:
            from fiftyone_cass.app.support import OPEN_APP_COLORS_HINT

            print(OPEN_APP_COLORS_HINT.replace("“", "'").replace("”", "'"))
        _write_summary(args.summary_json, report.to_dict())
        return EXIT_OK if report.complete else EXIT_FAILED


class DemoCommand(Command):
    name, help = "demo", f"label scikit-image's sample images into the dataset '{DEMO_DATASET}'"
    description = ("Copies a few sample images that ship with scikit-image (no download), labels them with the "
                   f"classes {', '.join(DEMO_CLASSES)} into the persistent dataset '{DEMO_DATASET}' (FiftyOne's "
                   "default database) and prints a summary. Needs the model weights (downloaded on first use, or "
                   "--clip-checkpoint/--dino-checkpoint).")

    def setup(self, p):
        p.add_argument("--dataset", default=DEMO_DATASET, help=f"dataset name (default {DEMO_DATASET})")
        p.add_argument("--images-dir", default=None,
                       help="where the images are copied (default <fiftyone default_dataset_dir>/<dataset>/images)")
        _add_label_options(p, demo=True)

    def execute(self, parser, args):
        from fiftyone_cass.fo.demo import describe, pixel_shares, prepare_demo
        from fiftyone_cass.fo.labelling import label_collection

        kw = _apply_kwargs(args, classes=DEMO_CLASSES)
        if not args.skip_existing:
            kw["overwrite"] = True  # the demo dataset is ours: a demo with other settings replaces its labels
        settings = _settings(args, kw)
        if args.images_dir and os.path.exists(args.images_dir) and not os.path.isdir(args.images_dir):
            raise UsageError(f"--images-dir {args.images_dir} is a file, not a directory: give a directory "
                             "(or a path that does not exist yet) to copy the demo images into")
        _load_weights(args)
        imported, view = prepare_demo(args.dataset, args.images_dir)  # its errors name images_dir: --images-dir
        report = label_collection(view, progress=args.progress, settings=settings)
        report.add_import(imported)
        print(report.text())
        shares = pixel_shares(view, report.label_field)
        print(describe(view, report.label_field, kw.get("presence_field", "{label_field}_presence"),
                       kw.get("tag_prefix", "{label_field}"), kw["presence_threshold"], shares))
        name = imported.dataset.name
        print(f"\ndataset {name!r} is stored in FiftyOne's database; open it with: "
              f"fiftyone-cass app {shlex.quote(name)}")
        _write_summary(args.summary_json, dict(report.to_dict(), pixel_shares=shares))
        return EXIT_OK if report.complete else EXIT_FAILED


class EvalCommand(Command):
    name, help = "eval", "mIoU of predictions against ground truth (or a whole benchmark protocol)"
    description = ("Evaluates a Segmentation field against ground truth with mmseg IoU semantics and prints the "
                   "table; the run is stored (Model Evaluation panel). With --protocol, TARGET is a benchmark "
                   "directory: import -> predict with the preset -> evaluate; or the dataset a --persistent "
                   "--protocol run imported (e.g. with SAM regions added for --regions-field).")
    #: settings that --protocol passes to the benchmark runner (their flags derived from the declarations)
    #: (and the runner's labelling settings, protocols.runner.LABEL_SETTINGS: region voting)
    PROTOCOL_SETTINGS = ("method", "backbone", "device", "batch_size", "clip_checkpoint", "dino_checkpoint")

    def setup(self, p):
        from fiftyone_cass.protocols import runner as protocol
        from fiftyone_cass.config.registry import PRESETS

        p.add_argument("target", help="dataset name (or, with --protocol, the benchmark's directory)")
        p.add_argument("--pred-field", default="cass", help="predictions (default cass)")
        p.add_argument("--gt-field", default="ground_truth", help="ground truth (default ground_truth)")
        p.add_argument("--eval-key", default=None, help="evaluation key (default eval_<pred-field>; replaced if present)")
        p.add_argument("--ignore-index", type=int, default=255, help="GT id that is ignored (default 255; -1: none)")
        p.add_argument("--resize-nearest", action="store_true", help="resize mismatched predictions to the GT size")
        p.add_argument("--ignore-undeclared", dest="strict", action="store_false",
                       help="count ground-truth values that the GT field's mask_targets do not declare as ignored "
                            "pixels (default: an error naming the sample and the values)")
        p.add_argument("--skip-missing", action="store_true", help="skip samples without a prediction (samples without ground truth are always "
                       "skipped, with a warning)")
        p.add_argument("--saved-view", default=None, help="evaluate only this saved view")
        p.add_argument("--tags", default=None, help="evaluate only samples with one of these tags (comma separated)")
        p.add_argument("--no-per-class", action="store_true", help="print only the summary row")
        p.add_argument("--summary-json", metavar="FILE", default=None,
                       help="also write mIoU, the other summary figures and each class's IoU as JSON")
        g = p.add_argument_group("benchmark protocol (--protocol)")
        g.add_argument("--protocol", default=None, choices=[*PRESETS, *PRESETS.aliases], metavar="NAME",  # read now
                       help=f"run a published benchmark on the directory TARGET: one of {', '.join(PRESETS)}")
        protocol.add_arguments(g, model=False)
        _add_options_flags(g)  # on top of the preset's (e.g. -o pamr_steps=10)
        add_settings_arguments(p, self.PROTOCOL_SETTINGS + protocol.LABEL_SETTINGS,
                               {g: f"benchmark protocol (--protocol): {g}" for g in ("model", "refinement")})

    def execute(self, parser, args):
        if args.protocol:  # the benchmark runner, with these flags
            from fiftyone_cass.protocols import runner as protocol

            from fiftyone_cass.protocols.records import get_protocol

            try:  # an unknown protocol, or a preset without a loader, before the weights
                get_protocol(args.protocol, need_loader=True)
            except InvalidInputError as exc:
                raise UsageError(f"--protocol: {exc}") from None
            args.device = args.device_resolved = resolve_device(args.device)
            args.segmenter_options = parse_segmenter_options(args.options, args.option)
            _load_weights(args)
            run = protocol.run_args(args, args.target)
            _write_summary(args.summary_json, run.to_json())
            return EXIT_OK
        from fiftyone_cass.fo.metrics import format_table
        from fiftyone_cass.fo.evaluation import check_segmentation_fields, evaluate_iou
        from fiftyone_cass.fo.folders import select_view

        if args.regions_field or args.options or args.option:
            raise UsageError("--regions-field and -o/--options are for --protocol runs (label ... labels with them)")
        eval_key = args.eval_key or f"eval_{args.pred_field}"
        ds = _load_dataset(args.target)
        view = select_view(ds, args.saved_view, args.tags)
        if not ds.has_sample_field(args.pred_field):
            raise UsageError(f"dataset {ds.name!r} has no field {args.pred_field!r}; label it first, in the ground "
                             f"truth's ids: fiftyone-cass label {shlex.quote(ds.name)} --gt-field {args.gt_field} "
                             f"--label-field {args.pred_field}")
        check_segmentation_fields(ds, args.pred_field, args.gt_field)
        import warnings

        with warnings.catch_warnings():  # skipped samples: listed below in the command line's words
            warnings.filterwarnings("ignore", message="Skipping sample", category=UserWarning)
            results = evaluate_iou(view, args.pred_field, gt_field=args.gt_field, eval_key=eval_key, overwrite=True,
                                   ignore_index=None if args.ignore_index < 0 else args.ignore_index,
                                   resize="nearest" if args.resize_nearest else None, strict=args.strict,
                                   skip_missing=args.skip_missing, progress=args.progress)
        m = results.iou_metrics()
        n = results.num_evaluated if results.num_evaluated is not None else len(view)
        skipped = f" ({len(results.skipped)} skipped)" if results.skipped else ""
        title = f"{ds.name} | {args.pred_field} vs {args.gt_field} | {n} samples evaluated{skipped} | eval_key={eval_key}"
        if results.skipped:
            print("\n  ".join([f"fiftyone-cass: warning: {len(results.skipped)} sample(s) skipped:",
                               *results.skipped_lines()]), file=sys.stderr)
        print(format_table(m, title=title, per_class=not args.no_per_class))
        _write_summary(args.summary_json, dict(dataset=ds.name, eval_key=eval_key, **m.to_json()))
        print(f"open it with: fiftyone-cass app {shlex.quote(ds.name)}  (Model Evaluation panel, key {eval_key})")
        return EXIT_OK


class AppCommand(Command):
    name, help = "app", "open the FiftyOne App on a dataset"
    progress = False
    description = "Launches the FiftyOne App on a dataset (masks, presence scores and tags)."

    def setup(self, p):
        p.add_argument("dataset")
        p.add_argument("--port", type=int, default=None, help="App port (default FiftyOne's, 5151)")
        p.add_argument("--address", default=None, help="address to bind (default localhost)")
        p.add_argument("--remote", action="store_true", help="serve for a browser on another machine (no browser here)")
        p.add_argument("--wait", type=float, default=3,
                       help="seconds to wait for a new App connection before exiting once all are closed (-1: forever)")

    def execute(self, parser, args):
        from fiftyone_cass.app.support import launch_app

        ds = _load_dataset(args.dataset)
        session = launch_app(ds, port=args.port, address=args.address, remote=args.remote)  # offers "Schedule"
        print(f"the App shows dataset {ds.name!r} at {session.url}", flush=True)
        if os.environ.get("FIFTYONE_EXIT"):
            return EXIT_OK
        print("to exit, close the App or press ctrl + c", flush=True)
        try:
            session.wait(-1 if args.remote else args.wait)
        except KeyboardInterrupt:
            pass
        return EXIT_OK


class ReleaseCommand(Command):
    name, help = "release", "release a label field claimed by a run that died"
    progress = False
    description = ("A labelling run claims its label field so that runs with other settings cannot write it at the "
                   "same time. A run that died on this machine is recognised by the next run; one that died on "
                   "another machine keeps its claim until released here.")

    def setup(self, p):
        p.add_argument("dataset")
        p.add_argument("--label-field", default="cass", help="the claimed field (default cass)")
        p.add_argument("--force", action="store_true",
                       help="release it even if a process of this machine that holds it is alive (a reused pid)")

    def execute(self, parser, args):
        from fiftyone_cass.fo.claims import field_claim, release_field

        ds = _load_dataset(args.dataset)
        claim = field_claim(ds, args.label_field)
        released = claim is not None and release_field(ds, args.label_field, force=args.force)
        if not released:
            print(f"field {args.label_field!r} of dataset {ds.name!r} is not claimed: nothing to release")
        else:
            print(f"released the claim of settings {claim.get('config_id')} on field {args.label_field!r} "
                  f"of dataset {ds.name!r}")
        return EXIT_OK


class BackbonesCommand(Command):
    name, help, progress = "backbones", "list the backbone records (--backbone NAME), their weights and files", False

    def setup(self, p):
        p.add_argument("--all", action="store_true", help="also the test records (random weights)")
        p.add_argument("--json", action="store_true", help="the records as JSON")

    def execute(self, parser, args):
        from fiftyone_cass.models.backbones import listing
        return print(listing(args.all, args.json)) or EXIT_OK


COMMANDS = (LabelCommand, DemoCommand, EvalCommand, AppCommand, ReleaseCommand, BackbonesCommand)


def build_parser() -> argparse.ArgumentParser:
    from fiftyone_cass import __version__

    parser = argparse.ArgumentParser(
        prog="fiftyone-cass",
        description="Training-free open-vocabulary semantic segmentation (CASS + CDAM) for FiftyOne datasets.",
        epilog="Exit status: 0 all samples labelled, 1 some samples failed (listed, and in <field>_error), "
               "2 usage/configuration error (bad arguments, missing weights, no database), 3 internal error, "
               "130 interrupted (run the same command again to resume).",
    )
    parser.add_argument("--version", action="version", version=f"fiftyone-cass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in (c() for c in COMMANDS):
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.setup(p)
        _add_common(p, command.progress)
        p.set_defaults(execute=lambda args, command=command, p=p: command.execute(p, args))
    return parser


class CliWording(Wording):
    """The library's setting references in the command line's words: ``pass overwrite=True`` ->
    ``pass --overwrite``, ``masks='database'`` -> ``--masks database``, ``tag_prefix=None`` ->
    ``--no-tags``, a bad value -> ``argument --batch-size: 0 is not allowed: ...`` (names that are
    not options of this command stay Python's)."""

    def __init__(self, flags: Dict[str, argparse.Action]):
        self.flags = flags

    def name(self, name, value, verb):
        a = self.flags.get(name)
        if a is None:
            return super().name(name, value, verb)
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # the value the flag sets
            if value is not None and value != str(isinstance(a, argparse._StoreTrueAction)):
                return super().name(name, value, verb)
            text = flag_text(a)
        elif value == "None" and name in getattr(self.flags, "off", {}):
            text = flag_text(self.flags.off[name])
        elif value is None or value == "None" or is_placeholder(value):
            text = flag_text(a)
        else:
            text = f"{flag_text(a)} {typed_value(value)}"
        return f"pass {text}" if verb == "use" else text

    def bad_value(self, err):
        from fiftyone_cass.config.options import SegmenterOptions
        from fiftyone_cass.config.schema import setting_fields

        a = self.flags.get(err.setting)
        if err.what == "option" and a is not None:
            return f"argument {flag_text(a)}: {err.value!r} is not allowed: {err.allowed}"
        if err.what == "option" and err.setting in setting_fields(SegmenterOptions):
            return f"-o {err.setting}={err.value!r} is not allowed: {err.allowed}" + (f" ({err.help})" if err.help else "")
        return super().bad_value(err)


def cli_message(exc: BaseException, flags: Dict[str, argparse.Action]) -> str:
    """A library error in the command line's words (:class:`CliWording`), from the settings the
    error references (:func:`fiftyone_cass.errors.kw`), never from its text."""
    return render(exc, CliWording(flags))


_flags_of = setting_flags  # the name the tests and older callers use


def main(argv: Optional[Sequence[str]] = None) -> int:
    prepare_environment()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    configure_logging(args.verbose)
    error = f"fiftyone-cass {args.command}: error:"
    try:
        with interrupt_on_signals():  # kill or a closed terminal stop the command like ctrl + c
            return int(args.execute(args))
    except UsageError as exc:
        print(f"{error} {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InvalidInputError, WeightsUnavailableError) as exc:
        print(f"{error} {cli_message(exc, setting_flags(parser, args.command))}", file=sys.stderr)
        return EXIT_USAGE
    except RunAbortedError as exc:  # the dataset or the mask folder vanished under the run
        print(f"{error} {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        try:
            print(f"\nfiftyone-cass {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        except OSError:  # SIGHUP: the terminal may be gone
            pass
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last resort: a message, and the traceback for a report
        if is_database_error(exc):
            print(f"{error} cannot reach FiftyOne's database ({type(exc).__name__}: {exc}). {DATABASE_HELP}",
                  file=sys.stderr)
            return EXIT_USAGE
        traceback.print_exc()
        print(f"fiftyone-cass {args.command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
