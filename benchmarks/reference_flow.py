"""The reference CASS code's control flow, with this project's math: the baseline of the speed
benchmark (``benchmarks/bench.py --reference``).

The official CASS segmentor handles one image and one window at a time, and for every window:

1. runs the crop through its modified CLIP visual forward, which first runs DINO on the crop
   (a PIL round trip of the un-normalised crop) and then the whole CLIP tower, including the
   standard last block, whose CLS output is thrown away in slide mode, before the reduced block;
2. calls the same forward again on the *whole resized image* for the global embedding: DINO runs
   once more, on the crop up-sampled to a square of the whole image's short side (the forward
   sizes DINO's input from the tensor it is given; 224 -> 336 at the CASS protocol, 42 x 42
   patches instead of 28 x 28; the output is unused), and CLIP re-encodes the whole image;
3. in the reduced block, per head in Python loops: the N x N CLIP and DINO key graphs, float64
   ``eigvalsh`` of every N x N graph for the spectra, a 12 x 12 double loop for the cost matrix,
   one ``linear_sum_assignment``, then per CLIP head a float64 decomposition of the matched
   N x N DINO graph for the rank-10 approximation, range matching and fusion;
4. adjusts the text per cluster in a Python loop, computes the window's logits, up-samples them
   to the crop and adds them into the canvas.

:class:`ReferenceFlow` reproduces that structure (same passes, same per-head loops, N x N float64
decompositions instead of the d x d Gram trick, nothing batched, nothing reused across windows)
with the functions of :mod:`fiftyone_cass.core` and the models, options and text of a
:class:`~fiftyone_cass.models.segmenter.Segmenter`, so its label maps equal the Segmenter's on the
same input (round-off aside) and a speed ratio between the two is a ratio of control flows. The
two deviations from the reference are deliberate and favour it: the rank-10 part uses an exact
``eigh`` (the reference's randomised ``svd_lowrank`` costs about the same) and the Gaussian window
is cached per grid (the reference caches it too).

Only the ``cass`` and ``cass+cdam`` methods in slide mode with the whole-image prior (every CASS
protocol except VOC21 and Cityscapes) are covered.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fiftyone_cass.core import cdam as cdam_ops
from fiftyone_cass.core.cass import attend_values, normalize_dino_keys
from fiftyone_cass.core.entropy import entropy_range, threshold_from_entropy
from fiftyone_cass.core.fusion import fuse_graphs, neighbourhood_attention, range_match
from fiftyone_cass.core.gaussian import gaussian_window
from fiftyone_cass.core.graphs import key_graph, resample_dino_keys
from fiftyone_cass.core.lowrank import eigenscale, lowrank_graph, top_eigenpairs
from fiftyone_cass.core.preprocess import clip_normalize
from fiftyone_cass.core.presence import blend_logits, labels_from_probabilities, merge_synonyms
from fiftyone_cass.core.spectral import match_heads, normalize_spectrum, spectral_distance, top_eigenvalues
from fiftyone_cass.core.windows import keep_ratio_size, sliding_windows, upsample_logits
from fiftyone_cass.models import clip_visual as cv
from fiftyone_cass.models.dino import IMAGENET_MEAN, IMAGENET_STD, dino_keys, dino_pixels_from_clip

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class ReferenceFlow:
    """Segment images the way the reference code walks them (see the module docstring).

    ``seg``: a ``cass`` or ``cass+cdam`` :class:`Segmenter`; its backbones, precision, text
    embeddings, clusters and options are used as they are. ``stage_seconds`` accumulates the
    time per stage (``clip``, ``clip_global``, ``dino``, ``spectral``, ``cdam``, ``stitch``,
    ``prepare``), device-synchronised."""

    def __init__(self, seg):
        o = seg.options
        if seg.base != "cass":
            raise ValueError(f"the reference control flow is CASS's; got method {seg.method!r}")
        if o.mode != "slide" or o.global_prior != "image":
            raise ValueError("the reference control flow covers slide mode with the whole-image prior")
        if o.energy_rank is not None or o.paper_matching:
            raise ValueError("energy_rank / paper_matching are not reproduced by the reference flow")
        self.seg = seg
        self.o = o
        self.device = seg.device
        self.visual = seg.visual
        self.heads = seg.heads
        self.scale = seg.head_dim**-0.5
        self.stage_seconds: Dict[str, float] = {}

    # ---------------------------------------------------------------- helpers
    def _autocast(self):
        if self.seg.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=_DTYPES[self.seg.precision])

    def _sync(self) -> None:
        """Waits for the device, so that a host clock read after it counts the work queued before."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, name: str, fn, *args):
        self._sync()
        t0 = time.perf_counter()
        out = fn(*args)
        self._sync()
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - t0
        return out

    def _dino(self, crop: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """DINO on one crop ``(1, 3, H, W)``: keys on the CLIP grid ``(1, H, N, d)``."""
        pixels = dino_pixels_from_clip(crop.cpu(), clean=self.o.dino_clean_input).to(self.device)
        with self._autocast():
            keys, dgrid = dino_keys(self.seg.dino, pixels)
        return resample_dino_keys(keys.float(), dgrid, grid)

    def _dino_global_pass(self, crop: torch.Tensor, side: int) -> None:
        """The DINO run of the reference's global forward: the crop's pixels (uint8, as the
        reference's PIL image) resized bicubically to ``side x side``, then DINO; unused."""
        pixels = dino_pixels_from_clip(crop.cpu(), clean=self.o.dino_clean_input)
        m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        sd = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        arr = ((pixels * sd + m) * 255.0).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        big = np.array(Image.fromarray(arr).resize((side, side), Image.BICUBIC))
        x = (torch.from_numpy(big).permute(2, 0, 1).float().unsqueeze(0) / 255.0 - m) / sd
        with self._autocast():
            dino_keys(self.seg.dino, x.to(self.device))

    def _clip_tower(self, image: torch.Tensor):
        """The whole standard CLIP tower on ``(1, 3, H, W)``: tokens before the last block and the
        CLS embedding of the standard last block (computed on every call, as in the reference)."""
        with self._autocast():
            x, grid = cv.trunk(self.visual, image)
            x = x.float()
            cls = cv.global_embedding(self.visual, x).float()
        return x, grid, cls

    # ---------------------------------------------------------------- spectral step, per head
    def _spectral_attention(self, k: torch.Tensor, dk: torch.Tensor, grid) -> torch.Tensor:
        """``k``, ``dk``: ``(H, N, d)`` CLIP keys and resampled DINO keys of one window.
        Returns the fused attention ``(H, N, N)``, head by head."""
        o, co = self.o, self.seg.cass_options
        dn = normalize_dino_keys(dk.unsqueeze(0), k.unsqueeze(0))[0]
        clip_graphs = [key_graph(k[h], self.scale) for h in range(self.heads)]
        dino_graphs = [key_graph(dn[h], self.scale) for h in range(self.heads)]
        p_d = [normalize_spectrum(top_eigenvalues(torch.linalg.eigvalsh(g.double()), co.k_eigen)) for g in dino_graphs]
        p_c = [normalize_spectrum(top_eigenvalues(torch.linalg.eigvalsh(g.double()), co.k_eigen)) for g in clip_graphs]
        w = torch.zeros(self.heads, self.heads, dtype=torch.float64, device=k.device)
        for i in range(self.heads):
            for j in range(self.heads):
                w[i, j] = spectral_distance(p_d[i].unsqueeze(0), p_c[j].unsqueeze(0))[0, 0]
        dino_index, weight = match_heads(w.unsqueeze(0), co.paper_matching)  # one assignment
        dino_index, weight = dino_index[0].tolist(), weight[0]
        omega = gaussian_window(grid[0], grid[1], co.gaussian_std, k.device, torch.float32)
        fused = []
        for h in range(self.heads):
            vals, vecs = torch.linalg.eigh(dino_graphs[dino_index[h]].double())  # N x N, float64
            values, vectors = top_eigenpairs(vals, vecs, co.rank)
            if co.eigenscale:
                values = eigenscale(values, co.eigenscale_low, co.eigenscale_high)
            d_hat = lowrank_graph(values, vectors)
            d_tilde = range_match(d_hat, clip_graphs[h].double()).float()
            fused.append(fuse_graphs(d_tilde, clip_graphs[h], weight[h].float(), co.beta))
        return neighbourhood_attention(torch.stack(fused), omega)

    # ---------------------------------------------------------------- text adjustment, per cluster
    def _adjust_text(self, feats: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """E.3 cluster by cluster: ``feats`` ``(N, E)``, ``g`` ``(Q,)`` -> adjusted text ``(Q, E)``."""
        text, clusters, o = self.seg.text, self.seg.clusters, self.o
        adjusted = text.clone()
        for c in range(int(clusters.max()) + 1 if clusters.numel() else 0):
            members = (clusters == c).nonzero()[:, 0]
            i = int(members[g[members].argmax()])
            sims = feats @ text[i]
            top = sims.topk(min(o.top_k, feats.shape[0])).indices
            mean = F.normalize(feats[top].mean(0), dim=0)
            adjusted[i] = F.normalize((1 - o.alpha) * text[i] + o.alpha * mean, dim=0)
        return adjusted

    # ---------------------------------------------------------------- one window
    def _window(self, crop: torch.Tensor, whole: torch.Tensor):
        seg, o = self.seg, self.o
        vis = self.visual
        # (1) the crop's forward: DINO, then the whole CLIP tower, then the reduced block
        grid = cv.patch_grid(vis, crop.shape[-2], crop.shape[-1])
        dk = self._timed("dino", self._dino, crop, grid)
        x, grid, _ = self._timed("clip", self._clip_tower, crop)
        _, k, v = cv.last_block_qkv(vis, x)
        attn = self._timed("spectral", self._spectral_attention, k[0], dk[0], grid).unsqueeze(0)
        feats = cv.project(vis, cv.out_projection(vis, attend_values(attn, v)))[0]  # (N, E)
        # (2) the global forward on the whole image: DINO runs again on the crop, unused
        self._timed("dino", self._dino_global_pass, crop, min(whole.shape[-2:]))
        _, _, vglob = self._timed("clip_global", self._clip_tower, whole)
        vglob = vglob[0]
        g = vglob @ seg.text.T
        # (3) per-cluster text adjustment and logits
        text_adj = self._adjust_text(feats, g)
        logits = blend_logits(feats.unsqueeze(0), text_adj, g.unsqueeze(0), o.gamma)[0]  # (N, Q)
        if seg.use_cdam:
            logits = self._timed("cdam", self._cdam, x, feats, g, vglob, text_adj, grid, v, attn)
        q = logits.T.reshape(-1, *grid)  # (Q, h, w)
        hmin, hmax = entropy_range(q, o.entropy_logit_scale)
        return q, float(hmin), float(hmax)

    def _cdam(self, x, feats, g, vglob, text_adj, grid, v, attn):
        seg, o = self.seg, self.o
        vis = self.visual
        if o.cdam_similarity == "cass":
            t_all = torch.cat([text_adj, seg.text_aug])
            g_all = torch.cat([g, vglob @ seg.text_aug.T])
            sim = blend_logits(feats.unsqueeze(0), t_all, g_all.unsqueeze(0), o.gamma)
        else:
            sim = feats.unsqueeze(0) @ torch.cat([seg.text, seg.text_aug]).T
        sim = sim.transpose(1, 2).reshape(1, -1, *grid)
        cdt = torch.float64 if getattr(o, "cdam_dtype", "float32") == "float64" else torch.float32
        cd = cdam_ops.multiscale_cdam(sim.to(cdt), o.cdam_scales, o.cdam_temperature, o.cdam_attn_temperature)
        cd = cd.to(feats.dtype)
        new_attn = cdam_ops.mix_attention(attn, cd.unsqueeze(1), o.cdam_mix, o.cdam_row_normalize)
        feats = cv.project(vis, cv.out_projection(vis, attend_values(new_attn, v)))[0]
        text = self._adjust_text(feats, g) if o.cdam_readjust_text else text_adj
        return blend_logits(feats.unsqueeze(0), text, g.unsqueeze(0), o.gamma)[0]

    # ---------------------------------------------------------------- one image
    @torch.no_grad()
    def segment(self, rgb: np.ndarray) -> Tuple[np.ndarray, float]:
        """``rgb`` ``(H, W, 3)`` uint8 -> ``(label_map, threshold)``, window after window."""
        import cv2

        seg, o = self.seg, self.o
        self._sync()
        t0 = time.perf_counter()
        h0, w0 = rgb.shape[:2]
        h, w = keep_ratio_size(h0, w0, o.long_side, o.short_side)
        resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR) if (h, w) != (h0, w0) else rgb
        img = clip_normalize(torch.from_numpy(np.ascontiguousarray(resized)).to(self.device).permute(2, 0, 1))
        whole = img.unsqueeze(0)
        ph, pw = max(h, o.crop), max(w, o.crop)
        if (ph, pw) != (h, w):
            img = F.pad(img, (0, pw - w, 0, ph - h))
        self._sync()  # on CUDA the copy and normalisation are queued: count them here, not in the next stage
        self.stage_seconds["prepare"] = self.stage_seconds.get("prepare", 0.0) + time.perf_counter() - t0
        canvas: Optional[torch.Tensor] = None
        count = torch.zeros(1, ph, pw, device=self.device)
        hmins: List[float] = []
        hmaxs: List[float] = []
        for (y1, y2, x1, x2) in sliding_windows(ph, pw, o.crop, o.stride):
            crop = img[:, y1:y2, x1:x2].unsqueeze(0)
            q, hmin, hmax = self._window(crop, whole)
            hmins.append(hmin)
            hmaxs.append(hmax)
            self._sync()
            t1 = time.perf_counter()
            if canvas is None:
                canvas = torch.zeros(q.shape[0], ph, pw, device=self.device)
            canvas[:, y1:y2, x1:x2] += upsample_logits(q, (y2 - y1, x2 - x1))
            count[:, y1:y2, x1:x2] += 1
            self._sync()
            self.stage_seconds["stitch"] = self.stage_seconds.get("stitch", 0.0) + time.perf_counter() - t1
        return self._timed("stitch", self._postprocess, canvas, count, (h, w), (h0, w0), hmins, hmaxs)

    def _postprocess(self, canvas, count, size, original_size, hmins, hmaxs):
        seg, o = self.seg, self.o
        h, w = size
        logits = upsample_logits((canvas / count)[:, :h, :w], original_size)
        probs = torch.softmax(o.logit_scale * logits, dim=0)
        class_probs = merge_synonyms(probs, seg.query_to_class, seg.num_labels, dim=0)
        thr = 0.0
        if seg.background_id is not None:
            if seg.use_cdam and o.bg_rule == "entropy":
                if o.entropy_source == "last_crop":
                    lo, hi = hmins[-1], hmaxs[-1]
                else:
                    lo, hi = min(hmins), max(hmaxs)
                thr = float(threshold_from_entropy(torch.tensor(lo), torch.tensor(hi),
                                                   o.entropy_thr_default, o.entropy_alpha))
            elif o.bg_rule != "none":
                thr = o.prob_thd
        labels = labels_from_probabilities(class_probs, thr, seg.background_id or 0, dim=0)
        dtype = np.uint8 if seg.num_labels <= 256 else np.uint16
        return labels.to("cpu", torch.int64).numpy().astype(dtype), thr
