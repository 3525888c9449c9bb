"""Backbones, text embeddings, presets and the segmenter pipeline."""

from .presets import PRESETS, get_preset  # noqa: F401
from .segmenter import METHODS, Segmenter, SegmentationResult, SegmenterOptions  # noqa: F401
