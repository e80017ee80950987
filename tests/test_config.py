from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_config

from vallayz import IMPNConfig


def test_json_round_trip(tmp_path: Path) -> None:
    config = tiny_config(sigma={"text": 0.1, "audio": 0.0, "image": 0.2}, update="gru")
    config.to_json(tmp_path / "c.json")
    assert IMPNConfig.from_json(tmp_path / "c.json") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"modalities": {"a": 3}}, "at least two"),
        ({"modalities": {"a": 3, "b.c": 2}}, "not usable"),
        ({"modalities": {"a": 3, "b": 0}}, "positive integer"),
        ({"heads": 3}, "does not divide"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"top_k": 0}, "top_k"),
        ({"variants": 0}, "variants"),
        ({"update": "lstm"}, "update"),
        ({"dropout": 1.0}, "dropout"),
        ({"sigma": -0.1}, "sigma"),
        ({"sigma": {"text": 0.1}}, "missing"),
        ({"sigma": 0.0, "learn_sigma": True}, "learn_sigma"),
        ({"schema_version": 99}, "upgrade vallayz"),
    ],
)
def test_invalid_configs_are_rejected_with_a_fix(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown IMPN config field"):
        IMPNConfig.from_dict({"modalities": {"a": 2, "b": 2}, "soil": 3})


def test_train_config_rejects_an_unknown_pair_weighting() -> None:
    from vallayz_train.config import TrainConfig

    assert TrainConfig().pair_weighting == "rows"
    with pytest.raises(ValueError, match="pair weighting must be one of"):
        TrainConfig(pair_weighting="size")
