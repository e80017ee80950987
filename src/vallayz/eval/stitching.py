"""Zero-shot stitching: a classifier fitted on a native space, applied to translations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fit_linear_classifier(
    x: Tensor, labels: Tensor, epochs: int = 300, lr: float = 0.05, weight_decay: float = 1e-4
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Multinomial logistic regression on standard-scaled inputs (full batch, deterministic).

    Returns:
        ``(weight [d, classes], bias [classes], mean [d], std [d])``.
    """
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    z = (x - mean) / std
    classes = int(labels.max()) + 1
    weight = torch.zeros(x.shape[1], classes, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = F.cross_entropy(z @ weight + bias, labels)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return weight.detach(), bias.detach(), mean, std


def stitching_accuracy(
    train_target: Tensor,
    train_labels: Tensor,
    native_test: Tensor,
    translated_test: Tensor,
    test_labels: Tensor,
) -> dict[str, float]:
    """Accuracy of a classifier trained on native target vectors, on native test vectors and on
    ``source → target`` translations of the same test items.

    Shape:
        train_target ``[N, d]``, train_labels ``[N]``, native_test ``[M, d]``,
        translated_test ``[M, d]``, test_labels ``[M]``.

    Returns:
        ``{"native": acc, "stitched": acc, "ratio": stitched / native}``.
    """
    weight, bias, mean, std = fit_linear_classifier(train_target, train_labels)

    def accuracy(x: Tensor) -> float:
        predicted = (((x - mean) / std) @ weight + bias).argmax(dim=-1)
        return float((predicted == test_labels).double().mean())

    native, stitched = accuracy(native_test), accuracy(translated_test)
    return {"native": native, "stitched": stitched, "ratio": stitched / native if native else 0.0}
