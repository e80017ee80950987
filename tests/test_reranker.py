"""The second-stage re-ranker: masking, the group loss, cross-fitting, saving, ``--rerank``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.eval import rerank_ranks, retrieval_ranks
from vallayz.losses import listwise_loss
from vallayz.reranker import Reranker, RerankerConfig, SideConfig, SideContent, reranker_scorer
from vallayz_train.cli import main
from vallayz_train.rerank_train import (
    HELD_OUT,
    RERANKER_DIR,
    RerankContent,
    RerankTrainConfig,
    document_folds,
    fit_fusion_weight,
    fold_data,
    fused_scorer,
    mine_negatives,
    sample_groups,
    side_content,
    train_reranker,
    training_folds,
)


def tiny_reranker(states: bool = True, seed: int = 0) -> Reranker:
    torch.manual_seed(seed)
    config = RerankerConfig(
        SideConfig("bo", 5, 50, 0, 6),
        SideConfig("en", 4, 0, 3 if states else 0, 4),
        width=16,
        layers=2,
        heads=2,
        dropout=0.0,
    )
    return Reranker(config).eval()


def tiny_content(rows: int = 6, seed: int = 0) -> tuple[SideContent, SideContent]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 200, (rows, 6), generator=g)
    ids[:, 4:] = -1
    ids[0, 2:] = -1
    states = torch.randn(rows, 4, 3, generator=g)
    mask = torch.ones(rows, 4, dtype=torch.bool)
    mask[:, 3] = False
    mask[1, 1:] = False
    query = SideContent(torch.randn(rows, 5, generator=g), ids)
    candidate = SideContent(torch.randn(rows, 4, generator=g), None, states, mask)
    return query, candidate


def test_padding_never_changes_a_score() -> None:
    model = tiny_reranker()
    query, candidate = tiny_content()
    before = model(query, candidate)
    # Other values at every padding position: ids, states, and more padding columns.
    ids = query.ids.clone()
    ids[ids < 0] = -7
    states = candidate.states.clone()
    states[~candidate.state_mask] = 100.0
    wider = torch.cat([ids, torch.full((ids.shape[0], 3), -1)], dim=1)
    after = model(
        SideContent(query.vector, wider),
        SideContent(candidate.vector, None, states, candidate.state_mask),
    )
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # Scoring rows one by one (no padding shared with other rows) gives the same scores.
    alone = torch.cat(
        [model(query.take(torch.tensor([i])), candidate.take(torch.tensor([i]))) for i in range(6)]
    )
    torch.testing.assert_close(alone, before, rtol=1e-5, atol=1e-5)
    # A real token does change the score.
    changed = ids.clone()
    changed[0, 2] = 3
    assert not torch.allclose(model(SideContent(query.vector, changed), candidate)[0], before[0])


def test_states_beyond_the_side_length_are_dropped() -> None:
    model = tiny_reranker()
    query, candidate = tiny_content()
    longer = torch.cat([candidate.states, torch.randn(6, 3, 3)], dim=1)
    mask = torch.cat([candidate.state_mask, torch.ones(6, 3, dtype=torch.bool)], dim=1)
    out = model(query, SideContent(candidate.vector, None, longer, mask))
    torch.testing.assert_close(out, model(query, candidate))


def reference_listwise(scores: np.ndarray, positive: np.ndarray) -> float:
    total = 0.0
    for row, p in zip(scores, positive, strict=True):
        denominator = sum(math.exp(float(s)) for s in row)
        total += -math.log(math.exp(float(row[p])) / denominator)
    return total / len(scores)


@pytest.mark.parametrize("members", [2, 8])
def test_group_loss_matches_a_float64_loop(members: int) -> None:
    g = torch.Generator().manual_seed(members)
    scores = torch.randn(5, members, dtype=torch.float64, generator=g) * 3
    positive = torch.randint(0, members, (5,), generator=g)
    expected = reference_listwise(scores.numpy(), positive.numpy())
    assert float(listwise_loss(scores, positive)) == pytest.approx(expected, rel=1e-12)
    first = reference_listwise(scores.numpy(), np.zeros(5, dtype=int))
    assert float(listwise_loss(scores)) == pytest.approx(first, rel=1e-12)
    # The bound: a group of n equal scores costs log n.
    assert float(listwise_loss(torch.zeros(3, members))) == pytest.approx(math.log(members))


def test_group_loss_rejects_bad_groups() -> None:
    with pytest.raises(ValueError, match="at least 2 members"):
        listwise_loss(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="positive positions"):
        listwise_loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    model = tiny_reranker()
    query, candidate = tiny_content(6)
    with pytest.raises(ValueError, match="groups of 4"):
        model.group_loss(query, candidate, 4)


def test_model_group_loss_is_the_listwise_loss_of_its_scores() -> None:
    model = tiny_reranker()
    query, candidate = tiny_content(6)
    scores = model(query, candidate).view(2, 3)
    torch.testing.assert_close(model.group_loss(query, candidate, 3), listwise_loss(scores))


def test_config_validation_names_the_fix() -> None:
    with pytest.raises(ValueError, match="reads nothing"):
        SideConfig("bo")
    with pytest.raises(ValueError, match="divide width"):
        RerankerConfig(SideConfig("bo", 4), SideConfig("en", 4), width=10, heads=4)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = tiny_reranker()
    query, candidate = tiny_content()
    model.save(tmp_path / "r")
    again = Reranker.load(tmp_path / "r")
    assert again.config == model.config
    torch.testing.assert_close(again(query, candidate), model(query, candidate))
    (tmp_path / "r" / "reranker.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read a re-ranker"):
        Reranker.load(tmp_path / "r")


def write_bilingual(directory: Path, rows: int = 120, seed: int = 0) -> Path:
    """bo (pooled 5-d, with syllable ids) and en (pooled 4-d) views of one latent per row, in
    documents of 6 rows: 60 % train, 20 % val, 20 % test by document."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 3))
    bo = latent @ rng.normal(size=(3, 5)) + 0.05 * rng.normal(size=(rows, 5))
    en = latent @ rng.normal(size=(3, 4)) + 0.05 * rng.normal(size=(rows, 4))
    ids = rng.integers(0, 500, size=(rows, 6))
    ids[:, 4:] = -1
    docs = [f"doc{i // 6}" for i in range(rows)]
    split = [
        "train" if i // 6 % 5 < 3 else "val" if i // 6 % 5 == 3 else "test" for i in range(rows)
    ]
    items = [
        {
            "id": f"s{i:04d}",
            "group": docs[i],
            "split": split[i],
            "text_en": f"line {i}",
            "text_bo": f"bo {i}",
        }
        for i in range(rows)
    ]
    return write_paired_embeddings(
        directory,
        {"bo": bo.astype(np.float32), "en": en.astype(np.float32)},
        items,
        node_ids={"bo": ids},
    )


