"""An edge measurement that needs no weights (issue 20 item 6): synthetic scenes of flat-coloured
shapes with known masks, and logits that are right but blurred to patch resolution, as CASS's are
(one value per 16x16 pixels, up-sampled bilinearly). Reports mIoU and the boundary F-score
(boundary pixels matched within 2 px) of the label map

* before refinement (the blurred logits' argmax),
* after PAMR (SPEC K.2: ``fiftyone_cass.core.pamr.pamr`` guided by the scene, CLIP-normalised as
  the pipeline's processed image; 10 steps, dilations (8, 16): the seeds' ``--pamr on``),
* after region voting (SPEC K.5, ``fiftyone_cass.core.regions.vote``, majority) with the true
  shapes as regions: the scene's instance map, background included, as an ``fo.Segmentation`` of
  region ids would give them.

What it shows and what it does not: the logits are *right* at patch scale (the true one-hot
labels averaged over each patch), so the only error is the patch-scale blur that every CASS label
map has; the measurement isolates what each refinement does to edges. It says nothing of the gain
on real images with real CASS logits (that needs the weights; see the README).

Usage::

    python benchmarks/refinement.py                 # 8 scenes of 240x320, prints the table
    python benchmarks/refinement.py --scenes 20 --size 480x640 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

PATCH = 16


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8, flat colours
    labels: np.ndarray  # (H, W) int: class of each pixel (0 = background)
    instances: np.ndarray  # (H, W) int: 1 = background, 2.. = each visible shape
    num_classes: int  # labels 0..num_classes-1


def make_scene(height: int = 240, width: int = 320, num_shapes: int = 5, num_classes: int = 6, seed: int = 0,
               min_size: int = 40) -> Scene:
    """A background of one colour and ``num_shapes`` flat-coloured shapes (rectangles, ellipses,
    triangles) of random classes 1..num_classes-1, later shapes occluding earlier ones; every
    shape at least ``min_size`` pixels across (2.5 patches) so that its patch-scale logits are
    right. Colours differ between classes by at least 60 in some channel."""
    rng = np.random.default_rng(seed)
    palette = [rng.integers(0, 256, 3)]
    while len(palette) < num_classes:
        c = rng.integers(0, 256, 3)
        if all(np.abs(c - p).max() >= 60 for p in palette):
            palette.append(c)
    labels = np.zeros((height, width), np.int64)
    instances = np.ones((height, width), np.int64)
    yy, xx = np.mgrid[0:height, 0:width]
    areas: Dict[int, int] = {}  # instance -> its area when drawn
    k = attempts = 0
    while k < num_shapes and attempts < 50 * num_shapes:
        attempts += 1
        cls = int(rng.integers(1, num_classes))
        h = int(rng.integers(min_size, max(min_size + 1, height // 2)))
        w = int(rng.integers(min_size, max(min_size + 1, width // 2)))
        y0 = int(rng.integers(0, height - h))
        x0 = int(rng.integers(0, width - w))
        kind = k % 3
        if kind == 0:
            m = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        elif kind == 1:
            cy, cx = y0 + h / 2, x0 + w / 2
            m = ((yy + 0.5 - cy) / (h / 2)) ** 2 + ((xx + 0.5 - cx) / (w / 2)) ** 2 <= 1
        else:  # a triangle: apex at the top centre
            t = (yy + 0.5 - y0) / h
            m = (t >= 0) & (t <= 1) & (np.abs(xx + 0.5 - (x0 + w / 2)) <= t * w / 2)
        # no shape occluded to a sliver: each earlier one keeps at least 60% of its area
        if any(np.count_nonzero((instances == i) & ~m) < 0.6 * a for i, a in areas.items()):
            continue
        labels[m] = cls
        instances[m] = k + 2
        areas[k + 2] = int(np.count_nonzero(m))
        k += 1
    image = np.asarray(palette, np.uint8)[labels]
    return Scene(image, labels, _relabel(instances), num_classes)


def _relabel(instances: np.ndarray) -> np.ndarray:
    _, inv = np.unique(instances, return_inverse=True)
    return inv.reshape(instances.shape) + 1


def blurred_logits(scene: Scene, patch: int = PATCH):
    """Right but blurred logits ``(1, C, H, W)`` (torch float32): the one-hot labels averaged over
    each ``patch`` x ``patch`` cell (one value per patch, as CASS's), then up-sampled bilinearly
    (align_corners=False) to the image size, as the pipeline does."""
    import torch
    import torch.nn.functional as F

    onehot = torch.nn.functional.one_hot(torch.from_numpy(scene.labels), scene.num_classes)
    onehot = onehot.permute(2, 0, 1)[None].float()
    h, w = scene.labels.shape
    coarse = F.avg_pool2d(onehot, patch, ceil_mode=True)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def guide_image(scene: Scene):
    """The scene CLIP-normalised ``(1, 3, H, W)``: what PAMR's processed guide looks like."""
    import torch

    from fiftyone_cass.core.preprocess import clip_normalize

    return clip_normalize(torch.from_numpy(scene.image).permute(2, 0, 1))[None]


def miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in the ground truth or the prediction."""
    ious = []
    for c in range(num_classes):
        p, g = pred == c, gt == c
        union = np.count_nonzero(p | g)
        if union:
            ious.append(np.count_nonzero(p & g) / union)
    return float(np.mean(ious))


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (both sides of every edge), excluding the image
    border itself."""
    b = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    b[1:] |= dy
    b[:-1] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    return b


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> float:
    """Boundary F-score: precision = share of predicted boundary pixels within ``tolerance`` px
    (Euclidean) of a true boundary pixel, recall the converse, F their harmonic mean."""
    from scipy.ndimage import distance_transform_edt

    bp, bg = boundaries(pred), boundaries(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    dist_to_gt = distance_transform_edt(~bg)
    dist_to_pred = distance_transform_edt(~bp)
    precision = float(np.mean(dist_to_gt[bp] <= tolerance))
    recall = float(np.mean(dist_to_pred[bg] <= tolerance))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def measure(scene: Scene, steps: int = 10, dilations=(8, 16)) -> Dict[str, Dict[str, float]]:
    """mIoU and boundary F of the label map before PAMR, after PAMR and after voting with the true
    shapes (on the map before PAMR, and on the map after PAMR)."""
    from fiftyone_cass.core.pamr import pamr
    from fiftyone_cass.core.regions import regions_from_id_map, vote

    logits = blurred_logits(scene)
    before = logits[0].argmax(0).numpy()
    refined = pamr(guide_image(scene), logits, steps, dilations)
    after = refined[0].argmax(0).numpy()
    regions = regions_from_id_map(scene.instances)
    voted, _ = vote(before, regions, "majority")
    voted_pamr, _ = vote(after, regions, "majority")
    out = {}
    for name, lm in (("blurred", before), ("pamr", after), ("vote", voted), ("pamr+vote", voted_pamr)):
        out[name] = {"miou": miou(lm, scene.labels, scene.num_classes), "boundary_f": boundary_f(lm, scene.labels)}
    return out


def run(num_scenes: int, size: Tuple[int, int], seed: int = 0) -> Dict[str, Dict[str, float]]:
    per = [measure(make_scene(size[0], size[1], seed=seed + i)) for i in range(num_scenes)]
    return {k: {m: float(np.mean([p[k][m] for p in per])) for m in per[0][k]} for k in per[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--size", default="240x320", help="HxW of each scene")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    h, w = (int(x) for x in args.size.lower().split("x"))
    t = time.perf_counter()
    res = run(args.scenes, (h, w), args.seed)
    print(f"{args.scenes} synthetic scenes of {h}x{w}, logits blurred to {PATCH}-px patches; "
          "PAMR 10 steps, dilations (8, 16); boundary F within 2 px")
    print("| label map | mIoU % | boundary F % |")
    print("| --- | --- | --- |")
    for k, v in res.items():
        print(f"| {k} | {100 * v['miou']:.2f} | {100 * v['boundary_f']:.2f} |")
    print(f"({time.perf_counter() - t:.1f} s)")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"scenes": args.scenes, "size": [h, w], "seed": args.seed, "results": res}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
