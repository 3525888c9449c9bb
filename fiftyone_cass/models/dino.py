"""Key extraction of the vision foundation model (VFM) through timm (SPEC A.6, B.6, L.2).

Two timm model classes: ``VisionTransformer`` (DINO ViT-B/8: CLS + absolute positions on every
token; DINOv2 with registers: CLS + registers, absolute positions on the patches only) and
``Eva`` (DINOv3: CLS + registers, rotary position encoding in every attention). The keys of the
last block's attention, without CLS and registers, form the CASS graph."""

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


def dino_pixels_from_clip(crops: torch.Tensor, clean: bool = False, size=None, norm_mean=IMAGENET_MEAN,
                          norm_std=IMAGENET_STD) -> torch.Tensor:
    """A.6: DINO's input derived from CLIP-normalised crops ``(B, 3, H, W)``.

    Faithful path: z * (0.229, 0.224, 0.255) + ImageNet mean -> x255 -> truncate to uint8 ->
    PIL bicubic resize to a square of side min(H, W) -> ToTensor -> ImageNet normalise -> crop to
    a multiple of 8 (the patch size). ``clean=True`` instead recovers the true pixels from the
    CLIP normalisation and applies correct ImageNet normalisation (flag ``dino_clean_input``).
    ``size``: the square side of the VFM's input rule instead of min(H, W) (DINOv2: 518, SPEC
    L.2); ``norm_mean``/``norm_std``: its input normalisation.
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
    s = int(size) if size else min(h, w)
    if (h, w) != (s, s):
        arr = pix.permute(0, 2, 3, 1).cpu().numpy()
        pix = torch.from_numpy(
            np.stack([np.asarray(Image.fromarray(a).resize((s, s), Image.BICUBIC)) for a in arr])
        ).permute(0, 3, 1, 2).to(dev)
    x = pix.to(dt) / 255.0
    m = torch.tensor(norm_mean, device=dev, dtype=dt).view(1, 3, 1, 1)
    sd = torch.tensor(norm_std, device=dev, dtype=dt).view(1, 3, 1, 1)
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


def _is_eva(model) -> bool:
    return hasattr(model, "rope") and hasattr(model, "_pos_embed")


@torch.no_grad()
def dino_keys(model, pixels: torch.Tensor, registers: int = 0, rope_keys: bool = False
              ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """B.6 / L.2: keys of the VFM's last block (norm1 -> qkv (with its bias) -> middle third),
    CLS and the ``registers`` register tokens dropped.

    ``pixels``: normalised ``(B, 3, S, S)``; cropped to a multiple of the patch size.
    ``rope_keys``: for a model with rotary position encoding (DINOv3), the keys after it is
    applied, as the attention sees them; otherwise the keys before it (README "Backbones").
    Returns ``(B, H, N', d)`` and the VFM grid.
    """
    p = _patch(model)
    h, w = pixels.shape[-2] // p * p, pixels.shape[-1] // p * p
    pixels = pixels[..., :h, :w].to(model.patch_embed.proj.weight.dtype)
    prefix = int(model.num_prefix_tokens)
    if prefix != 1 + registers or model.cls_token is None:
        raise ValueError(f"the VFM has {prefix} prefix tokens; expected CLS + {registers} registers")
    rope = None
    if _is_eva(model):
        x = model.patch_embed(pixels)  # (B, gh, gw, D) with dynamic_img_size, else (B, N, D)
        grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(model.patch_embed.grid_size)
        x, rope = model._pos_embed(x)
        x = model.norm_pre(x)
        for blk in model.blocks[:-1]:
            x = blk(x, rope=rope)
    else:
        if rope_keys:
            raise ValueError("rope_keys: this VFM has no rotary position encoding")
        x = model.patch_embed.proj(pixels)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        x = model.patch_embed.norm(x)
        tokens = [model.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)]
        if model.reg_token is not None:
            tokens.append(model.reg_token.expand(x.shape[0], -1, -1).to(x.dtype))
        if model.no_embed_class:  # DINOv2: positions on the patches only, then CLS + registers in front
            x = x + interpolate_dino_pos(model.pos_embed, grid, 0).to(x.dtype)
            x = torch.cat(tokens + [x], 1)
        else:  # DINO: one table over CLS + patches
            x = torch.cat(tokens + [x], 1)
            x = x + interpolate_dino_pos(model.pos_embed, grid, prefix).to(x.dtype)
        x = model.pos_drop(x)
        x = model.norm_pre(x)
        for blk in model.blocks[:-1]:
            x = blk(x)
    last = model.blocks[-1]
    attn = last.attn
    y = last.norm1(x)
    if getattr(attn, "q_bias", None) is not None:  # Eva keeps the qkv bias apart (no k bias)
        qkv = F.linear(y, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
    else:
        qkv = attn.qkv(y)
    b, n, _ = qkv.shape
    heads = attn.num_heads
    k = qkv.reshape(b, n, 3, heads, -1)[:, :, 1].transpose(1, 2)  # (B, H, n, d)
    k = attn.k_norm(k)
    k = k[:, :, prefix:]
    if rope_keys:
        from timm.layers import apply_rot_embed_cat

        k = apply_rot_embed_cat(k, rope, half=getattr(attn, "rotate_half", False)).type_as(qkv)
    return k, grid
