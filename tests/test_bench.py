from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from synthetic import write_synthetic

from vallayz.data import PairedEmbeddings
from vallayz.learned import load_pretrained
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
        missing_rates=(0.0, 0.75),
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
        "impn (fused)",
        "impn (translate)",
        "contrastive-heads (shared space)",
        "ortho (standard)",
    }
    for method in methods:
        for pool in ("8", "all"):
            rows = [r for r in results["retrieval"] if r["method"] == method and r["pool"] == pool]
            # The fused path is scored on the pair with several sources only.
            assert len(rows) == (1 if method == "impn (fused)" else 2), (method, pool)
            if method == "impn (fused)":
                assert rows[0]["source"] == "text+image"
    # Every method is scored on the same queries.
    assert (
        len({(r["source"], r["queries"]) for r in results["retrieval"] if r["pool"] == "all"}) == 2
    )
    assert {r["missing_rate"] for r in results["missing_sweep"]} == {0.0, 0.75}
    _check_matched_dropout(tmp_path / "bench", results, spec.methods)
    assert {r["snr_db"] for r in results["noise_sweep"]} == {10.0}
    corrupted = results["corrupted_sweep"]
    assert {(r["corrupted"], r["snr_db"], r["source"]) for r in corrupted} == {
        ("text", 10.0, "text+image")
    }
    assert {"impn (shared space)", "impn (fused)"} <= {r["method"] for r in corrupted}
    stitched = {r["method"]: r for r in results["stitching"] if r["source"] == "text"}
    assert set(stitched) == {"impn (translate)", "ortho (standard)"}
    ortho = stitched["ortho (standard)"]
    assert ortho["native"] > 0.6  # the classes are separable in image space
    # The text -> image map keeps the latent classes, so its translations classify far above
    # the largest class's share; translations paired with the wrong rows or labels would not.
    labels = [item["label"] for item in PairedEmbeddings(data).items]
    largest = max(labels.count(c) for c in set(labels)) / len(labels)
    assert ortho["stitched"] > largest + 0.15, (ortho, largest)
    assert ortho["ratio"] == pytest.approx(ortho["stitched"] / ortho["native"])
    metrics = {(r["method"], r["metric"]) for r in results["geometry"]}
    assert ("impn", "cycle text->image->text") in metrics
    assert ("ortho (standard)", "cycle text->image->text") in metrics
    assert ("contrastive-heads", "kNN Jaccard@10 audio") in metrics
    report = (tmp_path / "bench" / "report.md").read_text()
    assert (
        "Missing-modality sweep" in report and "ortho (standard)" in report and "seed 0" in report
    )
    assert "Stitching" in report and "Geometry" in report
    # The report command rebuilds report.md from results.json alone.
    (tmp_path / "bench" / "report.md").unlink()
    assert main(["report", str(tmp_path / "bench")]) == 0
    assert (tmp_path / "bench" / "report.md").read_text() == report
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["spec"]["pool"] == 8
    _check_impn_metrics(data, tmp_path / "bench" / "impn", results, train.split_seed)


def _check_matched_dropout(out: Path, results: dict[str, Any], methods: tuple[str, ...]) -> None:
    """Every learned method has its matched-dropout run at the positive missing rate of the
    sweep (0.75, and no other), trained with that dropout where the default run trained IMPN
    with 0.5 and the baselines with none: the baselines' loss gains the fused term."""
    sweep = results["missing_sweep"]
    for method in methods:
        label = f"{method}, trained with matching dropout"
        matched = [r for r in sweep if r["method"].startswith(label + " (")]
        assert {r["missing_rate"] for r in matched} == {0.75}, method
        default = [r for r in sweep if r["method"].startswith(method + " (")]
        assert {r["missing_rate"] for r in default} == {0.0, 0.75}, method
        # The same queries as the default run's, so the rows compare like for like.
        assert sorted(r["queries"] for r in matched) == sorted(
            r["queries"] for r in default if r["missing_rate"] == 0.75
        )
        base = json.loads((out / method / "run.json").read_text())["train"]
        run = json.loads((out / f"{method}-dropout-0.75" / "run.json").read_text())["train"]
        assert run["modality_dropout"] == 0.75 and run["baseline_dropout"] is True
        assert base["modality_dropout"] == 0.5 and base["baseline_dropout"] is False
        logged = {line.split(",")[1] for line in (out / method / "metrics.csv").open()}
        logged_matched = {
            line.split(",")[1] for line in (out / f"{method}-dropout-0.75" / "metrics.csv").open()
        }
        if method == "impn":
            assert "train/translation" in logged and "train/translation" in logged_matched
        else:
            assert not any("fused" in name for name in logged), logged
            assert any("fused" in name for name in logged_matched), logged_matched


