"""The bridged retrieval path: queries read from an absent target's nodes after message passing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config, tri_modal_inputs
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz.eval import model_encoder
from vallayz.losses import IMPNLoss, LossWeights
from vallayz.losses.infonce import info_nce
from vallayz.types import Batch
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import sigma_scale


def test_bridged_encoder_reads_the_target_nodes(tmp_path) -> None:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=40))
    model = IMPN(tiny_config()).eval()
    rows = np.flatnonzero(data.present["audio"])[:10]
    queries, candidates = model_encoder(model, data, "bridged")(("text", "audio"), "image", rows)
    with torch.no_grad():
        fused = model(data.batch(rows, ["text", "audio"])).soil["image"]
        own = model(data.batch(rows, ["image"]), isolate=True).soil["image"]
    torch.testing.assert_close(queries, fused)
    torch.testing.assert_close(candidates, own)
    # Fused by message passing: not the mean of the sources' own vectors.
    soil_queries, _ = model_encoder(model, data, "soil")(("text", "audio"), "image", rows)
    assert not torch.allclose(queries, soil_queries)


def test_models_without_message_passing_have_no_bridged_mode(tmp_path) -> None:
    from vallayz.learned import build_model

    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=40))
    heads = build_model("contrastive-heads", data.modalities, {})
    with pytest.raises(ValueError, match="mode='soil'"):
        model_encoder(heads, data, "bridged")


def test_bridged_term_is_infonce_of_dropped_modalities_against_their_own_soil() -> None:
    model = IMPN(tiny_config(variants=1, sigma=0.0)).eval()  # deterministic passes
    x = tri_modal_inputs(6)
    weights = LossWeights(bridged=1.0)
    loss = IMPNLoss(weights, drop_rate=1.0)  # every row keeps exactly one modality
    generator = torch.Generator().manual_seed(3)
    out = loss(model, x, generator)
    # Replay the same drop with the same generator stream: isolated pass draws nothing.
    from vallayz.masking import drop_modalities

    present = Batch.of(x).present
    dropped = drop_modalities(present, 1.0, torch.Generator().manual_seed(3))
    kept = {m: present[m] & ~dropped[m] for m in present}
    with torch.no_grad():
        iso = model(x, isolate=True)
        bridged = model(Batch.of(x, present=kept))
    terms, rows = [], []
    for m in x:
        r = dropped[m]
        if int(r.sum()) >= 2:
            terms.append(info_nce(bridged.soil[m][r], iso.soil[m][r], 0.07))
            rows.append(int(r.sum()))
    expected = sum(t * n for t, n in zip(terms, rows, strict=True)) / sum(rows)
    torch.testing.assert_close(out.terms["bridged"], expected)
    assert float(IMPNLoss(LossWeights(bridged=0.0))(model, x).terms["bridged"]) == 0.0


def test_cosine_sigma_schedule() -> None:
    constant, cosine = TrainConfig(), TrainConfig(sigma_schedule="cosine")
    assert [sigma_scale(s, 100, constant) for s in (0, 50, 100)] == [1.0, 1.0, 1.0]
    assert sigma_scale(0, 100, cosine) == 1.0
    assert sigma_scale(50, 100, cosine) == pytest.approx(0.5)
    assert sigma_scale(100, 100, cosine) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="sigma_schedule"):
        TrainConfig(sigma_schedule="linear")
