"""The sequence-aware contrastive heads and the FuseMix-style adapters."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DIMS, tri_modal_inputs
from synthetic import write_synthetic

from vallayz import Batch
from vallayz.functional import attention_pool, latent_mixup, masked_mean
from vallayz.learned import (
    TEMPERATURE_RANGE,
    BaselineConfig,
    ContrastiveHeads,
    FuseMix,
    SequenceHeads,
    build_model,
    load_pretrained,
)
from vallayz.losses import LossSettings, info_nce
from vallayz_train.cli import main
from vallayz_train.run_folder import load_model


def _randomise(model: torch.nn.Module) -> None:
    """Every parameter drawn at random, so that zero-initialised parts take part too."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)


def _pool_reference(states: torch.Tensor, real: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    batch, nodes, width = states.shape
    heads, chunk = query.shape
    out = torch.zeros(batch, width, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            part = slice(h * chunk, (h + 1) * chunk)
            scores = [
                float(states[b, t, part] @ query[h]) / math.sqrt(chunk)
                for t in range(nodes)
                if real[b, t]
            ]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            kept = [t for t in range(nodes) if real[b, t]]
            for w, t in zip(weights, kept, strict=True):
                out[b, part] += w / total * states[b, t, part]
    return out


def test_attention_pool_matches_a_float64_loop_and_ignores_padding() -> None:
    states = torch.randn(4, 5, 6, dtype=torch.float64)
    real = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 0, 1, 0, 0], [0, 0, 0, 1, 0], [1, 1, 0, 0, 1]], dtype=torch.bool
    )
    query = torch.randn(3, 2, dtype=torch.float64)
    pooled = attention_pool(states, real, query)
    torch.testing.assert_close(pooled, _pool_reference(states, real, query))
    noisy = torch.where(real[..., None], states, torch.full_like(states, 1e6))
    torch.testing.assert_close(attention_pool(noisy, real, query), pooled)
    # One real node pools to itself; a zero query pools to the mean of the real nodes.
    torch.testing.assert_close(pooled[2], states[2, 3])
    torch.testing.assert_close(
        attention_pool(states, real, torch.zeros_like(query)), masked_mean(states, real)
    )
    with pytest.raises(ValueError, match="one query of width"):
        attention_pool(states, real, torch.randn(4, 2, dtype=torch.float64))


def test_untrained_sequence_heads_are_the_heads_on_the_mean_of_the_nodes() -> None:
    config = dict(modalities=dict(DIMS), dim=8, seq_heads=2)
    seq = SequenceHeads(BaselineConfig("seq-heads", **config))  # type: ignore[arg-type]
    heads = ContrastiveHeads(BaselineConfig("contrastive-heads", **config))  # type: ignore[arg-type]
    heads.heads.load_state_dict(seq.heads.state_dict())
    x = tri_modal_inputs(6, frames=4)
    padding = {"audio": torch.rand(6, 4) > 0.3}
    padding["audio"][:, 0] = True
    torch.testing.assert_close(
        seq.embed(x, padding=padding), heads.embed(x, padding=padding), rtol=1e-5, atol=1e-6
    )


def test_sequence_heads_ignore_padded_nodes_and_absent_rows() -> None:
    model = SequenceHeads(BaselineConfig("seq-heads", dict(DIMS), dim=8, seq_heads=2)).eval()
    _randomise(model)
    x = tri_modal_inputs(5, frames=4)
    padding = {"audio": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]] * 2)[:5].bool()}
    present = {"audio": torch.tensor([True, True, True, False, True])}
    out = model.embed(x, present=present, padding=padding)
    garbage = dict(x)
    garbage["audio"] = torch.where(
        (padding["audio"] & present["audio"][:, None])[..., None],
        x["audio"],
        torch.full_like(x["audio"], float("nan")),
    )
    torch.testing.assert_close(model.embed(garbage, present=present, padding=padding), out)
    # A row reads its real nodes only: cut to them, each row gives the same state.
    state = model._clean_inputs(Batch.of(x, present, padding))["audio"]
    for row in (0, 2):
        kept = int(padding["audio"][row].sum())
        alone = model._clean_inputs(Batch.of({"audio": x["audio"][row : row + 1, :kept]}))
        torch.testing.assert_close(alone["audio"][0], state[row], rtol=1e-5, atol=1e-6)


