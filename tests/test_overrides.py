"""``--model key=value`` and ``--train key=value`` on fit, bench and ablate: parsed as JSON,
applied over the config file, checked before any data is built; and a benchmark that refuses
to reuse a run trained with other settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import never, one_line_error
from synthetic import write_synthetic

from vallayz.errors import VallayzUserError
from vallayz_train.bench.runs import check_reusable, train_run
from vallayz_train.cli import main
from vallayz_train.config import TrainConfig
from vallayz_train.options import key_value

SMALL = ["--model", "soil_dim=16", "--model", "heads=2", "--model", "layers=1"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("soil_dim=256", ("soil_dim", 256)),
        ("lr=3e-4", ("lr", 3e-4)),
        ("final_norm=false", ("final_norm", False)),
        ("update=gru", ("update", "gru")),
        ('token_buckets={"bo": 8}', ("token_buckets", {"bo": 8})),
        ("sender_candidates=null", ("sender_candidates", None)),
        ("name=a=b", ("name", "a=b")),
    ],
)
def test_a_key_value_reads_its_value_as_json_or_else_as_a_string(
    text: str, expected: tuple[str, Any]
) -> None:
    assert key_value(text) == expected


@pytest.mark.parametrize("text", ["soil_dim", "=3", " =3"])
def test_a_key_value_without_a_key_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected key=value"):
        key_value(text)


def test_fit_takes_model_and_train_fields_over_the_config_file(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=60, groups=12)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"soil_dim": 32}, "train": {"warmup_steps": 5}}))
    run = tmp_path / "run"
    argv = ["fit", str(data), "--out", str(run), "--config", str(config), "--quiet"]
    argv += [*SMALL, "--train", "warmup_steps=1", "--train", "batch_size=8", "--max-steps", "2"]
    argv += ["--train", "max_steps=50", "--planner", "off"]
    assert main(argv) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["model"] == {"soil_dim": 16, "heads": 2, "layers": 1}
    # --train over the file, the named option (--max-steps) over --train.
    assert record["train"]["warmup_steps"] == 1
    assert record["train"]["batch_size"] == 8
    assert record["train"]["max_steps"] == 2
    assert json.loads((run / "config.json").read_text())["soil_dim"] == 16


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--model", "soil_dims=8"],
            "--model soil_dims: no model config has this field; did you mean 'soil_dim'?",
        ),
        (["--model", "top_k=0"], "top_k must be a positive integer"),
        (["--train", "lr=fast"], "--train"),
        (["--train", "warmup=3"], "warmup"),
    ],
)
def test_fit_refuses_a_bad_override_before_it_reads_the_data(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: list[str],
    message: str,
) -> None:
    import vallayz_train.trainer as trainer

    data = write_synthetic(tmp_path / "data", rows=60, groups=12)
    if option[0] == "--train" or "soil_dims" in option[1]:
        # Refused while the options are read, before the trainer is called.
        monkeypatch.setattr(trainer, "fit", never)
    run = tmp_path / "run"
    assert main(["fit", str(data), "--out", str(run), "--quiet", *option]) == 2
    assert message in one_line_error(capsys)
    assert not run.exists()


def test_a_malformed_override_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(tmp_path), "--out", str(tmp_path / "run"), "--model", "soil_dim"])
    assert exit_.value.code == 2
    assert "argument --model: expected key=value" in capsys.readouterr().err


def test_fit_resume_refuses_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic(tmp_path / "data", rows=60, groups=12)
    run = tmp_path / "run"
    argv = ["fit", str(data), "--out", str(run), "--quiet", *SMALL, "--max-steps", "1"]
    assert main([*argv, "--train", "batch_size=8"]) == 0
    capsys.readouterr()
    for option in (["--model", "soil_dim=32"], ["--train", "lr=0.1"]):
        assert main(["fit", "--resume", str(run), "--quiet", *option]) == 2
        assert f"{option[0]} cannot change a run being resumed" in one_line_error(capsys)


def test_bench_refuses_a_bad_override_before_it_builds_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vallayz_train.bench as bench
    from vallayz_train.digits import bench as digits
    from vallayz_train.emoji import bench as emoji
    from vallayz_train.tibetan import bench as tibetan

    for module in (digits, emoji, tibetan):
        monkeypatch.setattr(module, "build_data", never)
    monkeypatch.setattr(bench, "train_runs", never)
    data = write_synthetic(tmp_path / "data", rows=60, groups=12)
    out = tmp_path / "out"
    for option, message in [
        (["--model", "heads=3"], "does not divide soil_dim"),
        (["--model", "lyers=3"], "did you mean 'layers'?"),
        (["--train", "lr=-1"], "lr"),
    ]:
        for command in (["tibetan"], ["emoji"], ["digits"], ["data", str(data)]):
            argv = ["bench", *command, "--out", str(out), "--quiet", *option]
            assert main(argv) == 2, (command, option)
            assert message in one_line_error(capsys), (command, option)
            assert not out.exists()


def test_a_benchmark_reuses_a_finished_run_only_for_its_own_settings(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=60, groups=12)
    run = tmp_path / "run"
    model = {"soil_dim": 16, "heads": 2, "layers": 1}
    config = TrainConfig.from_dict({"max_steps": 1, "batch_size": 8, "planner": False})

    def silent(*_: Any) -> None:
        return None

    assert train_run(data, run, "impn", model, config, False, silent) is not None
    # The same settings (and another device) reuse it: nothing is trained.
    assert train_run(data, run, "impn", dict(model), config, False, silent) is None
    check_reusable(run, "impn", model, TrainConfig.from_dict({**config.__dict__, "device": "cpu"}))
    for method, fields, train in [
        ("contrastive-heads", model, config),
        ("impn", {**model, "soil_dim": 32}, config),
        ("impn", model, TrainConfig.from_dict({"max_steps": 2, "batch_size": 8, "planner": False})),
    ]:
        with pytest.raises(VallayzUserError, match="was trained with other settings"):
            train_run(data, run, method, fields, train, False, silent)
