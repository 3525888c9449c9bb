"""NACLIP: the last block attends with a Gaussian neighbourhood on key-key similarity (SPEC C.1);
with ``+cdam`` the CDAM map is mixed into that attention (G.6)."""

from __future__ import annotations

from fiftyone_cass.core.cass import naclip_attention
from fiftyone_cass.methods.attention import AttentionFamily
from fiftyone_cass.methods.base import register_family


@register_family
class NACLIP(AttentionFamily):
    name = "naclip"
    logit_scale = 50.0  # CDAM/MaskCLIP protocol

    def attention(self, seg, k, crops, grid):
        return naclip_attention(k, grid, seg.head_dim**-0.5, seg.options.gaussian_std)
