"""Canonical tie-breaking of the spectral head assignment (SPEC C.5): the optimum is the
solver's, and among equally good assignments the lexicographically smallest is returned,
whatever round-off the costs carry."""

import itertools

import numpy as np
import pytest
import torch

from fiftyone_cass.core.spectral import (
    _lexicographic_matching,
    assignment_duals,
    canonical_assignment,
    match_heads,
)


def brute_force(cost, tol=1e-6):
    """All optimal permutations (within tol) of a small cost matrix, in lexicographic order."""
    h = cost.shape[0]
    perms = list(itertools.permutations(range(h)))
    totals = np.array([cost[np.arange(h), p].sum() for p in perms])
    best = totals.min()
    return [np.array(p) for p, t in zip(perms, totals) if t <= best + tol]


def tied_costs(rng, b, h, blocks):
    """Costs with structural ties: on each block of rows x columns the cost is a_i - b_j (every
    permutation inside the block costs the same), elsewhere generic."""
    cost = rng.random((b, h, h))
    for k in range(b):
        for rows, cols in blocks:
            a, c = rng.random(len(rows)), rng.random(len(cols))
            cost[k][np.ix_(rows, cols)] = a[:, None] - c[None, :] - 2.0  # cheap enough to be chosen
    return cost


@pytest.mark.parametrize("seed", range(6))
def test_canonical_is_optimal_and_lexicographically_smallest(seed):
    rng = np.random.default_rng(seed)
    h = 6
    cost = tied_costs(rng, 4, h, [([0, 2, 3], [1, 4, 5]), ([1, 5], [0, 2])])
    # a generic matrix too: a single optimum
    cost = np.concatenate([cost, rng.random((2, h, h))])
    sigma = canonical_assignment(cost)
    for k in range(cost.shape[0]):
        optimal = brute_force(cost[k])
        np.testing.assert_array_equal(sigma[k], optimal[0])
    assert any(len(brute_force(cost[k])) > 1 for k in range(4))  # the ties are real


def test_tie_break_ignores_round_off():
    """The same tied costs with independent noise far below the tolerance (what fp32 vs bf16
    spectra or another batch layout give) get the same assignment."""
    rng = np.random.default_rng(3)
    h = 12
    cost = tied_costs(rng, 16, h, [(list(range(0, 12, 2)), list(range(1, 12, 2))), ([1, 3, 5], [0, 2, 4])])
    ref = canonical_assignment(cost)
    for trial in range(5):
        noisy = cost + rng.normal(0, 1e-8, cost.shape)
        np.testing.assert_array_equal(canonical_assignment(noisy), ref)
    # without the canonical step the solver's pick follows the noise: some windows differ
    from scipy.optimize import linear_sum_assignment

    plain = lambda c: np.stack([linear_sum_assignment(m)[1] for m in c])  # noqa: E731
    flips = sum(int((plain(cost + rng.normal(0, 1e-8, cost.shape)) != plain(cost)).any()) for _ in range(5))
    assert flips > 0


def test_duals_are_feasible_and_tight_on_the_assignment():
    rng = np.random.default_rng(0)
    cost = rng.random((8, 12, 12))
    sigma = canonical_assignment(cost)
    u, v = assignment_duals(cost, sigma)
    reduced = cost - u[..., :, None] - v[..., None, :]
    assert reduced.min() > -1e-12
    on = np.take_along_axis(reduced, sigma[..., None], -1)[..., 0]
    np.testing.assert_allclose(on, 0.0, atol=1e-12)
    # strong duality: sum u + sum v is the optimal cost
    total = np.take_along_axis(cost, sigma[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(u.sum(-1) + v.sum(-1), total, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_row_by_row_matching_agrees_with_positional_weights(seed):
    """The fallback for more than 12 heads gives the same matching as the positional weights."""
    rng = np.random.default_rng(seed)
    h = 9
    perm = rng.permutation(h)
    allowed = rng.random((h, h)) < 0.35
    allowed[np.arange(h), perm] = True  # a perfect matching exists
    lex = np.arange(h)[None, :] * float(h) ** (h - 1 - np.arange(h))[:, None]
    from scipy.optimize import linear_sum_assignment

    _, cols = linear_sum_assignment(np.where(allowed, lex, 1e12))
    np.testing.assert_array_equal(_lexicographic_matching(allowed), cols)


def test_many_heads_use_the_row_by_row_path():
    rng = np.random.default_rng(1)
    h = 14
    cost = tied_costs(rng, 2, h, [(list(range(7)), list(range(7, 14)))])
    sigma = canonical_assignment(cost)
    assert sorted(sigma[0]) == list(range(h))
    # the tied block is resolved to its smallest permutation: rows 0..6 take columns 7..13 in order
    np.testing.assert_array_equal(sigma[:, :7], np.tile(np.arange(7, 14), (2, 1)))


def test_match_heads_uses_the_canonical_assignment():
    rng = np.random.default_rng(5)
    w = 1.0 - torch.from_numpy(tied_costs(rng, 3, 12, [(list(range(6)), list(range(6, 12)))]))
    dino, weight = match_heads(w)
    np.testing.assert_array_equal(dino.numpy(), canonical_assignment((1.0 - w).numpy()))
    torch.testing.assert_close(weight, w.gather(-1, dino.unsqueeze(-1)).squeeze(-1))
    # float32 distances (spectral_dtype float32) pick the same
    dino32, _ = match_heads(w.float())
    torch.testing.assert_close(dino32, dino)
