"""How a labelled field looks in the App: one colour per class (``dataset.app_config.color_scheme``
from ``mask_targets``), the field ticked in the sidebar, its class names in the field's description.
Set by the labelling run (:mod:`fiftyone_cass.fo.apply`); :mod:`fiftyone_cass.app.support`
re-exports it."""

from __future__ import annotations

import logging
from typing import Mapping, Optional

logger = logging.getLogger(__name__)


#: distinct colours (Tableau 20 then more), class i gets PALETTE[(i - 1) % len]
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39",
]


def class_colors(mask_targets: Mapping) -> list:
    """``maskTargetsColors`` for FiftyOne's ColorScheme: one colour per non-zero integer id
    (0 is background, which the App never draws)."""
    ids = sorted(int(k) for k in mask_targets if int(k) != 0)
    return [{"intTarget": i, "color": PALETTE[(n) % len(PALETTE)]} for n, i in enumerate(ids)]


def show_labels_in_app(dataset, label_field: str, mask_targets: Optional[Mapping] = None) -> None:
    """Dataset App config for ``label_field``: coloured by value with one colour per class of
    ``mask_targets`` (default: ``dataset.mask_targets[label_field]``), the field ticked in the
    sidebar, and its classes listed in the field's description (shown by the sidebar). Other
    fields' settings are kept. Never raises: the labels matter more than their looks."""
    import fiftyone as fo

    try:
        targets = mask_targets if mask_targets is not None else dataset.mask_targets.get(label_field)
        if not targets or not all(str(k).lstrip("-").isdigit() for k in targets):
            return
        cfg = dataset.app_config
        scheme = cfg.color_scheme or fo.ColorScheme()
        colors = class_colors(targets)
        old = next((f for f in (scheme.fields or []) if f.get("path") == label_field), None)
        old_ids = sorted(c.get("intTarget") for c in (old or {}).get("maskTargetsColors") or [])
        if old is None or old_ids != [c["intTarget"] for c in colors]:  # keep a user's colours for the same classes
            fields = [dict(f) for f in (scheme.fields or []) if f.get("path") != label_field]
            fields.append({"path": label_field, "maskTargetsColors": colors})
            scheme.fields = fields
        scheme.color_by = "value"
        cfg.color_scheme = scheme

        active = cfg.active_fields
        kept = [] if active is None or active.exclude else list(active.paths or [])
        cfg.active_fields = fo.ActiveFields(paths=active_fields_after_run(dataset, kept, label_field))
        dataset.save()

        names = ", ".join(f"{int(k)} {v}" for k, v in sorted(targets.items(), key=lambda kv: int(kv[0])))
        field = dataset.get_field(label_field)
        if field is not None:
            desc = f"Classes: {names}"
            if field.description != desc:
                field.description = desc
                field.save()
    except Exception as exc:  # noqa: BLE001 - cosmetic only
        logger.warning("could not set the App colours of field %r: %s", label_field, exc)


def active_fields_after_run(dataset, active, label_field: str) -> list:
    """The App's ticked fields after a run wrote ``label_field``: that field is the only label
    field ticked (older runs' masks would pile up under the new ones); ticked fields that are not
    label fields stay ticked."""
    import fiftyone as fo

    labels = set(dataset.get_field_schema(embedded_doc_type=fo.Label))
    return [p for p in (active or []) if p.split(".")[0] not in labels and p != label_field] + [label_field]
