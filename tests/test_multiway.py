from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from vallayz.baselines import LatentTranslator
from vallayz.method import Method
from vallayz.multiway import (
    MULTIWAY_METHODS,
    MultiWayAligner,
    cca_state,
    gpa_state,
    mcca_state,
    residual_correction_state,
)
from vallayz.types import Batch

f64 = torch.float64


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def orthogonal(d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, dtype=f64, generator=generator(seed)))[0]


def views(
    n: int = 300, widths: tuple[int, ...] = (6, 5, 7), seed: int = 0, noise: float = 0.5
) -> dict[str, torch.Tensor]:
    """Noisy views of one 4-d latent, each an isometry of it plus noise of its own."""
    g = generator(seed)
    latent = torch.randn(n, 4, dtype=f64, generator=g) * torch.tensor([2.0, 1.5, 1.0, 0.6])
    out = {}
    for i, width in enumerate(widths):
        rotation = torch.linalg.qr(torch.randn(width, width, dtype=f64, generator=g))[0]
        shared = latent @ rotation[:4]
        out[f"m{i}"] = shared + noise * torch.randn(n, width, dtype=f64, generator=g)
    return out


def sign_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``b`` with each column's sign flipped to agree with ``a``'s."""
    return b * torch.sign((a * b).sum(0))


def test_cca_matches_the_generalised_eigenproblem() -> None:
    v = views(widths=(6, 5))
    x, y = v["m0"], v["m1"]
    state = cca_state(x, y, ridge=0.0)
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    n = x.shape[0]
    cxx, cyy, cxy = xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n
    # Cxy Cyy⁻¹ Cyx a = ρ² Cxx a, solved by scipy as a generalised symmetric eigenproblem.
    values, vectors = scipy.linalg.eigh(cxy @ np.linalg.solve(cyy, cxy.T), cxx)
    order = np.argsort(values)[::-1][:5]
    np.testing.assert_allclose(state["correlations"].numpy(), np.sqrt(values[order]), atol=1e-10)
    # eigh normalises aᵀ Cxx a = 1, as CCA's directions are.
    expected = torch.from_numpy(vectors[:, order])
    torch.testing.assert_close(
        sign_aligned(expected, state["x_projection"]), expected, atol=1e-8, rtol=0
    )


def test_cca_projections_whiten_and_diagonalise() -> None:
    v = views(widths=(6, 5))
    state = cca_state(v["m0"], v["m1"], ridge=0.0)
    a = (v["m0"] - state["x_mean"]) @ state["x_projection"]
    b = (v["m1"] - state["y_mean"]) @ state["y_projection"]
    n = a.shape[0]
    eye = torch.eye(5, dtype=f64)
    torch.testing.assert_close(a.T @ a / n, eye, atol=1e-9, rtol=0)
    torch.testing.assert_close(b.T @ b / n, eye, atol=1e-9, rtol=0)
    torch.testing.assert_close(a.T @ b / n, torch.diag(state["correlations"]), atol=1e-9, rtol=0)
    rho = state["correlations"]
    assert bool((rho >= 0).all() and (rho <= 1).all() and (rho[:-1] >= rho[1:]).all())


@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_mcca_of_two_views_is_cca(ridge: float) -> None:
    v = views(widths=(6, 5))
    pair = cca_state(v["m0"], v["m1"], ridge=ridge)
    multi = mcca_state({"m0": v["m0"], "m1": v["m1"]}, ridge=ridge)
    # MCCA scales each variate to unit variance and reports the variates' correlation on the
    # fitted rows; with a ridge CCA's variates have neither exactly.
    scaled, variates = {}, {}
    for name, key in (("m0", "x_projection"), ("m1", "y_projection")):
        z = (v[name] - v[name].mean(0)) @ pair[key]
        scaled[name] = pair[key] / z.std(0, correction=0)
        variates[name] = z / z.std(0, correction=0)
    measured = (variates["m0"] * variates["m1"]).mean(0)
    order = torch.argsort(measured, descending=True)
    torch.testing.assert_close(multi["correlations"], measured[order], atol=1e-10, rtol=0)
    if ridge == 0:
        torch.testing.assert_close(measured, pair["correlations"], atol=1e-10, rtol=0)
    for name in ("m0", "m1"):
        expected = scaled[name][:, order]
        got = multi[f"{name}.projection"]
        torch.testing.assert_close(sign_aligned(expected, got), expected, atol=1e-8, rtol=0)


def test_mcca_is_the_svd_of_the_concatenated_whitened_views() -> None:
    v = views()
    state = mcca_state(v, ridge=0.0, components=4)
    n = 300
    whitened, widths = [], []
    for x in v.values():
        xc = x - x.mean(0)
        cov = xc.T @ xc / n
        values, vectors = np.linalg.eigh(cov.numpy())
        whitener = torch.from_numpy(vectors @ np.diag(values**-0.5) @ vectors.T)
        whitened.append((xc @ whitener, whitener))
        widths.append(x.shape[1])
    _, _, vh = np.linalg.svd(torch.cat([w[0] for w in whitened], 1).numpy(), full_matrices=False)
    top = torch.from_numpy(vh[:4].T)
    start = 0
    variates = {}
    for (_, whitener), name, width in zip(whitened, v, widths, strict=True):
        direction = whitener @ top[start : start + width]
        start += width
        z = (v[name] - v[name].mean(0)) @ direction
        variates[name] = z / z.std(0, correction=0)
    # The components come sorted by mean pairwise correlation, the SVD's by singular value:
    # match them by correlation of the first view's variates.
    got0 = (v["m0"] - state["m0.mean"]) @ state["m0.projection"]
    match = (got0.T @ variates["m0"] / n).abs().argmax(1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    for name in v:
        got = (v[name] - state[f"{name}.mean"]) @ state[f"{name}.projection"]
        expected = variates[name][:, match]
        torch.testing.assert_close(sign_aligned(expected, got), expected, atol=1e-7, rtol=0)


def test_mcca_reads_only_present_rows_and_its_variates_have_unit_variance() -> None:
    v = views()
    present = {m: torch.rand(300, generator=generator(i)) > 0.2 for i, m in enumerate(v)}
    state = mcca_state(v, present, ridge=0.1)
    spoiled = {m: torch.where(present[m][:, None], x, torch.nan) for m, x in v.items()}
    spoiled = {m: x.nan_to_num(1e6) for m, x in spoiled.items()}
    again = mcca_state(spoiled, present, ridge=0.1)
    for key, value in state.items():
        torch.testing.assert_close(again[key], value, atol=1e-9, rtol=0)
    for m, x in v.items():
        z = (x[present[m]] - state[f"{m}.mean"]) @ state[f"{m}.projection"]
        torch.testing.assert_close(z.var(0, correction=0), torch.ones(z.shape[1], dtype=f64))
    rho = state["correlations"]
    assert bool((rho >= 0).all() and (rho <= 1).all() and (rho[:-1] >= rho[1:]).all())


def numpy_gpa(xs: list[np.ndarray], iterations: int) -> list[np.ndarray]:
    """Textbook GPA on complete views of one width: the first view starts as the universe."""
    maps = [np.eye(xs[0].shape[1])]
    for x in xs[1:]:
        target = np.mean([xs[i] @ maps[i] for i in range(len(maps))], axis=0)
        u, _, vh = np.linalg.svd(x.T @ target)
        maps.append(u @ vh)
    for _ in range(iterations):
        universe = np.mean([x @ m for x, m in zip(xs, maps, strict=True)], axis=0)
        maps = []
        for x in xs:
            u, _, vh = np.linalg.svd(x.T @ universe)
            maps.append(u @ vh)
    return maps


def test_gpa_matches_a_numpy_reference_and_is_orthogonal() -> None:
    v = views(widths=(5, 5, 5))
    state = gpa_state(v, iterations=30, tolerance=0.0)
    reference = numpy_gpa([x.numpy() for x in v.values()], 30)
    eye = torch.eye(5, dtype=f64)
    for i, name in enumerate(v):
        matrix = state[f"{name}.matrix"]
        torch.testing.assert_close(matrix @ matrix.T, eye, atol=1e-10, rtol=0)
        torch.testing.assert_close(matrix, torch.from_numpy(reference[i]), atol=1e-6, rtol=0)


def test_gpa_recovers_rotations_and_pads_narrow_views() -> None:
    latent = torch.randn(200, 6, dtype=f64, generator=generator(3))
    v = {f"m{i}": latent @ orthogonal(6, i) for i in range(3)}
    v["narrow"] = latent[:, :4]  # a 4-d view of the same items
    state = gpa_state(v)
    assert state["narrow.matrix"].shape == (4, 6)
    torch.testing.assert_close(
        state["narrow.matrix"] @ state["narrow.matrix"].T,
        torch.eye(4, dtype=f64),
        atol=1e-10,
        rtol=0,
    )
    for i in (1, 2):
        # m0 → m_i through the universe is the true relative rotation.
        through = state["m0.matrix"] @ state[f"m{i}.matrix"].T
        torch.testing.assert_close(
            through, orthogonal(6, 0).T @ orthogonal(6, i), atol=1e-6, rtol=0
        )


def test_gpa_dispersion_never_increases() -> None:
    v = views(widths=(5, 6, 4))
    values = [float(gpa_state(v, iterations=k, tolerance=0.0)["dispersion"]) for k in (1, 2, 4, 8)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values)), values


def test_two_view_gpa_translates_like_orthogonal_procrustes() -> None:
    v = views(widths=(6, 6))
    aligner = MultiWayAligner("gpa", "standard").fit({"a": v["m0"], "b": v["m1"]})
    ortho = LatentTranslator("ortho", "standard").fit(v["m0"], v["m1"])
    x = torch.randn(20, 6, dtype=f64, generator=generator(9))
    got = aligner.translate(Batch.of({"a": x.float()}), target="b")
    torch.testing.assert_close(got.double(), ortho.transform(x.float().double()), atol=1e-4, rtol=0)


def test_residual_correction_is_a_ridge_least_squares_fit() -> None:
    v = views(widths=(5, 5, 5))
    present = {m: torch.rand(300, generator=generator(10 + i)) > 0.25 for i, m in enumerate(v)}
    ridge = 0.01
    got = residual_correction_state(v, present, ridge)["correction"]
    used = torch.stack(list(present.values())).sum(0) >= 2
    inputs, targets = [], []
    for i in torch.nonzero(used).flatten().tolist():
        here = [m for m in v if present[m][i]]
        universe = sum(v[m][i] for m in here) / len(here)
        for m in here:
            inputs.append(v[m][i])
            targets.append(universe - v[m][i])
    a, b = torch.stack(inputs).numpy(), torch.stack(targets).numpy()
    lam = ridge * np.trace(a.T @ a) / 5
    stacked_a = np.vstack([a, np.sqrt(lam) * np.eye(5)])
    stacked_b = np.vstack([b, np.zeros((5, 5))])
    delta = np.linalg.lstsq(stacked_a, stacked_b, rcond=None)[0]
    np.testing.assert_allclose(got.numpy(), np.eye(5) + delta, atol=1e-9)


def test_correction_without_ridge_shrinks_disagreeing_directions() -> None:
    # Two views agree on dimension 0 and disagree (independent noise) on dimension 1.
    g = generator(4)
    shared = torch.randn(500, 1, dtype=f64, generator=g)
    a = torch.cat([shared, torch.randn(500, 1, dtype=f64, generator=g)], 1)
    b = torch.cat([shared, torch.randn(500, 1, dtype=f64, generator=g)], 1)
    correction = residual_correction_state({"a": a, "b": b}, ridge=0.0)["correction"]
    assert float(correction[0, 0]) == pytest.approx(1.0, abs=0.02)
    assert float(correction[1, 1]) == pytest.approx(0.5, abs=0.06)


def retrieval_at_1(queries: torch.Tensor, candidates: torch.Tensor) -> float:
    q = torch.nn.functional.normalize(queries, dim=-1)
    c = torch.nn.functional.normalize(candidates, dim=-1)
    return float(((q @ c.T).argmax(1) == torch.arange(len(q))).double().mean())


@pytest.mark.parametrize("method", MULTIWAY_METHODS)
def test_aligners_serve_the_method_contract_and_retrieve(method: str) -> None:
    v = {m: x.float() for m, x in views(n=400).items()}
    train = {m: x[:300] for m, x in v.items()}
    aligner = MultiWayAligner(method).fit(train)
    assert isinstance(aligner, Method)
    assert aligner.capabilities.embeds
    assert aligner.capabilities.translates == (method != "gcpa")
    test = {m: x[300:] for m, x in v.items()}
    a = aligner.embed(Batch.of({"m0": test["m0"]}))
    b = aligner.embed(Batch.of({"m1": test["m1"]}))
    assert a.dtype == torch.float32 and a.shape == b.shape
    assert retrieval_at_1(a, b) > 0.1  # chance is 0.01
    if aligner.capabilities.translates:
        out = aligner.translate(Batch.of({"m0": test["m0"], "m2": test["m2"]}), target="m1")
        assert out.shape == test["m1"].shape
        assert retrieval_at_1(out, test["m1"]) > 0.1


@pytest.mark.parametrize("method", MULTIWAY_METHODS)
def test_save_and_load_round_trip(method: str, tmp_path: Path) -> None:
    v = views()
    aligner = MultiWayAligner(method, "l2").fit(v)
    aligner.save(tmp_path / "a")
    loaded = MultiWayAligner.load(tmp_path / "a")
    assert (loaded.method, loaded.normalisation, loaded.names) == (method, "l2", list(v))
    batch = Batch.of({"m0": v["m0"][:10].float(), "m2": v["m2"][:10].float()})
    assert torch.equal(loaded.embed(batch), aligner.embed(batch))
    if aligner.capabilities.translates:
        assert torch.equal(
            loaded.translate(batch, target="m1"), aligner.translate(batch, target="m1")
        )


@pytest.mark.parametrize("method", MULTIWAY_METHODS)
def test_extend_adds_a_modality_and_leaves_the_others_bit_for_bit(
    method: str, tmp_path: Path
) -> None:
    v = views(n=400, widths=(6, 5, 7, 6), noise=0.2)
    first = {m: v[m][:300].float() for m in ("m0", "m1", "m2")}
    aligner = MultiWayAligner(method).fit(first)
    before = {k: t.clone() for k, t in aligner.state_dict().items()}
    test = {m: x[300:].float() for m, x in v.items()}
    embedded = {m: aligner.embed(Batch.of({m: test[m]})) for m in first}
    # The new modality is paired with known ones on the training rows, m0 missing on some.
    present = {"m0": torch.arange(300) % 3 != 0, "m1": torch.ones(300, dtype=torch.bool)}
    known = Batch.of({"m0": first["m0"], "m1": first["m1"]}, present)
    aligner.extend("m3", v["m3"][:300].float(), known)
    assert aligner.names == ["m0", "m1", "m2", "m3"]
    after = aligner.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    for m in first:
        assert torch.equal(aligner.embed(Batch.of({m: test[m]})), embedded[m])
    new = aligner.embed(Batch.of({"m3": test["m3"]}))
    assert retrieval_at_1(new, embedded["m1"]) > 0.3  # chance is 0.01
    aligner.save(tmp_path / "x")
    loaded = MultiWayAligner.load(tmp_path / "x")
    assert torch.equal(loaded.embed(Batch.of({"m3": test["m3"]})), new)
    assert loaded.frozen == ["m0", "m1", "m2"]


def test_bad_use_is_explained() -> None:
    v = views(widths=(4, 4))
    with pytest.raises(ValueError, match="method must be one of"):
        MultiWayAligner("pca")
    with pytest.raises(ValueError, match="at least 2 modalities"):
        MultiWayAligner("gpa").fit({"m0": v["m0"]})
    with pytest.raises(ValueError, match="singular"):
        cca_state(torch.randn(3, 6, dtype=f64), torch.randn(3, 6, dtype=f64), ridge=0.0)
    aligner = MultiWayAligner("gcpa").fit(v)
    with pytest.raises(ValueError, match="does not translate"):
        aligner.translate(Batch.of({"m0": v["m0"].float()}), target="m1")
    with pytest.raises(ValueError, match="already mapped"):
        aligner.extend("m0", v["m0"], Batch.of({"m1": v["m1"]}))
    none_paired = Batch.of({"m1": v["m1"]}, {"m1": torch.zeros(300, dtype=torch.bool)})
    with pytest.raises(ValueError, match="pair"):
        aligner.extend("new", v["m0"], none_paired)
    with pytest.raises(ValueError, match=r"must be \[N, 4\]"):
        aligner.encode("m0", torch.randn(2, 5, dtype=f64))
    with pytest.raises(ValueError, match="cannot read an aligner"):
        MultiWayAligner.load("/nonexistent")
