"""Placement of the spectral step's small eigen-decompositions (core.eigensolver) and the
eigenvalue-only / top-vectors forms of graph_eigh."""

import numpy as np
import pytest
import torch

from fiftyone_cass.core import eigensolver
from fiftyone_cass.core.cass import CassOptions, cass_attention
from fiftyone_cass.core.spectral import graph_eigh


def grams(count=37, n=16, tokens=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(count, tokens, n, generator=g, dtype=dtype)
    return k.transpose(-1, -2) @ k


@pytest.mark.parametrize("vectors", [True, False])
def test_host_pool_matches_one_batched_call_bit_for_bit(vectors, monkeypatch):
    a = grams().reshape(37, 1, 16, 16).expand(37, 2, 16, 16).contiguous()  # extra batch dim
    monkeypatch.setattr(eigensolver, "host_workers", lambda: 3)  # chunks even on 2 cores
    ref = torch.linalg.eigh(a) if vectors else torch.linalg.eigvalsh(a)
    got = eigensolver.eigh_on_host(a, vectors)
    if vectors:
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        assert got[1].shape == (37, 2, 16, 16)
    else:
        assert torch.equal(got, ref) and got.shape == (37, 2, 16)


def test_placements_agree_and_bad_placement_is_named():
    a = grams(5)
    vals = {p: eigensolver.symmetric_eigh(a, False, p) for p in eigensolver.PLACEMENTS}
    for p in eigensolver.PLACEMENTS:
        torch.testing.assert_close(vals[p], torch.linalg.eigvalsh(a), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="placement"):
        eigensolver.symmetric_eigh(a, True, "gpu")


def test_probe_times_both_and_reports_the_choice():
    out = eigensolver.probe_placement(grams(8), vectors=True)
    assert out["choice"] in ("device", "cpu")
    assert out["device_ms"] > 0 and out["cpu_ms"] > 0
    assert out["max_abs_diff"] < 1e-9
    assert out["choice"] == ("cpu" if out["cpu_ms"] < out["device_ms"] else "device")


def test_graph_eigh_eigenvalues_only_and_top_vectors():
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(3, 4, 50, 8, generator=g, dtype=torch.float64)
    vals, vecs = graph_eigh(keys, 0.125)
    only = graph_eigh(keys, 0.125, vectors=False)
    torch.testing.assert_close(only, vals, rtol=0, atol=1e-12)
    vals3, top3 = graph_eigh(keys, 0.125, top=3)
    torch.testing.assert_close(vals3, vals)
    assert top3.shape == (3, 4, 50, 3)
    torch.testing.assert_close(top3, vecs[..., -3:])
    # they are eigenvectors of the N x N graph with those eigenvalues
    graph = 0.125 * keys @ keys.transpose(-1, -2)
    torch.testing.assert_close(graph @ top3, top3 * vals[..., -3:].unsqueeze(-2), rtol=1e-9, atol=1e-9)
    # d >= N takes the graph itself
    small = keys[..., :6, :]
    v, u = graph_eigh(small, 0.125, top=2)
    assert u.shape == (3, 4, 6, 2)
    torch.testing.assert_close(v, torch.linalg.eigvalsh(0.125 * small @ small.transpose(-1, -2)))


def test_cass_attention_is_the_same_wherever_the_eigh_runs():
    g = torch.Generator().manual_seed(2)
    clip_keys = torch.randn(3, 4, 36, 8, generator=g)
    dino_keys = torch.randn(3, 4, 36, 8, generator=g)
    outs = [cass_attention(clip_keys, dino_keys, (6, 6), 8 ** -0.5, CassOptions(eigh_placement=p)) for p in ("device", "cpu", "auto")]
    for o in outs[1:]:
        assert torch.equal(o.dino_index, outs[0].dino_index)
        torch.testing.assert_close(o.attn, outs[0].attn, rtol=0, atol=1e-6)


def test_segmenter_rejects_an_unknown_placement():
    from fiftyone_cass.errors import InvalidInputError
    from fiftyone_cass.models.segmenter import Segmenter

    with pytest.raises(InvalidInputError, match="eigh_placement"):
        Segmenter(classes="dog, cat", backbone="tiny", eigh_placement="gpu")


def test_measured_choice_probes_once_per_kind(monkeypatch):
    calls = []

    def fake_probe(a, vectors):
        calls.append((a.shape[-1], vectors))
        return {"device_ms": 2.0, "cpu_ms": 1.0, "choice": "cpu", "max_abs_diff": 0.0}

    monkeypatch.setattr(eigensolver, "probe_placement", fake_probe)
    monkeypatch.setattr(eigensolver, "_choices", {})
    assert eigensolver.measured_choice(grams(4), True) == "cpu"
    assert eigensolver.measured_choice(grams(9), True) == "cpu"  # same kind: remembered
    assert eigensolver.measured_choice(grams(4), False) == "cpu"  # eigvalsh is another kind
    assert eigensolver.measured_choice(grams(4, n=8), True) == "cpu"
    assert calls == [(16, True), (16, False), (8, True)]
    assert set(eigensolver.placement_choices()) == {"cpu/16/float64/eigh", "cpu/16/float64/eigvalsh", "cpu/8/float64/eigh"}
