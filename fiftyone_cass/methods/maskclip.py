"""MaskCLIP: the last block's value path only (no attention), SPEC B; with ``+cdam`` the CDAM map
re-weights the values of the block input, CLS token included (H.2)."""

from __future__ import annotations

from fiftyone_cass.core import cdam as cdam_ops
from fiftyone_cass.core.cass import attend_values
from fiftyone_cass.models import clip_visual as cv
from fiftyone_cass.methods.base import FamilyOutput, MethodFamily, register_family


@register_family
class MaskCLIP(MethodFamily):
    name = "maskclip"
    logit_scale = 50.0  # CDAM/MaskCLIP protocol

    def features(self, seg, x, crops, grid):
        b, n = x.shape[0], grid[0] * grid[1]
        _, _, v_all = cv.last_block_qkv(seg.visual, x, keep_cls=True)
        vcat = v_all.permute(0, 2, 1, 3).reshape(b, n + 1, -1)
        out = cv.residual_mlp(seg.visual, x, cv.out_projection(seg.visual, vcat))
        return FamilyOutput(cv.project(seg.visual, out)[:, 1:])

    def repredict(self, seg, x, out, cdam):
        w = cdam_ops.reprediction_weights(cdam)  # (B, N+1, N+1), zero CLS row/col
        _, _, v_all = cv.last_block_qkv(seg.visual, x, keep_cls=True)
        attended = attend_values(w.unsqueeze(1), v_all)
        block = cv.residual_mlp(seg.visual, x, cv.out_projection(seg.visual, attended))
        return cv.project(seg.visual, block)[:, 1:]
