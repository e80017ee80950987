"""Modality dropout in training (drop_modalities) and missing sources in evaluation
(drop_sources), against the closed form of "drop each with probability r, then keep one chosen
uniformly where all were dropped": a modality among n present ones is dropped with
probability r - r^n / n."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vallayz.eval import drop_sources
from vallayz.masking import drop_modalities

NAMES = ("a", "b", "c")
ROWS = 30_000


def _presence(rows: int, seed: int) -> dict[str, np.ndarray]:
    # Every pattern of 0-3 present modalities, about equally often.
    rng = np.random.default_rng(seed)
    return {m: rng.random(rows) < 0.6 for m in NAMES}


def _within(observed: float, p: float, trials: int, sds: float = 4.0) -> bool:
    return abs(observed - p) <= sds * math.sqrt(p * (1 - p) / trials) + 1e-12


def _closed_form(rate: float, present: int) -> float:
    return rate - rate**present / present


def _check_rates(
    present: dict[str, np.ndarray], dropped: dict[str, np.ndarray], rate: float
) -> None:
    count = sum(present[m].astype(int) for m in NAMES)
    for n in (1, 2, 3):
        rows = count == n
        trials = int(sum(present[m][rows].sum() for m in NAMES))
        observed = sum(dropped[m][rows].sum() for m in NAMES) / trials
        assert _within(observed, _closed_form(rate, n), trials), (n, observed)


def _check_invariants(present: dict[str, np.ndarray], dropped: dict[str, np.ndarray]) -> None:
    for m in NAMES:
        assert not (dropped[m] & ~present[m]).any()  # only present entries are dropped
    kept = sum((present[m] & ~dropped[m]).astype(int) for m in NAMES)
    count = sum(present[m].astype(int) for m in NAMES)
    assert ((kept >= 1) | (count == 0)).all()  # every row with a modality keeps one


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.9])
def test_drop_modalities_rate_and_one_kept_per_row(rate: float) -> None:
    present_np = _presence(ROWS, 1)
    present = {m: torch.from_numpy(v) for m, v in present_np.items()}
    out = drop_modalities(present, rate, torch.Generator().manual_seed(2))
    dropped = {m: out[m].numpy() for m in NAMES}
    _check_invariants(present_np, dropped)
    _check_rates(present_np, dropped, rate)


def test_drop_modalities_per_modality_rates() -> None:
    # Rows with both a and b: a is drawn with 0.2, b with 0.8; both drawn (0.16) keeps one of
    # the two uniformly, so a is dropped with 0.2 - 0.16 / 2 and b with 0.8 - 0.16 / 2.
    present = {"a": torch.ones(ROWS, dtype=torch.bool), "b": torch.ones(ROWS, dtype=torch.bool)}
    out = drop_modalities(present, {"a": 0.2, "b": 0.8}, torch.Generator().manual_seed(3))
    assert _within(float(out["a"].double().mean()), 0.12, ROWS)
    assert _within(float(out["b"].double().mean()), 0.72, ROWS)
    assert not bool((out["a"] & out["b"]).any())
    # A modality without a rate is never dropped.
    out = drop_modalities(present, {"a": 1.0}, torch.Generator().manual_seed(4))
    assert bool(out["a"].all()) and not bool(out["b"].any())


def test_drop_modalities_keeps_one_chosen_uniformly_when_all_are_drawn() -> None:
    present = {m: torch.ones(ROWS, dtype=torch.bool) for m in NAMES}
    out = drop_modalities(present, 1.0, torch.Generator().manual_seed(5))
    kept = torch.stack([~out[m] for m in NAMES], dim=1)
    assert bool((kept.sum(dim=1) == 1).all())
    for share in kept.double().mean(dim=0).tolist():
        assert _within(share, 1 / 3, ROWS)
    assert not any(bool(v.any()) for v in drop_modalities(present, 0.0).values())
    with pytest.raises(ValueError, match="must lie in"):
        drop_modalities(present, 1.5)


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.9])
def test_drop_sources_rate_and_one_kept_per_row(rate: float) -> None:
    present = _presence(ROWS, 6)
    absent = drop_sources(present, rate, seed=7)
    _check_invariants(present, absent)
    _check_rates(present, absent, rate)


def test_drop_sources_is_seeded_and_keeps_one_chosen_uniformly() -> None:
    present = {m: np.ones(ROWS, dtype=bool) for m in NAMES}
    absent = drop_sources(present, 1.0, seed=8)
    kept = np.stack([~absent[m] for m in NAMES], axis=1)
    assert (kept.sum(axis=1) == 1).all()
    for share in kept.mean(axis=0):
        assert _within(float(share), 1 / 3, ROWS)
    again = drop_sources(present, 0.5, seed=9)
    assert all((again[m] == drop_sources(present, 0.5, seed=9)[m]).all() for m in NAMES)
    assert any((again[m] != drop_sources(present, 0.5, seed=10)[m]).any() for m in NAMES)
    assert not any(v.any() for v in drop_sources(present, 0.0).values())
