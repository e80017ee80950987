"""Exact streaming top-k and the approximate index."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vallayz.index import SearchIndex, VectorIndex, exact_search, recall_at_k


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


# ---------------------------------------------------------------- SearchIndex


def _ranks_by_loop(q: torch.Tensor, c: torch.Tensor, qk: list[int], ck: list[int]) -> list[int]:
    """Float64 reference: one plus the wrong candidates scoring at least the best right one."""
    qn = q.double() / q.double().norm(dim=1, keepdim=True)
    cn = c.double() / c.double().norm(dim=1, keepdim=True)
    out = []
    for i in range(len(qk)):
        scores = [float(qn[i] @ cn[j]) for j in range(len(ck))]
        best = max(s for s, key in zip(scores, ck, strict=True) if key == qk[i])
        out.append(1 + sum(s >= best for s, key in zip(scores, ck, strict=True) if key != qk[i]))
    return out


def test_search_index_agrees_with_a_full_sort_and_counts_duplicates_as_hits() -> None:
    g = torch.Generator().manual_seed(2)
    c = torch.randn(80, 8, generator=g)
    keys = torch.arange(80) // 2  # every candidate has a duplicate
    q = c[::7] + 0.5 * torch.randn(12, 8, generator=g)
    index = SearchIndex(chunk_size=9).build(c, keys)
    scores, ids = index.search(q, 5)
    full = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    expected_scores, expected_ids = full.sort(dim=1, descending=True)
    torch.testing.assert_close(scores, expected_scores[:, :5])
    assert torch.equal(ids, expected_ids[:, :5])
    query_keys = keys[::7]
    ranks = index.ranks(q, query_keys)
    assert ranks.tolist() == _ranks_by_loop(q, c, query_keys.tolist(), keys.tolist())


def test_search_index_survives_save_and_load(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    c, q = torch.randn(50, 6, generator=g), torch.randn(4, 6, generator=g)
    index = SearchIndex(meta={"model": [1, 2]}).build(c)
    index.save(tmp_path / "index")
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "candidates.safetensors",
        "index.json",
    ]
    loaded = SearchIndex.load(tmp_path / "index")
    assert (loaded.kind, loaded.size, loaded.meta) == ("exact", 50, {"model": [1, 2]})
    for got, expected in zip(loaded.search(q, 7), index.search(q, 7), strict=True):
        assert torch.equal(got, expected)
    (tmp_path / "index" / "candidates.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read a search index"):
        SearchIndex.load(tmp_path / "index")


def test_search_index_refuses_bad_use() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        SearchIndex("flat")
    with pytest.raises(ValueError, match="empty"):
        SearchIndex().search(torch.randn(2, 3), 1)
    index = SearchIndex().build(torch.randn(5, 3))
    with pytest.raises(ValueError, match="space of the indexed candidates"):
        index.search(torch.randn(2, 4), 1)
    with pytest.raises(ValueError, match="k must be in"):
        index.search(torch.randn(2, 3), 6)
    with pytest.raises(ValueError, match="one key per candidate"):
        SearchIndex().build(torch.randn(5, 3), torch.arange(4))


def test_approximate_kinds_without_faiss_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now fails
    with pytest.raises(ImportError, match=r"pip install 'vallayz\[index\]'"):
        SearchIndex("ivf").build(torch.randn(50, 4))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_search_index_finds_the_exact_neighbours(kind: str, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(4)
    c = torch.randn(1500, 12, generator=g)
    q = c[:40] + 0.05 * torch.randn(40, 12, generator=g)
    index = SearchIndex(kind).build(c)
    exact = SearchIndex().build(c).search(q, 10)[1]
    assert recall_at_k(index.search(q, 10)[1], exact) >= 0.8
    # Ranks stay exact whatever the kind.
    assert torch.equal(index.ranks(q, torch.arange(40)), torch.ones(40, dtype=torch.long))
    index.save(tmp_path)
    loaded = SearchIndex.load(tmp_path)
    assert loaded.kind == kind and torch.equal(loaded.search(q, 10)[1], index.search(q, 10)[1])


def _duplicated_data(tmp_path: Path):
    """A data folder shaped like tiny_config's modalities, whose rows share target texts
    (duplicate keys) and whose audio is missing in some rows."""
    import numpy as np

    from vallayz.data import PairedEmbeddings, write_paired_embeddings

    rng = np.random.default_rng(3)
    rows = 40
    latent = rng.normal(size=(rows, 4))
    text = latent @ rng.normal(size=(4, 12))
    text[7] = text[3]  # one duplicate vector as well as duplicate keys
    arrays = {
        "text": text.astype(np.float32),
        "audio": (latent[:, None, :] @ rng.normal(size=(4, 6))).repeat(2, 1).astype(np.float32),
        "image": (latent @ rng.normal(size=(4, 16))).astype(np.float32),
    }
    items = [{"id": f"r{i}", "text": f"line {i % 25}"} for i in range(rows)]
    present = {"audio": rng.random(rows) > 0.2}
    return PairedEmbeddings(write_paired_embeddings(tmp_path / "d", arrays, items, present=present))


def test_whole_set_ranks_through_the_index_equal_retrieval_ranks(tmp_path: Path) -> None:
    import numpy as np
    from conftest import tiny_config

    from vallayz import IMPN
    from vallayz.eval import model_encoder, retrieval_metrics, retrieval_table
    from vallayz.eval.pairs import default_pairs, pair_pools
    from vallayz.eval.retrieval import retrieval_ranks

    data = _duplicated_data(tmp_path)
    torch.manual_seed(0)
    encode = model_encoder(IMPN(tiny_config()), data)
    rows = np.arange(data.size)
    pairs = [*default_pairs(["text", "audio", "image"]), (("audio", "image"), "text")]
    table = retrieval_table(data, rows, encode, pairs, pool=10, pools=3, seed=1)
    reference = []
    for run in pair_pools(data, rows, encode, pairs, 10, 3, 1):
        ranks = [
            retrieval_ranks(run.queries[i], run.candidates[i], run.key_ids[i], run.key_ids[i])
            for i in run.index_sets
        ]
        if run.label == "all":
            assert len(set(run.key_ids.tolist())) < len(run.key_ids)  # duplicate keys
            index = SearchIndex().build(run.candidates, run.key_ids)
            assert torch.equal(index.ranks(run.queries, run.key_ids), ranks[0])
        reference.append(run.summary([retrieval_metrics(r) for r in ranks]))
    assert table == reference
    assert [r["pool"] for r in table].count("all") == len(pairs)


def test_the_whole_set_index_is_built_once_per_target_and_candidate_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from vallayz.eval import retrieval_table

    data = _duplicated_data(tmp_path)
    built: list[int] = []
    original = SearchIndex.build

    def counting(self: SearchIndex, candidates: torch.Tensor, *args, **kwargs) -> SearchIndex:
        built.append(candidates.shape[0])
        return original(self, candidates, *args, **kwargs)

    monkeypatch.setattr(SearchIndex, "build", counting)
    weights = {m: torch.randn(d, 5, generator=torch.Generator().manual_seed(len(m))) for m, d in
               data.modalities.items()}  # fmt: skip

    def encode(sources, target, rows):
        pooled = data.batch(rows, [*sources, target]).pooled()
        queries = sum(pooled[s] @ weights[s] for s in sources)
        return queries, pooled[target] @ weights[target]

    full = int(data.present["audio"].sum())
    # image and text are present in every row, audio in fewer: text->image and audio->image
    # rank different candidate sets, the two image->text pairs the same one.
    pairs = [(("text",), "image"), (("audio",), "image"), (("image",), "text")]
    pairs.append((("image",), "text"))
    retrieval_table(data, np.arange(data.size), encode, pairs, pool=10, pools=2)
    assert built == [data.size, full, data.size]
