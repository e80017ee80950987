from __future__ import annotations

from pathlib import Path

from synthetic import write_synthetic

from vallayz_train.bench import BenchSpec, run_benchmark
from vallayz_train.config import TrainConfig


def test_multiway_closed_forms_appear_in_every_table(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=150, groups=25)
    spec = BenchSpec(
        pairs=[(("text",), "image"), (("text", "image"), "audio")],
        pool=8,
        pools=2,
        methods=(),
        closed_form=("ortho", "cca", "gpa", "gcpa"),
        missing_rates=(0.0, 0.75),
        snrs=(10.0,),
    )
    train = TrainConfig(max_steps=2, batch_size=32, eval_every=2, planner=False)
    results = run_benchmark(
        data, tmp_path / "bench", spec, train, None, progress=False, log=lambda *_: None
    )
    retrieval = {r["method"] for r in results["retrieval"]}
    assert retrieval == {
        "ortho (standard)",
        "cca (standard) (shared space)",
        "cca (standard) (translate)",
        "gpa (standard) (shared space)",
        "gpa (standard) (translate)",
        "gcpa (standard) (shared space)",
    }
    # The shared spaces retrieve far above chance (1 in 8) on the structured synthetic data.
    for row in results["retrieval"]:
        if row["pool"] == "8" and row["source"] == "text":
            assert row["R@1"] > 0.3, row
    assert {r["method"] for r in results["missing_sweep"]} >= retrieval
    cycles = {r["method"] for r in results["geometry"] if r["metric"].startswith("cycle")}
    assert cycles == {"ortho (standard)", "cca (standard)", "gpa (standard)"}
    stitched = {r["method"] for r in results["stitching"]}
    assert stitched == {
        "ortho (standard)",
        "cca (standard) (translate)",
        "gpa (standard) (translate)",
    }
