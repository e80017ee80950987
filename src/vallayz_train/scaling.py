"""O(M) against O(M²): parameters and training-step time as the number of modalities grows.

IMPN has one adapter and one decoder per modality and shares its bridge layers; the pairwise
baseline has one MLP per ordered pair of modalities. Step times are medians over repeats,
measured side by side in one process on the same synthetic batch.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from vallayz import IMPN, Batch, IMPNConfig, Objective
from vallayz.learned import BaselineConfig, MLPTranslator


def _step_seconds(model: torch.nn.Module, loss: Objective, batch: Batch, repeats: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    times = []
    for index in range(repeats + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        loss(batch, generator).total.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if index:  # the first step warms up
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def scaling_table(
    counts: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8),
    dim: int = 384,
    soil_dim: int = 128,
    hidden: int = 256,
    batch_size: int = 128,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Parameters and median step time of IMPN and of pairwise MLPs for each modality count."""
    rows = []
    for m in counts:
        torch.manual_seed(0)
        modalities = {f"m{i}": dim for i in range(m)}
        batch = Batch.of({name: torch.randn(batch_size, dim) for name in modalities})
        impn = IMPN(
            IMPNConfig(
                modalities=modalities, soil_dim=soil_dim, hidden_dim=hidden, layers=2, heads=4
            )
        ).train()
        pairwise = MLPTranslator(
            BaselineConfig("mlp-translator", modalities, hidden=hidden)
        ).train()

        rows.append(
            {
                "M": m,
                "impn_params": sum(p.numel() for p in impn.parameters()),
                "pairwise_params": sum(p.numel() for p in pairwise.parameters()),
                "pairwise_maps": m * (m - 1),
                "impn_step_ms": 1000 * _step_seconds(impn, impn.objective(), batch, repeats),
                "pairwise_step_ms": 1000
                * _step_seconds(pairwise, pairwise.objective(), batch, repeats),
            }
        )
    return rows
