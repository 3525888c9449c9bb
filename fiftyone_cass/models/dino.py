"""DINO key extraction through timm's ``VisionTransformer`` (SPEC A.6, B.6)."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fiftyone_cass.core.positions import interpolate_position_table
from fiftyone_cass.core.preprocess import CLIP_MEAN_255, CLIP_STD_255

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SPEC A.6a: the reference un-normalises with a typo in the blue std (0.255 instead of 0.225).
REFERENCE_UNNORM_STD = (0.229, 0.224, 0.255)


def _patch(model) -> int:
    p = model.patch_embed.patch_size
    return p[0] if isinstance(p, (tuple, list)) else int(p)


def dino_pixels_from_clip(crops: torch.Tensor, clean: bool = False) -> torch.Tensor:
    """A.6: DINO's input derived from CLIP-normalised crops ``(B, 3, H, W)``.

    Faithful path: z * (0.229, 0.224, 0.255) + ImageNet mean -> x255 -> truncate to uint8 ->
    PIL bicubic resize to a square of side min(H, W) -> ToTensor -> ImageNet normalise -> crop to
    a multiple of 8 (the patch size). ``clean=True`` instead recovers the true pixels from the
    CLIP normalisation and applies correct ImageNet normalisation (flag ``dino_clean_input``).
    """
    dev, dt = crops.device, torch.float32
    z = crops.to(dt)
    if clean:
        mean = torch.tensor(CLIP_MEAN_255, device=dev, dtype=dt).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD_255, device=dev, dtype=dt).view(1, 3, 1, 1)
        u = (z * std + mean) / 255.0
    else:
        std = torch.tensor(REFERENCE_UNNORM_STD, device=dev, dtype=dt).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN, device=dev, dtype=dt).view(1, 3, 1, 1)
        u = z * std + mean
    # truncate like numpy's astype(uint8) (values are non-negative for inputs in [0, 255])
    pix = (u * 255.0).clamp(0, 255).to(torch.uint8)
    b, _, h, w = pix.shape
    s = min(h, w)
    if (h, w) != (s, s):
        arr = pix.permute(0, 2, 3, 1).cpu().numpy()
        pix = torch.from_numpy(
            np.stack([np.asarray(Image.fromarray(a).resize((s, s), Image.BICUBIC)) for a in arr])
        ).permute(0, 3, 1, 2).to(dev)
    x = pix.to(dt) / 255.0
    m = torch.tensor(IMAGENET_MEAN, device=dev, dtype=dt).view(1, 3, 1, 1)
    sd = torch.tensor(IMAGENET_STD, device=dev, dtype=dt).view(1, 3, 1, 1)
    x = (x - m) / sd
    return x


def interpolate_dino_pos(pos: torch.Tensor, grid: Tuple[int, int], prefix: int = 1) -> torch.Tensor:
    """A.6: DINO position table ``(1, prefix + g0^2, D)`` -> grid; bicubic, align_corners=False,
    scale_factor=(g+0.1)/g0, no antialias. Unchanged when the grid matches."""
    n0 = pos.shape[1] - prefix
    g0 = int(math.isqrt(n0))
    h, w = grid
    if (h, w) == (g0, g0):
        return pos
    patch = interpolate_position_table(pos[0, prefix:], grid)
    return torch.cat([pos[:, :prefix], patch[None]], 1)


@torch.no_grad()
def dino_keys(model, pixels: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """B.6: keys of DINO's last block (norm1 -> qkv with bias -> middle third), CLS dropped.

    ``pixels``: ImageNet-normalised ``(B, 3, S, S)``; cropped to a multiple of the patch size.
    Returns ``(B, H, N', d)`` and the DINO grid.
    """
    p = _patch(model)
    h, w = pixels.shape[-2] // p * p, pixels.shape[-1] // p * p
    pixels = pixels[..., :h, :w].to(model.patch_embed.proj.weight.dtype)
    x = model.patch_embed.proj(pixels)
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    x = model.patch_embed.norm(x)
    prefix = model.num_prefix_tokens
    if model.reg_token is not None or prefix != 1 or model.no_embed_class:
        raise ValueError("DINO backbone must have exactly one CLS token, no registers (SPEC)")
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
    x = x + interpolate_dino_pos(model.pos_embed, grid, prefix).to(x.dtype)
    x = model.pos_drop(x)
    x = model.norm_pre(x)
    for blk in model.blocks[:-1]:
        x = blk(x)
    last = model.blocks[-1]
    attn = last.attn
    qkv = attn.qkv(last.norm1(x))
    b, n, _ = qkv.shape
    heads = attn.num_heads
    k = qkv.reshape(b, n, 3, heads, -1)[:, :, 1].transpose(1, 2)  # (B, H, n, d)
    k = attn.k_norm(k)
    return k[:, :, prefix:], grid
