"""Two-stage retrieval: a first stage by cosine similarity, then the best candidates rescored
jointly with the query (IMPN's match head), which no two-tower model can do."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vallayz.eval.pairs import Encoder, pair_pools
from vallayz.eval.retrieval import retrieval_metrics, retrieval_ranks
from vallayz.types import Batch

PairScorer = Callable[[Tensor, Tensor], Tensor]
"""``(query_index [R], candidate_index [R]) → scores [R]``; higher is better."""


def rerank_ranks(
    queries: Tensor,
    candidates: Tensor,
    query_keys: Tensor,
    candidate_keys: Tensor,
    score_pairs: PairScorer,
    depth: int = 50,
    query_chunk_size: int = 1024,
) -> Tensor:
    """1-based ranks after re-ranking the ``depth`` best first-stage candidates of each query.

    The first stage ranks every candidate by cosine similarity (as :func:`retrieval_ranks`);
    ``score_pairs`` then rescores each query's ``depth`` best. When a correct candidate (equal
    key) is among them, the rank is one plus the number of incorrect ones among them that score
    at least as high as the best correct one (ties count against the query); otherwise the
    first-stage rank stands (it exceeds ``depth``).

    Args:
        queries: First-stage query vectors.
        candidates: First-stage candidate vectors.
        query_keys: Integer gold key of each query.
        candidate_keys: Integer key of each candidate.
        score_pairs: Joint scorer of (query, candidate) index pairs.
        depth: Candidates rescored per query.
        query_chunk_size: Queries handled at a time.

    Returns:
        Ranks ``[Q]`` (long).

    Shape:
        queries ``[Q, d]``, candidates ``[C, d]``, query_keys ``[Q]``, candidate_keys ``[C]``
        → ``[Q]``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    first = retrieval_ranks(queries, candidates, query_keys, candidate_keys)
    depth = min(depth, candidates.shape[0])
    c = F.normalize(candidates.float(), dim=-1)
    ranks = []
    for start in range(0, queries.shape[0], query_chunk_size):
        q = F.normalize(queries[start : start + query_chunk_size].float(), dim=-1)
        top = (q @ c.T).topk(depth, dim=1).indices  # [n, depth]
        count = q.shape[0]
        index = torch.arange(start, start + count)
        scores = score_pairs(index.repeat_interleave(depth), top.flatten()).view(count, depth)
        gold = candidate_keys[top] == query_keys[index, None]
        best = scores.masked_fill(~gold, float("-inf")).max(dim=1).values
        above = ((scores >= best[:, None]) & ~gold).sum(dim=1)
        found = gold.any(dim=1)
        ranks.append(
            torch.where(found, above + 1, torch.maximum(first[index], top.new_tensor(depth + 1)))
        )
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def joint_rows(
    data: Any,
    query_rows: np.ndarray,
    sources: Sequence[str],
    candidate_rows: np.ndarray,
    target: str,
) -> Batch:
    """One batch whose row ``i`` holds the sources of data row ``query_rows[i]`` and the target of
    data row ``candidate_rows[i]``."""
    src = data.batch(query_rows, list(sources))
    tgt = data.batch(candidate_rows, [target])
    return Batch(
        embeddings={**src.embeddings, **tgt.embeddings},
        present={**src.present, **tgt.present},
        padding={**src.padding, **tgt.padding},
        tokens={**src.tokens, **tgt.tokens},
        node_ids={**src.node_ids, **tgt.node_ids},
    )


def _joint_scorer(
    model: Any,
    data: Any,
    chosen: np.ndarray,
    sources: Sequence[str],
    target: str,
    batch_size: int,
) -> PairScorer:
    """``model.match`` on joint rows of the data rows ``chosen`` (indexed by position)."""

    @torch.no_grad()
    def score(q: Tensor, c: Tensor) -> Tensor:
        out = []
        for i in range(0, len(q), batch_size):
            query_rows = chosen[q[i : i + batch_size].numpy()]
            candidate_rows = chosen[c[i : i + batch_size].numpy()]
            joint = joint_rows(data, query_rows, sources, candidate_rows, target)
            out.append(model.match(joint, target).float().cpu())
        return torch.cat(out)

    return score


def rerank_table(
    model: Any,
    data: Any,
    rows: np.ndarray,
    encode: Encoder,
    pairs: Sequence[tuple[tuple[str, ...], str]],
    pool: int = 1000,
    pools: int = 5,
    seed: int = 0,
    depth: int = 50,
    batch_size: int = 2048,
) -> list[dict[str, object]]:
    """:func:`~vallayz.eval.retrieval_table` with re-ranking by ``model.match``: the same rows,
    pools and metrics, the first stage given by ``encode``, plus ``depth`` and the re-ranking's
    cost in milliseconds per query (``ms_per_query``)."""
    table: list[dict[str, object]] = []
    was_training = model.training
    model.eval()
    for run in pair_pools(data, rows, encode, pairs, pool, pools, seed):
        metrics, seconds = [], 0.0
        for subset in run.index_sets:
            chosen = run.used[subset.numpy()]
            score = _joint_scorer(model, data, chosen, run.sources, run.target, batch_size)
            started = time.perf_counter()
            ranks = rerank_ranks(
                run.queries[subset],
                run.candidates[subset],
                run.key_ids[subset],
                run.key_ids[subset],
                score,
                depth,
            )
            seconds += time.perf_counter() - started
            metrics.append(retrieval_metrics(ranks))
        row = run.summary(metrics)
        row["depth"] = depth
        row["ms_per_query"] = 1000 * seconds / sum(len(s) for s in run.index_sets)
        table.append(row)
    model.train(was_training)
    return table
