"""Fused queries (several sources embedded in one message-passing pass) and the combinatorial
term that trains them."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIMS, tiny_config, tri_modal_inputs
from test_losses import loop_info_nce

from vallayz import IMPN, Batch
from vallayz.eval import model_encoder, retrieval_table
from vallayz.losses import (
    IMPNLoss,
    LossWeights,
    combinatorial_info_nce,
    fusion_subsets,
    sample_subsets,
)

f64 = torch.float64
NAMES = list(DIMS)


# ------------------------------------------------------------------ fused embedding
def test_fused_embedding_of_one_source_is_the_single_source_embedding_bit_for_bit(
    model: IMPN,
) -> None:
    inputs = tri_modal_inputs(4)
    for name, x in inputs.items():
        assert torch.equal(model.embed(x, name, fusion="fused"), model.embed(x, name))
    # Rows of a two-source batch that hold one source keep their single-source embedding.
    sources = {"text": inputs["text"], "audio": inputs["audio"]}
    present = {"text": torch.tensor([True, False, True, False])}
    fused = model.embed(sources, present=present, fusion="fused")
    late = model.embed(sources, present=present)
    assert torch.equal(fused[[1, 3]], late[[1, 3]])
    alone = model.embed(inputs["audio"][[1, 3]], "audio")
    assert torch.equal(fused[[1, 3]], alone)


def test_a_lone_source_receives_no_message_in_a_fused_pass(model: IMPN) -> None:
    inputs = tri_modal_inputs(4)
    for name, x in inputs.items():
        torch.testing.assert_close(model.fuse({name: x}), model.embed(x, name))


def test_fused_embedding_mixes_the_sources_and_late_fusion_is_their_mean() -> None:
    model = IMPN(tiny_config()).eval()  # random bridge layers: messages change the states
    inputs = tri_modal_inputs(5)
    sources = {"text": inputs["text"], "image": inputs["image"]}
    late = model.embed(sources, fusion="late")
    mean = (model.embed(inputs["text"], "text") + model.embed(inputs["image"], "image")) / 2
    torch.testing.assert_close(late, mean)
    fused = model.embed(sources, fusion="fused")
    assert not torch.allclose(fused, late, atol=1e-4)
    # The fused state of the text depends on the image: change the image, the query moves.
    moved = model.embed({**sources, "image": torch.randn(5, DIMS["image"])}, fusion="fused")
    assert not torch.allclose(moved, fused, atol=1e-4)


def test_fused_rows_do_not_depend_on_the_other_rows_of_the_batch() -> None:
    model = IMPN(tiny_config()).eval()
    inputs = tri_modal_inputs(6)
    present = {"audio": torch.tensor([True, True, False, True, False, True])}
    whole = model.embed(inputs, present=present, fusion="fused")
    for row in range(6):
        one = model.embed(
            {m: x[row : row + 1] for m, x in inputs.items()},
            present={m: p[row : row + 1] for m, p in present.items()},
            fusion="fused",
        )
        torch.testing.assert_close(one[0], whole[row], atol=1e-5, rtol=1e-5)


def test_the_default_zero_init_model_starts_with_fused_equal_to_the_sources_alone() -> None:
    """The bridge's residual branches start at zero, so a fresh default model's fused state of
    each source is the one it reaches alone: the term trains the messages from there."""
    model = IMPN(tiny_config(zero_init_residual=True)).eval()
    inputs = tri_modal_inputs(3)
    torch.testing.assert_close(model.embed(inputs, fusion="fused"), model.embed(inputs))


def test_an_unknown_fusion_is_refused(model: IMPN) -> None:
    with pytest.raises(ValueError, match="fusion must be one of"):
        model.embed(torch.randn(2, DIMS["text"]), "text", fusion="early")


def test_the_fused_retrieval_path_scores_multi_source_pairs_only() -> None:
    class Data:
        def __init__(self) -> None:
            self.inputs = {m: x.numpy() for m, x in tri_modal_inputs(12).items()}
            self.present = {m: np.ones(12, dtype=bool) for m in DIMS}
            self.arrays = self.inputs

        def keys(self, modality: str | None = None) -> list[str]:
            return [str(i) for i in range(12)]

        def batch(self, rows: np.ndarray, modalities: list[str]) -> Batch:
            return Batch.of({m: torch.from_numpy(self.inputs[m][rows]) for m in modalities})

    data, model = Data(), IMPN(tiny_config()).eval()
    pairs = [(("text",), "image"), (("text", "audio"), "image")]
    rows = np.arange(12)
    fused = retrieval_table(data, rows, model_encoder(model, data, "fused"), pairs, 5, 2)
    late = retrieval_table(data, rows, model_encoder(model, data, "soil"), pairs, 5, 2)
    assert {r["source"] for r in fused} == {"text+audio"}
    assert {r["source"] for r in late} == {"text", "text+audio"}


# ------------------------------------------------------------------ the combinatorial term
def test_fusion_subsets_enumerate_every_subset_of_two_or_more_that_leaves_one_out() -> None:
    assert fusion_subsets(["a", "b"]) == []
    assert fusion_subsets(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    four = fusion_subsets(["a", "b", "c", "d"])
    expected = [
        s for size in (2, 3) for s in itertools.combinations("abcd", size)
    ]  # 6 pairs, 4 triples
    assert four == expected and len(four) == 10


def test_sample_subsets_draws_without_replacement_and_keeps_all_when_few() -> None:
    subsets = fusion_subsets(["a", "b", "c", "d"])
    assert sample_subsets(subsets[:3], 4) == subsets[:3]
    drawn = sample_subsets(subsets, 4, torch.Generator().manual_seed(1))
    assert len(set(drawn)) == 4 and set(drawn) <= set(subsets)
    with pytest.raises(ValueError, match="count must be >= 1"):
        sample_subsets(subsets, 0)


def loop_combinatorial(fused, single, present, temperature, weighting):  # type: ignore[no-untyped-def]
    """Float64 reference: per (subset, target) the rows holding both, one by one."""
    values, counts = [], []
    size = len(next(iter(present.values())))
    for subset, vectors in fused.items():
        for target in single:
            if target in subset:
                continue
            rows = [i for i in range(size) if all(present[m][i] for m in (*subset, target))]
            if len(rows) < 2:
                continue
            values.append(loop_info_nce(vectors[rows], single[target][rows], temperature))
            counts.append(len(rows))
    if weighting == "equal":
        return sum(values) / len(values)
    return sum(v * c for v, c in zip(values, counts, strict=True)) / sum(counts)


@pytest.mark.parametrize("weighting", ["rows", "equal"])
def test_combinatorial_info_nce_matches_a_float64_loop(weighting: str) -> None:
    gen = torch.Generator().manual_seed(3)
    size, dim = 9, 5
    names = ["a", "b", "c", "d"]
    present = {m: torch.rand(size, generator=gen) < 0.75 for m in names}
    single = {m: torch.randn(size, dim, generator=gen, dtype=f64) for m in names}
    fused = {s: torch.randn(size, dim, generator=gen, dtype=f64) for s in fusion_subsets(names)}
    term, parts = combinatorial_info_nce(fused, single, present, 0.2, weighting)
    assert term is not None and parts
    expected = loop_combinatorial(fused, single, present, 0.2, weighting)
    assert float(term) == pytest.approx(expected, abs=1e-10)
    assert all(t not in s for s, t in parts)


def test_combinatorial_info_nce_ignores_rows_missing_a_modality() -> None:
    gen = torch.Generator().manual_seed(4)
    present = {m: torch.tensor([True, True, True, False]) for m in "abc"}
    single = {m: torch.randn(4, 3, generator=gen, dtype=f64) for m in "abc"}
    fused = {("a", "b"): torch.randn(4, 3, generator=gen, dtype=f64)}
    term, _ = combinatorial_info_nce(fused, single, present, 0.1)
    garbage = {("a", "b"): fused["a", "b"].clone()}
    garbage["a", "b"][3] = math.nan
    single_garbage = {**single, "c": single["c"].clone()}
    single_garbage["c"][3] = math.inf
    again, _ = combinatorial_info_nce(garbage, single_garbage, present, 0.1)
    assert term is not None and again is not None
    assert float(again) == float(term)
    none, parts = combinatorial_info_nce(
        fused, single, {m: torch.zeros(4, dtype=torch.bool) for m in "abc"}
    )
    assert none is None and parts == {}


def test_the_loss_term_reads_the_models_fused_pass_against_the_isolated_vectors() -> None:
    """Through IMPNLoss: with only the combinatorial weight on, the total equals the pure
    function applied to fused passes of each subset's rows (enumeration vs a direct loop)."""
    model = IMPN(tiny_config(sigma=0.0, variants=1)).eval()
    inputs = tri_modal_inputs(8)
    present = {
        "text": torch.tensor([1, 1, 1, 1, 1, 1, 0, 1], dtype=torch.bool),
        "audio": torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool),
        "image": torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool),
    }
    batch = Batch.of(inputs, present)
    zero = {name: 0.0 for name in LossWeights().as_dict()}
    weights = LossWeights(**{**zero, "combinatorial": 1.0})
    out = IMPNLoss(weights, contrastive_temperature=0.5, fused_subsets=3)(model, batch)
    single = model(batch, isolate=True).soil
    fused = {}
    for subset in fusion_subsets(NAMES):
        rows = torch.ones(8, dtype=torch.bool)
        for m in subset:
            rows &= present[m]
        vectors = torch.zeros(8, 16)
        for i in torch.nonzero(rows).squeeze(1).tolist():
            vectors[i] = model.fuse({m: inputs[m][i : i + 1] for m in subset})[0]
        fused[subset] = vectors
    expected, _ = combinatorial_info_nce(fused, single, present, 0.5)
    assert expected is not None
    torch.testing.assert_close(out.terms["combinatorial"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.total, expected, atol=1e-5, rtol=1e-5)


def test_the_term_is_off_by_default_and_trains_the_messages_when_on() -> None:
    inputs = tri_modal_inputs(8)
    model = IMPN(tiny_config(zero_init_residual=True))
    out = IMPNLoss()(model, Batch.of(inputs))
    assert float(out.terms["combinatorial"]) == 0.0
    zero = {name: 0.0 for name in LossWeights().as_dict()}
    loss = IMPNLoss(LossWeights(**{**zero, "combinatorial": 1.0}), fused_subsets=1)
    out = loss(model, Batch.of(inputs), torch.Generator().manual_seed(0))
    assert float(out.terms["combinatorial"].detach()) > 0
    out.total.backward()
    grads = [layer.cross.out.weight.grad for layer in model.layers]  # type: ignore[union-attr]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    with pytest.raises(ValueError, match="fused_subsets must be >= 1"):
        IMPNLoss(fused_subsets=0)


# ------------------------------------------------------------------ a gate over the sources
def test_softmax_over_present_matches_a_float64_loop_and_ignores_absent_rows() -> None:
    from vallayz.functional import mean_over_present, softmax_over_present

    torch.manual_seed(0)
    values = {m: torch.randn(5, 3, dtype=f64) for m in NAMES}
    scores = {m: torch.randn(5, dtype=f64) for m in NAMES}
    present = {m: torch.rand(5) < 0.7 for m in NAMES}
    present["text"][:] = True
    values["audio"][~present["audio"]] = float("nan")
    got = softmax_over_present(values, scores, present)
    for row in range(5):
        kept = [m for m in NAMES if present[m][row]]
        weights = [math.exp(float(scores[m][row])) for m in kept]
        expected = sum(w * values[m][row] for w, m in zip(weights, kept, strict=True))
        torch.testing.assert_close(got[row], expected / sum(weights))
    equal = dict.fromkeys(NAMES, torch.zeros(5, dtype=f64))
    torch.testing.assert_close(
        softmax_over_present(values, equal, present), mean_over_present(values, present)
    )


def test_an_untrained_fusion_gate_gives_the_mean_and_a_trained_one_weighs_the_sources() -> None:
    inputs = tri_modal_inputs(6)
    torch.manual_seed(0)
    plain = IMPN(tiny_config()).eval()
    torch.manual_seed(0)
    gated = IMPN(tiny_config(fusion_gate=True)).eval()
    with torch.no_grad():
        torch.testing.assert_close(gated.fuse(inputs), plain.fuse(inputs))
        assert gated.fusion_gate is not None
        torch.nn.init.normal_(gated.fusion_gate.score.weight)
        weighed = gated.fuse(inputs)
    assert not torch.allclose(weighed, plain.fuse(inputs))
    # The fused vector stays inside the convex hull of the sources' states: one source alone
    # gets weight 1 whatever its score.
    one = {"text": inputs["text"]}
    torch.testing.assert_close(gated.fuse(one), plain.fuse(one))


def test_noise_at_snr_per_row_is_the_one_ratio_noise_row_by_row() -> None:
    from vallayz.functional import noise_at_snr

    x = torch.randn(4, 3, 8, dtype=f64)
    snr = torch.tensor([0.0, 5.0, 10.0, 20.0], dtype=f64)
    together = noise_at_snr(x, snr, torch.Generator().manual_seed(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=f64)
    for row in range(4):
        power = x[row].pow(2).mean()
        expected = x[row] + noise[row] * (power / 10 ** (float(snr[row]) / 10)).sqrt()
        torch.testing.assert_close(together[row], expected)


def test_corrupt_one_source_corrupts_one_present_source_of_the_chosen_rows() -> None:
    from vallayz.masking import corrupt_one_source

    inputs = tri_modal_inputs(64)
    present = {m: torch.ones(64, dtype=torch.bool) for m in NAMES}
    present["image"][::2] = False
    tokens = {"text": torch.randint(0, 9, (64, 4))}
    batch = Batch.of(inputs, present, tokens=tokens)
    kept = {m: x.clone() for m, x in inputs.items()}
    assert corrupt_one_source(batch, 0.0, generator=torch.Generator().manual_seed(0)) == batch
    out = corrupt_one_source(batch, 1.0, generator=torch.Generator().manual_seed(0))
    for m in NAMES:  # the input batch is not changed
        assert torch.equal(batch.embeddings[m], kept[m])
    changed = torch.stack(
        [(out.embeddings[m] != inputs[m]).flatten(1).any(dim=1) & present[m] for m in NAMES], dim=1
    )
    assert changed.sum(dim=1).eq(1).all()  # one present source per row, no absent one
    withheld = (out.tokens["text"] == -1).all(dim=1)
    assert torch.equal(withheld, changed[:, NAMES.index("text")])
    half = corrupt_one_source(batch, 0.5, generator=torch.Generator().manual_seed(0))
    hits = sum(int((half.embeddings[m] != inputs[m]).flatten(1).any(dim=1).sum()) for m in NAMES)
    assert 16 <= hits <= 48
    with pytest.raises(ValueError, match="rate"):
        corrupt_one_source(batch, 1.5)


def test_the_combinatorial_term_trains_on_corrupted_sources_when_asked() -> None:
    torch.manual_seed(0)
    model = IMPN(tiny_config(fusion_gate=True)).train()
    weights = LossWeights(combinatorial=1.0)
    batch = tri_modal_inputs(16)
    clean = IMPNLoss(weights)(model, batch, torch.Generator().manual_seed(2))
    noisy = IMPNLoss(weights, fused_corruption=1.0)(model, batch, torch.Generator().manual_seed(2))
    assert torch.isfinite(noisy.terms["combinatorial"])
    assert not torch.equal(noisy.terms["combinatorial"], clean.terms["combinatorial"])
    torch.testing.assert_close(noisy.terms["contrastive"], clean.terms["contrastive"])
    noisy.total.backward()
    assert model.fusion_gate is not None and model.fusion_gate.score.weight.grad is not None
    with pytest.raises(ValueError, match="fused_corruption"):
        IMPNLoss(weights, fused_corruption=2.0)


# ------------------------------------------------------------------ a second fusion stage
def _trained_base() -> IMPN:
    """A tiny model whose bridge has been moved by a few steps of its usual loss."""
    torch.manual_seed(0)
    model = IMPN(tiny_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(3):
        out = IMPNLoss()(model, Batch.of(tri_modal_inputs(8)), torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize(("layers", "gate"), [(True, True), (True, False), (False, True)])
def test_a_fusion_stage_starts_as_its_model_and_keeps_every_other_path_bit_for_bit(
    layers: bool, gate: bool
) -> None:
    base = _trained_base()
    stage = base.fusion_stage(layers=layers, gate=gate)
    assert not stage.training and stage.config.fusion_stage
    inputs = tri_modal_inputs(6)
    present = {"audio": torch.tensor([True, False, True, True, False, True])}
    with torch.no_grad():
        # Before training, the fused path is the model's own (a copy of its layers, a gate
        # that starts as the mean: a softmax of equal scores, equal up to rounding).
        torch.testing.assert_close(stage.fuse(inputs), base.fuse(inputs))
        for name, x in inputs.items():
            assert torch.equal(stage.embed(x, name), base.embed(x, name))
        sources = {"text": inputs["text"], "image": inputs["image"]}
        assert torch.equal(
            stage.embed(sources, target="audio"), base.embed(sources, target="audio")
        )
        assert torch.equal(
            stage.translate(sources, target="audio"), base.translate(sources, target="audio")
        )
        assert torch.equal(
            stage.embed(inputs, present=present), base.embed(inputs, present=present)
        )
    trainable = {id(p) for p in stage.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in stage.fusion_parameters()} and trainable
    assert (stage.fusion_layers is not None) == layers
    assert (stage.fusion_gate is not None) == gate


def test_training_a_fusion_stage_moves_the_fused_path_only() -> None:
    base = _trained_base()
    stage = base.fusion_stage().train()
    zero = {name: 0.0 for name in LossWeights().as_dict()}
    loss = IMPNLoss(LossWeights(**{**zero, "combinatorial": 1.0}))
    optimizer = torch.optim.AdamW([p for p in stage.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        out = loss(stage, Batch.of(tri_modal_inputs(8)), torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
    stage.eval()
    inputs = tri_modal_inputs(6)
    with torch.no_grad():
        assert not torch.allclose(stage.fuse(inputs), base.fuse(inputs), atol=1e-4)
        for name, x in inputs.items():
            assert torch.equal(stage.embed(x, name), base.embed(x, name))
        for key, value in base.state_dict().items():
            assert torch.equal(stage.state_dict()[key], value), key
        # The fused embedding of the stage is read from the fusion layers: a model built from
        # the stage's weights with the bridge layers swapped in gives the fused path back.
        assert stage.fusion_layers is not None
        swapped = IMPN(stage.config).eval()
        swapped.load_state_dict(stage.state_dict())
        swapped.layers.load_state_dict(stage.fusion_layers.state_dict())
        swapped.fusion_layers = None
        torch.testing.assert_close(swapped.fuse(inputs), stage.fuse(inputs))


def test_a_fusion_stage_saves_and_loads_with_its_frozen_parts(tmp_path: Path) -> None:
    stage = _trained_base().fusion_stage()
    with torch.no_grad():
        assert stage.fusion_gate is not None
        torch.nn.init.normal_(stage.fusion_gate.score.weight)
    stage.save_pretrained(tmp_path / "stage")
    loaded = IMPN.from_pretrained(tmp_path / "stage").eval()
    inputs = tri_modal_inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.fuse(inputs), stage.eval().fuse(inputs))
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        n for n, p in stage.named_parameters() if p.requires_grad
    }


def test_a_fusion_stage_refuses_what_would_move_its_frozen_model() -> None:
    base = _trained_base()
    with pytest.raises(ValueError, match="ask for one"):
        base.fusion_stage(layers=False, gate=False)
    stage = base.fusion_stage()
    with pytest.raises(ValueError, match="fusion stage already"):
        stage.fusion_stage()
    with pytest.raises(ValueError, match="gating of a fusion stage is frozen"):
        stage.set_gating(top_k=1)
    with pytest.raises(ValueError, match="set fusion_gate or fusion_layers"):
        tiny_config(fusion_stage=True)
    with pytest.raises(ValueError, match="fusion_layers must be true or false"):
        tiny_config(fusion_layers=1)


def test_an_extended_fusion_stage_trains_the_new_modality_only() -> None:
    stage = _trained_base().fusion_stage()
    extended = stage.extend({"video": 5})
    trainable = {id(p) for p in extended.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in extended.own_parameters("video") if p.requires_grad}
    assert not any(p.requires_grad for p in extended.fusion_parameters())