def _check_impn_metrics(
    data_dir: Path, run: Path, results: dict[str, Any], split_seed: int
) -> None:
    """Recomputes IMPN's text -> image translation retrieval and its text -> image -> text cycle
    from the saved model, in float64 with plain loops, and compares them with the results."""
    data = PairedEmbeddings(data_dir)
    model = load_pretrained(run).eval()
    test = data.split_indices(split_seed)["test"]
    used = test[data.present["text"][test] & data.present["image"][test]]
    assert len(set(data.keys("image"))) == len(data.items)  # one gold candidate per query
    with torch.no_grad():
        text = data.batch(used, ["text"]).pooled()["text"]
        there = model.translate(text, "text", "image")
        back = model.translate(there, "image", "text")
    queries = there.double().tolist()
    candidates = data.batch(used, ["image"]).pooled()["image"].double().tolist()

    def cosine(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v, strict=True))
        return dot / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    ranks = []
    for i, query in enumerate(queries):
        gold = cosine(query, candidates[i])
        others = [cosine(query, c) for j, c in enumerate(candidates) if j != i]
        ranks.append(1 + sum(score >= gold for score in others))
    (row,) = _rows(results["retrieval"], "impn (translate)", "text", "image", pool="all")
    assert row["queries"] == len(used)
    assert row["R@1"] == pytest.approx(sum(r == 1 for r in ranks) / len(ranks), abs=1e-9)
    assert row["R@10"] == pytest.approx(sum(r <= 10 for r in ranks) / len(ranks), abs=1e-9)
    assert row["MRR"] == pytest.approx(sum(1 / r for r in ranks) / len(ranks), abs=1e-6)
    (cycle,) = [
        r
        for r in results["geometry"]
        if r["method"] == "impn" and r["metric"] == "cycle text->image->text"
    ]
    x, y = text.double(), back.double()
    mse = sum(float((x[i] - y[i]).pow(2).sum()) for i in range(len(used))) / x.numel()
    assert cycle["mse"] == pytest.approx(mse, rel=1e-5)


def _rows(rows: list[dict[str, Any]], method: str, source: str, target: str, **match: Any) -> list:
    return [
        r
        for r in rows
        if r["method"] == method
        and r["source"] == source
        and r["target"] == target
        and r.get("queries_from", "all") == "all"
        and all(r[k] == v for k, v in match.items())
    ]


def test_impn_parameters_grow_linearly_pairwise_quadratically() -> None:
    rows = scaling_table(counts=(2, 3, 4, 5), dim=16, soil_dim=8, hidden=8, batch_size=4, repeats=1)
    impn = [r["impn_params"] for r in rows]
    pairwise = [r["pairwise_params"] for r in rows]
    steps = {b - a for a, b in itertools.pairwise(impn)}
    assert len(steps) == 1  # each extra modality adds the same number of parameters: O(M)
    per_map = pairwise[0] // 2
    assert pairwise == [per_map * m * (m - 1) for m in (2, 3, 4, 5)]  # O(M^2)
    assert all(r["impn_step_ms"] > 0 and r["pairwise_step_ms"] > 0 for r in rows)
