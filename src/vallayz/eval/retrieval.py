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
    device = queries.device
    candidate_keys = candidate_keys.to(device)
    order = torch.argsort(candidate_keys)
    sorted_keys = candidate_keys[order]
    ranks = []
    for i in range(0, queries.shape[0], query_chunk_size):
        q = F.normalize(queries[i : i + query_chunk_size].float(), dim=-1)
        keys = query_keys[i : i + query_chunk_size].to(device)
        gold = _gold_pairs(keys, sorted_keys, order)
        if gold[0].numel() > _GOLD_PAIRS_PER_QUERY * max(q.shape[0], 1):
            # Keys shared by a large part of the pool (class labels): the sparse gold list
            # would outgrow the score chunk, so the gold is found with a dense mask instead.
            ranks.append(_two_pass_ranks(q, keys, candidates, candidate_keys, chunk_size))
        else:
            ranks.append(_one_pass_ranks(q, keys, gold, candidates, candidate_keys, chunk_size))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


# Half-width of the band around each query's estimated best gold score. float32 dot products of
# unit vectors differ by far less than this between summation orders; a query whose exact best
# still falls outside is ranked again, so the band's width affects speed only, never the ranks.
_BAND = 1e-5
# Above this many (query, gold candidate) pairs per query, ranks use the dense two-pass path.
_GOLD_PAIRS_PER_QUERY = 64
# A row with at most this many scores above its band in one chunk has them extracted; above
# it, a second comparison counts them instead.
_ROW_EXTRACT = 32


def _gold_pairs(keys: Tensor, sorted_keys: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """Every (query row, candidate index) pair with equal keys, ordered by candidate index."""
    first = torch.searchsorted(sorted_keys, keys)
    count = torch.searchsorted(sorted_keys, keys, right=True) - first
    rows = torch.repeat_interleave(torch.arange(keys.shape[0], device=keys.device), count)
    offsets = torch.arange(rows.shape[0], device=keys.device) - torch.repeat_interleave(
        torch.cumsum(count, 0) - count, count
    )
    columns = order[first[rows] + offsets]
    by_column = torch.argsort(columns)
    return rows[by_column], columns[by_column]


def _one_pass_ranks(
    q: Tensor,
    query_keys: Tensor,
    gold: tuple[Tensor, Tensor],
    candidates: Tensor,
    candidate_keys: Tensor,
    chunk_size: int,
) -> Tensor:
    """Ranks in one pass over the candidates.

    Each query's best gold score is estimated first from its few gold pairs, and a narrow band
    ``[lo, hi)`` is put around the estimate. The pass then counts, per query, the scores at or
    above ``hi`` and keeps the few scores inside the band; it also takes the exact best gold
    score from the same score chunks that it counts, so ties are judged on identical numbers.
    When the exact best falls inside the band (always, up to float rounding of the estimate),
    the rank is one plus the counted incorrect scores plus the kept incorrect scores at or above
    the best; otherwise the query is ranked again by :func:`_two_pass_ranks`.
    """
    n, device = q.shape[0], q.device
    gold_rows, gold_columns = gold
    none = torch.full((n,), float("-inf"), device=device)
    if gold_rows.numel():
        c = F.normalize(candidates[gold_columns.to(candidates.device)].float().to(device), dim=-1)
        estimate = none.scatter_reduce(0, gold_rows, (q[gold_rows] * c).sum(-1), "amax")
    else:
        estimate = none
    has_gold = torch.isfinite(estimate)
    delta = _BAND
    lo = torch.where(has_gold, estimate - delta, float("inf"))[:, None]
    hi = torch.where(has_gold, estimate + delta, float("inf"))[:, None]
    best = none.clone()
    above = torch.zeros(n, dtype=torch.long, device=device)
    kept_rows, kept_columns, kept_scores = [], [], []
    chunk_starts = torch.arange(0, candidates.shape[0], chunk_size, device=device)
    gold_bounds = [*torch.searchsorted(gold_columns, chunk_starts).tolist(), gold_columns.numel()]
    scores = torch.empty(0, device=device)
    mask = torch.empty(0, dtype=torch.bool, device=device)
    for index, start in enumerate(range(0, candidates.shape[0], chunk_size)):
        c = F.normalize(candidates[start : start + chunk_size].float().to(device), dim=-1)
        if scores.shape != (n, c.shape[0]):
            scores = torch.empty((n, c.shape[0]), device=device)
            mask = torch.empty((n, c.shape[0]), dtype=torch.bool, device=device)
        torch.matmul(q, c.T, out=scores)
        g0, g1 = gold_bounds[index], gold_bounds[index + 1]
        if g1 > g0:
            rows = gold_rows[g0:g1]
            best.scatter_reduce_(0, rows, scores[rows, gold_columns[g0:g1] - start], "amax")
        torch.ge(scores, lo, out=mask)
        count = mask.view(torch.uint8).sum(1, dtype=torch.int32)
        few = ((count > 0) & (count <= _ROW_EXTRACT)).nonzero().squeeze(1)
        many = (count > _ROW_EXTRACT).nonzero().squeeze(1)
        if few.numel():
            r, col = mask[few].nonzero(as_tuple=True)
            r = few[r]
            value = scores[r, col]
            high = value >= hi[r, 0]
            above.index_add_(0, r[high], torch.ones_like(r[high]))
            band = ~high
            kept_rows.append(r[band])
            kept_columns.append(col[band] + start)
            kept_scores.append(value[band])
        if many.numel():
            sub = scores[many]
            above.index_add_(0, many, (sub >= hi[many]).sum(1))
            r, col = ((sub >= lo[many]) & (sub < hi[many])).nonzero(as_tuple=True)
            kept_rows.append(many[r])
            kept_columns.append(col + start)
            kept_scores.append(sub[r, col])
    # Gold scores at or above hi were counted in ``above``; such queries fail the check below.
    ok = has_gold & (best >= lo[:, 0]) & (best < hi[:, 0])
    if kept_rows:
        r, col, value = torch.cat(kept_rows), torch.cat(kept_columns), torch.cat(kept_scores)
        wrong = candidate_keys[col] != query_keys[r]
        hit = wrong & (value >= best[r])
        above.index_add_(0, r[hit], torch.ones_like(r[hit]))
    ranks = torch.where(has_gold, above + 1, candidates.shape[0] + 1)
    redo = (has_gold & ~ok).nonzero().squeeze(1)
    if redo.numel():
        ranks[redo] = _two_pass_ranks(
            q[redo], query_keys[redo], candidates, candidate_keys, chunk_size
        )
    return ranks


def _two_pass_ranks(
    q: Tensor, query_keys: Tensor, candidates: Tensor, candidate_keys: Tensor, chunk_size: int
) -> Tensor:
    """Ranks from a dense gold mask: one pass for the best gold score, one to count."""

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
