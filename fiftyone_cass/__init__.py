"""fiftyone_cass: training-free open-vocabulary semantic segmentation (CASS + CDAM) for FiftyOne."""

__version__ = "0.1.0"

from fiftyone_cass.errors import CassError, ImageLoadError, InvalidInputError, WeightsUnavailableError  # noqa: F401,E402
from fiftyone_cass.models.presets import PRESETS  # noqa: F401,E402  (the live preset registry)
from fiftyone_cass.models.segmenter import Segmenter, SegmentationResult, SegmenterOptions  # noqa: F401,E402


def __getattr__(name):
    if name == "METHODS":  # read from the registry now: a family registered after import is listed
        from fiftyone_cass.methods import method_names

        return tuple(method_names())
    # the FiftyOne integration is imported lazily: ``import fiftyone_cass`` stays light
    if name in ("apply", "retag"):
        from fiftyone_cass.fo import apply as _apply_mod

        return getattr(_apply_mod, name)
    if name == "concept_heatmap":
        from fiftyone_cass.fo.concepts import concept_heatmap

        return concept_heatmap
    if name in ("review_queue", "class_confidence"):
        from fiftyone_cass.fo import review as _review_mod

        return getattr(_review_mod, name)
    if name in ("CassModel", "load_cass_model"):
        from fiftyone_cass.fo import model as _model_mod

        return getattr(_model_mod, name)
    raise AttributeError(f"module 'fiftyone_cass' has no attribute {name!r}")
