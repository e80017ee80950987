"""kNN preservation: a differentiable surrogate, and the hard Jaccard@k metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _similarities(x: Tensor, temperature: float) -> Tensor:
    return F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T / temperature


def _neighbour_logits(x: Tensor, temperature: float) -> Tensor:
    """Cosine logits ``[B, B]`` with the diagonal at ``-inf`` (for ranking, not for gradients)."""
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return _similarities(x, temperature).masked_fill(eye, float("-inf"))


def _other_rows_log_softmax(x: Tensor, temperature: float) -> Tensor:
    """``log softmax`` over the other rows of each row: ``[B, B - 1]``, column ``j`` of row ``i``
    being row ``j`` if ``j < i`` and row ``j + 1`` otherwise.

    The diagonal is removed rather than set to ``-inf``: an infinite logit gives a zero
    probability whose gradient is ``0 * inf = NaN`` through ``p * (log p - log q)``.
    """
    rows = x.shape[0]
    eye = torch.eye(rows, dtype=torch.bool, device=x.device)
    others = _similarities(x, temperature)[~eye].view(rows, rows - 1)
    return torch.log_softmax(others, dim=-1)


def knn_preservation_loss(native: Tensor, soil: Tensor, temperature: float = 0.1) -> Tensor:
    """KL divergence between soft neighbour distributions in native and soil space.

    For each row ``i``, ``P_i(j) = softmax_j(cos(x_i, x_j) / T)`` over the other rows ``j != i``
    of the batch, in native space (``P``) and in soil space (``Q``); the loss is
    ``mean_i KL(P_i || Q_i)``. It is zero when both spaces have the same cosine geometry (e.g.
    the identity map) and has gradients, unlike the hard Jaccard of top-k sets.

    Args:
        native: Native embeddings of one modality.
        soil: Their soil representations.
        temperature: Temperature ``T > 0`` of both neighbour distributions.

    Returns:
        Scalar loss.

    Shape:
        native ``[B, d_m]``, soil ``[B, d]`` → ``[]`` (``B >= 2``).
    """
    if native.shape[0] != soil.shape[0] or native.shape[0] < 2:
        raise ValueError(
            f"knn_preservation_loss needs the same number (>= 2) of rows, got "
            f"{native.shape[0]} and {soil.shape[0]}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = _other_rows_log_softmax(native, temperature)
    log_q = _other_rows_log_softmax(soil, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def knn_jaccard(native: Tensor, soil: Tensor, k: int = 10) -> Tensor:
    """Mean Jaccard overlap of each row's ``k`` nearest neighbours (cosine, self excluded) in
    native and in soil space. A metric: it has no gradient.

    Shape:
        native ``[B, d_m]``, soil ``[B, d]`` → ``[]`` (``1 <= k < B``).
    """
    rows = native.shape[0]
    if not 1 <= k < rows:
        raise ValueError(f"k must lie in [1, {rows - 1}] for {rows} rows, got {k}")
    with torch.no_grad():
        a = _neighbour_logits(native, 1.0).topk(k, dim=-1).indices
        b = _neighbour_logits(soil, 1.0).topk(k, dim=-1).indices
        in_a = torch.zeros(rows, rows, dtype=torch.bool, device=native.device)
        in_b = torch.zeros_like(in_a)
        in_a.scatter_(1, a, True)
        in_b.scatter_(1, b, True)
        inter = (in_a & in_b).sum(dim=-1).double()
        union = (in_a | in_b).sum(dim=-1).double()
        return (inter / union).mean()


class KNNPreservationLoss(nn.Module):
    """Module form of :func:`knn_preservation_loss`.

    Shape:
        native ``[B, d_m]``, soil ``[B, d]`` → ``[]``.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}; try 0.1")
        self.temperature = temperature

    def forward(self, native: Tensor, soil: Tensor) -> Tensor:
        return knn_preservation_loss(native, soil, self.temperature)
