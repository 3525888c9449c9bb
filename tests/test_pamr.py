"""PAMR (SPEC K.1-K.3): the reference module's outputs (../shared/parity/pamr.npz, both cases)
and row bands with the halo equal to the whole image, bit for bit."""

from __future__ import annotations

import pytest
import torch

from fiftyone_cass.core.pamr import pamr, pamr_halo, refine_rows


@pytest.mark.parametrize("case", ["a", "b"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_pamr_reproduces_the_reference(parity, case, dtype, tol):
    d = parity("pamr.npz")
    if case == "a":  # the CASS post-processing order: both up-sampled to the original size first
        image, mask = d["a_image_up"], d["a_logits_up"]
        assert tuple(image.shape[-2:]) == tuple(int(v) for v in d["a_original_size"])
    else:  # a mask smaller than the image: PAMR's own align_corners=True resize
        image, mask = d["b_image"], d["b_mask"]
        assert mask.shape[-1] < image.shape[-1]
    out = pamr(torch.from_numpy(image).to(dtype), torch.from_numpy(mask).to(dtype), int(d[f"{case}_steps"]),
               tuple(int(x) for x in d[f"{case}_dilations"]))
    ref = torch.from_numpy(d[f"{case}_out"])
    assert out.dtype == dtype and out.shape == ref.shape
    err = (out.double() - ref).abs().max().item()
    assert err <= tol, err
    if case == "a":  # the refinement is not the identity on these inputs
        assert (ref - torch.from_numpy(mask)).abs().max() > 1e-3


@pytest.mark.parametrize("steps, dilations", [(3, (2, 4)), (2, (1, 3, 5))])
@pytest.mark.parametrize("rows", [1, 4, 9, 31, 200])
def test_banded_pamr_equals_the_whole_image(steps, dilations, rows):
    g = torch.Generator().manual_seed(rows)
    image = torch.randn(2, 3, 83, 47, generator=g)
    mask = torch.randn(2, 6, 83, 47, generator=g)
    ref = pamr(image, mask, steps, dilations)
    assert rows < pamr_halo(steps, dilations) or rows > 83 or rows == 31
    out = torch.empty_like(ref)
    for a in range(0, 83, rows):
        b = min(a + rows, 83)
        out[:, :, a:b] = refine_rows(lambda e0, e1: image[:, :, e0:e1], lambda c0, c1, e0, e1: mask[:, c0:c1, e0:e1],
                                     6, 83, a, b, steps, dilations, channel_chunk=4)
    assert torch.equal(out, ref)
    assert not torch.equal(ref, mask)  # PAMR changed something