def test_sequence_heads_without_layers_on_one_node_are_the_linear_head() -> None:
    model = SequenceHeads(
        BaselineConfig("seq-heads", dict(DIMS), dim=8, seq_heads=2, seq_layers=0)
    ).eval()
    with torch.no_grad():
        model.readers["audio"].query.normal_()
    x = torch.randn(3, 1, DIMS["audio"])
    state = model._clean_inputs(Batch.of({"audio": x}))["audio"]
    torch.testing.assert_close(state, model.heads["audio"](x[:, 0]))


def test_sequence_heads_read_unit_ids_as_nodes() -> None:
    config = BaselineConfig("seq-heads", dict(DIMS), dim=8, seq_heads=2, token_nodes={"text": 50})
    model = SequenceHeads(config).eval()
    _randomise(model)
    x = {"text": torch.randn(3, DIMS["text"])}
    ids = torch.tensor([[3, 4, -1], [7, -1, -1], [1, 2, 3]])
    with_units = model.embed(Batch.of(x, node_ids={"text": ids}))
    assert not torch.allclose(with_units, model.embed(Batch.of(x)))
    # Padding ids are no nodes: more of them change nothing.
    longer = torch.cat([ids, torch.full((3, 2), -1)], dim=1)
    torch.testing.assert_close(model.embed(Batch.of(x, node_ids={"text": longer})), with_units)
    with pytest.raises(ValueError, match="cut the sequences"):
        model.embed(Batch.of(x, node_ids={"text": torch.ones(3, 65, dtype=torch.long)}))
    with pytest.raises(ValueError, match="cut the sequences or raise BaselineConfig"):
        model.embed(torch.randn(3, 65, DIMS["audio"]), "audio")


