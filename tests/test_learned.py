from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DIMS, tri_modal_inputs
from synthetic import write_synthetic

from vallayz import IMPN, Batch
from vallayz.learned import (
    BaselineConfig,
    ContrastiveHeads,
    MLPTranslator,
    build_model,
    load_pretrained,
)
from vallayz.losses import LossSettings, info_nce, translation_loss
from vallayz.masking import drop_modalities
from vallayz_train.cli import main


@pytest.mark.parametrize("method", ["contrastive-heads", "mlp-translator"])
def test_objective_falls_and_checkpoint_round_trips(method: str, tmp_path: Path) -> None:
    model = build_model(
        method, dict(DIMS), {"hidden": 32} if method == "mlp-translator" else {"dim": 8}
    )
    batch = Batch.of(tri_modal_inputs(16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    objective = model.objective()
    first = float(objective(batch).total.detach())
    for _ in range(30):
        optimizer.zero_grad()
        objective(batch).total.backward()
        optimizer.step()
    assert float(objective(batch).total.detach()) < 0.5 * first
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    x = tri_modal_inputs(3)
    if method == "contrastive-heads":
        assert torch.equal(loaded.embed(x["audio"], "audio"), model.embed(x["audio"], "audio"))
    else:
        assert torch.equal(
            loaded.translate(x["text"], "text", "image"),
            model.translate(x["text"], "text", "image"),
        )


def test_load_pretrained_dispatches_to_impn(tmp_path: Path) -> None:
    IMPN(__import__("conftest").tiny_config()).save_pretrained(tmp_path)
    assert isinstance(load_pretrained(tmp_path), IMPN)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        load_pretrained(tmp_path)


def test_pairwise_translator_grows_quadratically_heads_linearly() -> None:
    def params(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    counts = {}
    for m in (2, 4, 8):
        dims = {f"m{i}": 16 for i in range(m)}
        counts[m] = (
            params(MLPTranslator(BaselineConfig("mlp-translator", dims, hidden=8))),
            params(ContrastiveHeads(BaselineConfig("contrastive-heads", dims, dim=8))),
        )
    assert counts[8][0] == 28 * counts[2][0]  # M(M-1): 56 maps against 2
    assert counts[8][1] == 4 * counts[2][1]  # M heads: 8 against 2


def test_multi_source_translation_averages_present_sources() -> None:
    model = MLPTranslator(BaselineConfig("mlp-translator", dict(DIMS), hidden=8))
    x = tri_modal_inputs(2)
    both = model.translate({"text": x["text"], "audio": x["audio"]}, target="image")
    expected = 0.5 * (
        model.translate(x["text"], "text", "image") + model.translate(x["audio"], "audio", "image")
    )
    torch.testing.assert_close(both, expected)


@pytest.mark.parametrize("method", ["contrastive-heads", "mlp-translator"])
def test_baselines_train_through_the_same_cli(method: str, tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=120, groups=20)
    run = tmp_path / method
    argv = ["fit", str(data), "--out", str(run), "--method", method, "--max-steps", "20"]
    assert main([*argv, "--batch-size", "32", "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["method"] == method
    mode = "soil" if method == "contrastive-heads" else "translate"
    assert main(["eval", str(run), str(data), "--split", "val", "--mode", mode, "--pool", "5"]) == 0
    assert main(["fit", "--resume", str(run), "--quiet"]) == 0  # already finished: a no-op resume


@pytest.mark.parametrize("method", ["contrastive-heads", "mlp-translator"])
def test_objective_weighs_pairs_by_shared_rows(method: str) -> None:
    model = build_model(method, dict(DIMS), {"hidden": 32} if method == "mlp-translator" else {})
    inputs = tri_modal_inputs(8)
    present = {m: torch.ones(8, dtype=torch.bool) for m in inputs}
    present["audio"] = torch.arange(8) < 3
    batch = Batch.of(inputs, present=present)
    kind = "contrastive" if method == "contrastive-heads" else "translation"
    for weighting in ("rows", "equal"):
        out = model.objective(LossSettings(pair_weighting=weighting))(batch)
        pairs = {k: float(v.detach()) for k, v in out.terms.items() if k.startswith(f"{kind}/")}
        rows = {k: 3 if "audio" in k else 8 for k in pairs}
        if weighting == "equal":
            rows = dict.fromkeys(pairs, 1)
        expected = sum(rows[k] * pairs[k] for k in pairs) / sum(rows.values())
        assert float(out.total.detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method", ["contrastive-heads", "mlp-translator"])
def test_fused_term_fits_each_dropped_modality_from_the_served_fusion(method: str) -> None:
    model = build_model(method, dict(DIMS), {"hidden": 32} if method == "mlp-translator" else {})
    batch = Batch.of(tri_modal_inputs(12))
    plain = model.objective(LossSettings())(batch)
    assert "fused" not in plain.terms  # no drop rate: the pairwise loss alone, as before
    with torch.no_grad():
        out = model.objective(LossSettings(baseline_drop_rate=0.6))(
            batch, torch.Generator().manual_seed(3)
        )
    least = 2 if isinstance(model, ContrastiveHeads) else 1  # InfoNCE needs two rows
    # The same draw, then every dropped modality scored through the serving path (embed or
    # translate of the kept modalities), which the loss must agree with.
    dropped = drop_modalities(batch.present, 0.6, torch.Generator().manual_seed(3))
    kept = {m: batch.present[m] & ~dropped[m] for m in batch.present}
    pooled = batch.pooled()
    expected, rows = [], []
    with torch.no_grad():
        for m in batch.embeddings:
            where = dropped[m]
            if int(where.sum()) < least:
                continue
            sources = {k: x[where] for k, x in batch.embeddings.items() if k != m}
            present = {k: kept[k][where] for k in sources}
            if isinstance(model, ContrastiveHeads):
                fused = model.embed(sources, present=present)
                term = info_nce(fused, model.heads[m](pooled[m][where]))
            else:
                fused = model.translate(sources, target=m, present=present)
                term = translation_loss(fused, pooled[m][where])
            assert float(out.terms[f"fused/{m}"]) == pytest.approx(float(term), rel=1e-5)
            expected.append(float(term) * int(where.sum()))
            rows.append(int(where.sum()))
    assert rows  # the draw dropped some modality in several rows
    assert float(out.terms["fused"]) == pytest.approx(sum(expected) / sum(rows), rel=1e-5)
    pairwise = out.terms["contrastive" if method == "contrastive-heads" else "translation"]
    assert float(out.total) == pytest.approx(float(pairwise + out.terms["fused"]), rel=1e-6)
    assert float(pairwise) == pytest.approx(float(plain.total.detach()), rel=1e-6)
