"""Regions for region voting (SPEC K.5) from a sample's field: ``fo.Detections`` with instance
masks (what FiftyOne's SAM / SAM2 zoo models write when run without prompts) or an
``fo.Segmentation`` whose values are region ids (0: outside every region).

A detection's mask covers its bounding box as FiftyOne places it: the top-left pixel at
``(round(x W), round(y H))`` and ``round(w W) x round(h H)`` pixels (FiftyOne's own
``_parse_stuff_instance`` writes exactly these; 1 pixel of rounding is allowed).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from fiftyone_cass.core.regions import Region, region, regions_from_id_map


class RegionsError(ValueError):
    """A sample's regions cannot be used: the message is its per-sample reason."""


def regions_of_label(label, size: Tuple[int, int], field: str) -> Optional[List[Region]]:
    """The regions of ``label`` (the value of the sample's ``field``) for an image of ``size``
    ``(H, W)``; None when the sample has no regions (no label, no detections). Raises
    :class:`RegionsError` naming the field, the detection and the problem."""
    import fiftyone as fo

    if label is None:
        return None
    H, W = size
    if isinstance(label, fo.Segmentation):
        try:
            ids = label.get_mask()
        except Exception as exc:  # noqa: BLE001 - an unreadable mask file
            raise RegionsError(f"regions field {field!r}: cannot read its mask ({type(exc).__name__}: {exc})") from None
        if ids is None:
            return None
        ids = np.asarray(ids)
        if ids.ndim == 3:
            raise RegionsError(f"regions field {field!r}: its mask is an RGB image, not a map of region ids")
        if ids.shape != (H, W):
            raise RegionsError(f"regions field {field!r}: its mask is {ids.shape[1]}x{ids.shape[0]}, the image {W}x{H}")
        return regions_from_id_map(ids)
    if isinstance(label, fo.Detections):
        dets = label.detections or []
        if not dets:
            return None
        out = []
        for k, det in enumerate(dets):
            name = f"regions field {field!r}, detection {k}" + (f" ({det.label})" if det.label else "")
            try:
                mask = det.get_mask()
            except Exception as exc:  # noqa: BLE001
                raise RegionsError(f"{name}: cannot read its mask ({type(exc).__name__}: {exc})") from None
            if mask is None:
                raise RegionsError(f"{name}: has no instance mask (run SAM / SAM2 to get masks, or use boxes elsewhere)")
            mask = np.asarray(mask)
            if mask.ndim != 2:
                raise RegionsError(f"{name}: its mask has {mask.ndim} dimensions, not 2")
            if not mask.any():
                raise RegionsError(f"{name}: its instance mask is empty")
            if det.bounding_box is None or len(det.bounding_box) != 4:
                raise RegionsError(f"{name}: has no bounding box to place its mask")
            x, y, w, h = (float(v) for v in det.bounding_box)
            x0, y0, bw, bh = round(x * W), round(y * H), round(w * W), round(h * H)
            mh, mw = mask.shape
            if abs(mh - bh) > 1 or abs(mw - bw) > 1:
                raise RegionsError(f"{name}: its {mw}x{mh} mask does not fit its {bw}x{bh}-pixel box")
            try:
                out.append(region(y0, x0, mask, (H, W), name))
            except ValueError as exc:
                raise RegionsError(str(exc)) from None
        return out
    raise RegionsError(f"regions field {field!r} holds {type(label).__name__}: it must be fo.Detections with "
                       "instance masks or an fo.Segmentation of region ids")
