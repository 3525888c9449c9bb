"""Bounded memory per image: full-resolution up-sampling, top query, threshold and label map are
computed in row bands under ``full_res_budget``, with the same label maps as the whole-image
computation (``full_res_budget=None``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiftyone_cass.core import windows as W
from fiftyone_cass.errors import InvalidInputError
from fiftyone_cass.models.segmenter import Segmenter


def test_this_device_has_an_exact_band_rounding():
    # the CPU build in CI reproduces F.interpolate bit for bit with one of the known roundings
    assert W.bilinear_variant("cpu") in W.BILINEAR_VARIANTS


@pytest.mark.parametrize(
    "h, w, out_h, out_w",
    [(21, 28, 600, 800), (28, 21, 801, 333), (19, 60, 333, 1501), (336, 448, 3000, 4000),
     (336, 448, 337, 449), (448, 336, 1000, 300), (336, 504, 200, 300), (50, 2048, 101, 20000)],
)
def test_upsample_rows_equals_upsample_logits_band_by_band(h, w, out_h, out_w):
    variant = W.bilinear_variant("cpu")
    g = torch.Generator().manual_seed(h * w)
    x = torch.randn(2, h, w, generator=g) * 3
    ref = W.upsample_logits(x, (out_h, out_w))
    cuts = sorted({0, 1, out_h // 7, out_h // 2, out_h // 2 + 3, out_h - 1, out_h})
    for a, b in zip(cuts, cuts[1:]):
        got = W.upsample_rows(x, (out_h, out_w), a, b, variant)
        assert torch.equal(got, ref[:, a:b]), (a, b, (got != ref[:, a:b]).sum())


def test_exact_fma_emulation():
    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(200_000, generator=g) for _ in range(3))
    b = b.abs() / 7
    got = W._fma32(a, b, c)
    # reference: exact rational arithmetic on a sample, correctly rounded to float32
    from fractions import Fraction

    for i in range(0, 200_000, 997):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        lo = np.float32(float(exact))  # nearest double, then float32: checked against neighbours
        cands = [np.nextafter(lo, np.float32(-np.inf)), lo, np.nextafter(lo, np.float32(np.inf))]
        best = min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.frombuffer(v.tobytes(), np.uint32)[0]) & 1))
        assert got[i].item() == float(best)
    # a float64 sum that lands half-way between two float32 while the exact sum is just below:
    # (1 + 2^-18) * 2^-24 (1 - 2^-18) + (1 + 2^-23) = 1 + 2^-23 + 2^-24 - 2^-60
    a1 = torch.tensor([1.0 + 2**-18])
    b1 = torch.tensor([2**-24 * (1.0 - 2**-18)])
    c1 = torch.tensor([1.0 + 2**-23])
    naive = (a1.double() * b1.double() + c1.double()).float()
    assert naive.item() == 1.0 + 2**-22  # double rounding goes up (ties to even)
    assert W._fma32(a1, b1, c1).item() == 1.0 + 2**-23  # one rounding stays below


def test_row_bands_cover_and_align():
    bands = W.row_bands(1003, 333, 100, 10 * 2**20)
    assert bands[0][0] == 0 and bands[-1][1] == 1003
    assert all(b0[1] == b1[0] for b0, b1 in zip(bands, bands[1:]))
    assert all(((b - a) * 333) % 32 == 0 for a, b in bands[:-1])
    assert all((b - a) * 333 * 100 <= 10 * 2**20 for a, b in bands)
    # never less than one aligned group of rows
    assert W.row_bands(10, 333, 10**9, 2**20) == [(0, 10)]


@pytest.fixture(scope="module")
def seg():
    return Segmenter(classes=["dog, puppy", "cat", "car, automobile, truck", "frisbee"], backbone="tiny",
                     method="cass", device="cpu", background="default")


def _finish_both_ways(seg, size, thr, mode, budget, monkeypatch):
    """Label maps of ``_finish`` on random window logits: whole image vs row bands."""
    h0, w0 = size
    rgb = np.zeros((h0, w0, 3), np.uint8)
    monkeypatch.setattr(seg.options, "mode", mode)
    monkeypatch.setattr(seg.options, "prob_thd", thr)
    monkeypatch.setattr(seg.options, "bg_rule", "cass_fixed")
    p = seg._prepare(0, rgb, "img")
    q = len(seg.queries)
    g = torch.Generator().manual_seed(h0 * 7 + w0)
    if mode == "slide":
        grids = [((y2 - y1) // 16, (x2 - x1) // 16) for (y1, y2, x1, x2) in p.windows]
    else:
        y1, y2, x1, x2 = p.windows[0]
        grids = [((y2 - y1) // 16, (x2 - x1) // 16)]
    # cosine-like logits with ties: top-probabilities spread around the thresholds
    logits = [0.2 + 0.03 * torch.randn(q, *gr, generator=g) for gr in grids]
    logits[0][3] = logits[0][4]
    hrange = torch.zeros(len(grids), 2)
    gg = torch.zeros(q)
    calls = []
    real = W.upsample_rows

    def counting(*a, **k):
        calls.append(a[2:4])
        return real(*a, **k)

    monkeypatch.setattr(seg.options, "full_res_budget", None)
    whole = seg._finish(p, logits, hrange, gg).label_map
    monkeypatch.setattr(seg.options, "full_res_budget", budget)
    monkeypatch.setattr("fiftyone_cass.models.segmenter.upsample_rows", counting)
    banded = seg._finish(p, logits, hrange, gg).label_map
    monkeypatch.undo()
    return whole, banded, calls


@pytest.mark.parametrize("mode", ["slide", "whole"])
@pytest.mark.parametrize("thr", [0.0, 0.3])
@pytest.mark.parametrize("size", [(450, 600), (601, 333), (250, 1101), (336, 448), (300, 460)])
def test_banded_label_maps_equal_the_whole_image(seg, size, thr, mode, monkeypatch):
    whole, banded, calls = _finish_both_ways(seg, size, thr, mode, 2**20, monkeypatch)
    assert len(calls) > 1  # really computed in several bands
    assert banded.dtype == whole.dtype and banded.shape == size
    np.testing.assert_array_equal(banded, whole)
    assert len(np.unique(whole)) >= 3  # a real label map, not a constant one
    if thr > 0:
        assert (whole == 0).any()  # the threshold made background somewhere


def test_small_images_and_budget_that_fits_use_the_whole_image(seg, monkeypatch):
    # a small output (height + width <= 128) goes through PyTorch's other kernel: never banded
    whole, banded, calls = _finish_both_ways(seg, (50, 60), 0.3, "slide", 2**20, monkeypatch)
    assert calls == [] and np.array_equal(whole, banded)
    whole, banded, calls = _finish_both_ways(seg, (150, 200), 0.0, "slide", 2**30, monkeypatch)
    assert calls == [] and np.array_equal(whole, banded)


def test_cpu_bands_are_cache_sized_whatever_the_budget(seg, monkeypatch):
    """On a CPU a budget far above the image's needs still gives bands of at most CPU_BAND_BYTES
    (measured faster), with the whole image's label map."""
    from fiftyone_cass.models.segmenter import CPU_BAND_BYTES

    q = len(seg.queries)
    assert 4 * q * 600 * 800 * 4 > CPU_BAND_BYTES  # the whole image would not be cache-sized
    whole, banded, calls = _finish_both_ways(seg, (600, 800), 0.0, "slide", 2**30, monkeypatch)
    assert len(calls) > 1 and np.array_equal(whole, banded)
    assert all((b - a) * 800 * q * 4 * 3 <= CPU_BAND_BYTES for a, b in calls)  # labels only: 3 floats a query


def test_segmenter_end_to_end_same_labels_in_bands():
    rng = np.random.default_rng(0)
    img = (rng.random((700, 500, 3)) * 255).astype(np.uint8)
    small = Segmenter(classes=["dog", "cat"], backbone="tiny", device="cpu", method="cass", full_res_budget=2**20)
    free = Segmenter(classes=["dog", "cat"], backbone="tiny", device="cpu", method="cass", full_res_budget=None)
    np.testing.assert_array_equal(small([img])[0].label_map, free([img])[0].label_map)


@pytest.mark.parametrize("bad", [0, -5, 1000, 2.5e8, "256MB", True])
def test_full_res_budget_is_validated(bad):
    with pytest.raises(InvalidInputError, match="full_res_budget"):
        Segmenter(classes=["dog"], backbone="tiny", device="cpu", method="cass", full_res_budget=bad)