def test_document_folds_keep_documents_whole_and_balanced() -> None:
    groups = [f"d{i % 13}" for i in range(200)]
    folds = document_folds(groups, 3, seed=1)
    for doc in set(groups):
        assert len({int(folds[i]) for i, g in enumerate(groups) if g == doc}) == 1
    sizes = np.bincount(folds, minlength=3)
    assert sizes.max() - sizes.min() <= 16  # at most about one document apart
    np.testing.assert_array_equal(folds, document_folds(groups, 3, seed=1))


def test_cross_fitting_never_mines_rows_the_first_stage_trained_on(tmp_path: Path) -> None:
    data_dir = write_bilingual(tmp_path / "data")
    data = PairedEmbeddings(data_dir)
    folds = training_folds(data, 2)
    train = data.split_indices()["train"]
    np.testing.assert_array_equal(np.sort(np.concatenate(list(folds.values()))), train)
    groups = data.groups()
    for fold, held_out in folds.items():
        other = folds[1 - fold]
        assert not {groups[i] for i in held_out} & {groups[i] for i in other}
        folder = fold_data(data_dir, tmp_path / f"fold{fold}", held_out)
        trained_on = PairedEmbeddings(folder).split_indices()["train"]
        # The first stage of this fold trains on the other fold only ...
        np.testing.assert_array_equal(trained_on, other)
        assert all(PairedEmbeddings(folder).items[i]["split"] == HELD_OUT for i in held_out)

        # ... and the fold's queries and negatives all come from its held-out rows.
        def encode(sources, target, rows):  # type: ignore[no-untyped-def]
            batch = data.batch(rows, [*sources, target]).pooled()
            return batch[sources[0]][:, :4], batch[target]

        queries, negatives, *_ = mine_negatives(encode, data, held_out, "bo", "en", 10, 5)
        assert set(queries) == set(held_out)
        assert set(negatives[negatives >= 0]) <= set(held_out)
        assert not set(negatives[negatives >= 0]) & set(trained_on)
        keys = data.keys("en")
        for q, row in zip(queries, negatives, strict=True):
            assert all(keys[n] != keys[q] for n in row if n >= 0)