def test_latent_mixup_keeps_pairs_aligned() -> None:
    a = torch.randn(6, 4, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    b = a @ rotation  # b is a's partner through a fixed linear map
    order = torch.randperm(6)
    mixed_a, mixed_b = latent_mixup([a, b], 0.3, order)
    torch.testing.assert_close(mixed_b, mixed_a @ rotation)
    for i in range(6):
        torch.testing.assert_close(mixed_a[i], 0.3 * a[i] + 0.7 * a[order[i]])


def test_fusemix_training_loss_mixes_each_pair_with_one_lambda_and_one_order() -> None:
    model = FuseMix(BaselineConfig("fusemix", dict(DIMS), dim=8, dropout=0.0)).train()
    x = tri_modal_inputs(8)
    present = {m: torch.ones(8, dtype=torch.bool) for m in x}
    present["audio"] = torch.arange(8) >= 2
    batch = Batch.of(x, present=present)
    out = model.objective(LossSettings())(batch, torch.Generator().manual_seed(5))
    # The same draws, in the same order: lambda, then one permutation per pair.
    generator = torch.Generator().manual_seed(5)
    lam = torch.rand((), generator=generator)
    pooled = batch.pooled()
    for a, b in itertools.combinations(x, 2):
        both = present[a] & present[b]
        order = torch.randperm(int(both.sum()), generator=generator)
        xa, xb = latent_mixup([pooled[a][both], pooled[b][both]], lam, order)
        expected = info_nce(model.adapters[a](xa), model.adapters[b](xb), 0.07)
        torch.testing.assert_close(out.terms[f"contrastive/{a}-{b}"], expected)
    # In evaluation mode (validation), no mixup: the plain pair loss.
    model.eval()
    plain = model.objective(LossSettings())(batch, torch.Generator().manual_seed(5))
    a, b = "text", "image"
    expected = info_nce(model.adapters[a](pooled[a]), model.adapters[b](pooled[b]), 0.07)
    torch.testing.assert_close(plain.terms["contrastive/text-image"], expected)


@pytest.mark.parametrize("start", [5.0, 1e-6])
def test_fusemix_clamps_its_learned_temperature(start: float) -> None:
    model = FuseMix(BaselineConfig("fusemix", dict(DIMS), dim=8, mixup=False)).eval()
    with torch.no_grad():
        model.temperature.fill_(start)
    x = tri_modal_inputs(6)
    out = model.objective(LossSettings())(Batch.of({"text": x["text"], "image": x["image"]}))
    clamped = TEMPERATURE_RANGE[1] if start > 1 else TEMPERATURE_RANGE[0]
    assert float(model.temperature.detach()) == pytest.approx(clamped)
    pooled = {m: x[m] for m in ("text", "image")}
    expected = info_nce(
        model.adapters["text"](pooled["text"]), model.adapters["image"](pooled["image"]), clamped
    )
    torch.testing.assert_close(out.total, expected)
    out.total.backward()
    assert model.temperature.grad is not None


def test_fusemix_with_a_fixed_temperature_trains_everything_else() -> None:
    config = BaselineConfig(
        "fusemix", dict(DIMS), dim=8, mixup=False, dropout=0.0, learn_temperature=False
    )
    model = FuseMix(config)
    x = tri_modal_inputs(6)
    out = model.objective(LossSettings())(Batch.of({"text": x["text"], "image": x["image"]}))
    expected = info_nce(
        model.adapters["text"](x["text"]), model.adapters["image"](x["image"]), 0.07
    )
    torch.testing.assert_close(out.total, expected)
    out.total.backward()
    assert model.temperature.grad is None and not model.temperature.requires_grad
    trained = [*model.adapters["text"].parameters(), *model.adapters["image"].parameters()]
    assert all(p.grad is not None for p in trained)


def test_fusemix_adapter_is_residual_blocks_then_norm_and_map() -> None:
    config = BaselineConfig("fusemix", {"a": 4, "b": 6}, dim=5, depth=0)
    model = FuseMix(config).eval()
    x = torch.randn(3, 4)
    adapter = model.adapters["a"]
    expected = adapter[1](F.layer_norm(x, (4,), adapter[0].weight, adapter[0].bias))
    torch.testing.assert_close(adapter(x), expected)
    deep = FuseMix(BaselineConfig("fusemix", {"a": 4, "b": 6}, dim=5, depth=2, expansion=3))
    block = deep.adapters["b"][0]
    assert (block.up.in_features, block.up.out_features) == (6, 18)
    with torch.no_grad():
        block.down.weight.zero_()
        block.down.bias.zero_()
    y = torch.randn(2, 6)
    torch.testing.assert_close(block(y), y)  # x + W2·Drop(GELU(W1·LN(x))) with W2 = 0


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"architecture": "fusemix", "temperature": 0.9}, "clamps its temperature"),
        ({"architecture": "fusemix", "dropout": 1.0}, "dropout in"),
        ({"architecture": "seq-heads", "dim": 10, "seq_heads": 4}, "does not divide"),
        ({"architecture": "seq-heads", "token_nodes": {"video": 4}}, "token_nodes"),
    ],
)
def test_config_refuses_bad_fields(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BaselineConfig(modalities=dict(DIMS), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["seq-heads", "fusemix"])
def test_objective_falls_and_checkpoint_round_trips(method: str, tmp_path: Path) -> None:
    overrides: dict[str, object] = {"dim": 8, "seq_heads": 2}
    if method == "seq-heads":
        overrides["token_nodes"] = {"text": 20}
    model = build_model(method, dict(DIMS), overrides)
    x = tri_modal_inputs(16)
    batch = Batch.of(x, node_ids={"text": torch.randint(-1, 20, (16, 3))})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    objective = model.objective(LossSettings(baseline_drop_rate=0.3))
    generator = torch.Generator().manual_seed(0)
    model.eval()
    first = float(objective(batch, generator).total.detach())
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        objective(batch, generator).total.backward()
        optimizer.step()
    model.eval()
    assert float(objective(batch, generator).total.detach()) < 0.5 * first
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == method
    torch.testing.assert_close(loaded.embed(batch), model.embed(batch))


@pytest.mark.parametrize("method", ["seq-heads", "fusemix"])
def test_fit_through_the_cli_lowers_the_loss_and_reloads(method: str, tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=120, groups=20)
    run = tmp_path / method
    argv = ["fit", str(data), "--out", str(run), "--method", method, "--max-steps", "30"]
    assert main([*argv, "--batch-size", "32", "--lr", "3e-3", "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["method"] == method
    with (run / "metrics.csv").open() as f:
        losses = [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "train/total"]
    assert len(losses) == 30
    assert sum(losses[-5:]) < sum(losses[:5])
    model = load_model(run)
    assert model.capabilities.modes == ("soil",)
    argv = ["eval", str(run), str(data), "--split", "val", "--mode", "soil", "--pool", "5"]
    assert main(argv) == 0
