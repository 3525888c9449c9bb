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


@pytest.mark.parametrize("tile", [47, 3 * 47 + 5, 10**9, "untiled"])
def test_tiled_propagation_equals_the_plain_sum(tile, monkeypatch):
    """pamr_propagate's row tiles (one channel at a time, as on a CPU) and its all-channels form
    (as on a GPU) give the plain definition's values bit for bit: m <- sum_n w_n * shift_n(m),
    every product then sum in neighbour order."""
    import torch.nn.functional as F

    import fiftyone_cass.core.pamr as core_pamr

    g = torch.Generator().manual_seed(11)
    image = torch.randn(2, 3, 61, 47, generator=g)
    mask = torch.randn(2, 5, 61, 47, generator=g)
    steps, dil = 4, (1, 3, 5)
    w = core_pamr.pamr_weights(image, dil)
    m = mask
    for _ in range(steps):
        mp = F.pad(m, (5, 5, 5, 5), mode="replicate")
        out = torch.zeros_like(m)
        for n, (dy, dx) in enumerate(core_pamr.neighbour_offsets(dil)):
            out += mp[:, :, 5 + dy : 5 + dy + 61, 5 + dx : 5 + dx + 47] * w[:, n : n + 1]
        m = out
    if tile == "untiled":
        assert core_pamr.tiled("cpu") and not core_pamr.tiled("cuda")
        monkeypatch.setattr(core_pamr, "tiled", lambda device: False)
    else:
        monkeypatch.setattr(core_pamr, "TILE_ELEMENTS", tile)  # 1 row, 3 rows, the whole band per tile
    assert torch.equal(core_pamr.pamr_propagate(mask, w, steps, dil), m)


import numpy as np  # noqa: E402

from fiftyone_cass.errors import InvalidInputError  # noqa: E402
from fiftyone_cass.models.segmenter import Segmenter  # noqa: E402


@pytest.fixture(scope="module")
def seg():
    return Segmenter(classes=["dog, puppy", "cat", "car"], backbone="tiny", method="cass", device="cpu",
                     background="default", pamr_steps=3, pamr_dilations=(2, 4))


