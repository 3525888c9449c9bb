"""Properties of the CDAM math in fiftyone_cass.core.cdam (SPEC G.3-G.7, H.4)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cdam_memory import naive_js  # noqa: E402  (SPEC G.3 written literally, materialising B x N x N x K)

from fiftyone_cass.core.cdam import (
    CDAM_SCALES,
    bilinear_upsample_operator,
    cdam_grid_sizes,
    class_distribution,
    entropy_threshold,
    js_divergence,
    js_to_attention,
    mix_attention,
    multiscale_cdam,
    reprediction_weights,
    row_normalize,
    upsample_logits,
    upsample_pair_matrix,
)




def rand_sim(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # raw cosines live in roughly [-0.1, 0.4]; a wider spread makes P peakier
    return (torch.rand(*shape, generator=g, dtype=dtype) * 0.5 - 0.1).to(dtype)


# ----------------------------------------------------------------- class_distribution


def test_class_distribution_shape_and_sum():
    s = rand_sim(3, 7, 4, 5)
    p = class_distribution(s, temperature=0.1)
    assert p.shape == (3, 20, 7)
    assert torch.allclose(p.sum(-1), torch.ones(3, 20, dtype=p.dtype))
    # row-major patch order: patch r*w+c is pixel (r, c)
    ref = torch.softmax(s[1, :, 2, 3] / 0.1, dim=0)
    assert torch.allclose(p[1, 2 * 5 + 3], ref)
    assert class_distribution(s[0]).shape == (20, 7)


def test_class_distribution_rejects_bad_rank():
    with pytest.raises(ValueError, match="similarity"):
        class_distribution(torch.zeros(4, 5))


# ----------------------------------------------------------------- js_divergence


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
def test_js_chunked_equals_naive_fp64(chunk_size):
    p = class_distribution(rand_sim(2, 13, 5, 6) * 3)
    out = js_divergence(p, chunk_size=chunk_size)
    ref = naive_js(p)
    assert out.shape == (2, 30, 30)
    assert (out - ref).abs().max() <= 1e-6


def test_js_tiny_memory_budget_equals_naive():
    # a budget smaller than one row forces one row (and one batch element) per block
    p = class_distribution(rand_sim(3, 9, 4, 4) * 3)
    out = js_divergence(p, memory_budget=1)
    assert (out - naive_js(p)).abs().max() <= 1e-6
    # a large budget processes several batch elements per block
    out = js_divergence(p, memory_budget=2**30)
    assert (out - naive_js(p)).abs().max() <= 1e-6


def test_js_properties():
    p = class_distribution(rand_sim(40, 6, 6, seed=3) * 5)
    js = js_divergence(p)
    assert js.shape == (36, 36)
    assert torch.allclose(js, js.T, atol=1e-12)
    assert js.diagonal().abs().max() <= 1e-12
    assert js.min() >= -1e-12
    assert js.max() <= math.log(2) + 1e-12
    # disjoint one-hot distributions reach ln 2
    onehot = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(js_divergence(onehot)[0, 1], torch.tensor(math.log(2), dtype=torch.float64), atol=1e-6)


def test_js_keeps_dtype():
    p = class_distribution(rand_sim(5, 3, 3, dtype=torch.float32))
    assert js_divergence(p).dtype == torch.float32


def test_js_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        js_divergence(torch.full((4, 2), 0.5), chunk_size=0)


# ----------------------------------------------------------------- upsampling


@pytest.mark.parametrize("in_size, out_size", [((3, 4), (8, 10)), ((7, 7), (28, 28)), ((1, 2), (2, 3))])
def test_upsample_pair_matrix_equals_operator(in_size, out_size):
    n = in_size[0] * in_size[1]
    g = torch.Generator().manual_seed(1)
    mat = torch.rand(2, n, n, generator=g, dtype=torch.float64)
    R = bilinear_upsample_operator(in_size, out_size, dtype=torch.float64)
    assert R.shape == (out_size[0] * out_size[1], n)
    # bilinear weights of each output pixel sum to 1
    assert torch.allclose(R.sum(1), torch.ones(R.shape[0], dtype=torch.float64))
    out = upsample_pair_matrix(mat, in_size, out_size)
    assert out.shape == (2, R.shape[0], R.shape[0])
    assert torch.allclose(out, R @ mat @ R.T, atol=1e-12)
    assert torch.allclose(upsample_pair_matrix(mat[1], in_size, out_size), out[1])


def test_upsample_operator_matches_interpolate():
    x = torch.rand(3, 5, dtype=torch.float64)
    R = bilinear_upsample_operator((3, 5), (7, 11), dtype=torch.float64)
    ref = F.interpolate(x[None, None], size=(7, 11), mode="bilinear", align_corners=False)
    assert torch.allclose(R @ x.flatten(), ref.flatten())


def test_upsample_pair_matrix_shape_mismatch():
    with pytest.raises(ValueError, match="does not match grid"):
        upsample_pair_matrix(torch.zeros(6, 6), (2, 2), (4, 4))


def test_upsample_logits():
    x = torch.rand(2, 4, 3, 5)
    out = upsample_logits(x, (48, 80))
    assert out.shape == (2, 4, 48, 80)
    assert torch.allclose(upsample_logits(x[0], (48, 80)), out[0])


# ----------------------------------------------------------------- js_to_attention


def test_js_to_attention_row_range():
    p = class_distribution(rand_sim(9, 5, 5, seed=4) * 4)
    a = js_to_attention(js_divergence(p), attn_temperature=0.1)
    assert a.shape == (25, 25)
    assert torch.allclose(a.amax(-1), torch.ones(25, dtype=a.dtype), atol=1e-6)
    assert a.amin(-1).abs().max() <= 1e-12
    # the most similar key of every query is itself (JS = 0 on the diagonal)
    assert torch.equal(a.argmax(-1), torch.arange(25))


def test_js_to_attention_literal():
    js = torch.tensor([[0.0, 0.2, 0.5], [0.2, 0.0, 0.1], [0.5, 0.1, 0.0]], dtype=torch.float64)
    g = 1 - js
    g = (g - g.amin(1, keepdim=True)) / (g.amax(1, keepdim=True) - g.amin(1, keepdim=True) + 1e-8)
    g = torch.softmax(g / 0.1, dim=1)
    g = (g - g.amin(1, keepdim=True)) / (g.amax(1, keepdim=True) - g.amin(1, keepdim=True) + 1e-8)
    assert torch.allclose(js_to_attention(js, 0.1), g)


# ----------------------------------------------------------------- multiscale_cdam


def test_grid_sizes_28_and_14():
    assert [g for _, g in cdam_grid_sizes(28, 28)] == [(7, 7), (10, 10), (14, 14), (17, 17), (21, 21), (24, 24)]
    assert [g for _, g in cdam_grid_sizes(14, 14)] == [(3, 3), (5, 5), (7, 7), (8, 8), (10, 10), (12, 12)]
    # per axis
    assert cdam_grid_sizes(8, 10, (0.37,)) == [(0.37, (2, 3))]


def _manual_cdam(s, grids):
    """G.5 from the lower-level functions, for the given grids."""
    h, w = s.shape[-2:]
    maps = [js_to_attention(js_divergence(class_distribution(s)))]
    for grid in grids:
        ss = F.interpolate(s[None], size=grid, mode="bilinear", align_corners=False)[0]
        js = upsample_pair_matrix(js_divergence(class_distribution(ss)), grid, (h, w))
        maps.append(js_to_attention(js))
    return sum(maps) / len(maps)


def test_multiscale_cdam_composition():
    s = rand_sim(11, 8, 10, seed=5)
    out = multiscale_cdam(s)
    grids = [(2, 2), (2, 3), (4, 5), (5, 6), (6, 7), (6, 8)]
    assert [g for _, g in cdam_grid_sizes(8, 10)] == grids
    assert torch.allclose(out, _manual_cdam(s, grids), atol=1e-12)
    # each of the 7 maps has row max 1 and row min 0
    assert out.amax(-1).max() <= 1 + 1e-9
    assert out.amin(-1).min() >= -1e-12


def test_multiscale_cdam_degenerate_grid_skips_zero_sided_scales():
    # 2x3 crop: s=0.25 and 0.37 give a 0-sided grid and are skipped, the other 4 are kept
    s = rand_sim(7, 2, 3, seed=6)
    kept = cdam_grid_sizes(2, 3)
    assert [sc for sc, _ in kept] == [0.5, 0.63, 0.75, 0.87]
    out = multiscale_cdam(s)
    assert out.shape == (6, 6)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, _manual_cdam(s, [g for _, g in kept]), atol=1e-12)
    # 1x1 crop: every scale skipped, only A_orig (a single, constant entry) remains
    one = multiscale_cdam(rand_sim(7, 1, 1))
    assert one.shape == (1, 1) and torch.isfinite(one).all()


def test_multiscale_cdam_custom_scales_divide_by_maps_used():
    s = rand_sim(5, 6, 6, seed=7)
    out = multiscale_cdam(s, scales=(0.5,))
    assert torch.allclose(out, _manual_cdam(s, [(3, 3)]), atol=1e-12)
    only_orig = multiscale_cdam(s, scales=())
    assert torch.allclose(only_orig, js_to_attention(js_divergence(class_distribution(s))))


def test_multiscale_cdam_batch_equals_single_calls():
    s = rand_sim(3, 9, 6, 7, seed=8)
    out = multiscale_cdam(s)
    assert out.shape == (3, 42, 42)
    for i in range(3):
        assert torch.allclose(out[i], multiscale_cdam(s[i]), atol=1e-12)


def test_multiscale_cdam_280_channels_14x14_fp32():
    # 200 class names + 80 augmentation words on CASS's 14x14 grid
    s = rand_sim(280, 14, 14, dtype=torch.float32, seed=9)
    out = multiscale_cdam(s)
    assert out.shape == (196, 196)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    # A_orig contributes 1/7 on the diagonal (JS(i, i) = 0 is its row maximum)
    assert out.diagonal().min() >= 1 / 7 - 1e-6


def test_multiscale_cdam_single_class_is_finite():
    # one channel: every P is [1], JS = 0 everywhere, the maps are constant (all zero)
    out = multiscale_cdam(rand_sim(1, 5, 5, dtype=torch.float32))
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 1e-6


def test_multiscale_cdam_fp32_close_to_fp64():
    s = rand_sim(20, 8, 8, seed=10)
    assert (multiscale_cdam(s.float()).double() - multiscale_cdam(s)).abs().max() <= 1e-4


# ----------------------------------------------------------------- entropy_threshold


def test_entropy_threshold_literal():
    g = torch.Generator().manual_seed(11)
    logits = torch.rand(5, 4, 6, generator=g, dtype=torch.float64) * 0.3
    pi = torch.softmax(50 * logits, dim=0)
    ent = -(pi * torch.log2(pi)).sum(0)
    ref = 0.5 * 2.5 / ((ent.min() + ent.max()) / 2)
    thr = entropy_threshold(logits)
    assert thr.shape == ()
    assert torch.allclose(thr, ref)


def test_entropy_threshold_batched_and_leading_dims():
    logits = torch.rand(3, 5, 4, 6, dtype=torch.float64)
    thr = entropy_threshold(logits)
    assert thr.shape == (3,)
    for i in range(3):
        assert torch.allclose(thr[i], entropy_threshold(logits[i]))


def test_entropy_threshold_single_class_is_zero_not_inf():
    thr = entropy_threshold(torch.rand(2, 1, 4, 4))
    assert torch.equal(thr, torch.zeros(2))


def test_entropy_threshold_one_hot_logits_no_nan():
    # softmax(50 * logits) is exactly one-hot in fp32: log2(0) would be NaN without the clamp
    logits = torch.zeros(4, 3, 3)
    logits[0] = 10.0
    thr = entropy_threshold(logits)
    assert torch.isfinite(thr) and thr > 0


def test_entropy_threshold_bad_rank():
    with pytest.raises(ValueError, match="logits"):
        entropy_threshold(torch.zeros(3, 4))


# ----------------------------------------------------------------- re-prediction helpers


def test_reprediction_weights_zero_cls():
    c = torch.rand(2, 6, 6)
    w = reprediction_weights(c)
    assert w.shape == (2, 7, 7)
    assert torch.equal(w[:, 1:, 1:], c)
    assert w[:, 0].abs().sum() == 0 and w[:, :, 0].abs().sum() == 0


def test_row_normalize():
    a = torch.rand(3, 4, 4) + 0.1
    r = row_normalize(a)
    assert torch.allclose(r.sum(-1), torch.ones(3, 4))
    assert torch.equal(row_normalize(torch.zeros(2, 2)), torch.zeros(2, 2))


def test_mix_attention():
    base = torch.softmax(torch.rand(2, 3, 5, 5), -1)  # (B, heads, N, N)
    c = torch.rand(2, 5, 5) + 0.1
    assert mix_attention(None, c) is c
    assert torch.allclose(mix_attention(None, c, 1.0, row_normalize=True).sum(-1), torch.ones(2, 5))
    assert torch.equal(mix_attention(base, c, 0.0), base)
    mixed = mix_attention(base, c, 0.25)
    assert mixed.shape == (2, 3, 5, 5)
    assert torch.allclose(mixed, 0.75 * base + 0.25 * (c / c.sum(-1, keepdim=True))[:, None])
    assert torch.allclose(mixed.sum(-1), torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match="base attention"):
        mix_attention(None, c, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_attention(base, c, 1.5)


def test_default_scales():
    assert CDAM_SCALES == (0.25, 0.37, 0.5, 0.63, 0.75, 0.87)


def test_js_memory_bounded_at_cdam_grid():
    """N=784 (28x28), K=250 fp32: the JS step needs < 1 GiB extra (naive: ~1.7 GiB).

    Measured in a fresh process by benchmarks/cdam_memory.py (peak RSS minus RSS before)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "cdam_memory.py"
    cmd = [sys.executable, str(script), "--worker", "chunked", "--device", "cpu", "--repeats", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["out_shape"] == [784, 784]
    assert 0 < r["extra_bytes"] < 2**30, r


def test_no_host_sync_meta_device():
    """The whole chain runs on the data-less 'meta' device, so it never reads a value on the
    host (.item(), bool(tensor), ...), which keeps GPU pipelines asynchronous."""
    s = torch.empty(2, 12, 6, 7, device="meta")
    out = multiscale_cdam(s)
    assert out.shape == (2, 42, 42) and out.device.type == "meta"
    thr = entropy_threshold(torch.empty(2, 5, 6, 7, device="meta"))
    assert thr.shape == (2,) and thr.device.type == "meta"
    assert upsample_logits(torch.empty(5, 6, 7, device="meta"), (96, 112)).shape == (5, 96, 112)
