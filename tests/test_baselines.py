from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vallayz.baselines import (
    METHODS,
    LatentTranslator,
    affine_state,
    denormalise,
    linear_state,
    normalisation_state,
    normalise,
    padded_polar,
    zero_pad,
)

f64 = torch.float64


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(d, d, dtype=f64, generator=torch.Generator().manual_seed(seed))
    )
    return q


def numpy_reference(method: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 numpy reference of the closed-form maps, without pre-processing."""
    if method == "ortho":
        u, _, vh = np.linalg.svd(x.T @ y)
        return u @ vh
    r = np.linalg.lstsq(x, y, rcond=None)[0]
    if method == "l-ortho":
        u, _, vh = np.linalg.svd(r)
        return u @ vh
    return r


@pytest.mark.parametrize("method", ["linear", "l-ortho", "ortho"])
def test_closed_forms_match_numpy_reference(method: str) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 6, dtype=f64, generator=g), torch.randn(50, 6, dtype=f64, generator=g)
    t = LatentTranslator(method, "none").fit(x, y)
    expected = numpy_reference(method, x.numpy(), y.numpy())
    np.testing.assert_allclose(t.matrix.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(t.transform(x).numpy(), x.numpy() @ expected, atol=1e-6)


@pytest.mark.parametrize("method", ["ortho", "l-ortho", "linear"])
def test_orthogonal_maps_recover_a_rotation(method: str) -> None:
    q = random_orthogonal(7, 0)
    x = torch.randn(60, 7, dtype=f64)
    t = LatentTranslator(method, "none").fit(x, x @ q)
    torch.testing.assert_close(t.matrix, q, atol=1e-6, rtol=0)
    x_new = torch.randn(5, 7, dtype=f64)
    torch.testing.assert_close(t.transform(x_new), x_new @ q, atol=1e-6, rtol=0)


def test_procrustes_is_orthogonal_on_noisy_data() -> None:
    x, y = torch.randn(40, 9, dtype=f64), torch.randn(40, 9, dtype=f64)
    for method in ("ortho", "l-ortho"):
        r = LatentTranslator(method, "standard").fit(x, y).matrix
        torch.testing.assert_close(r.T @ r, torch.eye(9, dtype=f64), atol=1e-10, rtol=0)


def test_linear_recovers_a_general_linear_map_with_scaling() -> None:
    a = torch.randn(5, 5, dtype=f64) + 3 * torch.eye(5, dtype=f64)
    x = torch.randn(80, 5, dtype=f64) * 4 + 2
    y = x @ a + 1.5
    t = LatentTranslator("linear", "standard").fit(x, y)
    x_new = torch.randn(10, 5, dtype=f64) * 4 + 2
    torch.testing.assert_close(t.transform(x_new), x_new @ a + 1.5, atol=1e-6, rtol=0)


def test_affine_by_gradient_descent_approaches_the_true_map() -> None:
    a = random_orthogonal(4, 3) * 2.0
    x = torch.randn(100, 4, dtype=f64)
    y = x @ a + torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=f64)
    t = LatentTranslator("affine", "none", affine_steps=3000).fit(x, y)
    assert float((t.transform(x) - y).abs().max()) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows", [60, 4])  # the descent from sums, and the one through rows
def test_affine_descent_equals_autograd_through_the_rows(dtype: torch.dtype, rows: int) -> None:
    # The reference: Adam on the mean squared error of every row, by autograd, in float64.
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(rows, 12, generator=g, dtype=f64) * 2 + 1).to(dtype)
    y = (torch.randn(rows, 3, generator=g, dtype=f64) - 0.5).to(dtype)
    init = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=dtype) / 12**0.5
    matrix = init.double().requires_grad_()
    bias = torch.zeros(3, dtype=f64, requires_grad=True)
    optimizer = torch.optim.Adam([matrix, bias], lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        (x.double() @ matrix + bias - y.double()).pow(2).mean().backward()
        optimizer.step()
    state = affine_state(x, y, steps=200)
    assert state["matrix"].dtype == dtype
    tolerance = 1e-10 if dtype == f64 else 1e-6
    torch.testing.assert_close(state["matrix"].double(), matrix.detach(), atol=tolerance, rtol=0)
    torch.testing.assert_close(state["bias"].double(), bias.detach(), atol=tolerance, rtol=0)


def test_standard_scaling_inverts_exactly() -> None:
    x = torch.randn(30, 5, dtype=f64) * torch.tensor([1.0, 5.0, 0.1, 3.0, 2.0], dtype=f64) + 7
    state = normalisation_state(x, "standard")
    z = normalise(x, state, "standard")
    torch.testing.assert_close(z.mean(0), torch.zeros(5, dtype=f64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(5, dtype=f64))
    torch.testing.assert_close(denormalise(z, state, "standard"), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("d_source", "d_target"), [(4, 9), (9, 4)])
@pytest.mark.parametrize("method", METHODS)
def test_zero_padding_handles_either_side_larger(method: str, d_source: int, d_target: int) -> None:
    x = torch.randn(40, d_source, dtype=f64)
    y = torch.randn(40, d_target, dtype=f64)
    t = LatentTranslator(method, "standard", affine_steps=50).fit(x, y)
    out = t.transform(torch.randn(3, d_source, dtype=f64))
    assert out.shape == (3, d_target)
    assert t.matrix.shape == (9, 9)


def test_zero_padding_embeds_then_projects_back_exactly() -> None:
    # A smaller target space embedded isometrically in a larger source space is recovered.
    x = torch.randn(50, 6, dtype=f64)
    y = x[:, :3].clone()
    t = LatentTranslator("linear", "none").fit(x, y)
    torch.testing.assert_close(t.transform(x), y, atol=1e-8, rtol=0)
    assert torch.equal(zero_pad(y, 6)[:, 3:], torch.zeros(50, 3, dtype=f64))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    x, y = torch.randn(30, 5, dtype=f64), torch.randn(30, 8, dtype=f64)
    t = LatentTranslator("l-ortho", "l2").fit(x, y)
    t.save(tmp_path)
    loaded = LatentTranslator.load(tmp_path)
    q = torch.randn(4, 5, dtype=f64)
    assert torch.equal(loaded.transform(q), t.transform(q))


def test_bad_use_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        LatentTranslator("cca")
    with pytest.raises(ValueError, match="not fitted"):
        LatentTranslator().transform(torch.randn(2, 3))
    with pytest.raises(ValueError, match="paired anchors"):
        LatentTranslator().fit(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="NaN"):
        LatentTranslator().fit(torch.full((5, 3), float("nan")), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"expects \[N, 3\]"):
        LatentTranslator().fit(torch.randn(5, 3), torch.randn(5, 3)).transform(torch.randn(2, 4))
    with pytest.raises(ValueError, match="cannot read a translator"):
        LatentTranslator.load(tmp_path)


@pytest.mark.parametrize(("a", "b"), [(9, 4), (4, 9), (6, 6)])
def test_padded_polar_acts_like_the_polar_factor_of_the_padded_matrix(a: int, b: int) -> None:
    m = torch.randn(a, b, dtype=f64)
    dim = max(a, b)
    r = padded_polar(m, dim)
    torch.testing.assert_close(r.T @ r, torch.eye(dim, dtype=f64), atol=1e-12, rtol=0)
    u, _, vh = torch.linalg.svd(zero_pad(zero_pad(m, dim).T, dim).T)
    # Only the block that multiplies unpadded inputs and survives the output cut is defined.
    torch.testing.assert_close(r[:a, :b], (u @ vh)[:a, :b], atol=1e-10, rtol=0)


def test_linear_state_takes_the_minimum_norm_solution_when_singular() -> None:
    x = torch.randn(40, 5, dtype=f64)
    x = torch.cat([x, x[:, :2]], dim=1)  # two repeated columns: xᵀx is singular
    y = torch.randn(40, 3, dtype=f64)
    expected = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(linear_state(x, y)["matrix"].numpy(), expected, atol=1e-8)


def test_float32_fits_stay_close_to_the_float64_fit() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3000, 48, dtype=f64, generator=g) * torch.logspace(0, -1, 48, dtype=f64) + 2
    y = x @ random_orthogonal(48, 5)[:, :32] + 0.1 * torch.randn(3000, 32, dtype=f64, generator=g)
    for method in ("linear", "l-ortho", "ortho"):
        exact = LatentTranslator(method).fit(x, y).transform(x[:100])
        fast = LatentTranslator(method).fit(x.float(), y.float()).transform(x[:100].float())
        torch.testing.assert_close(fast.double(), exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("normalisation", ["standard", "l2", "none"])
def test_non_finite_anchors_are_refused_for_every_normalisation(normalisation: str) -> None:
    for bad in (float("nan"), float("inf")):
        x = torch.randn(6, 3)
        x[2, 1] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            LatentTranslator("ortho", normalisation).fit(x, torch.randn(6, 3))
