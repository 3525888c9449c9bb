"""This repository as a FiftyOne plugin and a remotely-sourced FiftyOne zoo model.

* Plugin (``fiftyone.yml``): operators ``@fiftyone-cass/cass/auto_label``, ``retag_presence``
  (``fiftyone_cass/app/label_operators.py``) and ``evaluate_iou``, ``mean_iou``
  (``fiftyone_cass/app/eval_operators.py``); panel ``cass_iou`` (per-class IoU and presence
  scores, ``fiftyone_cass/app/iou_panel.py``).
* Zoo models (``manifest.json``): one per backbone record, ``cass-vit-b16-torch`` (the default),
  ``cass-vit-b16-l14prior-torch``, ``cass-vit-b16-dinov2-torch``, ``cass-vit-b16-dinov3-torch``,
  through :func:`download_model` and :func:`load_model` below, e.g.::

      foz.register_zoo_model_source("https://github.com/fiftyone-cass/fiftyone_cass")
      model = foz.load_zoo_model("cass-vit-b16-torch", classes=["dog", "frisbee"])

Both import the package ``fiftyone_cass`` that sits next to this file, unless it is installed.
"""

import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _import_package():
    """Makes ``fiftyone_cass`` importable: the installed package, else the copy in this
    directory (``fiftyone plugins download`` and ``register_zoo_model_source`` fetch the repository
    without installing it)."""
    try:
        import fiftyone_cass  # noqa: F401
    except ImportError:
        sys.path.insert(0, _HERE)
        import fiftyone_cass  # noqa: F401
    return fiftyone_cass


def register(p):
    _import_package()
    from fiftyone_cass.app.eval_operators import OPERATORS as EVAL_OPERATORS
    from fiftyone_cass.app.iou_panel import PANELS
    from fiftyone_cass.app.label_operators import OPERATORS as LABEL_OPERATORS

    for op in LABEL_OPERATORS + EVAL_OPERATORS + PANELS:
        p.register(op)


def download_model(model_name, model_path):
    """Zoo hook. The weights are not files of this model: open_clip and timm fetch them into their
    own caches when the model is first loaded (or read local files given as ``clip_checkpoint``
    / ``dino_checkpoint``), so a machine without network can still load it from local files.
    This writes ``model_path`` as a small JSON record of where the weights come from (the backbone
    record of the zoo name, ``fiftyone_cass/models/backbones.py``)."""
    _import_package()
    from fiftyone_cass.models.backbones import backbone_for_zoo_name, get_backbone_spec

    spec = get_backbone_spec(backbone_for_zoo_name(model_name))  # ValueError for an unknown name
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    record = {
        "model": model_name.split("@")[0],
        "backbone": spec.name,
        "clip": f"open_clip {spec.clip.model}, pretrained={spec.clip.pretrained!r} (QuickGELU); or clip_checkpoint=<file>",
        "dino": f"timm {spec.vfm.timm_name}; or dino_checkpoint=<file>",
        "weights": "fetched by open_clip/timm into their caches on first load",
        "records": spec.summary(),
    }
    if spec.prior is not None:
        record["prior"] = (f"open_clip {spec.prior.model}, pretrained={spec.prior.pretrained!r}; or "
                           "FIFTYONE_CASS_PRIOR_CHECKPOINT=<file>")
    tmp = model_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, model_path)


def load_model(model_name, model_path, **kwargs):
    """Zoo hook: a :class:`fiftyone_cass.CassModel` on the zoo name's backbone record; keyword
    arguments go to it (``classes``, ``preset``, ``mask_targets``, ``method``, ``device``,
    ``precision``, checkpoints, any Segmenter option). Unknown arguments and missing weights are
    clear errors."""
    _import_package()
    from fiftyone_cass.fo.model import load_cass_model

    return load_cass_model(model_name=model_name, **kwargs)
