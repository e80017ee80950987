"""The runs of a benchmark: every learned method trained (or resumed, or reused) into its run
folder under one budget, and the encoders of every method over a view of the data."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.data import PairedEmbeddings
from vallayz.errors import VallayzUserError
from vallayz.eval import PerturbedView
from vallayz_train.bench.spec import BenchSpec, Pair, closed_form_method, learned_method
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import LATEST, is_finished, load_model, read_run
from vallayz_train.trainer import fit

# Training fields that may differ between a run and the settings that would reuse it: where it
# ran does not change what it learned.
_PLACE = ("device",)


def check_reusable(
    run: Path, method: str, overrides: dict[str, Any] | None, config: TrainConfig
) -> None:
    """Refuses to reuse (or resume) the run folder ``run`` for settings it was not started
    with: another method, other model fields, or another value of a training field it records
    (fields added to TrainConfig after it was written are not compared).

    Raises:
        VallayzUserError: naming the first differing setting and the fix.
    """
    record = read_run(run)
    wanted = json.loads(json.dumps(asdict(config)))
    differs: list[str] = []
    if record.get("method", "impn") != method:
        differs.append(f"method {record.get('method', 'impn')!r} (asked: {method!r})")
    if json.loads(json.dumps(overrides or {})) != (record.get("model") or {}):
        differs.append(f"model fields {record.get('model') or {}} (asked: {overrides or {}})")
    for key, value in record.get("train", {}).items():
        if key in wanted and key not in _PLACE and wanted[key] != value:
            differs.append(f"train {key}={value!r} (asked: {wanted[key]!r})")
    if differs:
        raise VallayzUserError(
            f"the run {run} was trained with other settings: {differs[0]}; a benchmark reuses a "
            "finished run only for the settings it was trained with, so pass another --out "
            "(or remove that run folder to train it again)"
        )


def matched_run_name(method: str, rate: float) -> str:
    """The run folder of ``method`` trained with modality dropout at ``rate``."""
    return f"{method}-dropout-{rate:g}"


def matched_config(train: TrainConfig, rate: float) -> TrainConfig:
    """The training config of the matched-dropout runs at ``rate``: ``train`` with modality
    dropout at ``rate`` for every learned method, the baselines included."""
    return replace(train, modality_dropout=rate, baseline_dropout=True)


@dataclass
class Runs:
    """The trained runs of a benchmark.

    Attributes:
        methods: Method name → run folder.
        matched: Missing rate → method name → run folder of the method trained with that
            modality dropout (:func:`matched_config`).
        seconds: Run folder name → training seconds (runs trained by this call only).
    """

    methods: dict[str, Path] = field(default_factory=dict)
    matched: dict[float, dict[str, Path]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def train_runs(
    data_dir: str | Path,
    out: Path,
    spec: BenchSpec,
    train: TrainConfig,
    model_overrides: dict[str, Any] | None,
    progress: bool,
    log: Any,
) -> Runs:
    """Trains every learned method of ``spec`` into ``out`` and, with ``spec.matched_dropout``,
    each of them again per positive missing rate of the sweep, with that modality dropout.

    A finished run is reused and an interrupted one resumed, so an interrupted benchmark
    continues where it stopped.
    """
    runs = Runs()

    def train_once(name: str, run: Path, config: TrainConfig) -> Path:
        overrides = learned_method(name).overrides(model_overrides, spec)
        seconds = train_run(data_dir, run, name, overrides, config, progress, log)
        if seconds is not None:
            runs.seconds[run.name] = seconds
        return run

    for name in spec.methods:
        runs.methods[name] = train_once(name, out / name, train)
    if spec.matched_dropout:
        for rate in [r for r in spec.missing_rates if r > 0]:
            config = matched_config(train, rate)
            runs.matched[rate] = {
                name: train_once(name, out / matched_run_name(name, rate), config)
                for name in spec.methods
            }
    return runs


def train_run(
    data_dir: str | Path,
    run: Path,
    method: str,
    overrides: dict[str, Any] | None,
    config: TrainConfig,
    progress: bool,
    log: Any,
) -> float | None:
    """Trains ``method`` into the run folder ``run``: nothing when it is finished, resumed from
    its last state when it was interrupted, else a new run (one that stopped before its first
    checkpoint starts again). Returns the seconds spent, or None for a finished run.

    Raises:
        VallayzUserError: when the run to reuse or resume was started with other settings.
    """
    if is_finished(run):
        check_reusable(run, method, overrides, config)
        return None
    started = time.perf_counter()
    if (run / LATEST).exists():
        check_reusable(run, method, overrides, config)
        log(f"resuming {method} in {run}")
        fit(data_dir, run, resume=True, progress=progress)
    else:
        log(f"training {method} -> {run}")
        fit(data_dir, run, overrides, config, progress=progress, method=method)
    return time.perf_counter() - started


@dataclass
class Bench:
    """Everything the measures and sweeps of one benchmark read: the data, the rows, the
    trained runs, and caches of the loaded models and fitted closed-form maps.

    Attributes:
        data: The data folder.
        spec: What the benchmark evaluates.
        train: The training config of every learned method.
        runs: The trained runs.
        pairs: The retrieval directions.
        rows: The rows of the evaluated split.
        train_rows: The training rows (closed-form maps fit on them).
        models: Run folder → loaded model (filled on first use).
        fitted: Closed-form method → its fitted maps (filled on first use).
    """

    data: PairedEmbeddings
    spec: BenchSpec
    train: TrainConfig
    runs: Runs
    pairs: list[Pair]
    rows: np.ndarray
    train_rows: np.ndarray
    models: dict[str, Any] = field(default_factory=dict)
    fitted: dict[str, dict[tuple[str, str], Any]] = field(default_factory=dict)

    def model(self, run: Path) -> Any:
        """The model of a run folder, loaded once."""
        if str(run) not in self.models:
            self.models[str(run)] = load_model(run)
        return self.models[str(run)]

    def encoders(
        self,
        view: PairedEmbeddings | PerturbedView,
        runs: dict[str, Path] | None = None,
        closed_form: bool = True,
        native_only: bool = False,
    ) -> dict[str, Any]:
        """Encoders of every method over ``view``, labelled for the tables; closed-form maps
        fit once, on the clean data.

        Args:
            view: The data or a perturbed view of it.
            runs: Label → run folder of the learned methods (default: the benchmark's).
            closed_form: Include the closed-form maps.
            native_only: Only paths whose vectors lie in the target's native space.
        """
        encoders: dict[str, Any] = {}
        for label, run in (self.runs.methods if runs is None else runs).items():
            model = self.model(run)
            encoders.update(learned_method(label).encoders(label, model, view, native_only))
        for name in self.spec.closed_form if closed_form else ():
            method = closed_form_method(name)
            encoders.update(
                method.encoders(
                    view,
                    self.train_rows,
                    self.spec.normalisation,
                    self.fitted.setdefault(name, {}),
                    anchor_data=self.data,
                    native_only=native_only,
                )
            )
        return encoders
