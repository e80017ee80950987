"""Translation and cycle losses: decoded native vectors against the true ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("mse", "cosine", "mse+cosine")


def reconstruction_loss(
    prediction: Tensor, target: Tensor, kind: str = "mse+cosine", mask: Tensor | None = None
) -> Tensor:
    """Distance between predicted and true native vectors, averaged over the selected rows.

    ``mse`` is the mean squared error per row (mean over dimensions); ``cosine`` is
    ``1 - cos(prediction, target)`` per row; ``mse+cosine`` is their sum.

    Args:
        prediction: Decoded native vectors.
        target: True native vectors.
        kind: One of ``"mse"``, ``"cosine"``, ``"mse+cosine"``.
        mask: Optional ``[B]`` bool, rows to include; no selected row gives 0.

    Returns:
        Scalar loss.

    Shape:
        prediction ``[B, d]``, target ``[B, d]``, mask ``[B]`` → ``[]``.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    per_row = torch.zeros(prediction.shape[0], device=prediction.device, dtype=prediction.dtype)
    if "mse" in kind:
        per_row = per_row + (prediction - target).pow(2).mean(dim=-1)
    if "cosine" in kind:
        per_row = per_row + 1.0 - F.cosine_similarity(prediction, target, dim=-1)
    if mask is None:
        return per_row.mean()
    weights = mask.to(per_row.dtype)
    return (per_row * weights).sum() / weights.sum().clamp_min(1.0)


def translation_loss(
    prediction: Tensor, target: Tensor, kind: str = "mse+cosine", mask: Tensor | None = None
) -> Tensor:
    """Translation loss ``d(x̂_B, x_B)`` for ``A → B`` with ``B`` absent; see
    :func:`reconstruction_loss`.

    Shape:
        prediction ``[B, d]``, target ``[B, d]``, mask ``[B]`` → ``[]``.
    """
    return reconstruction_loss(prediction, target, kind, mask)


def cycle_loss(
    reconstruction: Tensor, original: Tensor, kind: str = "mse+cosine", mask: Tensor | None = None
) -> Tensor:
    """Cycle loss ``d(x_A, (A → B → A)(x_A))``; see :func:`reconstruction_loss`.

    Shape:
        reconstruction ``[B, d]``, original ``[B, d]``, mask ``[B]`` → ``[]``.
    """
    return reconstruction_loss(reconstruction, original, kind, mask)


class ReconstructionLoss(nn.Module):
    """Module form of :func:`reconstruction_loss` (used for translation and cycle terms).

    Shape:
        prediction ``[B, d]``, target ``[B, d]``, mask ``[B]`` → ``[]``.
    """

    def __init__(self, kind: str = "mse+cosine") -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind

    def forward(self, prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return reconstruction_loss(prediction, target, self.kind, mask)
