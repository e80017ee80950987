"""IMPN's translation pass with the complement of each draw (``translate_complement``)."""

from __future__ import annotations

import torch
from conftest import tiny_config, tri_modal_inputs

from vallayz import IMPN, Batch
from vallayz.impn_loss import _complement, _draw_drop
from vallayz.losses import IMPNLoss, LossWeights
from vallayz.losses.reconstruction import reconstruction_loss
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import loss_settings


def test_the_complement_swaps_kept_and_dropped_in_rows_with_a_drop() -> None:
    present = {
        "text": torch.tensor([True, True, False, True, True, True]),
        "audio": torch.tensor([True, False, True, True, False, True]),
        "image": torch.tensor([False, True, True, True, False, True]),
    }
    names = list(present)
    drop = _draw_drop(present, names, 0.5, torch.Generator().manual_seed(4))
    other = _complement(present, names, drop)
    for i in range(6):
        had_drop = any(bool(drop.dropped[m][i]) for m in names)
        assert bool(other.rows[i]) == had_drop and (
            not had_drop or any(bool(other.kept[m][i]) for m in names)
        )
        for m in names:
            if not present[m][i]:
                assert not other.dropped[m][i] and not other.kept[m][i]
            elif had_drop:
                # Every present modality is dropped by exactly one of the two draws.
                assert bool(other.dropped[m][i]) != bool(drop.dropped[m][i])
            else:
                assert not other.dropped[m][i] and other.kept[m][i]
    for m in names:
        assert other.lost_rows[m] == int(other.dropped[m].sum())


def test_with_the_complement_every_row_of_two_is_translated_both_ways() -> None:
    """Two modalities in every row, each row keeping one: the draw and its complement
    translate every row in both directions, whatever the draw, so the term is the mean of the
    per-row losses of both directions (float64, deterministic passes)."""
    model = IMPN(tiny_config(modalities={"text": 12, "image": 16}, variants=1, sigma=0.0))
    model = model.double().eval()
    inputs = {m: v.double() for m, v in tri_modal_inputs(7).items() if m != "audio"}
    weights = LossWeights(translation=1.0)
    loss = IMPNLoss(weights, drop_rate=1.0, translate_complement=True)
    with torch.no_grad():
        got = [
            loss(model, inputs, torch.Generator().manual_seed(seed)).terms["translation"]
            for seed in (0, 1)
        ]
        one_way = [
            IMPNLoss(weights, drop_rate=1.0)(
                model, inputs, torch.Generator().manual_seed(seed)
            ).terms["translation"]
            for seed in (0, 1)
        ]
        per_row = []
        for source, target in (("text", "image"), ("image", "text")):
            alone = Batch.of(
                inputs,
                present={source: torch.ones(7, dtype=torch.bool), target: torch.zeros(7).bool()},
            )
            decoded = model(alone).decoded[target]
            per_row += [
                reconstruction_loss(decoded[i : i + 1], inputs[target][i : i + 1], "mse+cosine")
                for i in range(7)
            ]
    expected = torch.stack(per_row).mean()
    for value in got:
        torch.testing.assert_close(value, expected)
    # One direction per row depends on which direction each row drew.
    assert not torch.allclose(one_way[0], one_way[1])


def test_the_training_config_passes_the_complement_to_the_loss() -> None:
    assert loss_settings(TrainConfig(translate_complement=True)).translate_complement
    assert not loss_settings(TrainConfig()).translate_complement


def test_the_translation_recipe_file_builds_valid_configs() -> None:
    """``benchmarks/configs/translation.json``, the recipe BENCHMARKS.md and the README name,
    gives a valid model and training config that carries the source and translates both ways."""
    from dataclasses import replace
    from pathlib import Path

    from vallayz_train.options import load_json

    recipe = load_json(str(Path(__file__).parents[1] / "benchmarks/configs/translation.json"))
    model = replace(tiny_config(), **recipe["model"])
    train = TrainConfig.from_dict(recipe["train"])
    assert model.carry_dim > 0 and model.carry_front_end
    assert train.translate_complement and train.modality_dropout == 1.0
    assert loss_settings(train).weights.translation == 3.0
