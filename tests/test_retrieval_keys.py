"""Retrieval ranks and metrics on hand-worked examples: ties count against the query, any
candidate with the gold key is correct (duplicate translations, scaled copies), and a query
without a correct candidate ranks last."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.eval import retrieval_metrics, retrieval_table
from vallayz.eval.retrieval import keys_to_ids, retrieval_ranks

# Cosines with the query (1, 0), exact in floating point where two are equal (mirror images):
#   0 (1, 1)   a  0.7071     4 (3, -1) c  0.9487
#   1 (1, -1)  b  0.7071     5 (1, 0)  d  1
#   2 (2, 2)   a  0.7071     6 (0, 1)  a  0
#   3 (3, 1)   a  0.9487     7 (-1, 0) e  -1
CANDIDATES = torch.tensor(
    [
        [1.0, 1.0],
        [1.0, -1.0],
        [2.0, 2.0],
        [3.0, 1.0],
        [3.0, -1.0],
        [1.0, 0.0],
        [0.0, 1.0],
        [-1.0, 0.0],
    ]
)
CANDIDATE_KEYS = ["a", "b", "a", "a", "c", "d", "a", "e"]
# One query, (1, 0), asked for each key in turn. By hand, one plus the wrong candidates scoring
# at least the best correct one:
#   a: best correct 3 (0.9487); 4 ties, 5 is above          -> 3
#   b: correct 1 (0.7071); 0 and 2 tie, 3, 4 and 5 above    -> 6
#   c: correct 4 (0.9487); 3 ties, 5 above                  -> 3
#   d: correct 5 (1); nothing ties                          -> 1
#   e: correct 7 (-1); every other candidate is above       -> 8
#   z: no correct candidate                                 -> 8 + 1
QUERY_KEYS = ["a", "b", "c", "d", "e", "z"]
EXPECTED = [3, 6, 3, 1, 8, 9]


@pytest.mark.parametrize(("chunk", "query_chunk"), [(1, 1), (3, 2), (8, 6), (100, 100)])
def test_hand_worked_ranks_with_ties_and_duplicate_keys(chunk: int, query_chunk: int) -> None:
    query_ids, candidate_ids = keys_to_ids(QUERY_KEYS, CANDIDATE_KEYS)
    # Numbered in order of first appearance, queries first: equal keys, equal ids.
    assert query_ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert candidate_ids.tolist() == [0, 1, 0, 0, 2, 3, 0, 4]
    queries = torch.tensor([[1.0, 0.0]]).repeat(len(QUERY_KEYS), 1)
    ranks = retrieval_ranks(queries, CANDIDATES, query_ids, candidate_ids, chunk, query_chunk)
    assert ranks.tolist() == EXPECTED


def test_metrics_of_the_hand_worked_ranks() -> None:
    metrics = retrieval_metrics(torch.tensor(EXPECTED), ks=(1, 5, 10))
    assert metrics["R@1"] == pytest.approx(1 / 6)
    assert metrics["R@5"] == pytest.approx(3 / 6)
    assert metrics["R@10"] == pytest.approx(6 / 6)
    assert metrics["MRR"] == pytest.approx((1 / 3 + 1 / 6 + 1 / 3 + 1 + 1 / 8 + 1 / 9) / 6)


def test_a_candidate_scaled_or_copied_under_another_key_ties_against_the_query() -> None:
    # The gold (1, 1) and a wrong candidate (2, 2): equal after normalisation, so rank 2; a
    # wrong exact copy adds one more; the same copy under the gold key is no miss.
    gold = torch.tensor([[1.0, 1.0]])
    query = torch.tensor([[1.0, 0.5]])
    for wrong, keys, rank in [
        ([[2.0, 2.0]], [0, 1], 2),
        ([[2.0, 2.0], [1.0, 1.0]], [0, 1, 2], 3),
        ([[2.0, 2.0], [1.0, 1.0]], [0, 0, 0], 1),
    ]:
        candidates = torch.cat([gold, torch.tensor(wrong)])
        got = retrieval_ranks(query, candidates, torch.tensor([0]), torch.tensor(keys))
        assert got.tolist() == [rank], (wrong, keys)


def test_duplicate_translations_in_a_data_folder_are_not_misses(tmp_path: Path) -> None:
    # Rows 0 and 1 share their text, so either target row is a correct answer for both.
    #   target   (1, 0) x   (0, 1) x   (1, 1) y   (-1, 0) z
    #   query 0  (0, 1) x: row 1 scores 1                             -> 1
    #   query 1  (1, 0) x: row 0 scores 1                             -> 1
    #   query 2  (1, 0) y: gold 0.7071, row 0 above                   -> 2
    #   query 3  (0, 1) z: gold 0, row 0 ties, rows 1 and 2 above     -> 4
    queries = np.array([[0, 1], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    targets = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
    items = [{"id": f"r{i}", "text": t} for i, t in enumerate(["x", "x", "y", "z"])]
    data = PairedEmbeddings(
        write_paired_embeddings(tmp_path / "d", {"q": queries, "t": targets}, items)
    )

    def encode(sources: object, target: str, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(queries[rows]), torch.from_numpy(targets[rows])

    (row,) = retrieval_table(data, np.arange(4), encode, [(("q",), "t")], pool=1000)
    assert (row["pool"], row["queries"]) == ("all", 4)
    assert row["R@1"] == pytest.approx(2 / 4)
    assert row["R@5"] == pytest.approx(1.0)
    assert row["MRR"] == pytest.approx((1 + 1 + 1 / 2 + 1 / 4) / 4)
