from __future__ import annotations

import math

import pytest
import torch

from vallayz.eval import (
    add_noise_snr,
    drop_rows,
    keys_to_ids,
    random_pools,
    retrieval_metrics,
    retrieval_ranks,
    stitching_accuracy,
)


def loop_ranks(q: torch.Tensor, c: torch.Tensor, qk: torch.Tensor, ck: torch.Tensor) -> list[int]:
    """Reference by sorting: candidates ordered by cosine (float64 loops), incorrect ones before
    correct ones on a tie; the rank is the position of the first correct one."""

    def cosine(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v, strict=True))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    queries, candidates = q.double().tolist(), c.double().tolist()
    ranks = []
    for i, query in enumerate(queries):
        order = sorted(
            range(len(candidates)),
            key=lambda j: (-cosine(query, candidates[j]), int(ck[j]) == int(qk[i])),
        )
        hits = [pos for pos, j in enumerate(order, 1) if int(ck[j]) == int(qk[i])]
        ranks.append(hits[0] if hits else len(candidates) + 1)
    return ranks


@pytest.mark.parametrize(("chunk", "query_chunk"), [(1, 3), (7, 1), (64, 20), (10_000, 10_000)])
def test_chunked_retrieval_matches_sorting_reference(chunk: int, query_chunk: int) -> None:
    # Few keys, so most queries have several correct candidates and some have none.
    q, c = torch.randn(20, 8), torch.randn(150, 8)
    qk = torch.randint(0, 40, (20,))
    ck = torch.randint(0, 40, (150,))
    got = retrieval_ranks(q, c, qk, ck, chunk, query_chunk)
    assert got.tolist() == loop_ranks(q, c, qk, ck)


@pytest.mark.parametrize(("chunk", "query_chunk"), [(1, 1), (2, 3), (100, 100)])
def test_ranks_by_hand_with_ties_and_duplicate_keys(chunk: int, query_chunk: int) -> None:
    # Candidates (key): [2, 0] (x), [1, 0] (g), [0, 1] (g), [1, 1] (y), [0, -2] (x).
    # [2, 0] and [1, 0] normalise to the same vector, so their scores tie exactly.
    c = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, -2.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [3.0, 0.0]])
    qk, ck = keys_to_ids(["g", "g", "z", "y", "x"], ["x", "g", "g", "y", "x"])
    expected = [
        2,  # best correct [1, 0] at 1 ties with the incorrect [2, 0]: the tie counts against it
        1,  # the second copy of "g", [0, 1], scores 1 and nothing incorrect reaches it
        6,  # no candidate has key "z": C + 1
        3,  # correct [1, 1] at -0.71; [0, 1] (g) and [0, -2] (x) score 0, above it
        2,  # two correct "x": the better, [2, 0], counts, and ties with the incorrect [1, 0]
    ]
    assert retrieval_ranks(q, c, qk, ck, chunk, query_chunk).tolist() == expected
    assert loop_ranks(q, c, qk, ck) == expected


def test_duplicate_candidates_are_not_misses() -> None:
    # The query's own candidate is row 2, but row 0 holds the same text and scores higher.
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[1.0, 0.05], [0.9, 0.3], [0.5, 0.5]])
    qk, ck = keys_to_ids(["om mani"], ["om mani", "other", "om mani"])
    assert retrieval_ranks(q, c, qk, ck).tolist() == [1]
    # With distinct keys the same geometry puts the gold third.
    qk, ck = keys_to_ids(["c"], ["a", "b", "c"])
    assert retrieval_ranks(q, c, qk, ck).tolist() == [3]


def test_metrics_of_perfect_and_reversed_rankings() -> None:
    n = 20
    x = torch.eye(n)
    keys = torch.arange(n)
    perfect = retrieval_metrics(retrieval_ranks(x, x, keys, keys))
    assert perfect == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "MRR": 1.0, "median_rank": 1.0}
    # Candidate i scores lowest for query i: every gold is ranked last.
    worst = retrieval_metrics(retrieval_ranks(x, 1 - x, keys, keys))
    assert worst["R@1"] == worst["R@10"] == 0.0
    assert worst["median_rank"] == n
    assert worst["MRR"] == pytest.approx(1 / n)


def test_metrics_by_hand() -> None:
    m = retrieval_metrics(torch.tensor([1, 2, 6, 11]))
    assert m["R@1"] == 0.25 and m["R@5"] == 0.5 and m["R@10"] == 0.75
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4)
    assert m["median_rank"] == 2.0  # torch's median is the lower middle value


def test_random_pools_are_seeded_subsets() -> None:
    a, b = random_pools(100, 10, 3, seed=5), random_pools(100, 10, 3, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(len(set(p.tolist())) == 10 for p in a)
    assert [p.tolist() for p in random_pools(5, 10, 3)] == [[0, 1, 2, 3, 4]]


def test_noise_snr_is_as_asked() -> None:
    x = torch.randn(200, 1000, dtype=torch.float64)
    noisy = add_noise_snr(x, 10.0, torch.Generator().manual_seed(0))
    snr = 10 * torch.log10(x.pow(2).mean() / (noisy - x).pow(2).mean())
    assert float(snr) == pytest.approx(10.0, abs=0.05)


def test_drop_rows_rate() -> None:
    present = drop_rows(100, 0.25, torch.Generator().manual_seed(0))
    assert int((~present).sum()) == 25


def test_stitching_of_an_exact_translation_is_lossless() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 5, generator=g) * 4
    labels = torch.arange(300) % 3
    target = centers[labels] + torch.randn(300, 5, generator=g)
    out = stitching_accuracy(
        target[:200], labels[:200], target[200:], target[200:].clone(), labels[200:]
    )
    assert out["native"] > 0.9 and out["ratio"] == 1.0
    garbage = stitching_accuracy(
        target[:200], labels[:200], target[200:], torch.randn(100, 5, generator=g), labels[200:]
    )
    assert garbage["stitched"] < 0.6
