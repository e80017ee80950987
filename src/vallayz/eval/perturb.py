"""Input perturbations for robustness sweeps: additive noise at a given SNR, missing rows."""

from __future__ import annotations

import torch
from torch import Tensor


def add_noise_snr(x: Tensor, snr_db: float, generator: torch.Generator | None = None) -> Tensor:
    """Adds white Gaussian noise so that each row has signal-to-noise ratio ``snr_db``.

    The noise power of a row is its mean squared value divided by ``10^(snr_db / 10)``.

    Shape:
        ``[N, ..., d]`` → same.
    """
    dims = tuple(range(1, x.dim()))
    power = x.pow(2).mean(dim=dims, keepdim=True)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + noise * (power / 10 ** (snr_db / 10)).sqrt()


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
