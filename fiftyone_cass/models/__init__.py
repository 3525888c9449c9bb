"""Backbones, text embeddings, presets and the segmenter pipeline.

Import from the modules (``fiftyone_cass.models.segmenter``, ``.presets``, ...) or from
``fiftyone_cass``: this package imports nothing, so that the method families
(:mod:`fiftyone_cass.methods`) can use its building blocks (``clip_visual``) while the
Segmenter uses the families, without an import cycle.
"""
