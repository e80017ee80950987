"""A benchmark on one data directory: every method, one split, one set of pools and seeds.

Built from parts, each its own module: :mod:`~vallayz_train.bench.spec` (what is evaluated, the
methods as objects), :mod:`~vallayz_train.bench.runs` (the learned methods trained under one
budget into run folders), :mod:`~vallayz_train.bench.measures` (retrieval, re-ranking,
geometry, stitching), :mod:`~vallayz_train.bench.sweeps` (missing modalities, noise),
:mod:`~vallayz_train.bench.report` and :mod:`~vallayz_train.bench.plots`. :func:`run_benchmark`
runs them in order and writes ``results.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vallayz.data import PairedEmbeddings
from vallayz.eval import default_pairs
from vallayz_train.bench.measures import Geometry, Measure, Retrieval, Stitching
from vallayz_train.bench.report import finish_report, write_report
from vallayz_train.bench.runs import Bench, Runs, train_runs
from vallayz_train.bench.spec import (
    CLOSED_FORM,
    LEARNED,
    BenchSpec,
    ClosedFormMethod,
    LearnedMethod,
    Pair,
    check_settings,
)
from vallayz_train.bench.sweeps import CorruptedSourceSweep, MissingSweep, NoiseSweep
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import lock_run
from vallayz_train.trainer import data_modalities

__all__ = [
    "CLOSED_FORM",
    "LEARNED",
    "MEASURES",
    "Bench",
    "BenchSpec",
    "ClosedFormMethod",
    "LearnedMethod",
    "Measure",
    "Pair",
    "Runs",
    "check_settings",
    "finish_report",
    "run_benchmark",
    "write_report",
]

# The tables of a benchmark, in the order of results.json; adding a measure or a sweep is
# adding one object here (or passing the list to run_benchmark).
MEASURES: tuple[Measure, ...] = (
    Retrieval(),
    Geometry(),
    Stitching(),
    MissingSweep(),
    NoiseSweep(),
    CorruptedSourceSweep(),
)


def run_benchmark(
    data_dir: str | Path,
    out_dir: str | Path,
    spec: BenchSpec | None = None,
    train: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
    measures: Sequence[Measure] = MEASURES,
) -> dict[str, Any]:
    """Trains every learned method under one training config (an equal step budget), fits
    the closed-form maps on the training rows, evaluates every method with the same random
    pools, runs the sweeps, and writes ``results.json``, ``report.md`` and plots; returns the
    results.

    Runs already in ``out_dir`` (a ``summary.json`` beside them) are reused, so an interrupted
    benchmark continues where it stopped.
    """
    out = Path(out_dir)
    # One benchmark per folder at a time (its method runs take their own locks too).
    with lock_run(out):
        return _run_benchmark(
            data_dir,
            out,
            spec or BenchSpec(),
            train or TrainConfig(),
            model_overrides,
            progress,
            log,
            measures,
        )


def _run_benchmark(
    data_dir: str | Path,
    out: Path,
    spec: BenchSpec,
    train: TrainConfig,
    model_overrides: dict[str, Any] | None,
    progress: bool,
    log: Any,
    measures: Sequence[Measure],
) -> dict[str, Any]:
    """:func:`run_benchmark`, with the lock of ``out`` held."""
    data = PairedEmbeddings(data_dir)
    # Every setting is checked before anything is written or trained.
    check_settings(spec, train, model_overrides, data_modalities(data, model_overrides))
    out.mkdir(parents=True, exist_ok=True)
    splits = data.split_indices(train.split_seed)
    runs = train_runs(data_dir, out, spec, train, model_overrides, progress, log)
    rows = splits[spec.split]
    log(f"evaluating on the {spec.split} split ({len(rows)} rows)")
    pairs = spec.pairs or default_pairs(list(data.arrays))
    bench = Bench(data, spec, train, runs, pairs, rows, splits["train"])
    tables = {measure.key: measure.rows(bench) for measure in measures}
    results = {
        "data": str(Path(data_dir).resolve()),
        "split": spec.split,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "spec": asdict(spec) | {"subsets": {k: len(v) for k, v in spec.subsets.items()}},
        "train": asdict(train),
        "train_seconds": runs.seconds,
        "hardware": hardware(train.device),
        **tables,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(out, results)
    return results


def hardware(device: str) -> str:
    """The processor (and GPU, when training ran on one) in words, for the report."""
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({cpu})"
    return f"CPU ({cpu})"
