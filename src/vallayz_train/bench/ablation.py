"""Ablations as benchmark specs: named variants of a method, each trained by the same trainer
into its own run folder at one budget and scored on the *validation* split; the test split is
scored only on request (``AblationSpec.split``), to report the variant chosen on validation.

A :class:`Variant` says what it changes (model config fields, training config fields, the data
through a :class:`DataChange` object, the method); an :class:`AblationSpec` says how every
variant is trained and scored. Finished variants are reused and interrupted ones resumed, as in
the benchmark, so an interrupted ablation continues.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vallayz.data import PairedEmbeddings
from vallayz.errors import VallayzUserError
from vallayz.eval import PerturbedView, format_table, model_encoder, rerank_table, retrieval_table
from vallayz.eval.perturb import drop_sources
from vallayz_train.bench.runs import train_run
from vallayz_train.bench.spec import Pair, check_pairs
from vallayz_train.config import TrainConfig
from vallayz_train.names import ABLATION_MODES
from vallayz_train.options import replace_atomically
from vallayz_train.run_folder import load_model


class DataChange(Protocol):
    """A change of the data folder a variant trains on."""

    def prepare(self, data_dir: Path, out: Path) -> Path:
        """The data folder of the variant (built under ``out`` if needed, and reused)."""
        ...

    def model_changes(self, data_dir: Path) -> dict[str, Any]:
        """Model config changes that go with the data change (e.g. fewer modalities)."""
        ...


@dataclass(frozen=True)
class Variant:
    """One named change of the reference setting.

    Attributes:
        model: Model config fields that change. For a method other than IMPN, the
            reference's ``token_buckets`` applies, and these fields are that method's own
            (e.g. FuseMix's ``depth``).
        train: Training config fields that change; ``loss_weights`` holds only the weights
            that change.
        data: How the data folder changes (None: the ablation's data as it is).
        method: The trainer's method name.
        fusion_stage_of: Train a fusion stage (``vallayz fit --fuse``) from the finished run
            of this other variant, in the same ablation folder and at the same seed (trained
            first when it is missing), instead of a model of its own; ``train`` then sets the
            stage's training fields.
        fusion_parts: What the fusion stage trains: "both", "layers" or "gate".
    """

    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    data: DataChange | None = None
    method: str = "impn"
    fusion_stage_of: str | None = None
    fusion_parts: str = "both"

    def configs(
        self, model_defaults: dict[str, Any], train: TrainConfig, data_dir: Path
    ) -> tuple[dict[str, Any], TrainConfig]:
        """The model overrides and training config of this variant."""
        model = {**model_defaults, **self.model}
        if self.data is not None:
            model.update(self.data.model_changes(data_dir))
        if self.method != "impn":
            shared = {"token_buckets": model["token_buckets"]} if "token_buckets" in model else {}
            model = {**shared, **self.model}
        weights = {**train.loss_weights, **self.train.get("loss_weights", {})}
        return model, replace(train, **{**self.train, "loss_weights": weights})


@dataclass
class AblationSpec:
    """How every variant of an ablation is trained and scored."""

    # Optimizer steps of every variant (validated once, at the end).
    steps: int = 400
    # Rows per optimizer step.
    batch_size: int = 256
    # Training seed (initialisation, batch order, dropout); the split stays the same.
    seed: int = 0
    # Training config fields every variant starts from, besides the budget above.
    base: dict[str, Any] = field(default_factory=dict)
    # Scored directions.
    pairs: list[Pair] = field(default_factory=list)
    # Candidate pool size of the validation retrieval.
    pool: int = 1000
    # Retrieval paths scored ("soil", "bridged", "fused" on multi-source pairs, "translate");
    # each method is scored on those it serves.
    modes: tuple[str, ...] = ("soil",)
    # Candidates re-scored per query by variants with a match head.
    rerank_depth: int = 50
    # Also score noisy_pair with noise at this SNR on its source (its n-grams withheld), and
    # every multi-source pair with that noise on its first source only (one source corrupted).
    noisy_snr: float | None = None
    # The direction of the noisy score (None: the first single-source pair of `pairs`).
    noisy_pair: Pair | None = None
    # Also score every multi-source pair with each source dropped for this share of the rows.
    missing: float | None = None
    # Split scored: "val" to choose among variants; "test" only for the variant chosen on
    # validation (its finished run is reused, not trained again).
    split: str = "val"

    def __post_init__(self) -> None:
        if self.split not in ("val", "test"):
            raise VallayzUserError(f"split must be 'val' or 'test', got {self.split!r}")

    def train_config(self) -> TrainConfig:
        """The training config every variant starts from (the planner off, so that nothing
        changes the variant's settings during training)."""
        config = TrainConfig(
            max_steps=self.steps,
            batch_size=self.batch_size,
            eval_every=self.steps,
            checkpoint_every=self.steps,
            seed=self.seed,
            warmup_steps=min(50, self.steps // 4),
            planner=False,
        )
        return replace(config, **self.base)


def run_folder_name(name: str, seed: int) -> str:
    """The run folder of a variant: its name without spaces or brackets (and its seed)."""
    folder = "".join(c for c in name.replace(" ", "-") if c not in "(),")
    return f"{folder}-seed{seed}" if seed else folder


def run_ablation(
    data_dir: str | Path,
    out: str | Path,
    spec: AblationSpec,
    variants: Mapping[str, Variant],
    names: Sequence[str] | None = None,
    model_defaults: dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Trains and scores the variants ``names`` (default: all); writes their rows to
    ``ablation.json`` (``ablation-test.json`` for the test split, so that the validation table
    stays) after the rows already there of other variants (:func:`write_table`).

    Returns:
        One row per variant, pair and retrieval path: validation R@1 and R@5 on pools of
        ``spec.pool`` candidates (every query when a pair has fewer), and training seconds.
    """
    data_dir, out = Path(data_dir), Path(out)
    unknown = [n for n in names or () if n not in variants]
    if unknown:
        raise VallayzUserError(
            f"unknown variant(s) {unknown}; list the variants with vallayz ablate --list"
        )
    train = check_ablation(data_dir, spec, variants, names, model_defaults or {})
    table: list[dict[str, Any]] = []
    for name in names or list(variants):
        variant = variants[name]
        variant_data = data_dir if variant.data is None else variant.data.prepare(data_dir, out)
        model, config = variant.configs(model_defaults or {}, train, data_dir)
        run = out / run_folder_name(name, spec.seed)
        if variant.fusion_stage_of is None:
            seconds = train_run(variant_data, run, variant.method, model, config, progress, log)
        else:
            base = variants[variant.fusion_stage_of]
            base_model, base_config = base.configs(model_defaults or {}, train, data_dir)
            base_run = out / run_folder_name(variant.fusion_stage_of, spec.seed)
            train_run(variant_data, base_run, base.method, base_model, base_config, progress, log)
            seconds = train_stage(variant_data, base_run, run, variant, config, progress)
        rows = score_variant(run, variant_data, spec, config)
        label = name if not spec.seed else f"{name} (seed {spec.seed})"
        table += [{"variant": label, **row, "train s": seconds or 0.0} for row in rows]
        log(format_table(table[-len(rows) :]) if rows else "")
    log(format_table(table))
    name = "ablation.json" if spec.split == "val" else f"ablation-{spec.split}.json"
    write_table(out / name, table, log)
    return table


def write_table(path: Path, table: list[dict[str, Any]], log: Any = print) -> None:
    """Writes ``table`` to ``path`` after the rows already there of the variants it does not
    hold, so that calls with other variants into one folder add to its table instead of
    replacing it (a variant run again replaces its own rows). A file there that is not such a
    table is kept beside it as ``<name>.unreadable``."""
    kept: list[dict[str, Any]] = []
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if not (isinstance(old, list) and all(isinstance(row, dict) for row in old)):
                raise ValueError(f"{path} is not a list of rows")
        except (OSError, UnicodeDecodeError, ValueError):
            aside = path.with_name(f"{path.name}.unreadable")
            path.replace(aside)
            log(f"{path} was not an ablation table; it is kept as {aside}")
        else:
            ran = {row["variant"] for row in table}
            kept = [row for row in old if row.get("variant") not in ran]
    text = json.dumps(kept + table, indent=2) + "\n"
    replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def train_stage(
    data_dir: Path, base_run: Path, run: Path, variant: Variant, config: TrainConfig, progress: bool
) -> float | None:
    """Trains the fusion stage of ``variant`` from ``base_run`` into ``run``: nothing when it
    is finished, resumed when it was interrupted, else a new stage. Returns the seconds spent,
    or None for a finished run."""
    from vallayz_train.run_folder import LATEST, is_finished
    from vallayz_train.trainer import fit, fit_fusion_stage

    if is_finished(run):
        return None
    started = time.perf_counter()
    if (run / LATEST).exists():
        fit(data_dir, run, resume=True, progress=progress)
    else:
        layers, gate = variant.fusion_parts != "gate", variant.fusion_parts != "layers"
        fit_fusion_stage(
            data_dir, base_run, run, config, layers=layers, gate=gate, progress=progress
        )
    return time.perf_counter() - started


def check_ablation(
    data_dir: Path,
    spec: AblationSpec,
    variants: Mapping[str, Variant],
    names: Sequence[str] | None,
    model_defaults: dict[str, Any],
) -> TrainConfig:
    """Checks every setting of an ablation before anything is built or trained: the scored
    directions against the data's modalities, the pools, the paths, the training config and
    the model config of every variant to run (without building a model). Returns the training
    config every variant starts from.

    Raises:
        VallayzUserError: naming the setting at fault.
    """
    from vallayz.learned import model_config
    from vallayz_train.trainer import data_modalities

    data = PairedEmbeddings(data_dir, check_values=False)
    check_pairs(spec.pairs, data.modalities)
    if spec.noisy_snr is not None:
        if not math.isfinite(spec.noisy_snr):
            raise VallayzUserError(f"--noisy-snr must be a finite dB value, got {spec.noisy_snr}")
        if spec.noisy_pair is not None:
            check_pairs([spec.noisy_pair], data.modalities, "the noisy direction")
    if spec.pool < 2:
        raise VallayzUserError(
            f"--pool must be at least 2 candidates (a pool of {spec.pool} ranks nothing); use "
            "e.g. --pool 100"
        )
    unknown = [m for m in spec.modes if m not in ABLATION_MODES]
    if unknown or not spec.modes:
        raise VallayzUserError(
            f"modes must be among {list(ABLATION_MODES)}, got {list(spec.modes)}"
        )
    if spec.rerank_depth < 1:
        raise VallayzUserError(f"--rerank-depth must be at least 1, got {spec.rerank_depth}")
    try:
        train = spec.train_config()
    except VallayzUserError:
        raise
    except (ValueError, TypeError) as err:
        raise VallayzUserError(f"the training settings of the ablation are invalid: {err}") from err
    for name in names or list(variants):
        variant = variants[name]
        _check_stage(name, variant, variants)
        try:
            model, _ = variant.configs(model_defaults, train, data_dir)
            model_config(variant.method, data_modalities(data, model), model)
        except (ValueError, TypeError) as err:
            raise VallayzUserError(f"variant {name!r}: {err}") from err
    return train


def _check_stage(name: str, variant: Variant, variants: Mapping[str, Variant]) -> None:
    """Raises :class:`VallayzUserError` unless a fusion-stage variant names a variant to start
    from and known parts."""
    if variant.fusion_stage_of is not None and variant.fusion_stage_of not in variants:
        raise VallayzUserError(
            f"variant {name!r} is a fusion stage of {variant.fusion_stage_of!r}, which is not "
            "a variant; name a variant of the list"
        )
    if variant.fusion_parts not in ("both", "layers", "gate"):
        raise VallayzUserError(
            f"variant {name!r}: fusion_parts must be 'both', 'layers' or 'gate', got "
            f"{variant.fusion_parts!r}"
        )


def same_rows_table(
    model: Any, data: PairedEmbeddings, rows: np.ndarray, several: Sequence[Pair], pool: int
) -> list[dict[str, Any]]:
    """Each source of every multi-source pair alone (shared space), on the rows of that pair
    (every source and the target present), labelled ``"<target> (rows of a+b)"``: a
    single-source pair is otherwise scored on all of its own rows, a wider and different set
    of queries than the multi-source pair's."""
    encode = model_encoder(model, data, "soil")
    table: list[dict[str, Any]] = []
    for sources, target in several:
        held = np.stack([data.present[m][rows] for m in (*sources, target)]).all(axis=0)
        alone = [((m,), target) for m in sources]
        label = f"{target} (rows of {'+'.join(sources)})"
        table += [
            {**row, "target": label, "mode": "soil"}
            for row in retrieval_table(data, rows[held], encode, alone, pool)
        ]
    return table


def _views(
    data: PairedEmbeddings, spec: AblationSpec, usable: list[Pair], several: list[Pair]
) -> list[tuple[str, Any, list[Pair]]]:
    """The views of the data a variant is scored on, each with its label suffix and pairs:
    the data as it is, the noisy source, one source of each multi-source pair corrupted, and
    sources missing (the last three as ``spec`` asks)."""
    views: list[tuple[str, Any, list[Pair]]] = [("", data, usable)]
    if spec.noisy_snr is not None:
        # The noise sweep's setting: noise on the source vector, its n-grams withheld.
        pair = spec.noisy_pair or next(p for p in spec.pairs if len(p[0]) == 1)
        noisy = PerturbedView(data, noisy=pair[0], snr_db=spec.noisy_snr)
        views.append((f" at {spec.noisy_snr:g} dB", noisy, [pair]))
        for lead in dict.fromkeys(p[0][0] for p in several):
            corrupted = PerturbedView(data, noisy=(lead,), snr_db=spec.noisy_snr)
            chosen = [p for p in several if p[0][0] == lead]
            views.append((f", {lead} at {spec.noisy_snr:g} dB", corrupted, chosen))
    if spec.missing is not None and several:
        # The missing-modality sweep's setting: each source dropped for a share of rows.
        sources = sorted({m for p in several for m in p[0]})
        absent = drop_sources({m: data.present[m] for m in sources}, spec.missing)
        views.append(
            (f", {spec.missing * 100:g}% missing", PerturbedView(data, absent=absent), several)
        )
    return views


def score_variant(
    run: Path, data_dir: Path, spec: AblationSpec, config: TrainConfig
) -> list[dict[str, Any]]:
    """R@1 and R@5 of one trained variant on ``spec.split`` for every usable pair and view."""
    data = PairedEmbeddings(data_dir, check_values=False)
    val = data.split_indices(config.split_seed)[spec.split]
    model = load_model(run)
    known = model.config.modalities
    usable = [p for p in spec.pairs if all(m in known for m in (*p[0], p[1]))]
    several = [p for p in usable if len(p[0]) > 1]
    views = _views(data, spec, usable, several)
    # The paths asked for that the method serves (the heads: soil; the MLPs: translate), or
    # its first path when it serves none of them.
    served = model.capabilities.modes
    modes = [mode for mode in spec.modes if mode in served] or [served[0]]
    rows = [
        {**row, "target": f"{row['target']}{suffix}", "mode": mode}
        for mode in modes
        for suffix, view, view_pairs in views
        for row in retrieval_table(
            view, val, model_encoder(model, view, mode), view_pairs, spec.pool
        )
    ]
    if "soil" in served:
        rows += same_rows_table(model, data, val, several, spec.pool)
    if getattr(model, "match_head", None) is not None:
        # Re-ranked after the first stage of the variant's validation path.
        first = model_encoder(model, data, config.retrieval_mode)
        rows += [
            {**row, "mode": f"{config.retrieval_mode}, re-ranked top {spec.rerank_depth}"}
            for row in rerank_table(
                model, data, val, first, usable, spec.pool, 5, 0, spec.rerank_depth
            )
        ]
    return [
        {
            "pair": f"{row['source']}->{row['target']}",
            "mode": row["mode"],
            "pool": row["queries"] if row["pool"] == "all" else row["pool"],
            f"{spec.split} R@1": row["R@1"],
            f"{spec.split} R@5": row["R@5"],
        }
        for row in rows
        # Pools of spec.pool candidates, or every query when a pair has fewer.
        if row["pool"] == str(spec.pool) or int(str(row["queries"])) < spec.pool
    ]
