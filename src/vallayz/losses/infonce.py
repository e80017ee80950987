"""Symmetric InfoNCE between paired soil representations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(a: Tensor, b: Tensor, temperature: float | Tensor = 0.07) -> Tensor:
    """Symmetric InfoNCE (CLIP loss): row ``i`` of ``a`` and row ``i`` of ``b`` are a positive
    pair, every other row of the other side a negative.

    Both inputs are L2-normalised; the logits are cosine similarities divided by
    ``temperature``. The result is the mean of the ``a → b`` and ``b → a`` cross-entropies.

    Args:
        a: Representations of one modality.
        b: Representations of the paired modality.
        temperature: Softmax temperature ``> 0`` (a scalar tensor for a learned one).

    Returns:
        Scalar loss.

    Shape:
        a ``[B, d]``, b ``[B, d]`` → ``[]``.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"info_nce needs two [B, d] tensors of one shape, got {a.shape}, {b.shape}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce` with a fixed temperature.

    Shape:
        a ``[B, d]``, b ``[B, d]`` → ``[]``.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}; try 0.07")
        self.temperature = temperature

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return info_nce(a, b, self.temperature)
