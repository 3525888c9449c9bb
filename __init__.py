"""FiftyOne plugin entry point of fiftyone_cass (FIFTYONE_PLUGINS_DIR -> this repository).

Operators: ``@fiftyone-cass/cass/auto_label``, ``retag_presence`` (auto-labelling, see
``fiftyone_cass/integrations/label_plugin.py``) and ``evaluate_iou``, ``mean_iou`` (evaluation,
see ``fiftyone_cass/integrations/eval_plugin.py``). Panel: ``cass_iou`` (per-class IoU and
presence scores, see ``fiftyone_cass/integrations/iou_panel.py``).
"""


def register(p):
    from fiftyone_cass.integrations.eval_plugin import OPERATORS as EVAL_OPERATORS
    from fiftyone_cass.integrations.iou_panel import PANELS
    from fiftyone_cass.integrations.label_plugin import OPERATORS as LABEL_OPERATORS

    for op in LABEL_OPERATORS + EVAL_OPERATORS + PANELS:
        p.register(op)