def test_mined_negatives_are_the_best_first_stage_candidates() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    c = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.9], [0.9, -1.0]])

    class Data:
        def __init__(self) -> None:
            self.present = {"bo": np.ones(4, bool), "en": np.ones(4, bool)}

        def keys(self, m: str) -> list[str]:
            return ["a", "b", "c", "d"]

    def encode(sources, target, rows):  # type: ignore[no-untyped-def]
        return q[rows], c[rows]

    queries, negatives, r1, positive, cosines = mine_negatives(
        encode, Data(), np.arange(4), "bo", "en", 4, 2
    )  # type: ignore[arg-type]
    sims = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    for i, row, pos, cos in zip(queries, negatives, positive, cosines, strict=True):
        order = [j for j in sims[i].argsort(descending=True).tolist() if j != i]
        assert list(row) == order[:2]
        np.testing.assert_allclose(cos, sims[i, order[:2]].numpy(), rtol=1e-6)
        assert pos == pytest.approx(float(sims[i, i]))
    assert r1 == float(
        (retrieval_ranks(q, c, torch.arange(4), torch.arange(4)) == 1).float().mean()
    )


def test_groups_put_the_positive_first_and_draw_mined_negatives() -> None:
    queries = np.array([10, 11])
    negatives = np.array([[1, 2, 3, -1], [4, -1, -1, -1]])
    q, c = sample_groups(queries, negatives, 6, 3, np.random.default_rng(0))
    q, c = q.reshape(6, 4), c.reshape(6, 4)
    assert (q == q[:, :1]).all() and (c[:, 0] == q[:, 0]).all()
    for row in c:
        allowed = {1, 2, 3} if row[0] == 10 else {4}
        assert set(row[1:]) <= allowed


def test_reranker_learns_from_groups_and_reranks_within_depth(tmp_path: Path) -> None:
    data = PairedEmbeddings(write_bilingual(tmp_path / "data"))
    model = Reranker(
        RerankerConfig(SideConfig("bo", 5), SideConfig("en", 4), width=16, heads=2, dropout=0.0)
    )
    content = RerankContent(
        side_content(data, model.config.query), side_content(data, model.config.candidate)
    )
    rows = data.split_indices()["train"]
    bo, en = data.batch(rows, ["bo", "en"]).pooled().values()

    def encode(sources, target, chosen):  # type: ignore[no-untyped-def]
        return torch.randn(len(chosen), 4), torch.randn(len(chosen), 4)  # a useless first stage

    queries, negatives, *_ = mine_negatives(encode, data, rows, "bo", "en", 80, 20)
    config = RerankTrainConfig(steps=60, batch_groups=16, negatives=7, warmup_steps=5, lr=5e-3)
    losses = train_reranker(model, content, queries, negatives, config, log=lambda _: None)
    assert np.mean(losses[-10:]) < 0.5 * math.log(8)
    # Re-ranking everything of a pool with the trained model beats the useless first stage,
    # and ranks of queries whose positive lies beyond the depth are the first stage's.
    g = torch.Generator().manual_seed(0)
    qv, cv = torch.randn(len(rows), 4, generator=g), torch.randn(len(rows), 4, generator=g)
    keys = torch.arange(len(rows))
    chosen = torch.from_numpy(rows)
    score = reranker_scorer(model, content.query.take(chosen), content.candidate.take(chosen))
    first = retrieval_ranks(qv, cv, keys, keys)
    deep = rerank_ranks(qv, cv, keys, keys, score, depth=len(rows))
    assert (deep == 1).float().mean() > 3 * (first == 1).float().mean()
    shallow = rerank_ranks(qv, cv, keys, keys, score, depth=5)
    assert bool((shallow[first > 5] == first[first > 5]).all())
    assert bool((shallow[first <= 5] <= 5).all())
    assert len(bo) == len(en)


def heads_run_with_reranker(tmp_path: Path, model: Reranker) -> tuple[Path, Path]:
    """A bilingual data folder and a 3-step contrastive-heads run on it holding ``model`` as
    its re-ranker: ``(data_dir, run)``."""
    data_dir = write_bilingual(tmp_path / "data")
    run = tmp_path / "run"
    args = ["fit", str(data_dir), "--out", str(run), "--method", "contrastive-heads"]
    assert main([*args, "--max-steps", "3", "--batch-size", "16", "--quiet"]) == 0
    model.save(run / RERANKER_DIR)
    return data_dir, run


