from __future__ import annotations

import itertools
import json
from pathlib import Path

from synthetic import write_synthetic

from vallayz_train.bench import BenchSpec, run_benchmark
from vallayz_train.cli import main
from vallayz_train.config import TrainConfig
from vallayz_train.scaling import scaling_table


def test_benchmark_writes_every_method_direction_and_sweep(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=150, groups=25)
    spec = BenchSpec(
        pairs=[(("text",), "image"), (("text", "image"), "audio")],
        pool=8,
        pools=2,
        methods=("impn", "contrastive-heads"),
        closed_form=("ortho",),
        missing_rates=(0.0, 0.5),
        snrs=(10.0,),
        matched_dropout=True,
    )
    train = TrainConfig(max_steps=8, batch_size=32, eval_every=4, planner=False)
    results = run_benchmark(
        data,
        tmp_path / "bench",
        spec,
        train,
        {"soil_dim": 16, "heads": 2},
        progress=False,
        log=lambda *_: None,
    )
    methods = {r["method"] for r in results["retrieval"]}
    assert methods == {
        "impn (shared space)",
        "impn (bridged)",
        "impn (translate)",
        "contrastive-heads (shared space)",
        "ortho (standard)",
    }
    for method in methods:
        for pool in ("8", "all"):
            rows = [r for r in results["retrieval"] if r["method"] == method and r["pool"] == pool]
            assert len(rows) == 2, (method, pool)
    # Every method is scored on the same queries.
    assert (
        len({(r["source"], r["queries"]) for r in results["retrieval"] if r["pool"] == "all"}) == 2
    )
    assert {r["missing_rate"] for r in results["missing_sweep"]} == {0.0, 0.5}
    matched = [r for r in results["missing_sweep"] if "matching dropout" in r["method"]]
    assert matched and {r["missing_rate"] for r in matched} == {0.5}
    run = json.loads((tmp_path / "bench" / "impn-dropout-0.5" / "run.json").read_text())
    assert run["train"]["modality_dropout"] == 0.5
    assert {r["snr_db"] for r in results["noise_sweep"]} == {10.0}
    stitched = {r["method"]: r for r in results["stitching"] if r["source"] == "text"}
    assert set(stitched) == {"impn (translate)", "ortho (standard)"}
    assert stitched["ortho (standard)"]["native"] > 0.6  # the classes are separable in image space
    assert 0.0 <= stitched["ortho (standard)"]["stitched"] <= 1.0
    metrics = {(r["method"], r["metric"]) for r in results["geometry"]}
    assert ("impn", "cycle text->image->text") in metrics
    assert ("ortho (standard)", "cycle text->image->text") in metrics
    assert ("contrastive-heads", "kNN Jaccard@10 audio") in metrics
    report = (tmp_path / "bench" / "report.md").read_text()
    assert (
        "Missing-modality sweep" in report and "ortho (standard)" in report and "seed 0" in report
    )
    assert "Stitching" in report and "Geometry" in report
    # Re-running reuses the trained runs; the report command rewrites the report.
    assert main(["report", str(tmp_path / "bench")]) == 0
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["spec"]["pool"] == 8


def test_impn_parameters_grow_linearly_pairwise_quadratically() -> None:
    rows = scaling_table(counts=(2, 3, 4, 5), dim=16, soil_dim=8, hidden=8, batch_size=4, repeats=1)
    impn = [r["impn_params"] for r in rows]
    pairwise = [r["pairwise_params"] for r in rows]
    steps = {b - a for a, b in itertools.pairwise(impn)}
    assert len(steps) == 1  # each extra modality adds the same number of parameters: O(M)
    per_map = pairwise[0] // 2
    assert pairwise == [per_map * m * (m - 1) for m in (2, 3, 4, 5)]  # O(M^2)
    assert all(r["impn_step_ms"] > 0 and r["pairwise_step_ms"] > 0 for r in rows)
