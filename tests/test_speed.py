"""The speed table's script runs end to end at toy sizes (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def test_speed_table_has_its_rows_and_finite_numbers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    speed = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "speed", speed)  # dataclasses look their module up
    spec.loader.exec_module(speed)
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