@pytest.mark.parametrize("guide", ["processed", "original"])
@pytest.mark.parametrize("thr", [0.0, 0.35])
@pytest.mark.parametrize("budget", [2**20, 3 * 2**20])
def test_segmenter_pamr_bands_equal_the_whole_image(seg, guide, thr, budget, monkeypatch):
    rng = np.random.default_rng(3)
    rgb = (rng.random((301, 257, 3)) * 255).astype(np.uint8)
    monkeypatch.setattr(seg.options, "pamr_guide", guide)
    monkeypatch.setattr(seg.options, "prob_thd", thr)
    monkeypatch.setattr(seg.options, "bg_rule", "cass_fixed")
    p = seg._prepare(0, rgb, "img")
    assert (p.rgb is not None) == (guide == "original")
    g = torch.Generator().manual_seed(5)
    q = len(seg.queries)
    logits = [0.2 + 0.03 * torch.randn(q, (y2 - y1) // 16, (x2 - x1) // 16, generator=g) for (y1, y2, x1, x2) in p.windows]
    hr, gg = torch.zeros(len(logits), 2), torch.zeros(q)
    monkeypatch.setattr(seg.options, "full_res_budget", None)
    whole = seg._finish(p, logits, hr, gg).label_map
    monkeypatch.setattr(seg.options, "pamr_steps", 0)
    plain = seg._finish(p, logits, hr, gg).label_map
    monkeypatch.setattr(seg.options, "pamr_steps", 3)
    monkeypatch.setattr(seg.options, "full_res_budget", budget)
    calls = []
    import fiftyone_cass.core.pamr as core_pamr
    real = core_pamr.refine_rows
    monkeypatch.setattr("fiftyone_cass.models.segmenter.refine_rows", lambda *a, **k: calls.append(a[4:6]) or real(*a, **k))
    banded = seg._finish(p, logits, hr, gg).label_map
    assert len(calls) > 1  # really several bands
    np.testing.assert_array_equal(banded, whole)
    if thr == 0:
        assert (whole != plain).any()  # PAMR changed the label map
        assert len(np.unique(whole)) >= 2


def test_pamr_options_are_checked():
    for bad in ({"pamr_steps": -1}, {"pamr_dilations": (0, 2)}, {"pamr_guide": "sharp"}):
        with pytest.raises(InvalidInputError, match=next(iter(bad))):
            Segmenter(classes=["dog"], backbone="tiny", device="cpu", method="cass", **bad)


@pytest.mark.parametrize("method", ["cass", "cass+cdam"])
def test_pamr_end_to_end_every_method(method, monkeypatch):
    rng = np.random.default_rng(0)
    img = (rng.random((150, 190, 3)) * 255).astype(np.uint8)
    off = Segmenter(classes=["dog", "cat", "grass"], backbone="tiny", device="cpu", method=method)
    on = Segmenter(classes=["dog", "cat", "grass"], backbone="tiny", device="cpu", method=method, pamr_steps=10)
    calls = []
    import fiftyone_cass.core.pamr as core_pamr
    real = core_pamr.refine_rows
    monkeypatch.setattr("fiftyone_cass.models.segmenter.refine_rows", lambda *a, **k: calls.append(a[4:6]) or real(*a, **k))
    a = off([img])[0].label_map
    assert calls == []  # off by default
    b = on([img])[0].label_map
    assert calls == [(0, 150)]  # the whole image refined once (it fits the budget)
    assert a.shape == b.shape == (150, 190)


from fiftyone_cass.core.pamr import pamr_halo  # noqa: E402
from fiftyone_cass.models.segmenter import pamr_band_plan, pamr_min_band  # noqa: E402


@pytest.mark.parametrize("q, height, width, budget", [(171, 3000, 4000, 256 * 2**20), (171, 3000, 4000, 2**30),
                                                       (81, 480, 640, 2**26), (30, 301, 257, 2**24),
                                                       (171, 480, 640, 256 * 2**20)])
def test_pamr_band_plan_is_the_tallest_band_under_the_budget_but_at_least_one_halo(q, height, width, budget):
    rows, chunk, need = pamr_band_plan(q, height, width, 4, budget, 10, (8, 16))
    floor = pamr_min_band(10, (8, 16), height, width)
    halo = pamr_halo(10, (8, 16))
    unit = 32 // np.gcd(32, width)
    assert floor == min(height, -(-halo // unit) * unit) and floor >= min(halo, height)
    assert 1 <= chunk <= q and floor <= rows <= height
    assert rows % unit == 0 or rows == height
    if rows > floor:  # above the floor: under the budget and the tallest band that is
        assert need <= budget
        if rows + unit <= height:  # limited by the budget: a larger one gives taller bands, a smaller one thinner
            assert pamr_band_plan(q, height, width, 4, 10**15, 10, (8, 16))[0] > rows
            assert pamr_band_plan(q, height, width, 4, need - 1, 10, (8, 16))[0] < rows
    else:  # at the floor: the budget would want thinner bands (or exactly this one)
        assert need > budget or pamr_band_plan(q, height, width, 4, need - 1, 10, (8, 16))[0] == rows
    # a band of the floor's height propagates at most 2x the rows of one pass over the image
    bands = [(a, min(a + rows, height)) for a in range(0, height, rows)]
    read = sum(min(b + halo, height) - max(a - halo, 0) for a, b in bands)
    assert read <= 3 * height
    if (q, height, width, budget) == (171, 3000, 4000, 256 * 2**20):  # the 12-MP, 171-name case
        assert rows == floor == 176 and need > budget  # one halo: over the budget (about 0.8 GB)


def test_pamr_band_plan_without_the_floor_returns_the_thinnest_band_when_nothing_fits():
    rows, chunk, need = pamr_band_plan(171, 3000, 4000, 4, 2**20, 10, (8, 16), min_rows=1)
    assert (rows, chunk) == (1, 1) and need > 2**20
    assert pamr_band_plan(171, 3000, 4000, 4, 2**20, 10, (8, 16))[0] == pamr_min_band(10, (8, 16), 3000, 4000)


def _random_window_logits(seg, height, width, image_seed, logit_seed):
    """A random image prepared by ``seg`` and random window logits for it: ``(prepared, logits,
    entropy ranges, global scores)``, the inputs of ``Segmenter._finish``."""
    rgb = (np.random.default_rng(image_seed).random((height, width, 3)) * 255).astype(np.uint8)
    p = seg._prepare(0, rgb, "img")
    g = torch.Generator().manual_seed(logit_seed)
    q = len(seg.queries)
    logits = [0.2 + 0.03 * torch.randn(q, (y2 - y1) // 16, (x2 - x1) // 16, generator=g) for (y1, y2, x1, x2) in p.windows]
    return p, logits, torch.zeros(len(logits), 2), torch.zeros(q)


def test_segmenter_pamr_bands_thinner_than_the_halo_equal_the_whole_image(seg, monkeypatch):
    p, logits, hr, gg = _random_window_logits(seg, 130, 96, 4, 6)
    q = len(seg.queries)
    monkeypatch.setattr(seg.options, "full_res_budget", None)
    whole = seg._finish(p, logits, hr, gg).label_map
    halo = pamr_halo(seg.options.pamr_steps, seg.options.pamr_dilations)
    budget = 700_000  # below the option's floor: the test's way to get bands thinner than the halo here
    monkeypatch.setattr("fiftyone_cass.models.segmenter.pamr_min_band", lambda *a, **k: 1)  # and no band floor
    rows, _, need = pamr_band_plan(q, 130, 96, 4, budget, seg.options.pamr_steps, seg.options.pamr_dilations)
    assert rows < halo and need <= budget
    monkeypatch.setattr(seg.options, "full_res_budget", budget)
    calls = []
    import fiftyone_cass.core.pamr as core_pamr
    real = core_pamr.refine_rows
    monkeypatch.setattr("fiftyone_cass.models.segmenter.refine_rows", lambda *a, **k: calls.append(a[4:6]) or real(*a, **k))
    banded = seg._finish(p, logits, hr, gg).label_map
    assert len(calls) == -(-130 // rows) and all(b - a <= rows for a, b in calls)
    np.testing.assert_array_equal(banded, whole)


def test_segmenter_pamr_bands_are_at_least_one_halo_and_say_so_over_the_budget(seg, monkeypatch, caplog):
    p, logits, hr, gg = _random_window_logits(seg, 301, 257, 7, 8)
    q = len(seg.queries)
    steps, dil = seg.options.pamr_steps, seg.options.pamr_dilations
    floor = pamr_min_band(steps, dil, 301, 257)
    rows, _, need = pamr_band_plan(q, 301, 257, 4, 2**20, steps, dil)
    assert rows == floor and need > 2**20  # the budget alone would want thinner bands
    monkeypatch.setattr(seg.options, "full_res_budget", 2**20)
    monkeypatch.setattr(Segmenter, "_warned", set())
    calls = []
    import fiftyone_cass.core.pamr as core_pamr
    real = core_pamr.refine_rows
    monkeypatch.setattr("fiftyone_cass.models.segmenter.refine_rows", lambda *a, **k: calls.append(a[4:6]) or real(*a, **k))
    with caplog.at_level("WARNING", logger="fiftyone_cass"):
        seg._finish(p, logits, hr, gg)
    assert len(calls) == -(-301 // floor) and all(b - a == floor for a, b in calls[:-1])
    assert floor >= pamr_halo(steps, dil)
    msg = [r.getMessage() for r in caplog.records if "PAMR" in r.getMessage()]
    assert len(msg) == 1 and f"{need / 2**20:.0f} MiB" in msg[0] and "full_res_budget=1 MiB" in msg[0], msg
