from __future__ import annotations

import itertools
import math

import pytest
import torch

from vallayz.functional import masked_mean, mean_over_present, sample_variants, topk_softmax


def reference_topk_softmax(scores, valid, k, temperature):
    """Loop reference, float64."""
    out = torch.zeros_like(scores, dtype=torch.float64)
    for idx in itertools.product(*(range(n) for n in scores.shape[:-1])):
        row = [(float(scores[idx][j]), j) for j in range(scores.shape[-1]) if valid[idx][j]]
        row.sort(key=lambda t: -t[0])
        kept = row[:k]
        if not kept:
            continue
        top = max(s for s, _ in kept)
        z = sum(math.exp((s - top) / temperature) for s, _ in kept)
        for s, j in kept:
            out[idx][j] = math.exp((s - top) / temperature) / z
    return out


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_softmax_matches_loop_reference(k: int) -> None:
    scores = torch.randn(3, 4, 9, dtype=torch.float64)
    valid = torch.rand(3, 4, 9) > 0.3
    valid[0, 0] = False  # a receiver with no incoming variant
    got = topk_softmax(scores, valid, k, temperature=0.7)
    torch.testing.assert_close(got, reference_topk_softmax(scores, valid, k, 0.7))


def test_topk_softmax_keeps_exactly_k_weights_summing_to_one() -> None:
    scores = torch.randn(6, 5, 12, dtype=torch.float64)
    valid = torch.ones_like(scores, dtype=torch.bool)
    weights = topk_softmax(scores, valid, 4, temperature=1.3)
    assert ((weights > 0).sum(-1) == 4).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(6, 5, dtype=torch.float64))
    # The kept ones are the k largest scores.
    kept = weights > 0
    smallest_kept = scores.masked_fill(~kept, math.inf).min(-1).values
    largest_dropped = scores.masked_fill(kept, -math.inf).max(-1).values
    assert (smallest_kept > largest_dropped).all()


def test_topk_softmax_with_k_all_equals_dense_masked_softmax() -> None:
    scores = torch.randn(4, 3, 10, dtype=torch.float64)
    valid = torch.rand(4, 3, 10) > 0.2
    valid[..., 0] = True
    dense = torch.softmax((scores / 0.5).masked_fill(~valid, -math.inf), dim=-1)
    torch.testing.assert_close(topk_softmax(scores, valid, 10, 0.5), dense)
    # k larger than the number of incoming variants keeps them all.
    torch.testing.assert_close(topk_softmax(scores, valid, 50, 0.5), dense)


def test_topk_softmax_rows_without_valid_variants_are_zero_and_finite() -> None:
    scores = torch.randn(2, 5, requires_grad=True)
    valid = torch.zeros(2, 5, dtype=torch.bool)
    valid[1, 2] = True
    weights = topk_softmax(scores, valid, 3, 1.0)
    assert torch.equal(weights[0], torch.zeros(5))
    assert weights[1, 2] == 1.0
    weights.sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize(("k", "t"), [(0, 1.0), (2, 0.0), (2, -1.0)])
def test_topk_softmax_rejects_bad_arguments(k: int, t: float) -> None:
    with pytest.raises(ValueError, match=r"k|temperature"):
        topk_softmax(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool), k, t)


def test_sample_variants_deterministic_limit_is_identity() -> None:
    s = torch.randn(2, 3, 4)
    v = sample_variants(s, torch.zeros(3), variants=1)
    assert v.shape == (2, 3, 1, 4)
    assert torch.equal(v[:, :, 0], s)