def test_rerank_option_of_retrieve_reorders_by_the_reranker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_reranker(states=False)
    data_dir, run = heads_run_with_reranker(tmp_path, model)
    retrieve = [
        "retrieve",
        str(run),
        "--source",
        "bo",
        "--target",
        "en",
        "--candidates",
        str(data_dir),
    ]
    capsys.readouterr()
    assert main([*retrieve, "--query-ids", "s0003", "--k", "4"]) == 0
    plain = [
        line.split("\t")[0].split(". ")[1] for line in capsys.readouterr().out.splitlines()[1:]
    ]
    assert main([*retrieve, "--query-ids", "s0003", "--k", "3", "--rerank", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    reranked = [line.split("\t")[0].split(". ")[1] for line in printed[1:]]
    # The three best of the first stage's four, in the re-ranker's order.
    data = PairedEmbeddings(data_dir)
    ids = {item["id"]: i for i, item in enumerate(data.items)}
    rows = np.array([ids[i] for i in plain])
    query = side_content(data, model.config.query, np.full(4, 3))
    scores = model(query, side_content(data, model.config.candidate, rows))
    expected = [plain[i] for i in scores.argsort(descending=True).tolist()[:3]]
    assert reranked == expected
    scores_printed = [float(line.split("\t")[1]) for line in printed[1:]]
    assert scores_printed == sorted(scores_printed, reverse=True)
    # From another folder, and mistakes as one line with status 2.
    model.save(tmp_path / "elsewhere")
    assert (
        main(
            [
                *retrieve,
                "--query-ids",
                "s0003",
                "--rerank",
                "4",
                "--reranker",
                str(tmp_path / "elsewhere"),
            ]
        )
        == 0
    )
    assert main([*retrieve, "--query-ids", "s0003", "--rerank", "-1"]) == 2
    assert (
        main(
            [
                "retrieve",
                str(run),
                "--source",
                "en",
                "--target",
                "bo",
                "--candidates",
                str(data_dir),
                "--query-ids",
                "s0003",
                "--rerank",
                "4",
            ]
        )
        == 2
    )


def test_fused_score_of_a_constant_reranker_keeps_the_first_stage_ranks() -> None:
    torch.manual_seed(3)
    q, c = torch.randn(15, 4), torch.randn(15, 4)
    keys = torch.arange(15)
    first = retrieval_ranks(q, c, keys, keys)
    both = fused_scorer(lambda qi, ci: torch.full((len(qi),), 2.5), q, c, 3.0)
    torch.testing.assert_close(rerank_ranks(q, c, keys, keys, both, depth=15), first)
    torch.testing.assert_close(rerank_ranks(q, c, keys, keys, both, depth=4), first)


def test_fusion_weight_is_fitted_on_mined_groups(tmp_path: Path) -> None:
    data = PairedEmbeddings(write_bilingual(tmp_path / "data"))
    model = tiny_reranker(states=False)
    with torch.no_grad():  # a re-ranker that scores every pair alike
        model.score.weight.zero_()
    content = RerankContent(
        side_content(data, model.config.query), side_content(data, model.config.candidate)
    )
    queries = np.array([0, 1, 2])
    negatives = np.array([[3, 4], [5, -1], [6, 7]])
    positive = np.array([0.9, 0.1, 0.8], dtype=np.float32)
    cosines = np.array([[0.5, 0.4], [0.3, 0.0], [0.85, 0.2]], dtype=np.float32)
    weight, shares = fit_fusion_weight(model, content, queries, negatives, positive, cosines)
    # Weight 0 ties every member (a tie counts against the positive); any positive weight
    # ranks by the cosine, which puts the positive first in the first group only.
    assert shares["0"] == 0.0 and shares["1"] == pytest.approx(1 / 3)
    assert weight == 1.0


def test_rerank_option_adds_the_saved_weight_of_the_first_stage_cosine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_reranker(states=False)
    model.config.first_stage_weight = 5.0
    data_dir, run = heads_run_with_reranker(tmp_path, model)
    assert Reranker.load(run / RERANKER_DIR).config.first_stage_weight == 5.0
    retrieve = ["retrieve", str(run), "--source", "bo", "--target", "en"]
    retrieve += ["--candidates", str(data_dir), "--query-ids", "s0003", "--k", "6"]
    capsys.readouterr()
    assert main(retrieve) == 0
    plain = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert main([*retrieve, "--rerank", "6"]) == 0
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    # Reference: the re-ranker's score plus 5 x the printed first-stage cosine, in float64.
    data = PairedEmbeddings(data_dir)
    ids = {item["id"]: i for i, item in enumerate(data.items)}
    names = [row[0].split(". ")[1] for row in plain]
    cosine = torch.tensor([float(row[1]) for row in plain], dtype=torch.float64)
    query = side_content(data, model.config.query, np.full(len(names), 3))
    candidates = side_content(data, model.config.candidate, np.array([ids[n] for n in names]))
    with torch.no_grad():
        expected = model(query, candidates).double() + 5.0 * cosine
    order = expected.argsort(descending=True).tolist()
    assert [row[0].split(". ")[1] for row in printed] == [names[i] for i in order]
    got = torch.tensor([float(row[1]) for row in printed], dtype=torch.float64)
    # Both columns are printed to 4 decimals: 5 x 0.5e-4 from the cosines, 0.5e-4 from the scores.
    torch.testing.assert_close(got, expected[order], atol=3.1e-4, rtol=0)


def test_first_stage_weight_must_be_finite_and_non_negative() -> None:
    for weight in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="first_stage_weight"):
            RerankerConfig(SideConfig("bo", 4), SideConfig("en", 4), first_stage_weight=weight)
