"""Reproduce a paper protocol end to end: import -> predict with the preset -> evaluate -> table.

Python::

    from fiftyone_cass.protocols.runner import run_protocol
    run = run_protocol("ade20k", "/data/ade", method="cass", backbone="openai", device="cuda")
    print(run.table)

Command line (weights from the model hubs, or local files)::

    python -m fiftyone_cass.protocols.runner ade20k /data/ade --method cass --device cuda \\
        [--clip-checkpoint clip.safetensors --dino-checkpoint dino_vitbase8_pretrain.pth]

The dataset is imported with its record's loader (:mod:`.records`, :mod:`.importers`) (GT in the protocol's label space, 255 ignored),
predicted with ``Segmenter(preset=protocol, ...)`` (same class-file ids), and evaluated with
:func:`fiftyone_cass.fo.evaluation.evaluate_iou` (mmseg ``IoUMetric`` semantics). Everything stays in FiftyOne
(``predictions`` field, evaluation run ``eval_<protocol>``) for inspection in the App.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.fo.metrics import IoUMetrics, format_table
from fiftyone_cass.protocols.records import PROTOCOLS, get_protocol, load_protocol_dataset, protocol_names

if TYPE_CHECKING:  # FiftyOne is imported by the functions, so that add_arguments() stays light
    import fiftyone as fo

    from fiftyone_cass.fo.evaluation import IoUSegmentationResults

#: the labelling settings a protocol run hands to its prediction run (region voting; their flags are
#: generated from the declarations: ``fiftyone-cass eval --protocol ... --regions-field sam``)
LABEL_SETTINGS = ("regions_field", "region_vote", "region_min_area")


@dataclass
class ProtocolRun:
    protocol: str
    method: str
    dataset: fo.Dataset
    eval_key: str
    results: IoUSegmentationResults
    metrics: IoUMetrics
    table: str
    labelling: Any = None  # the prediction run's summary (fiftyone_cass.fo.apply.ApplySummary)

    def to_json(self) -> Dict[str, Any]:
        """What ``--summary-json`` writes: the protocol, the dataset, the key, the metrics, and
        with region voting the regions field and the samples labelled without regions."""
        out: Dict[str, Any] = dict(protocol=self.protocol, dataset=self.dataset.name, eval_key=self.eval_key)
        if self.labelling is not None and self.labelling.regions_field:
            out.update(regions_field=self.labelling.regions_field,
                       num_without_regions=self.labelling.num_without_regions)
        return dict(out, **self.metrics.to_json())


def predict_dataset(
    dataset,
    segmenter,
    pred_field: str = "predictions",
    masks_dir: Optional[str] = None,
    chunk_size: Optional[int] = None,
    progress=None,
    **settings,
):
    """Predicts every sample of ``dataset`` with ``segmenter`` (a :class:`fiftyone_cass.Segmenter`)
    through the labelling run of :func:`fiftyone_cass.apply` (the one labelling path): masks as PNG
    files under ``<masks_dir>/<pred_field>/``, written atomically, resumable (a rerun with the same
    model predicts only what is missing; other settings are replaced). ``settings``: labelling
    settings of that run (:data:`LABEL_SETTINGS`: region voting). Raises
    :class:`InvalidInputError` naming the images that could not be predicted, since an
    evaluation without them would not be the protocol's. Returns the run's summary."""
    from fiftyone_cass.fo.apply import AutoLabelRun

    run = AutoLabelRun(
        dataset, segmenter=segmenter, label_field=pred_field, masks="disk", mask_dir=masks_dir, overwrite=True,
        presence_field=None, embeddings_field=None, confidence_field=None, batch_size=int(chunk_size or getattr(segmenter, "batch_size", 4) or 4),
        **settings,
    )
    summary = run.run(progress=progress)
    if summary.num_failed:
        listed = "; ".join(err for _, _, err in summary.failures[:5])
        raise InvalidInputError(
            f"{summary.num_failed} image(s) could not be predicted (see the '{summary.error_field}' field): {listed}"
        )
    return summary


def run_protocol(
    protocol: str,
    dataset_dir=None,
    *,
    dataset: Optional[fo.Dataset] = None,
    segmenter=None,
    segmenter_factory: Optional[Callable[[], Any]] = None,
    method: str = "cass+cdam",
    backbone: str = "openai",
    device: Optional[str] = None,
    batch_size: int = 4,
    segmenter_kwargs: Optional[Dict[str, Any]] = None,
    split: Optional[str] = None,
    max_samples: Optional[int] = None,
    name: Optional[str] = None,
    gt_field: str = "ground_truth",
    pred_field: str = "predictions",
    eval_key: Optional[str] = None,
    masks_dir: Optional[str] = None,
    overwrite: bool = False,
    persistent: bool = False,
    resize: Optional[str] = None,
    importer_kwargs: Optional[Dict[str, Any]] = None,
    print_table: bool = True,
    progress=None,
    settings: Optional[Dict[str, Any]] = None,
) -> ProtocolRun:
    """Import (unless ``dataset`` is given) -> predict -> evaluate -> table.

    ``settings``: labelling settings of the prediction run (:data:`LABEL_SETTINGS`), e.g.
    ``{"regions_field": "sam"}`` on a ``dataset`` imported before, to which SAM / SAM2 regions
    were added.

    The model is ``segmenter`` (an object called on a list of image paths), else
    ``segmenter_factory()``, else ``fiftyone_cass.Segmenter(preset=protocol, method=method,
    backbone=backbone, device=device, batch_size=batch_size, **segmenter_kwargs)``. Its class ids
    must be the protocol's (``len(segmenter.mask_targets) == num_classes`` is checked when available).
    """
    from fiftyone_cass.fo.evaluation import evaluate_iou
    from fiftyone_cass.protocols.importers import protocol_mask_targets

    record = get_protocol(protocol, need_loader=dataset is None)  # a given dataset needs no loader
    preset = record.preset
    key = preset.name
    if dataset is None:
        if dataset_dir is None:
            raise InvalidInputError("pass dataset_dir (the benchmark's directory) or an imported dataset")
        kw = dict(importer_kwargs or {})
        kw.setdefault("split", split or record.default_split)
        dataset = load_protocol_dataset(
            key,
            dataset_dir,
            name=name,
            max_samples=max_samples,
            gt_field=gt_field,
            masks_dir=os.path.join(masks_dir, gt_field) if masks_dir else None,
            overwrite=overwrite,
            persistent=persistent,
            progress=progress,
            **kw,
        )
    elif not dataset.has_sample_field(gt_field):
        raise InvalidInputError(f"dataset {dataset.name!r} has no ground-truth field {gt_field!r}")

    if segmenter is None:
        if segmenter_factory is not None:
            segmenter = segmenter_factory()
        else:
            from fiftyone_cass.models.segmenter import Segmenter

            segmenter = Segmenter(
                preset=key, method=method, backbone=backbone, device=device, batch_size=batch_size,
                **(segmenter_kwargs or {}),
            )
    seg_targets = getattr(segmenter, "mask_targets", None)
    if seg_targets is not None and len(seg_targets) != preset.num_classes:
        raise InvalidInputError(
            f"the segmenter predicts {len(seg_targets)} classes but protocol {key!r} has {preset.num_classes}; "
            f"use Segmenter(preset={key!r})"
        )

    unknown = sorted(set(settings or ()) - set(LABEL_SETTINGS))
    if unknown:
        raise InvalidInputError(f"settings {', '.join(unknown)}: a protocol run takes {', '.join(LABEL_SETTINGS)}")
    labelling = predict_dataset(dataset, segmenter, pred_field=pred_field, masks_dir=masks_dir, progress=progress,
                                **(settings or {}))
    targets = dict(dataset.mask_targets)
    targets[pred_field] = targets.get(gt_field) or protocol_mask_targets(key)
    dataset.mask_targets = targets
    dataset.save()

    eval_key = eval_key or f"eval_{key}"
    results = evaluate_iou(  # replaces an evaluation of that key only once the new one succeeded
        dataset, pred_field, gt_field=gt_field, eval_key=eval_key, resize=resize, progress=progress, overwrite=True
    )
    metrics = results.iou_metrics()
    ref = None
    method_name = getattr(segmenter, "method", method)
    paper = record.published_miou.get(method_name)
    if paper is not None:
        ref = {f"paper ({method_name}, full val set)": paper}
    title = f"{key} | {method_name} | {len(dataset)} images | eval_key={eval_key}"
    table = format_table(metrics, title=title, reference=ref)
    if labelling.regions_field:
        table += (f"\nregion voting in {labelling.regions_field!r}: {labelling.num_without_regions} sample(s) had no "
                  "regions there and were predicted without voting")
    if print_table:
        print(table)
    return ProtocolRun(key, method_name, dataset, eval_key, results, metrics, table, labelling)


def add_arguments(p, model: bool = True) -> None:
    """The benchmark runner's flags on the ``argparse`` parser (or group) ``p``: which data, which
    dataset, and with ``model`` the model's (``fiftyone-cass eval --protocol`` derives those from
    the settings' declarations instead)."""
    if model:
        p.add_argument("--method", default="cass+cdam")
        p.add_argument("--backbone", default="openai")
        p.add_argument("--device", default=None)
        p.add_argument("--batch-size", type=int, default=4)
        p.add_argument("--clip-checkpoint", default=None)
        p.add_argument("--dino-checkpoint", default=None)
        p.add_argument("--resize-nearest", action="store_true", help="resize mismatched predictions to the GT size")
    p.add_argument("--split", default=None,
                   help="the benchmark's split to import (default val; "
                        + ", ".join(f"{PROTOCOLS[k].default_split} for {k}" for k in sorted(protocol_names())
                                    if PROTOCOLS[k].default_split != "val") + ")")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--name", default=None, help="FiftyOne dataset name (default <protocol>-<split>)")
    p.add_argument("--masks-dir", default=None, help="where GT/prediction PNGs are written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--persistent", action="store_true", help="keep the dataset after the process exits")
    p.add_argument("--crowd", default=None, choices=["skip", "paint", "ignore"], help="COCO-Object JSON: iscrowd rule")


