"""Families whose last block is an attention over the values (NACLIP, CASS): CDAM's re-prediction
mixes its map into that attention (SPEC G.6)."""

from __future__ import annotations

from fiftyone_cass.core import cdam as cdam_ops
from fiftyone_cass.core.cass import attend_values
from fiftyone_cass.models import clip_visual as cv
from fiftyone_cass.methods.base import FamilyOutput, MethodFamily


class AttentionFamily(MethodFamily):
    """A family whose last block is ``attention(k, ...) @ v`` without residual/MLP: CDAM's
    re-prediction mixes its map into that attention."""

    def attention(self, seg, k, crops, grid):
        raise NotImplementedError

    def features(self, seg, x, crops, grid):
        _, k, v = cv.last_block_qkv(seg.visual, x)
        attn = self.attention(seg, k, crops, grid)
        feats = cv.project(seg.visual, cv.out_projection(seg.visual, attend_values(attn, v)))
        return FamilyOutput(feats, attn, v)

    def repredict(self, seg, x, out, cdam):
        o = seg.options
        new_attn = cdam_ops.mix_attention(out.attn, cdam.unsqueeze(1), o.cdam_mix, o.cdam_row_normalize)
        # a (B, 1, N, N) map broadcasts over the heads: one CDAM for every head (G.6)
        return cv.project(seg.visual, cv.out_projection(seg.visual, attend_values(new_attn, out.v)))
