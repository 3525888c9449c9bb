"""Backbones, text embeddings, presets and the segmenter pipeline."""

from fiftyone_cass.models.presets import PRESETS, get_preset  # noqa: F401
from fiftyone_cass.models.segmenter import METHODS, Segmenter, SegmentationResult, SegmenterOptions  # noqa: F401
