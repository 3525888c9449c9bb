"""fiftyone_cass: training-free open-vocabulary semantic segmentation (CASS + CDAM) for FiftyOne."""

__version__ = "0.1.0"

from .errors import CassError, ImageLoadError, InvalidInputError, WeightsUnavailableError  # noqa: F401,E402
from .models import METHODS, PRESETS, Segmenter, SegmentationResult, SegmenterOptions  # noqa: F401,E402
