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


def test_encoder_switches_default_on_serialise_and_are_checked(tmp_path: Path) -> None:
    from vallayz.errors import VallayzUserError

    switches = ("bridge_attention", "bridge_ffn", "final_norm")
    assert all(getattr(tiny_config(), s) is True for s in switches)
    off = tiny_config(bridge_attention=False, bridge_ffn=False, final_norm=False)
    off.to_json(tmp_path / "c.json")
    assert IMPNConfig.from_json(tmp_path / "c.json") == off
    # A config written before the switches existed reads as today's model.
    old = {k: v for k, v in tiny_config().to_dict().items() if k not in switches}
    assert IMPNConfig.from_dict(old) == tiny_config()
    for switch in switches:
        with pytest.raises(ValueError, match=f"{switch} must be true or false"):
            tiny_config(**{switch: 0})
        with pytest.raises(VallayzUserError, match=switch):
            IMPNConfig.from_dict({**old, switch: "no"})
