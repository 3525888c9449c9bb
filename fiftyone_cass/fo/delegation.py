"""Queueing labelling runs as FiftyOne delegated operations, run later by
``fiftyone delegated launch`` workers (``fiftyone-cass label --delegate``)."""

from __future__ import annotations

from typing import Any, List

from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.config.settings import label_setting_names, resolve_masks

#: the operator that delegated runs execute (:mod:`fiftyone_cass.app.label_operators`)
AUTO_LABEL_URI = "@fiftyone-cass/cass/auto_label"


def queue_auto_label(view, workers: int = 1, needed_for: str = "to queue delegated operations",
                     **apply_kwargs: Any) -> List[str]:
    """Queues ``workers`` delegated ``auto_label`` operations on ``view`` (shard ``i`` of
    ``workers`` each, by file path) with the :func:`~fiftyone_cass.fo.apply.apply`
    keywords ``apply_kwargs`` (settings and Segmenter options). ``masks="auto"`` is decided here,
    on the whole view, so every worker stores masks the same way. Returns the operations' ids.
    Without the plugin where FiftyOne looks for plugins, an
    :class:`~fiftyone_cass.errors.InvalidInputError` says how to install it (``needed_for``
    ends its message)."""
    import fiftyone.operators as foo


    try:
        op = foo.get_operator(AUTO_LABEL_URI)
    except Exception as exc:  # noqa: BLE001 - plugin not installed where FiftyOne looks
        raise InvalidInputError(
            f"the FiftyOne plugin {AUTO_LABEL_URI} is not installed ({exc}); install it (symlink or copy this "
            f"repository into your FIFTYONE_PLUGINS_DIR) {needed_for}"
        ) from None
    params = dict(apply_kwargs)
    if params.get("masks", "auto") == "auto":
        params["masks"] = resolve_masks("auto", len(view), params.get("mask_dir"))
    settings = label_setting_names()
    options = {k: params.pop(k) for k in list(params) if k not in settings}
    classes = params.pop("classes", None)
    preset = params.pop("preset", None)
    gt_field = params.pop("gt_field", None)
    queued = []
    for i in range(workers):
        shard = dict(shard=[i, workers]) if workers > 1 else {}
        res = op(view, classes=classes, preset=preset, gt_field=gt_field, delegate=True,
                 options=options or None, **shard, **params)
        queued.append(str(res.result["id"]) if isinstance(res.result, dict) and "id" in res.result else str(res.result))
    return queued


def launch_hint(dataset_name: str, queued: List[str]) -> str:
    """What to run after :func:`queue_auto_label`: one ``fiftyone delegated launch`` per GPU."""
    import shlex

    lines = [f"queued {len(queued)} delegated operation(s) on dataset {dataset_name!r}: {', '.join(queued)}",
             "run them with one worker per GPU, e.g.:"]
    lines += [f"  CUDA_VISIBLE_DEVICES={i} fiftyone delegated launch &" for i in range(len(queued))]
    return "\n".join(lines + ["and watch them with: fiftyone delegated list --dataset " + shlex.quote(dataset_name)])
