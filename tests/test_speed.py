"""The speed table's script runs end to end at toy sizes (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def load_speed(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The script as a module."""
    spec = importlib.util.spec_from_file_location("speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    speed = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "speed", speed)  # dataclasses look their module up
    spec.loader.exec_module(speed)
    return speed


def test_speed_table_has_its_rows_and_finite_numbers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    speed = load_speed(monkeypatch)
    assert speed.main(["--tiny"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0][2:]: line for line in lines[1:]}
    expected = ["step M=2 (IMPN / heads)", "ranks (throughput vs matmul+top-10)"]
    if importlib.util.find_spec("latentis"):
        expected += [f"fit {m} (vallayz / latentis)" for m in ("linear", "l-ortho", "ortho")]
    if importlib.util.find_spec("faiss"):
        expected += [f"index {k} (throughput vs exact top-10)" for k in ("hnsw", "ivf")]
    assert sorted(rows) == sorted(expected)
    for line in rows.values():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        numbers = [float(cell) for cell in cells[1:4] + cells[6:8] if cell != "nan"]
        assert len(numbers) >= 3 and all(math.isfinite(n) and n >= 0 for n in numbers)
        for value in re.findall(r"(?:diff |recall@10 |GFLOP |/ )([0-9.e+-]+)", cells[5]):
            assert math.isfinite(float(value))
    # Both steps do matrix products, so both counts are positive.
    flops = re.search(r"GFLOP ([0-9.e+-]+) / ([0-9.e+-]+)", rows["step M=2 (IMPN / heads)"])
    assert flops is not None and min(float(flops[1]), float(flops[2])) > 0


def step_gflops(output: str) -> dict[str, float]:
    """Step row label → IMPN GFLOP of that row."""
    found = re.findall(r"^\| (step [^|]*?) \|.*GFLOP ([0-9.e+-]+) /", output, re.MULTILINE)
    return {label: float(value) for label, value in found}


def test_a_variant_adds_its_own_rows_and_a_smaller_model_counts_less_work(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    speed = load_speed(monkeypatch)
    argv = ["--tiny", "--parts", "steps", "--impn", "layers=1", "--loss", "cycle=0"]
    assert speed.main(argv) == 0
    flops = step_gflops(capsys.readouterr().out)
    assert sorted(flops) == ["step M=2 (IMPN / heads)", "step M=2, layers=1 cycle=0 (IMPN / heads)"]
    # One bridge layer instead of two: strictly less arithmetic (a weight of 0 keeps the cycle
    # pass, which the planner's critic reads, so cycle=0 alone saves none).
    assert 0 < flops["step M=2, layers=1 cycle=0 (IMPN / heads)"] < flops["step M=2 (IMPN / heads)"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--impn", "layer=1"], "layer"),
        (["--impn", "layers"], "NAME=VALUE"),
        (["--loss", "cycles=0"], "cycles"),
        (["--loss", "cycle=-1"], "cycle"),
    ],
)
def test_a_bad_variant_is_refused_before_any_timing(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    speed = load_speed(monkeypatch)
    with pytest.raises(SystemExit) as raised:
        speed.main(["--tiny", "--parts", "steps", *argv])
    assert message in str(raised.value) + capsys.readouterr().err
