"""The combinatorial (fused-subset) contrastive term: a subset of a row's present modalities,
embedded together by message passing, against each present modality outside the subset.

The subsets and targets are those of Everything at Once's combinatorial loss (every
combination of at least two modalities against each one left out) and of a broadcast loss over
the subsets of the present domains; rows differ in which modalities they hold, so each
``(subset, target)`` InfoNCE reads only the rows where the whole subset and the target are
present.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from vallayz.losses.infonce import info_nce
from vallayz.losses.weighting import pair_mean

Subset = tuple[str, ...]


def fusion_subsets(names: Sequence[str]) -> list[Subset]:
    """Every subset of ``names`` with at least two modalities that leaves at least one out,
    in a fixed order (by size, then by the order of ``names``).

    Returns:
        The subsets, each a tuple in the order of ``names``; none for fewer than 3 names.
    """
    return [
        subset
        for size in range(2, len(names))
        for subset in itertools.combinations(list(names), size)
    ]


def sample_subsets(
    subsets: Sequence[Subset], count: int, generator: torch.Generator | None = None
) -> list[Subset]:
    """``count`` of ``subsets`` drawn without replacement (all of them, in order, when there
    are no more than ``count``).

    Raises:
        ValueError: if ``count < 1``.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}; it bounds the fused subsets per batch")
    if len(subsets) <= count:
        return list(subsets)
    order = torch.randperm(len(subsets), generator=generator)[:count].sort().values
    return [subsets[i] for i in order.tolist()]


def subset_rows(subset: Subset, present: Mapping[str, Tensor]) -> Tensor:
    """Rows where every modality of ``subset`` is present.

    Shape:
        ``{m: [B]}`` → ``[B]`` bool.
    """
    rows = present[subset[0]].clone()
    for name in subset[1:]:
        rows &= present[name]
    return rows


def combinatorial_info_nce(
    fused: Mapping[Subset, Tensor],
    single: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    temperature: float = 0.07,
    weighting: str = "rows",
) -> tuple[Tensor | None, dict[tuple[Subset, str], Tensor]]:
    """Symmetric InfoNCE between the fused embedding of each subset ``S`` and the single-source
    embedding of each modality ``t`` outside ``S``, on the rows where all of ``S`` and ``t`` are
    present (``(S, t)`` pairs with fewer than two such rows are skipped), averaged by
    :func:`~vallayz.losses.weighting.pair_mean`.

    Args:
        fused: Subset → its fused embeddings ``[B, d]`` (read only on rows holding the subset).
        single: Modality → single-source embeddings ``[B, d]`` (read only where present).
        present: Modality → ``[B]`` bool presence, for every modality of ``single``.
        temperature: InfoNCE temperature ``> 0``.
        weighting: ``"rows"`` or ``"equal"`` (see :func:`pair_mean`).

    Returns:
        The mean term (``None`` when no ``(S, t)`` pair has two rows) and the term of each
        ``(S, t)`` pair.

    Shape:
        ``{S: [B, d]}``, ``{m: [B, d]}``, ``{m: [B]}`` → ``[]``.
    """
    terms: dict[tuple[Subset, str], Tensor] = {}
    rows: list[int] = []
    for subset, vectors in fused.items():
        unknown = [m for m in subset if m not in present]
        if unknown:
            raise ValueError(
                f"subset {subset} names modalities {unknown} without a presence mask; pass "
                "present for every modality of the subsets"
            )
        holds = subset_rows(subset, present)
        for target in single:
            if target in subset:
                continue
            both = holds & present[target]
            count = int(both.sum())
            if count >= 2:
                terms[subset, target] = info_nce(vectors[both], single[target][both], temperature)
                rows.append(count)
    if not terms:
        return None, terms
    return pair_mean(list(terms.values()), rows, weighting), terms
