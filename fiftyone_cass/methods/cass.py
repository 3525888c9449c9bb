"""CASS: the last block attends with the spectral fusion of DINO's and CLIP's attention graphs
(SPEC C, D); query logits blend patch similarities to object-adjusted text with the global prior
(E.3-E.4); with ``+cdam`` the CDAM map is mixed into the fused attention (G, H.5)."""

from __future__ import annotations

import torch

from fiftyone_cass.core.cass import cass_attention
from fiftyone_cass.core.presence import adjust_text, blend_logits, cluster_leaders
from fiftyone_cass.methods.base import register_family
from fiftyone_cass.methods.attention import AttentionFamily


@register_family
class CASS(AttentionFamily):
    name = "cass"
    needs_dino = True

    def attention(self, seg, k, crops, grid):
        with seg._stage("dino"):
            dkeys = seg._dino_keys_on_grid(crops, grid)
        with seg._stage("spectral"):
            return cass_attention(k, dkeys, grid, seg.head_dim**-0.5, seg.cass_options).attn

    def logits(self, seg, feats, g):
        """E.3-E.4 on patch features ``(B, N, E)``: (logits ``(B, N, Q)``, adjusted text)."""
        o = seg.options
        leaders = cluster_leaders(g, seg.clusters)
        text = adjust_text(seg.text, feats, leaders, o.alpha, o.top_k)
        return blend_logits(feats, text, g, o.gamma), text

    def cdam_similarity(self, seg, feats, g, vglob, text):
        o = seg.options
        if o.cdam_similarity != "cass":
            return super().cdam_similarity(seg, feats, g, vglob, text)
        b = feats.shape[0]
        t_all = torch.cat([text, seg.text_aug.unsqueeze(0).expand(b, -1, -1)], 1)
        g_all = torch.cat([g, vglob @ seg.prior_text_aug.T], 1)  # g's space: the prior CLIP's (L.1)
        return blend_logits(feats, t_all, g_all, o.gamma)  # (B, N, Q+A)

    def relogits(self, seg, feats, g, text):
        if seg.options.cdam_readjust_text:  # H.5: redo E.3 on the re-predicted features
            return self.logits(seg, feats, g)[0]
        return blend_logits(feats, text, g, seg.options.gamma)