def test_sample_variants_noise_has_per_node_scale() -> None:
    s = torch.zeros(1, 2, 20000, dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    v = sample_variants(s, sigma, variants=3, generator=torch.Generator().manual_seed(0))
    std = v.std(dim=(0, 2, 3))
    torch.testing.assert_close(std, sigma, rtol=0.02, atol=0.0)


def test_the_bridge_noisy_update_averages_to_the_kernel_smoothing_expansion() -> None:
    """Claim 4 on the bridge itself: with phi the message a receiver gets from one sender's
    (normalised) state, E[phi(s + sigma*eps)] = phi(s) + 1/2 sigma^2 Tr(H phi(s)) + O(sigma^4).

    The expectation is computed by Gauss-Hermite quadrature over the four noise dimensions (exact
    for polynomials of degree 13, so no sampling error hides the sigma^4 remainder); the
    curvature by autograd. Top-k keeps every sender here, so phi is smooth.
    """
    from numpy.polynomial.hermite_e import hermegauss

    from vallayz.layers import CrossModalPassing

    torch.manual_seed(0)
    f64 = torch.float64
    layer = CrossModalPassing(4, 6, top_k=3, temperature=0.8, update="residual").double()
    ids = torch.tensor([0, 1, 1, 2])
    valid = (ids[:, None] != ids[None, :])[None]
    normed = layer.norm(torch.randn(1, 4, 4, dtype=f64)).detach()

    def phi(sender: torch.Tensor) -> torch.Tensor:
        """Message at node 0 when node 1 sends ``sender`` (rows: several senders at once)."""
        rows = sender.reshape(-1, 4)
        variants = normed.expand(len(rows), -1, -1).clone()
        variants[:, 1] = rows
        message, _ = layer.aggregate(
            normed.expand(len(rows), -1, -1), variants.unsqueeze(2), valid.expand(len(rows), -1, -1)
        )
        return message[:, 0].reshape(*sender.shape[:-1], 4)

    s = normed[0, 1]
    trace = torch.stack(
        [
            torch.autograd.functional.hessian(lambda x, c=c: phi(x)[c], s).diagonal().sum()
            for c in range(4)
        ]
    )
    nodes, weights = hermegauss(7)
    grid = torch.cartesian_prod(*[torch.tensor(nodes, dtype=f64)] * 4)
    mass = torch.cartesian_prod(*[torch.tensor(weights, dtype=f64)] * 4).prod(dim=1)
    mass = mass / mass.sum()

    @torch.no_grad()
    def residual(sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (mass[:, None] * phi(s + sigma * grid)).sum(dim=0)
        correction = 0.5 * sigma**2 * trace.detach()
        return correction, mean - phi(s) - correction

    correction, error = residual(0.1)
    _, half_error = residual(0.05)
    assert float(correction.norm()) > 1e-4  # the curvature term is not negligible ...
    assert float(error.norm()) < 0.05 * float(correction.norm())  # ... it explains the shift,
    # and the remainder shrinks like sigma^4 (x16 per halving), not like sigma^2 (x4).
    assert 10 < float(error.norm() / half_error.norm()) < 22
    # The model's own sampler draws the noise that this expectation averages.
    draws = sample_variants(normed, torch.full((4,), 0.1, dtype=f64), 20_000)
    spread = (draws - normed[:, :, None]).std()
    torch.testing.assert_close(spread, torch.tensor(0.1, dtype=f64), rtol=0.02, atol=0)


def test_masked_mean_ignores_padding() -> None:
    nodes = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(masked_mean(nodes, mask), torch.tensor([[2.0], [4.0]]))


def test_mean_over_present_ignores_absent_rows_even_with_nan() -> None:
    a = torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [3.0, 3.0]])
    b = torch.tensor([[3.0, 5.0], [2.0, 4.0], [float("inf"), 0.0]])
    present = {"a": torch.tensor([True, False, True]), "b": torch.tensor([True, True, False])}
    expected = torch.tensor([[2.0, 3.0], [2.0, 4.0], [3.0, 3.0]])
    torch.testing.assert_close(mean_over_present({"a": a, "b": b}, present), expected)


def test_mean_of_present_sources_is_zero_in_rows_without_any() -> None:
    from vallayz.functional import mean_of_present_sources

    a = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [3.0, 3.0]])
    b = torch.tensor([[3.0, 4.0], [float("inf"), 1.0], [5.0, 5.0]])
    present = {"a": torch.tensor([True, False, True]), "b": torch.tensor([True, False, False])}
    mean, any_present = mean_of_present_sources({"a": a, "b": b}, present)
    torch.testing.assert_close(mean, torch.tensor([[2.0, 3.0], [0.0, 0.0], [3.0, 3.0]]))
    assert any_present.tolist() == [True, False, True]
