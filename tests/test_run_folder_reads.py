"""The readers of a run folder that vallayz plot uses: the recorded data path, the metrics, the
planner's decisions and the IMPN of a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz.errors import VallayzUserError
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import (
    METRICS,
    PLANNER_LOG,
    RUN_FILE,
    load_impn,
    read_metrics,
    read_planner_log,
    read_run,
    recorded_data,
)
from vallayz_train.trainer import fit

SMALL = {"soil_dim": 16, "heads": 2, "layers": 1, "variants": 2, "top_k": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An IMPN run and a contrastive-heads run, three steps each."""
    root = tmp_path_factory.mktemp("runs")
    data = write_synthetic(root / "data", rows=60, groups=12)
    config = TrainConfig(max_steps=3, batch_size=16, warmup_steps=1, planner=False)
    fit(data, root / "impn", dict(SMALL), config, progress=False)
    fit(data, root / "heads", {}, config, progress=False, method="contrastive-heads")
    return {"impn": root / "impn", "heads": root / "heads"}


def test_recorded_data_is_the_path_of_run_json_or_none(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    assert recorded_data(runs["impn"]) == read_run(runs["impn"])["data"]
    assert recorded_data(tmp_path) is None  # a model folder: no run.json
    (tmp_path / RUN_FILE).write_text("{}")
    assert recorded_data(tmp_path) is None
    (tmp_path / RUN_FILE).write_text("{")
    with pytest.raises(VallayzUserError, match="is not valid JSON"):
        recorded_data(tmp_path)
    (tmp_path / RUN_FILE).write_text("[]")
    with pytest.raises(VallayzUserError, match="must hold a JSON object"):
        recorded_data(tmp_path)


def test_read_metrics_gives_each_logged_series_in_order(runs: dict[str, Path]) -> None:
    series = read_metrics(runs["impn"])
    with (runs["impn"] / METRICS).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert set(series) == {row["name"] for row in rows} and "train/total" in series
    steps, values = series["train/total"]
    logged = [row for row in rows if row["name"] == "train/total"]
    assert steps == [int(row["step"]) for row in logged]
    assert values == [float(row["value"]) for row in logged]


def test_read_planner_log_skips_blank_lines(tmp_path: Path) -> None:
    decisions = [{"step": 10, "action": "propose"}, {"step": 20, "action": "keep"}]
    lines = [json.dumps(d) for d in decisions]
    (tmp_path / PLANNER_LOG).write_text(f"{lines[0]}\n\n{lines[1]}\n")
    assert read_planner_log(tmp_path) == decisions


def test_load_impn_refuses_a_run_of_another_method(runs: dict[str, Path]) -> None:
    assert isinstance(load_impn(runs["impn"]), IMPN)
    with pytest.raises(VallayzUserError, match="unknown IMPN config field"):
        load_impn(runs["heads"])
