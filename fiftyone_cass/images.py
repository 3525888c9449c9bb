"""Turning user images (paths, PIL images, numpy arrays) into RGB uint8 arrays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fiftyone_cass.errors import ImageLoadError


def describe(item: Any, name: Optional[str] = None) -> str:
    if name:
        return str(name)
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, Image.Image):
        return f"PIL image {item.mode} {item.size[0]}x{item.size[1]}"
    if isinstance(item, np.ndarray):
        return f"array {item.shape} {item.dtype}"
    return type(item).__name__


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64))
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(a + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        a = arr.astype(np.int64)
        top = int(a.max()) if a.size else 0
        if top > 255:  # 16-bit (or wider) data: scale the full range of its bit depth
            bits = 16 if top <= 65535 else 32
            return np.clip(a * 255.0 / (2**bits - 1) + 0.5, 0, 255).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    raise ImageLoadError(f"unsupported pixel type {arr.dtype}")


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageLoadError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    if arr.shape[2] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):  # CHW
        arr = np.transpose(arr, (1, 2, 0))
    c = arr.shape[2]
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 4:
        arr = arr[:, :, :3]
    elif c != 3:
        raise ImageLoadError(f"expected 1, 3 or 4 channels, got {c}")
    arr = _to_uint8(arr)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"image has zero size {arr.shape[1]}x{arr.shape[0]}")
    return np.ascontiguousarray(arr)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.width == 0 or img.height == 0:
        raise ImageLoadError(f"image has zero size {img.width}x{img.height}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _array_to_rgb(np.asarray(img))
    if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return _array_to_rgb(np.asarray(img))


def load_rgb(item: Any, name: Optional[str] = None) -> np.ndarray:
    """Return an ``(H, W, 3)`` uint8 RGB array for a path, PIL image or numpy array.

    EXIF orientation is applied; grayscale/palette/CMYK/RGBA are converted (alpha dropped);
    16-bit images are scaled to 8 bits. Raises :class:`ImageLoadError` naming the item.
    """
    label = describe(item, name)
    try:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if not path.is_file():
                raise ImageLoadError(f"no such image file: {path}")
            if path.stat().st_size == 0:
                raise ImageLoadError("file is empty (0 bytes)")
            with Image.open(path) as img:
                img.load()
                return _pil_to_rgb(img)
        if isinstance(item, Image.Image):
            return _pil_to_rgb(item)
        if isinstance(item, np.ndarray):
            return _array_to_rgb(item)
        if hasattr(item, "__array__"):  # e.g. a torch tensor
            return _array_to_rgb(np.asarray(item))
        raise ImageLoadError(f"unsupported image type {type(item).__name__}")
    except ImageLoadError as exc:
        msg = str(exc)
        if not msg.startswith(label):
            msg = f"{label}: {msg}"
        raise ImageLoadError(msg) from exc.__cause__
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"{label}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def displayed_size(path: str) -> tuple:
    """``(width, height)`` of an image file as it is displayed (EXIF orientation applied, as
    :func:`load_rgb` decodes it), from its header only (no pixels decoded)."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees when displayed
            w, h = h, w
    return int(w), int(h)
