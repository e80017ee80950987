"""How per-pair (or per-modality) loss terms are averaged into one term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# "rows": each term weighs as many rows as it was computed on, so a pair that shares three rows
# of a batch does not count as much as one that shares all of them; "equal": a plain mean.
PAIR_WEIGHTINGS = ("rows", "equal")


def check_pair_weighting(weighting: str) -> None:
    """Raise ``ValueError`` unless ``weighting`` is one of :data:`PAIR_WEIGHTINGS`."""
    if weighting not in PAIR_WEIGHTINGS:
        raise ValueError(
            f"pair weighting must be one of {PAIR_WEIGHTINGS}, got {weighting!r}; 'rows' weighs "
            "each pair by the rows it shares, 'equal' gives every pair the same weight"
        )


def pair_mean(terms: Sequence[Tensor], rows: Sequence[int], weighting: str = "rows") -> Tensor:
    """Average of scalar loss terms, each computed on ``rows[i]`` rows of a batch.

    With ``weighting="rows"`` the result is ``Σ rows_i · term_i / Σ rows_i``. That matters when
    one modality is present in few rows: with equal weights, two pairs that share 3 rows of a
    256-row batch would carry 2/3 of the contrastive mean.

    Args:
        terms: Scalar terms, one per pair or modality (at least one).
        rows: Number of rows each term was computed on (positive).
        weighting: One of :data:`PAIR_WEIGHTINGS`.

    Returns:
        Scalar mean.

    Shape:
        ``P`` scalars ``[]`` → ``[]``.
    """
    check_pair_weighting(weighting)
    if not terms or len(terms) != len(rows):
        raise ValueError(
            f"pair_mean needs one row count per term and at least one term, got {len(terms)} "
            f"terms and {len(rows)} counts"
        )
    stacked = torch.stack(list(terms))
    if weighting == "equal":
        return stacked.mean()
    if min(rows) < 1:
        raise ValueError(f"row counts must be positive, got {list(rows)}")
    weights = torch.tensor(rows, dtype=stacked.dtype, device=stacked.device)
    return (weights * stacked).sum() / weights.sum()
