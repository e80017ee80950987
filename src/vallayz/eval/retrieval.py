"""Cross-modal retrieval: ranks of the gold candidate, chunked to fit any candidate pool."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def keys_to_ids(
    query_keys: Sequence[object], candidate_keys: Sequence[object]
) -> tuple[Tensor, Tensor]:
    """Maps hashable gold keys (texts, labels) to integer ids shared by queries and candidates.

    Returns:
        ``(query_ids [Q], candidate_ids [C])``, equal ids for equal keys.
    """
    table: dict[object, int] = {}
    query = [table.setdefault(k, len(table)) for k in query_keys]
    candidate = [table.setdefault(k, len(table)) for k in candidate_keys]
    return torch.tensor(query, dtype=torch.long), torch.tensor(candidate, dtype=torch.long)


def retrieval_ranks(
    queries: Tensor,
    candidates: Tensor,
    query_keys: Tensor,
    candidate_keys: Tensor,
    chunk_size: int = 8192,
    query_chunk_size: int = 8192,
) -> Tensor:
    """1-based rank of the best-scoring correct candidate of each query, by cosine similarity.

    A candidate is correct when its key equals the query's key, so duplicate translations in the
    pool are not misses. The rank is one plus the number of incorrect candidates that score at
    least as high as the best correct one (ties count against the query). Queries without any
    correct candidate get rank ``C + 1``. Queries and candidates are processed
    ``query_chunk_size × chunk_size`` at a time, so memory does not grow with ``Q × C`` and a
    million candidates (or queries) fit.

    Args:
        queries: Query vectors.
        candidates: Candidate vectors (same space as the queries).
        query_keys: Integer gold key of each query.
        candidate_keys: Integer key of each candidate.
        chunk_size: Candidates scored at a time.
        query_chunk_size: Queries scored at a time.

    Returns:
        Ranks ``[Q]`` (long).

    Shape:
        queries ``[Q, d]``, candidates ``[C, d]``, query_keys ``[Q]``, candidate_keys ``[C]``
        → ``[Q]``.
    """
    if queries.dim() != 2 or candidates.dim() != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} must be "
            "[N, d] in one space; translate or embed them first"
        )
    if query_keys.shape != (queries.shape[0],) or candidate_keys.shape != (candidates.shape[0],):
        raise ValueError("there must be one key per query and one key per candidate")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if query_chunk_size < 1:
        raise ValueError(f"query_chunk_size must be >= 1, got {query_chunk_size}")
    ranks = [
        _chunk_ranks(
            queries[i : i + query_chunk_size],
            query_keys[i : i + query_chunk_size],
            candidates,
            candidate_keys,
            chunk_size,
        )
        for i in range(0, queries.shape[0], query_chunk_size)
    ]
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def _chunk_ranks(
    queries: Tensor, query_keys: Tensor, candidates: Tensor, candidate_keys: Tensor, chunk_size: int
) -> Tensor:
    q = F.normalize(queries.float(), dim=-1)
    query_keys = query_keys.to(q.device)

    def chunks() -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, candidates.shape[0], chunk_size):
            c = F.normalize(candidates[i : i + chunk_size].float().to(q.device), dim=-1)
            yield c, candidate_keys[i : i + chunk_size].to(q.device)

    best = torch.full((q.shape[0],), float("-inf"), device=q.device)
    for c, keys in chunks():
        gold = query_keys[:, None] == keys[None, :]
        best = torch.maximum(best, (q @ c.T).masked_fill(~gold, float("-inf")).max(dim=1).values)
    above = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    for c, keys in chunks():
        gold = query_keys[:, None] == keys[None, :]
        above += ((q @ c.T >= best[:, None]) & ~gold).sum(dim=1)
    ranks = above + 1
    return torch.where(torch.isfinite(best), ranks, torch.full_like(ranks, candidates.shape[0] + 1))


def retrieval_metrics(ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k, mean reciprocal rank and median rank from 1-based ranks.

    Shape:
        ``[Q]`` → ``{"R@1": ..., "R@5": ..., "R@10": ..., "MRR": ..., "median_rank": ...}``.
    """
    if ranks.numel() == 0:
        raise ValueError("no queries to score")
    ranks = ranks.double()
    out = {f"R@{k}": float((ranks <= k).double().mean()) for k in ks}
    out["MRR"] = float((1.0 / ranks).mean())
    out["median_rank"] = float(ranks.median())
    return out


def random_pools(items: int, size: int, pools: int, seed: int = 0) -> list[Tensor]:
    """``pools`` random subsets of ``size`` item indices (the whole range if ``size >= items``).

    Every method evaluated with the same ``seed`` sees the same pools.
    """
    if items < 1 or size < 1 or pools < 1:
        raise ValueError("items, size and pools must be positive")
    generator = torch.Generator().manual_seed(seed)
    if size >= items:
        return [torch.arange(items)]
    return [torch.randperm(items, generator=generator)[:size].sort().values for _ in range(pools)]
