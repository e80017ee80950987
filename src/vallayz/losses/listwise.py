"""Listwise cross-entropy over groups of one positive and its hard negatives: the loss of a
second-stage re-ranker (:mod:`vallayz.reranker`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def listwise_loss(scores: Tensor, positive: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of picking each group's positive among its members.

    Each row of ``scores`` is one group: the positive and its negatives, scored jointly with
    the query. The loss is ``-log softmax(scores)[positive]`` averaged over the groups.

    Args:
        scores: Scores of every member of every group (higher = more likely the positive).
        positive: Position of the positive in each group (default: 0 in every group).

    Returns:
        The scalar loss.

    Shape:
        scores ``[G, n]`` (``n >= 2``), positive ``[G]`` → ``[]``.

    Raises:
        ValueError: if ``scores`` is not ``[G, n]`` with ``n >= 2`` or ``positive`` does not
            give one position per group within ``[0, n)``.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(
            f"scores must be [groups, members] with at least 2 members (a positive and a "
            f"negative), got {tuple(scores.shape)}"
        )
    if positive is None:
        positive = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    if positive.shape != scores.shape[:1]:
        raise ValueError(
            f"positive must hold one position per group {tuple(scores.shape[:1])}, "
            f"got {tuple(positive.shape)}"
        )
    if positive.numel() and (positive.min() < 0 or positive.max() >= scores.shape[1]):
        raise ValueError(f"positive positions must lie in [0, {scores.shape[1]})")
    return F.cross_entropy(scores, positive.long())


class ListwiseLoss(nn.Module):
    """Module form of :func:`listwise_loss`."""

    def forward(self, scores: Tensor, positive: Tensor | None = None) -> Tensor:
        return listwise_loss(scores, positive)