def imported_dataset(target, protocol: str):
    """The FiftyOne dataset named ``target`` that a protocol run imported for ``protocol`` (kept
    with ``--persistent``, e.g. to add SAM / SAM2 regions to it), or None when ``target`` is a path
    or no dataset of that name exists. :class:`InvalidInputError` for a dataset of another protocol."""
    import fiftyone as fo

    if os.path.exists(str(target)) or not fo.dataset_exists(str(target)):
        return None
    dataset = fo.load_dataset(str(target))
    made_for = (dataset.info.get("fiftyone_cass") or {}).get("protocol")
    want = get_protocol(protocol).preset.name
    if made_for != want:
        raise InvalidInputError(f"dataset {dataset.name!r} was not imported for protocol {want!r} "
                                f"({'its protocol: ' + repr(made_for) if made_for else 'no protocol import'})")
    return dataset


def run_args(a, data_dir: str) -> "ProtocolRun":
    """Runs the protocol of the parsed flags ``a`` (:func:`add_arguments`, plus ``protocol`` and,
    when present, ``eval_key``, the :data:`LABEL_SETTINGS` and ``segmenter_options``, a dict of
    Segmenter options on top of the preset's, e.g. ``{"pamr_steps": 10}``) on ``data_dir``: the benchmark's
    directory, or the dataset an earlier run imported (:func:`imported_dataset`). Input errors
    raise :class:`InvalidInputError`."""
    seg_kwargs = {k: v for k, v in (("clip_checkpoint", a.clip_checkpoint), ("dino_checkpoint", a.dino_checkpoint)) if v}
    seg_kwargs.update(getattr(a, "segmenter_options", None) or {})  # Segmenter options on top of the preset's
    imp_kwargs = {"crowd": a.crowd} if a.crowd else None
    dataset = imported_dataset(data_dir, a.protocol)
    return run_protocol(
        a.protocol, None if dataset is not None else data_dir, dataset=dataset,
        settings={n: getattr(a, n) for n in LABEL_SETTINGS if hasattr(a, n)},
        method=a.method, backbone=a.backbone, device=a.device,
        batch_size=a.batch_size, segmenter_kwargs=seg_kwargs, split=a.split, max_samples=a.max_samples,
        name=a.name, masks_dir=a.masks_dir, overwrite=a.overwrite, persistent=a.persistent,
        eval_key=getattr(a, "eval_key", None),
        resize="nearest" if a.resize_nearest else None, importer_kwargs=imp_kwargs, progress=True,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fiftyone_cass.protocols.runner",
        description="Reproduce a paper protocol: import the benchmark, predict with the preset, print mIoU.",
    )
    p.add_argument("protocol", help=", ".join(protocol_names()))
    p.add_argument("data_dir", help="the benchmark's directory (mmseg layout; see fiftyone_cass.protocols.importers), "
                                    "or the dataset an earlier --persistent run imported")
    add_arguments(p)
    from fiftyone_cass.config.settings import add_settings_arguments

    add_settings_arguments(p, LABEL_SETTINGS, {"refinement": "refinement"})
    a = p.parse_args(argv)
    try:
        run_args(a, a.data_dir)
    except InvalidInputError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
