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
    if not 1 <= chunk_size <= _MAX_CHUNK:
        raise ValueError(f"chunk_size must be between 1 and 2**24, got {chunk_size}")
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


# Candidates per chunk at most: the counts of a chunk are float32 sums of 0/1, exact to 2**24.
_MAX_CHUNK = 2**24
# Gold scores are computed in products of at least this many queries by as many candidates.
_KERNEL_BLOCK = 64
# Above this many (query, gold candidate) pairs per query, ranks use the dense two-pass path.
_GOLD_PAIRS_PER_QUERY = 64


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
    """Ranks in one pass over the candidates, one comparison per score.

    Each query's best gold score is computed first, from its few gold pairs, by the same kind of
    matrix product as the score chunks (which, for the blocked kernels of BLAS libraries, gives
    the same bits for the same pair of vectors). The pass counts the scores at or above it and
    also reads the best gold score off the score chunks themselves. Where the two agree, the
    rank is one plus the count less the gold scores that equal the best; a query where they
    differ (a kernel that rounds otherwise, such as a matrix-vector path for tiny shapes) is
    ranked again by :func:`_two_pass_ranks`, so the ranks never depend on that agreement.
    """
    n, device = q.shape[0], q.device
    gold_rows, gold_columns = gold
    estimate = _gold_scores(q, gold_rows, gold_columns, candidates)
    has_gold = torch.isfinite(estimate)
    threshold = torch.where(has_gold, estimate, float("inf"))[:, None]
    best = torch.full((n,), float("-inf"), device=device)
    above = torch.zeros(n, dtype=torch.long, device=device)
    gold_values = []
    chunk_starts = torch.arange(0, candidates.shape[0], chunk_size, device=device)
    gold_bounds = [*torch.searchsorted(gold_columns, chunk_starts).tolist(), gold_columns.numel()]
    scores = torch.empty(0, device=device)
    for index, (start, c) in enumerate(normalized_chunks(candidates, chunk_size, device)):
        if scores.shape != (n, c.shape[0]):
            scores = torch.empty((n, c.shape[0]), device=device)
        torch.matmul(q, c.T, out=scores)
        g0, g1 = gold_bounds[index], gold_bounds[index + 1]
        if g1 > g0:
            rows = gold_rows[g0:g1]
            values = scores[rows, gold_columns[g0:g1] - start]
            best.scatter_reduce_(0, rows, values, "amax")
            gold_values.append(values)
        # The comparison overwrites the scores with 0/1 and the count sums them as floats
        # (exact below 2**24 per chunk): a boolean mask would be widened to a new integer
        # tensor by every reduction, a chunk-sized allocation per chunk that fragments the
        # heap and, on several threads, grew the peak memory by gigabytes.
        torch.ge(scores, threshold, out=scores)
        above += scores.sum(1).long()
    if gold_values:
        # Gold scores reaching the threshold were counted; they are not misses.
        counted = torch.cat(gold_values) >= threshold[gold_rows, 0]
        above -= torch.bincount(gold_rows[counted], minlength=n)
    ranks = torch.where(has_gold, above + 1, candidates.shape[0] + 1)
    redo = (has_gold & (best != estimate)).nonzero().squeeze(1)
    if redo.numel():
        ranks[redo] = _two_pass_ranks(
            q[redo], query_keys[redo], candidates, candidate_keys, chunk_size
        )
    return ranks


def normalized_chunks(
    candidates: Tensor, chunk_size: int, device: torch.device
) -> Iterator[tuple[int, Tensor]]:
    """``(start, unit-norm float32 rows)`` for each chunk of candidates, written into one buffer
    that is reused (a consumer must not keep a chunk past the next one). The rows equal
    ``F.normalize(candidates[start : start + chunk_size].float(), dim=-1)`` bit for bit.

    Args:
        candidates: Candidate vectors, of any floating dtype and device.
        chunk_size: Rows per chunk.
        device: Where the chunks are made.

    Shape:
        candidates ``[C, d]`` → chunks ``[min(chunk_size, C - start), d]``.
    """
    size = min(chunk_size, candidates.shape[0])
    buffer = torch.empty((size, candidates.shape[1]), device=device)
    norms = torch.empty((size, 1), device=device)
    for start in range(0, candidates.shape[0], chunk_size):
        rows = candidates[start : start + chunk_size]
        c, norm = buffer[: rows.shape[0]], norms[: rows.shape[0]]
        c.copy_(rows)
        torch.linalg.vector_norm(c, dim=1, keepdim=True, out=norm)
        yield start, c.div_(norm.clamp_min_(1e-12))


def _gold_scores(q: Tensor, rows: Tensor, columns: Tensor, candidates: Tensor) -> Tensor:
    """Each query's best score over its gold pairs (``-inf`` without any), from products of
    blocks of at least ``_KERNEL_BLOCK`` queries by as many candidates."""
    n = q.shape[0]
    best = torch.full((n,), float("-inf"), device=q.device)
    if rows.numel() == 0:
        return best
    by_row = torch.argsort(rows, stable=True)
    rows, columns = rows[by_row], columns[by_row]
    block = 4 * _KERNEL_BLOCK
    bounds = torch.searchsorted(rows, torch.arange(0, n + block, block, device=q.device)).tolist()
    for i, start in enumerate(range(0, n, block)):
        r, col = rows[bounds[i] : bounds[i + 1]], columns[bounds[i] : bounds[i + 1]]
        if r.numel() == 0:
            continue
        unique, inverse = torch.unique(col, return_inverse=True)
        # Pad both sides to a size where the product takes the same blocked kernel as a chunk.
        filler = torch.arange(_KERNEL_BLOCK, device=q.device) % candidates.shape[0]
        unique = torch.cat([unique, filler[: max(0, _KERNEL_BLOCK - unique.numel())]])
        qb = q[start : start + block]
        qb = torch.cat([qb, qb[:1].expand(max(0, _KERNEL_BLOCK - qb.shape[0]), -1)])
        c = F.normalize(candidates[unique.to(candidates.device)].float().to(q.device), dim=-1)
        best.scatter_reduce_(0, r, (qb @ c.T)[r - start, inverse], "amax")
    return best


def _two_pass_ranks(
    q: Tensor, query_keys: Tensor, candidates: Tensor, candidate_keys: Tensor, chunk_size: int
) -> Tensor:
    """Ranks from a dense gold mask: one pass for the best gold score, one to count."""

    def chunks() -> Iterator[tuple[Tensor, Tensor]]:
        for i, c in normalized_chunks(candidates, chunk_size, q.device):
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
