"""Exact streaming top-k and the approximate index."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vallayz.index import VectorIndex, exact_search, recall_at_k


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_exact_search_equals_a_full_sort(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(30, 12, generator=g), torch.randn(300, 12, generator=g)
    scores, ids = exact_search(q, c, 10, chunk)
    full = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    expected_scores, expected_ids = full.sort(dim=1, descending=True)
    torch.testing.assert_close(scores, expected_scores[:, :10])
    assert torch.equal(ids, expected_ids[:, :10])


def test_recall_counts_found_neighbours() -> None:
    exact = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(torch.tensor([[3, 9, 1], [7, 8, 9]]), exact) == pytest.approx(2 / 6)


def test_bad_use_is_explained() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        exact_search(torch.randn(2, 3), torch.randn(4, 3), 5)
    with pytest.raises(ValueError, match="one space"):
        exact_search(torch.randn(2, 3), torch.randn(4, 5), 1)
    with pytest.raises(ValueError, match="kind must be one of"):
        VectorIndex("lsh")
    with pytest.raises(ValueError, match="not built"):
        VectorIndex().search(torch.randn(2, 3), 1)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_finds_neighbours_and_survives_save_and_load(kind: str, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(20, 16, generator=g)
    c = centres[torch.randint(0, 20, (2000,), generator=g)] + 0.3 * torch.randn(
        2000, 16, generator=g
    )
    q = c[:50] + 0.05 * torch.randn(50, 16, generator=g)
    index = VectorIndex(kind, probes=8).build(c)
    scores, ids = index.search(q, 10)
    exact_scores, exact = exact_search(q, c, 10)
    assert recall_at_k(ids, exact) >= (1.0 if kind == "flat" else 0.8)
    torch.testing.assert_close(scores[:, 0], exact_scores[:, 0], atol=1e-4, rtol=0)
    index.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl"))
    loaded = VectorIndex.load(tmp_path)
    assert (loaded.kind, loaded.size, loaded.dim) == (kind, 2000, 16)
    assert torch.equal(loaded.search(q, 10)[1], ids)


def test_load_explains_a_missing_index(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    with pytest.raises(ValueError, match="cannot read an index"):
        VectorIndex.load(tmp_path)
