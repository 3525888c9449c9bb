"""Parity of the CDAM math (SPEC G.3-G.7) with the official reference outputs in cdam.npz.

Everything goes through the public functions of fiftyone_cass.core.cdam only.
"""

from __future__ import annotations

import pytest
import torch

from fiftyone_cass.core.cdam import (
    entropy_threshold,
    multiscale_cdam,
    upsample_logits,
)


@pytest.fixture
def cdam_npz(parity):
    """cdam.npz from ../shared/parity through conftest's ``parity`` loader (fails if missing)."""
    data = parity("cdam.npz")
    return {k: data[k] for k in data.files}


def _cdam(d, dtype):
    s = torch.from_numpy(d["similarity"]).to(dtype)
    return multiscale_cdam(
        s,
        scales=tuple(float(x) for x in d["scales"]),
        temperature=float(d["temperature"]),
        attn_temperature=float(d["attn_temperature"]),
    )


def test_fixture_shapes(cdam_npz):
    d = cdam_npz
    k, h, w = d["similarity"].shape
    assert d["cdam"].shape == (h * w, h * w)
    assert d["class_logits"].shape == (int(d["num_classes"]), h, w)
    assert d["logits_out"].shape == (int(d["num_classes"]), 16 * h, 16 * w)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-5)])
def test_cdam_matches_reference(cdam_npz, dtype, tol):
    ref = torch.from_numpy(cdam_npz["cdam"]).to(torch.float64)
    out = _cdam(cdam_npz, dtype)
    assert out.dtype == dtype
    err = (out.to(torch.float64) - ref).abs().max()
    # Measured: ~3e-6 in fp32, ~1e-6 in fp64 (the stored reference itself is fp32).
    print(f"cdam max abs error ({dtype}): {float(err):.3g}")
    assert err <= tol


def test_cdam_batched_matches_reference(cdam_npz):
    s = torch.from_numpy(cdam_npz["similarity"])
    ref = torch.from_numpy(cdam_npz["cdam"])
    out = multiscale_cdam(torch.stack([s, s]), tuple(float(x) for x in cdam_npz["scales"]))
    assert out.shape == (2, *ref.shape)
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entropy_threshold_matches_reference(cdam_npz, dtype):
    logits = torch.from_numpy(cdam_npz["class_logits"]).to(dtype)
    ref = float(cdam_npz["entropy_threshold"])
    thr = entropy_threshold(logits, logit_scale=50.0, thr_default=0.5, alpha=2.5)
    assert thr.shape == ()
    assert abs(float(thr) - ref) / ref <= 1e-4


def test_logits_out_matches_reference(cdam_npz):
    logits = torch.from_numpy(cdam_npz["class_logits"])
    ref = torch.from_numpy(cdam_npz["logits_out"])
    out = upsample_logits(logits, tuple(ref.shape[-2:]))
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4
