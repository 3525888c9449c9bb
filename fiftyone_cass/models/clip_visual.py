"""Custom forwards through open_clip's ``VisionTransformer`` (SPEC A.5, B.1-B.3, G.1).

open_clip has no hook for position-table interpolation or for a replaced last block, so the
visual tower is driven piece by piece here: embed -> blocks[:-1] -> one of the last-block
variants. Works with batch-first and sequence-first (LND) transformers (SPEC J.13).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from fiftyone_cass.core.positions import interpolate_position_table


def _blocks(visual):
    return visual.transformer.resblocks


def _batch_first(visual) -> bool:
    return getattr(visual.transformer, "batch_first", True)


def patch_grid(visual, height: int, width: int) -> Tuple[int, int]:
    ph, pw = patch_size(visual)
    return height // ph, width // pw


def patch_size(visual) -> Tuple[int, int]:
    k = visual.conv1.kernel_size
    return (k, k) if isinstance(k, int) else tuple(k)


def interpolate_clip_pos(pos: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """A.5: position table ``(1 + g0^2, D)`` -> ``(1 + h*w, D)``; bicubic, align_corners=False,
    scale_factor=((h+0.1)/g0, (w+0.1)/g0), recompute_scale_factor=False. CLS row unchanged.
    Only interpolates when the token count differs."""
    if grid[0] * grid[1] == pos.shape[0] - 1:
        return pos
    return torch.cat([pos[:1], interpolate_position_table(pos[1:], grid)], 0)


def embed(visual, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Patch embedding + CLS + (interpolated) positions + ln_pre. ``images`` are CLIP-normalised
    ``(B, 3, H, W)``; sizes are floored to the patch grid (SPEC J.5). Returns NLD tokens."""
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_clip_pos(visual.positional_embedding, grid).to(x.dtype)
    x = visual.ln_pre(x)
    return x, grid


def run_blocks(visual, x: torch.Tensor, blocks) -> torch.Tensor:
    """Run standard residual blocks on NLD tokens, honouring the transformer's layout."""
    if not _batch_first(visual):
        x = x.transpose(0, 1)
    for blk in blocks:
        x = blk(x)
    if not _batch_first(visual):
        x = x.transpose(0, 1)
    return x


def trunk(visual, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Tokens entering the last block (X of SPEC B.1), NLD with CLS first."""
    x, grid = embed(visual, images)
    return run_blocks(visual, x, _blocks(visual)[:-1]), grid


def project(visual, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post -> proj -> L2 normalise."""
    x = visual.ln_post(tokens)
    if visual.proj is not None:
        x = x @ visual.proj
    return F.normalize(x, dim=-1)


def global_embedding(visual, x: torch.Tensor) -> torch.Tensor:
    """B.2: the unmodified last block on X, CLS -> ln_post -> proj -> normalise. ``(B, E)``."""
    out = run_blocks(visual, x, _blocks(visual)[-1:])
    return project(visual, out[:, 0])


def last_block_qkv(visual, x: torch.Tensor, keep_cls: bool = False):
    """B.3: ln_1 then the fused in-projection (with bias); heads split.

    Returns q, k, v as ``(B, H, N, d)`` (CLS dropped unless ``keep_cls``) and the head count."""
    blk = _blocks(visual)[-1]
    attn = blk.attn
    y = blk.ln_1(x)
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    if not keep_cls:
        qkv = qkv[:, 1:]
    b, n, _ = qkv.shape
    heads = attn.num_heads
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


def out_projection(visual, attended: torch.Tensor) -> torch.Tensor:
    """out_proj of the last block's attention on concatenated heads ``(B, N, D)``."""
    attn = _blocks(visual)[-1].attn
    return F.linear(attended, attn.out_proj.weight, attn.out_proj.bias)


def residual_mlp(visual, x: torch.Tensor, attended_out: torch.Tensor) -> torch.Tensor:
    """G.1 / G.6: X1 = X + ls_1(attn_out); X2 = X1 + ls_2(MLP(ln_2(X1)))."""
    blk = _blocks(visual)[-1]
    x1 = x + blk.ls_1(attended_out)
    return x1 + blk.ls_2(blk.mlp(blk.ln_2(x1)))


def num_heads(visual) -> int:
    return _blocks(visual)[-1].attn.num_heads


def width(visual) -> int:
    return visual.conv1.out_channels
