"""Two-stage retrieval with IMPN's match head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tri_modal_inputs
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz.eval import model_encoder, rerank_ranks, rerank_table, retrieval_ranks, retrieval_table
from vallayz.losses import IMPNLoss, LossWeights


def reference_rerank(q, c, qk, ck, scores, depth):
    """Loops: the depth best candidates by cosine, rescored by the full score matrix."""
    ranks = []
    cos = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    first = retrieval_ranks(q, c, qk, ck)
    for i in range(len(q)):
        order = sorted(range(len(c)), key=lambda j: -float(cos[i, j]))[:depth]
        gold = [j for j in order if ck[j] == qk[i]]
        if not gold:
            ranks.append(max(int(first[i]), depth + 1))
            continue
        best = max(float(scores[i, j]) for j in gold)
        ranks.append(1 + sum(1 for j in order if ck[j] != qk[i] and float(scores[i, j]) >= best))
    return torch.tensor(ranks)


@pytest.mark.parametrize("depth", [1, 3, 7, 40])
def test_rerank_ranks_match_a_reference_loop(depth: int) -> None:
    torch.manual_seed(1)
    q, c = torch.randn(9, 4, dtype=torch.float64), torch.randn(30, 4, dtype=torch.float64)
    qk = torch.randint(0, 6, (9,))
    ck = torch.randint(0, 6, (30,))
    scores = torch.randn(9, 30).round(decimals=1)  # with ties

    def score(qi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
        return scores[qi, ci]

    got = rerank_ranks(q, c, qk, ck, score, depth, query_chunk_size=4)
    torch.testing.assert_close(got, reference_rerank(q, c, qk, ck, scores, depth))


def test_reranking_by_the_first_stage_score_changes_nothing_within_depth() -> None:
    torch.manual_seed(2)
    q, c = torch.randn(12, 5), torch.randn(12, 5)
    keys = torch.arange(12)
    cos = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    first = retrieval_ranks(q, c, keys, keys)
    again = rerank_ranks(q, c, keys, keys, lambda qi, ci: cos[qi, ci], depth=12)
    torch.testing.assert_close(again, first)
    # An oracle scorer puts every gold found within depth first.
    oracle = rerank_ranks(q, c, keys, keys, lambda qi, ci: (qi == ci).float(), depth=4)
    assert bool(((first <= 4) == (oracle == 1)).all())
    assert bool((oracle[first > 4] == first[first > 4]).all())


def test_match_needs_a_head_and_both_sides() -> None:
    x = tri_modal_inputs(4)
    with pytest.raises(ValueError, match="match_head=True"):
        IMPN(tiny_config()).match(x, "image")
    model = IMPN(tiny_config(match_head=True)).eval()
    assert model.match(x, "image").shape == (4,)
    with pytest.raises(ValueError, match="at least one source"):
        model.match({"image": x["image"]}, "image")


def test_rerank_term_trains_the_match_head(tmp_path) -> None:
    torch.manual_seed(0)
    model = IMPN(tiny_config(match_head=True))
    x = tri_modal_inputs(16)
    loss = IMPNLoss(LossWeights(rerank=1.0), rerank_negatives=3, rerank_rows=8)
    out = loss(model, x, torch.Generator().manual_seed(0))
    # Three pairs, each anchor choosing among 4 rows: an untrained head is near log(4).
    assert abs(float(out.terms["rerank"].detach()) - np.log(4)) < 0.5
    out.total.backward()
    assert model.match_head is not None and model.match_head.up.weight.grad is not None
    assert float(IMPNLoss(LossWeights(rerank=0.0))(model, x).terms["rerank"]) == 0.0
    # Learning the synthetic pairing drives the term down.
    data = PairedEmbeddings(write_synthetic(tmp_path / "d", rows=32))
    batch = data.batch(np.arange(32), ["text", "image"])
    model = IMPN(tiny_config(match_head=True, modalities={"text": 12, "image": 16}))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    only = IMPNLoss(
        LossWeights(rerank=1.0, contrastive=0, translation=0, cycle=0, knn=0, denoising=0),
        rerank_rows=32,
    )
    values = []
    for step in range(30):
        out = only(model, batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        values.append(float(out.terms["rerank"].detach()))
    assert np.mean(values[-10:]) < 0.5 * np.mean(values[:5])


def test_rerank_table_with_a_first_stage_scorer_reproduces_retrieval_table(tmp_path) -> None:
    """A model whose match head returns the first-stage cosine re-ranks to the same metrics."""
    data = PairedEmbeddings(write_synthetic(tmp_path / "d", rows=60))
    model = IMPN(tiny_config(match_head=True)).eval()
    encode = model_encoder(model, data, "soil")
    rows = np.arange(60)

    class Cosine(torch.nn.Module):
        def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.cosine_similarity(u, v, dim=-1)

    # With a single source, the joint pass's pooled states are not the isolated ones, so
    # compare against retrieval on the joint pass's own cosine through an isolated model.
    model.match_head = Cosine()
    for layer in model.layers:  # the identity bridge: joint and isolated passes agree
        layer.zero_init_residual()
    pairs = [(("text",), "image")]
    first = retrieval_table(data, rows, encode, pairs, pool=20, pools=3)
    again = rerank_table(model, data, rows, encode, pairs, pool=20, pools=3, depth=20)
    for a, b in zip(first, again, strict=True):
        for name in ("R@1", "R@5", "MRR"):
            assert a[name] == pytest.approx(b[name])
        assert b["depth"] == 20 and float(b["ms_per_query"]) > 0


def test_the_tibetan_reranker_encodes_the_scored_splits_first(tmp_path) -> None:
    from vallayz_train.tibetan.rerank import STATES_CHUNK, state_rows

    data = PairedEmbeddings(write_synthetic(tmp_path / "d", rows=240))
    splits = data.split_indices()
    both = state_rows(data, train_rows=1, scored=("val", "test"))
    scored = len(splits["val"]) + len(splits["test"])
    np.testing.assert_array_equal(both[: len(splits["val"])], splits["val"])
    np.testing.assert_array_equal(both[len(splits["val"]) : scored], splits["test"])
    # Then training rows only, up to a whole chunk (or every training row).
    assert set(both[scored:].tolist()) <= set(splits["train"].tolist())
    assert len(both) == min(scored + len(splits["train"]), STATES_CHUNK)
    assert len(set(both.tolist())) == len(both)
    np.testing.assert_array_equal(state_rows(data, None)[: len(splits["val"])], splits["val"])


def test_the_tibetan_reranker_scores_only_the_validation_and_test_splits(tmp_path) -> None:
    from vallayz_train.tibetan.rerank import state_rows

    data = PairedEmbeddings(write_synthetic(tmp_path / "d", rows=60))
    for scored in ((), ("train",), ("val", "dev")):
        with pytest.raises(ValueError, match="'val' and/or 'test'"):
            state_rows(data, None, scored=scored)


@pytest.mark.parametrize("method", ["contrastive-heads", "impn"])
def test_the_first_stage_trainer_trains_what_ablate_trains(tmp_path, monkeypatch, method) -> None:
    """Cross-fitting's first stage is ``vallayz ablate --base bench``'s run of the same method:
    its ``default`` variant for IMPN, its heads reference for the heads."""
    from vallayz_train.bench.ablation import AblationSpec
    from vallayz_train.model_defaults import MODEL_DEFAULTS
    from vallayz_train.tibetan import rerank
    from vallayz_train.tibetan.ablations import REFERENCE, VARIANTS
    from vallayz_train.tibetan.constants import FRONT_END_DEFAULTS, TOKEN_BUCKETS

    calls = []
    monkeypatch.setattr(rerank, "train_run", lambda *args: calls.append(args))
    monkeypatch.setattr(rerank, "load_model", lambda run: run)
    assert rerank.first_stage_trainer(40, 3, False, method)(tmp_path, tmp_path / "r") == (
        tmp_path / "r"
    )
    ((_, run, trained, model, config, *_),) = calls
    spec = AblationSpec(steps=40, seed=3, base=dict(FRONT_END_DEFAULTS))
    variant = VARIANTS["default" if method == "impn" else REFERENCE]
    defaults = {**MODEL_DEFAULTS, "token_buckets": {"bo": TOKEN_BUCKETS}}
    expected_model, expected_config = variant.configs(defaults, spec.train_config(), tmp_path)
    assert (run, trained) == (tmp_path / "r", variant.method)
    assert (model, config) == (expected_model, expected_config)


def test_the_first_stage_trainer_names_the_methods_it_knows() -> None:
    from vallayz_train.tibetan.rerank import first_stage_trainer

    with pytest.raises(ValueError, match="contrastive-heads"):
        first_stage_trainer(10, method="fusemix")
