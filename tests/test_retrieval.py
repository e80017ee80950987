"""Streaming retrieval ranks against a full score matrix, on data built to have ties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vallayz.eval import retrieval as retrieval_module
from vallayz.eval.retrieval import normalized_chunks, retrieval_ranks


def full_matrix_ranks(
    q: torch.Tensor, c: torch.Tensor, qk: torch.Tensor, ck: torch.Tensor
) -> torch.Tensor:
    """One score matrix, one query at a time: ties count against the query."""
    sims = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    ranks = []
    for i in range(q.shape[0]):
        gold = ck == qk[i]
        if not gold.any():
            ranks.append(c.shape[0] + 1)
            continue
        best = sims[i][gold].max()
        ranks.append(1 + int(((sims[i] >= best) & ~gold).sum()))
    return torch.tensor(ranks)


def tied_pool(
    seed: int, n_queries: int = 60, n_candidates: int = 700, dim: int = 16, keys: int = 300
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A pool full of exact ties, with queries near their gold, far from it, or without one.

    Every vector is ``±s`` in each of 16 dimensions, so normalised entries are ``±1/4`` and
    every cosine is a multiple of ``1/16``, computed exactly in any summation order: the
    reference and the chunked ranks see the same numbers whatever the matmul kernel. Exact
    copies (under the same key, as duplicate translations, and under another key) and scaled
    copies add ties on top of the many equal scores.
    """
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n_candidates, dim, generator=g).sign()
    ck = torch.randint(0, keys, (n_candidates,), generator=g)
    src = torch.randint(0, n_candidates, (n_candidates // 5,), generator=g)
    dst = torch.randint(0, n_candidates, (n_candidates // 5,), generator=g)
    c[dst] = c[src]
    same = torch.rand(dst.shape[0], generator=g) < 0.5
    ck[dst[same]] = ck[src[same]]
    c[:40] = c[40:80] * 3.0
    gold = torch.randint(0, n_candidates, (n_queries,), generator=g)
    flips = torch.rand(n_queries, dim, generator=g) < torch.rand(n_queries, 1, generator=g) * 0.5
    q = torch.where(flips, -c[gold], c[gold])
    qk = ck[gold].clone()
    qk[-5:] = keys + 1  # no gold candidate
    return q, c, qk, ck


def gaussian_pool(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real-valued vectors with duplicate keys (several correct candidates per query)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(900, 24, generator=g)
    ck = torch.randint(0, 400, (900,), generator=g)
    gold = torch.randint(0, 900, (80,), generator=g)
    q = c[gold] + torch.rand(80, 1, generator=g) * 3 * torch.randn(80, 24, generator=g)
    return q, c, ck[gold], ck


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("chunk", "query_chunk"), [(1, 7), (13, 60), (64, 5), (256, 1000), (10_000, 17)]
)
def test_streaming_ranks_equal_the_full_matrix(seed: int, chunk: int, query_chunk: int) -> None:
    q, c, qk, ck = tied_pool(seed)
    expected = full_matrix_ranks(q, c, qk, ck)
    assert (expected == c.shape[0] + 1).sum() >= 5
    assert retrieval_ranks(q, c, qk, ck, chunk, query_chunk).tolist() == expected.tolist()
    q, c, qk, ck = gaussian_pool(seed)
    expected = full_matrix_ranks(q, c, qk, ck)
    assert retrieval_ranks(q, c, qk, ck, chunk, query_chunk).tolist() == expected.tolist()


def test_every_path_equals_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    q, c, qk, ck = tied_pool(3, n_candidates=2000)
    expected = full_matrix_ranks(q, c, qk, ck).tolist()
    # Gold scores from products too small for the blocked kernel: queries are ranked again
    # wherever their bits differ from the score chunks'.
    monkeypatch.setattr(retrieval_module, "_KERNEL_BLOCK", 1)
    assert retrieval_ranks(q, c, qk, ck, 128).tolist() == expected
    monkeypatch.undo()
    # Keys shared by much of the pool take the dense gold mask.
    few_keys = ck % 4
    expected = full_matrix_ranks(q, c, qk % 4, few_keys).tolist()
    assert retrieval_ranks(q, c, qk % 4, few_keys, 128).tolist() == expected


def test_ties_count_against_the_query() -> None:
    c = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    ck = torch.tensor([5, 6, 7, 5])
    q = torch.tensor([[1.0, 0.0]])
    # Gold (key 5) ties with candidate 1 (key 6) after normalisation: rank 2.
    assert retrieval_ranks(q, c, torch.tensor([5]), ck, 1).tolist() == [2]
    assert retrieval_ranks(q, c, torch.tensor([6]), ck, 3).tolist() == [3]
    assert retrieval_ranks(q, c, torch.tensor([7]), ck).tolist() == [4]
    assert retrieval_ranks(q, c, torch.tensor([8]), ck).tolist() == [5]


def test_no_queries_and_no_candidates() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    assert (
        retrieval_ranks(torch.zeros(0, 3), torch.randn(4, 3), empty, torch.arange(4)).numel() == 0
    )
    ranks = retrieval_ranks(torch.randn(2, 3), torch.zeros(0, 3), torch.arange(2), empty)
    assert ranks.tolist() == [1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("chunk", [1, 7, 50, 64])
def test_reused_chunks_equal_normalize_bit_for_bit(dtype: torch.dtype, chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    c = (torch.randn(50, 9, generator=g) * torch.rand(50, 1, generator=g) * 10).to(dtype)
    c[3] = 0.0  # a zero row stays zero, as F.normalize leaves it
    seen = []
    for start, chunk_rows in normalized_chunks(c, chunk, torch.device("cpu")):
        expected = F.normalize(c[start : start + chunk].float(), dim=-1)
        assert chunk_rows.dtype == torch.float32
        assert torch.equal(chunk_rows, expected)
        seen.append(start)
    assert seen == list(range(0, 50, chunk))


def test_a_chunk_too_large_to_count_exactly_is_refused() -> None:
    q, c, qk, ck = gaussian_pool(0)
    with pytest.raises(ValueError, match="chunk_size must be between 1 and 2\\*\\*24"):
        retrieval_ranks(q, c, qk, ck, 2**24 + 1)
