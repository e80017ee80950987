"""Orthogonality of the adapters' projections, and denoising of aggregated messages."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def orthogonality_loss(weights: Sequence[Tensor]) -> Tensor:
    """Sum over matrices of ``||WᵀW − I||²_F``, using the smaller Gram matrix.

    For a rectangular ``W`` of shape ``[out, in]`` the Gram ``WᵀW`` is ``[in, in]`` and ``WWᵀ``
    is ``[out, out]``; the smaller one is compared to the identity, so that a matrix with
    orthonormal columns (or rows) scores exactly zero.

    Args:
        weights: Matrices ``[out, in]``. An empty sequence gives 0.

    Returns:
        Scalar loss.
    """
    total = torch.zeros(())
    for w in weights:
        if w.dim() != 2:
            raise ValueError(f"orthogonality_loss needs 2-D matrices, got shape {tuple(w.shape)}")
        gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        total = total.to(gram) + (gram - eye).pow(2).sum()
    return total


def denoising_loss(noisy: Tensor, clean: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared distance between messages aggregated from noisy micro-variants and from
    clean senders (``K = 1``, ``sigma = 0``), over the selected receiving nodes.

    Shape:
        noisy ``[B, N, d]``, clean ``[B, N, d]``, mask ``[B, N]`` → ``[]``.
    """
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and clean {tuple(clean.shape)} differ")
    per_node = (noisy - clean).pow(2).mean(dim=-1)
    if mask is None:
        return per_node.mean()
    weights = mask.to(per_node.dtype)
    return (per_node * weights).sum() / weights.sum().clamp_min(1.0)


class OrthogonalityLoss(nn.Module):
    """Module form of :func:`orthogonality_loss`."""

    def forward(self, weights: Sequence[Tensor]) -> Tensor:
        return orthogonality_loss(weights)


class DenoisingLoss(nn.Module):
    """Module form of :func:`denoising_loss`.

    Shape:
        noisy ``[B, N, d]``, clean ``[B, N, d]``, mask ``[B, N]`` → ``[]``.
    """

    def forward(self, noisy: Tensor, clean: Tensor, mask: Tensor | None = None) -> Tensor:
        return denoising_loss(noisy, clean, mask)
