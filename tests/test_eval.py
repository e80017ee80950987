from __future__ import annotations

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


def dense_ranks(q, c, qk, ck):
    """Full-matrix reference, one query at a time."""
    sims = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(c, dim=-1).T
    ranks = []
    for i in range(q.shape[0]):
        gold = ck == qk[i]
        if not gold.any():
            ranks.append(c.shape[0] + 1)
            continue
        best = sims[i][gold].max()
        ranks.append(1 + int(((sims[i] >= best) & ~gold).sum()))
    return torch.tensor(ranks)


@pytest.mark.parametrize(("chunk", "query_chunk"), [(1, 3), (7, 1), (64, 20), (10_000, 10_000)])
def test_chunked_retrieval_equals_full_matrix(chunk: int, query_chunk: int) -> None:
    q, c = torch.randn(20, 8), torch.randn(150, 8)
    qk = torch.randint(0, 40, (20,))
    ck = torch.randint(0, 40, (150,))
    got = retrieval_ranks(q, c, qk, ck, chunk, query_chunk)
    torch.testing.assert_close(got, dense_ranks(q, c, qk, ck))


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
