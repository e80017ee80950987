from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz_train.cli import main

ROOT = Path(__file__).resolve().parents[1]


def mean_total(metrics: Path, steps: range) -> float:
    with metrics.open() as handle:
        rows = [
            r
            for r in csv.DictReader(handle)
            if r["name"] == "train/total" and int(r["step"]) in steps
        ]
    return float(np.mean([float(r["value"]) for r in rows]))


def test_fit_eval_translate_retrieve_plot_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_synthetic(tmp_path / "data")
    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                str(data),
                "--out",
                str(run),
                "--max-steps",
                "60",
                "--batch-size",
                "64",
                "--lr",
                "1e-3",
                "--front-end-lr",
                "2e-3",
                "--quiet",
            ]
        )
        == 0
    )
    train = json.loads((run / "run.json").read_text())["train"]
    assert (train["lr"], train["front_end_lr"]) == (1e-3, 2e-3)
    assert mean_total(run / "metrics.csv", range(55, 60)) < 0.7 * mean_total(
        run / "metrics.csv", range(5)
    )
    for name in [
        "config.json",
        "model.safetensors",
        "best/model.safetensors",
        "planner.jsonl",
        "summary.json",
    ]:
        assert (run / name).is_file(), name
    decisions = [json.loads(line) for line in (run / "planner.jsonl").read_text().splitlines()]
    assert decisions and {"step", "action", "parameter", "score_before"} <= set(decisions[0])

    assert main(["eval", str(run), str(data), "--split", "test", "--pool", "10"]) == 0
    results = json.loads((run / "eval-test-soil.json").read_text())["results"]
    whole = [r for r in results if r["pool"] == "all"]
    assert len(whole) == 6  # every ordered pair of three modalities
    for row in whole:
        chance = 1.0 / row["queries"]
        assert row["R@1"] > 10 * chance, row  # held-out groups, far above chance

    queries = np.random.default_rng(0).normal(size=(4, 3, 6)).astype(np.float32)
    np.save(tmp_path / "q.npy", queries)
    out = tmp_path / "out.npy"
    args = [
        "translate",
        str(run),
        "--source",
        "audio",
        "--target",
        "text",
        "--input",
        str(tmp_path / "q.npy"),
    ]
    assert main([*args, "--output", str(out)]) == 0
    expected = (
        IMPN.from_pretrained(run).eval().translate(torch.from_numpy(queries), "audio", "text")
    )
    np.testing.assert_allclose(np.load(out), expected.detach().numpy(), rtol=1e-5, atol=1e-6)

    capsys.readouterr()
    args = [
        "retrieve",
        str(run),
        "--source",
        "text",
        "--target",
        "image",
        "--candidates",
        str(data),
    ]
    assert main([*args, "--query-ids", "item0003", "--k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "query item0003" in printed and printed.count("sentence") == 3

    assert main(["plot", str(run)]) == 0
    for name in ["curves.png", "planner.png", "gates.png", "soil.png"]:
        assert (run / "plots" / name).stat().st_size > 5000

    # User mistakes: status 2, one line.
    assert main(["fit", str(data), "--out", str(run)]) == 2
    assert (
        main(
            [
                *args[:2],
                "--source",
                "smell",
                "--target",
                "image",
                "--candidates",
                str(data),
                "--query-ids",
                "x",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already holds a run" in err[0]


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=30, groups=10)
    done = subprocess.run(
        [sys.executable, "-m", "vallayz", "check", str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "30 rows" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "vallayz", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def _fit(data: Path, run: Path, config: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "vallayz",
        "fit",
        str(data),
        "--out",
        str(run),
        "--config",
        str(config),
        "--quiet",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_run_killed_at_any_moment_resumes_to_the_same_weights(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=160, groups=20)
    config = tmp_path / "config.json"
    train = {
        "max_steps": 24,
        "batch_size": 32,
        "checkpoint_every": 1,
        "eval_every": 5,
        "planner_every": 4,
        "warmup_steps": 3,
    }
    config.write_text(
        json.dumps({"model": {"soil_dim": 32, "heads": 2, "dropout": 0.1}, "train": train})
    )
    whole = _fit(data, tmp_path / "whole", config)
    assert whole.wait(timeout=300) == 0, whole.stderr.read() if whole.stderr else ""

    run = tmp_path / "killed"
    process = _fit(data, run, config)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and process.poll() is None:
        latest = run / "latest"
        if latest.exists() and int(latest.read_text().strip().split("-")[1]) >= 8:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            killed_at = int(latest.read_text().strip().split("-")[1])
            break
        time.sleep(0.02)
    assert killed_at is not None and killed_at < 23, "the run ended before it could be killed"
    assert process.returncode == -signal.SIGKILL

    resumed = subprocess.run(
        [sys.executable, "-m", "vallayz", "fit", "--resume", str(run), "--quiet"],
        capture_output=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    a, b = (
        load_file(str(tmp_path / "whole" / "model.safetensors")),
        load_file(str(run / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (run / "metrics.csv").read_text() == (tmp_path / "whole" / "metrics.csv").read_text()
    assert (run / "planner.jsonl").read_text() == (tmp_path / "whole" / "planner.jsonl").read_text()


def test_bench_tibetan_help_and_choices_match_the_benchmark_constants() -> None:
    # The CLI spells the choices as literals to keep its heavy imports lazy; this keeps them in
    # step. Its defaults are those of TibetanSettings (tests/test_settings.py).
    import argparse

    from vallayz_train.cli import build_parser
    from vallayz_train.encoders import FRAME_POOLINGS, SPEECH_FEATURES
    from vallayz_train.tibetan import constants as bench

    def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                return action.choices[name]
        raise AssertionError(f"no subcommand {name!r}")

    tibetan = subparser(subparser(build_parser(), "bench"), "tibetan")
    options = {action.dest: action for action in tibetan._actions}
    assert set(options["speech_pooling"].choices) == set(FRAME_POOLINGS)
    assert options["speech_pooling"].default == bench.SPEECH_POOLING == "mean"
    assert "averages of equal segments (the default)" in options["speech_pooling"].help
    assert tuple(options["speech_features"].choices) == SPEECH_FEATURES
    assert options["speech_features"].default == SPEECH_FEATURES[0]
    assert options["speech_nodes"].default == bench.SPEECH_NODES
    assert f"(default {bench.SPEECH_NODES})" in options["speech_nodes"].help
    assert options["token_buckets"].default == bench.TOKEN_BUCKETS
