"""The closed-form maps of ``scripts/translation_reads.py`` against a reference solver."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "translation_reads", ROOT / "scripts/translation_reads.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ridge_without_penalty_is_least_squares_with_a_bias() -> None:
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=(40, 5)), rng.normal(size=(40, 3)), rng.normal(size=(7, 5))
    design = np.hstack([x, np.ones((40, 1))])
    weight, *_ = np.linalg.lstsq(design, y, rcond=None)
    expected = np.hstack([z, np.ones((7, 1))]) @ weight
    mapped = script().ridge(torch.from_numpy(x), torch.from_numpy(y), 0.0)(torch.from_numpy(z))
    np.testing.assert_allclose(mapped.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_ridge_penalty_is_the_normal_equations_with_a_scaled_identity() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 2))
    design = np.hstack([x, np.ones((30, 1))])
    gram = design.T @ design
    penalty = 0.5 * np.diag(gram).mean() * np.eye(5)
    weight = np.linalg.solve(gram + penalty, design.T @ y)
    mapped = script().ridge(torch.from_numpy(x), torch.from_numpy(y), 0.5)(torch.from_numpy(x))
    np.testing.assert_allclose(mapped.numpy(), design @ weight, rtol=1e-9, atol=1e-9)
    # A stronger ridge shrinks the fitted values toward the bias.
    plain = script().ridge(torch.from_numpy(x), torch.from_numpy(y), 0.0)(torch.from_numpy(x))
    assert mapped.std(dim=0).sum() < plain.std(dim=0).sum()
