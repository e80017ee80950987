"""Input perturbations for robustness sweeps: additive noise at a given SNR, missing rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from vallayz.functional import noise_at_snr
from vallayz.types import Batch


def add_noise_snr(x: Tensor, snr_db: float, generator: torch.Generator | None = None) -> Tensor:
    """Adds white Gaussian noise so that each row has signal-to-noise ratio ``snr_db``.

    The noise power of a row is its mean squared value divided by ``10^(snr_db / 10)``.

    Shape:
        ``[N, ..., d]`` → same.
    """
    return noise_at_snr(x, snr_db, generator)


def drop_rows(items: int, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """A presence mask with a fraction ``rate`` of the rows (rounded) marked absent.

    Shape:
        → ``[items]`` bool.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    present = torch.ones(items, dtype=torch.bool)
    dropped = torch.randperm(items, generator=generator)[: round(rate * items)]
    present[dropped] = False
    return present


class PerturbedView:
    """A read-only view of a data set whose chosen modalities are noisy or missing.

    Encoders read rows through :meth:`batch`, so every method sees the same perturbation.
    ``present`` keeps the original masks (it decides which rows take part); ``batch`` applies
    the extra absences and the noise.

    Args:
        data: The underlying :class:`~vallayz.data.PairedEmbeddings`.
        absent: Modality → ``[N]`` bool, rows to treat as missing.
        noisy: Modalities to perturb with Gaussian noise (their hashed-feature tokens, if any,
            are withheld, so a token front end cannot see the clean item).
        snr_db: Signal-to-noise ratio of that noise (None: no noise).
        seed: Seed of the noise; the draw for a row depends only on ``seed`` and the row.
    """

    def __init__(
        self,
        data: Any,
        absent: dict[str, np.ndarray] | None = None,
        noisy: tuple[str, ...] = (),
        snr_db: float | None = None,
        seed: int = 0,
    ) -> None:
        self.data = data
        self.absent = absent or {}
        self.noisy, self.snr_db, self.seed = noisy, snr_db, seed
        self.present = data.present
        self.arrays = data.arrays
        self.tokens = data.tokens
        self.node_ids = data.node_ids

    def keys(self, modality: str | None = None) -> list[str]:
        return list(self.data.keys(modality))

    def batch(self, rows: Any, modalities: Any = None) -> Batch:
        batch = self.data.batch(rows, modalities)
        rows = np.asarray(rows)
        embeddings = dict(batch.embeddings)
        present = dict(batch.present)
        for name in embeddings:
            if name in self.absent:
                present[name] = present[name] & ~torch.from_numpy(self.absent[name][rows])
            if self.snr_db is not None and name in self.noisy:
                noisy = []
                for row, x in zip(rows.tolist(), embeddings[name], strict=True):
                    generator = torch.Generator().manual_seed(self.seed * 1_000_003 + row)
                    noisy.append(add_noise_snr(x[None], self.snr_db, generator)[0])
                embeddings[name] = torch.stack(noisy)
        # A noisy modality loses its tokens and unit ids: they would carry the clean item past
        # the noise.
        clean = [m for m in embeddings if m not in self.noisy or self.snr_db is None]
        tokens = {m: t for m, t in batch.tokens.items() if m in clean}
        node_ids = {m: t for m, t in batch.node_ids.items() if m in clean}
        return Batch(embeddings, present, dict(batch.padding), tokens, node_ids)


def drop_sources(
    presents: dict[str, np.ndarray], rate: float, seed: int = 0
) -> dict[str, np.ndarray]:
    """Marks each source modality absent for ``rate`` of the rows where it is present,
    independently per modality, then restores one (chosen at random) in rows left with none.

    Returns:
        Modality → ``[N]`` bool, the rows to treat as missing.
    """
    rng = np.random.default_rng(seed)
    names = list(presents)
    absent = {m: presents[m] & (rng.random(len(presents[m])) < rate) for m in names}
    left = np.zeros(len(presents[names[0]]), dtype=bool)
    for m in names:
        left |= presents[m] & ~absent[m]
    for row in np.flatnonzero(~left):
        options = [m for m in names if presents[m][row]]
        if options:
            absent[options[rng.integers(len(options))]][row] = False
    return absent
