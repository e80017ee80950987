"""A benchmark on one data directory: every method, one split, one set of pools and seeds.

Trains IMPN and the learned baselines under one training config (an equal step budget), fits
the closed-form maps on the training rows, evaluates every method on the test split with the
same random pools, runs the missing-modality and noise sweeps, and writes ``results.json``,
``report.md`` and plots.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.data import PairedEmbeddings
from vallayz.eval import (
    ClosedFormEncoder,
    PerturbedView,
    default_pairs,
    drop_sources,
    format_table,
    model_encoder,
    rerank_table,
    retrieval_table,
)
from vallayz.eval.stitching import stitching_accuracy
from vallayz.learned import load_pretrained
from vallayz.losses import knn_jaccard
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import fit

Pair = tuple[tuple[str, ...], str]


@dataclass
class BenchSpec:
    """What a benchmark evaluates."""

    # (sources, target) retrieval directions; None means every ordered pair of modalities.
    pairs: list[Pair] | None = None
    # Candidate pool size, number of random pools, and their seed.
    pool: int = 1000
    pools: int = 5
    seed: int = 0
    # Learned methods trained under the same TrainConfig.
    methods: tuple[str, ...] = ("impn", "contrastive-heads", "mlp-translator")
    # Closed-form maps fitted on the training rows.
    closed_form: tuple[str, ...] = ("ortho", "l-ortho", "linear", "affine")
    # Pre-processing of the closed-form maps.
    normalisation: str = "standard"
    # Test-time missing rates of the sweep (on pairs with several sources).
    missing_rates: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    # Signal-to-noise ratios (dB) of the noise sweep on the sources of the first pair.
    snrs: tuple[float, ...] = (20.0, 10.0, 5.0, 0.0)
    # Split of the evaluation.
    split: str = "test"
    # Also train one IMPN per missing rate with modality dropout at that rate, for the sweep.
    matched_dropout: bool = False
    # Extra row subsets evaluated separately, e.g. {"novel": rows}.
    subsets: dict[str, list[int]] = field(default_factory=dict)
    # Candidates re-scored per query by the joint match head of models that have one (IMPN with
    # match_head), after the first stage of their default retrieval path.
    rerank_depth: int = 50
    # Trainable token front ends (modality -> buckets) given to every learned method alike,
    # for data with <modality>.tokens.npy; {} for none.
    token_buckets: dict[str, int] = field(default_factory=dict)


def _encoders(
    data: PairedEmbeddings | PerturbedView,
    runs: dict[str, Path],
    train_rows: np.ndarray,
    spec: BenchSpec,
    clean: PairedEmbeddings,
    fitted: dict[str, dict[tuple[str, str], Any]],
    models: dict[str, Any],
) -> dict[str, Any]:
    """Encoders of every method over ``data``; models load once, closed-form maps fit once on
    ``clean``."""
    encoders: dict[str, Any] = {}
    for method, run in runs.items():
        if method not in models:
            models[method] = load_pretrained(run).eval()
        model = models[method]
        if model.capabilities.embeds:
            encoders[f"{method} (shared space)"] = model_encoder(model, data, "soil")  # type: ignore[arg-type]
        if model.capabilities.bridges:
            encoders[f"{method} (bridged)"] = model_encoder(model, data, "bridged")  # type: ignore[arg-type]
        if model.capabilities.translates:
            encoders[f"{method} (translate)"] = model_encoder(model, data, "translate")  # type: ignore[arg-type]
    for name in spec.closed_form:
        encoders[f"{name} ({spec.normalisation})"] = ClosedFormEncoder(
            data,  # type: ignore[arg-type]
            train_rows,
            name,
            spec.normalisation,
            anchor_data=clean,
            maps=fitted.setdefault(name, {}),
        )
    return encoders


def run_benchmark(
    data_dir: str | Path,
    out_dir: str | Path,
    spec: BenchSpec | None = None,
    train: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Runs the whole benchmark; returns (and writes) its results.

    Runs already in ``out_dir`` (a ``summary.json`` beside them) are reused, so an interrupted
    benchmark continues where it stopped.
    """
    spec = spec or BenchSpec()
    train = train or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = PairedEmbeddings(data_dir)
    splits = data.split_indices(train.split_seed)
    rows = splits[spec.split]
    pairs = spec.pairs or default_pairs(list(data.arrays))
    runs: dict[str, Path] = {}
    timings: dict[str, float] = {}

    def train_once(method: str, run: Path, config: TrainConfig) -> Path:
        if (run / "summary.json").exists():
            return run
        started = time.perf_counter()
        if (run / "latest").exists():
            log(f"resuming {method} in {run}")
            fit(data_dir, run, resume=True, progress=progress)
        else:
            log(f"training {method} -> {run}")
            overrides = dict(model_overrides or {}) if method == "impn" else {}
            if spec.token_buckets:
                overrides["token_buckets"] = spec.token_buckets
            fit(data_dir, run, overrides, config, progress=progress, method=method)
        timings[run.name] = time.perf_counter() - started
        return run

    for method in spec.methods:
        runs[method] = train_once(method, out / method, train)
    matched: dict[float, Path] = {}
    if spec.matched_dropout and "impn" in spec.methods:
        for rate in spec.missing_rates:
            if rate > 0:
                config = replace(train, modality_dropout=rate)
                matched[rate] = train_once("impn", out / f"impn-dropout-{rate:g}", config)

    log(f"evaluating on the {spec.split} split ({len(rows)} rows)")
    fitted: dict[str, dict[tuple[str, str], Any]] = {}
    models: dict[str, Any] = {}
    retrieval: list[dict[str, Any]] = []
    subsets = {"all": rows, **{k: np.asarray(v) for k, v in spec.subsets.items()}}
    encoders_all = _encoders(data, runs, splits["train"], spec, data, fitted, models)
    for method, encode in encoders_all.items():
        for subset, subset_rows in subsets.items():
            for row in retrieval_table(
                data, subset_rows, encode, pairs, spec.pool, spec.pools, spec.seed
            ):
                retrieval.append({"method": method, "queries_from": subset, **row})

    for method, model in models.items():
        if getattr(model, "match_head", None) is None:
            continue
        first_stage = model_encoder(model, data, train.retrieval_mode)
        for subset, subset_rows in subsets.items():
            for row in rerank_table(
                model,
                data,
                subset_rows,
                first_stage,
                pairs,
                spec.pool,
                spec.pools,
                spec.seed,
                spec.rerank_depth,
            ):
                retrieval.append({"method": f"{method} (re-ranked)", "queries_from": subset, **row})

    geometry = _geometry(data, rows, runs, models, pairs, fitted, splits["train"], spec)
    stitching = _stitching(data, rows, splits["train"], encoders_all, pairs)

    missing: list[dict[str, Any]] = []
    for sources, target in [p for p in pairs if len(p[0]) > 1]:
        for rate in spec.missing_rates:
            absent = drop_sources({s: data.present[s] for s in sources}, rate, spec.seed)
            view = PerturbedView(data, absent=absent)
            for method, encode in _encoders(
                view, runs, splits["train"], spec, data, fitted, models
            ).items():
                table = retrieval_table(
                    view, rows, encode, [(sources, target)], spec.pool, spec.pools, spec.seed
                )  # type: ignore[arg-type]
                for row in table:
                    missing.append({"method": method, "missing_rate": rate, **row})
            if rate in matched:
                name = f"impn-dropout-{rate:g}"
                only_impn = replace(spec, closed_form=())
                encoders = _encoders(
                    view, {name: matched[rate]}, splits["train"], only_impn, data, fitted, models
                )
                for method, encode in encoders.items():
                    table = retrieval_table(
                        view, rows, encode, [(sources, target)], spec.pool, spec.pools, spec.seed
                    )  # type: ignore[arg-type]
                    for row in table:
                        label = method.replace(name, "impn, trained with matching dropout")
                        missing.append({"method": label, "missing_rate": rate, **row})

    noise: list[dict[str, Any]] = []
    sources, target = pairs[0]
    for snr in spec.snrs:
        view = PerturbedView(data, noisy=sources, snr_db=snr, seed=spec.seed)
        for method, encode in _encoders(
            view, runs, splits["train"], spec, data, fitted, models
        ).items():
            for row in retrieval_table(
                view, rows, encode, [(sources, target)], spec.pool, spec.pools, spec.seed
            ):  # type: ignore[arg-type]
                noise.append({"method": method, "snr_db": snr, **row})

    results = {
        "data": str(Path(data_dir).resolve()),
        "split": spec.split,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "spec": asdict(spec) | {"subsets": {k: len(v) for k, v in spec.subsets.items()}},
        "train": asdict(train),
        "train_seconds": timings,
        "hardware": _hardware(train.device),
        "retrieval": retrieval,
        "geometry": geometry,
        "stitching": stitching,
        "missing_sweep": missing,
        "noise_sweep": noise,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(out, results)
    return results


GEOMETRY_ROWS = 2000


def _geometry(
    data: PairedEmbeddings,
    rows: np.ndarray,
    runs: dict[str, Path],
    models: dict[str, Any],
    pairs: list[Pair],
    fitted: dict[str, dict[tuple[str, str], Any]],
    train_rows: np.ndarray,
    spec: BenchSpec,
) -> list[dict[str, Any]]:
    """Cycle reconstruction ``A → B → A`` (MSE, cosine) and kNN preservation (Jaccard@10 between
    native and shared-space neighbours) on up to ``GEOMETRY_ROWS`` test rows."""
    out: list[dict[str, Any]] = []
    directions = {(s[0], t) for s, t in pairs if len(s) == 1}
    translators: dict[str, Any] = {m: models[m] for m in runs if models[m].capabilities.translates}
    for name in spec.closed_form:
        encoder = ClosedFormEncoder(
            data, train_rows, name, spec.normalisation, maps=fitted.setdefault(name, {})
        )
        translators[f"{name} ({spec.normalisation})"] = encoder
    with torch.no_grad():
        for method, model in translators.items():
            for a, b in sorted(directions):
                used = rows[data.present[a][rows] & data.present[b][rows]][:GEOMETRY_ROWS]
                if len(used) < 2:
                    continue
                x = data.batch(used, [a]).pooled()[a]
                if isinstance(model, ClosedFormEncoder):
                    there = model.translator(a, b).transform(x.double())
                    back = model.translator(b, a).transform(there).float()
                else:
                    back = model.translate(model.translate(x, a, b), b, a)
                mse = float((back - x).pow(2).mean())
                cos = float(torch.nn.functional.cosine_similarity(back, x, dim=-1).mean())
                out.append(
                    {"method": method, "metric": f"cycle {a}->{b}->{a}", "mse": mse, "cosine": cos}
                )
        for method in runs:
            model = models[method]
            if not model.capabilities.embeds:
                continue
            for m in data.arrays:
                used = rows[data.present[m][rows]][:GEOMETRY_ROWS]
                if len(used) > 11:
                    batch = data.batch(used, [m])
                    jaccard = float(knn_jaccard(batch.pooled()[m], model.embed(batch), 10))
                    out.append(
                        {"method": method, "metric": f"kNN Jaccard@10 {m}", "value": jaccard}
                    )
    return out


def _stitching(
    data: PairedEmbeddings,
    rows: np.ndarray,
    train_rows: np.ndarray,
    encoders: dict[str, Any],
    pairs: list[Pair],
) -> list[dict[str, Any]]:
    """Zero-shot stitching when the items table has a ``label`` column: a classifier fitted on
    native target vectors of the training rows, applied to ``source → target`` translations."""
    if not data.items or "label" not in data.items[0]:
        return []
    classes = {label: i for i, label in enumerate(sorted({item["label"] for item in data.items}))}
    labels = torch.tensor([classes[item["label"]] for item in data.items])
    out: list[dict[str, Any]] = []
    for sources, target in [p for p in pairs if len(p[0]) == 1]:
        fit_rows = train_rows[data.present[target][train_rows]]
        native_train = data.batch(fit_rows, [target]).pooled()[target]
        used = rows[data.present[target][rows] & data.present[sources[0]][rows]]
        for method, encode in encoders.items():
            if "(shared space)" in method or "(bridged)" in method:
                continue  # its vectors live in a shared space, not in the target's native one
            queries, natives = encode(sources, target, used)
            scores = stitching_accuracy(
                native_train, labels[fit_rows], natives, queries, labels[used]
            )
            out.append({"method": method, "source": sources[0], "target": target, **scores})
    return out


def _hardware(device: str) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({cpu})"
    return f"CPU ({cpu})"


def _select(rows: Sequence[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """Writes ``report.md`` (and PNG plots when matplotlib is installed) from ``results``."""
    spec = results["spec"]
    lines = [
        "# Benchmark report",
        "",
        f"- data: `{results['data']}`; split `{results['split']}` "
        f"(sizes {results['split_sizes']}), split by group with seed "
        f"{results['train']['split_seed']}",
        f"- pools: {spec['pools']} random pools of {spec['pool']} (seed {spec['seed']}) and the "
        "whole split; a hit counts when the retrieved item's gold key equals the query's",
        f"- learned methods trained under one budget: max_steps={results['train']['max_steps']}, "
        f"epochs={results['train']['epochs']}, batch_size={results['train']['batch_size']}, "
        f"seed={results['train']['seed']}; closed-form maps fitted on the training rows "
        f"({spec['normalisation']} scaling)",
        f"- hardware: {results['hardware']}; training seconds "
        f"{results['train_seconds'] or '(reused runs)'}",
        "",
        "## Retrieval",
        "",
    ]
    columns = [
        "method",
        "source",
        "target",
        "pool",
        "queries",
        "R@1",
        "R@5",
        "R@10",
        "MRR",
        "median_rank",
    ]
    for subset in dict.fromkeys(r["queries_from"] for r in results["retrieval"]):
        lines += [
            f"### queries: {subset}",
            "",
            format_table(_select(results["retrieval"], queries_from=subset), columns),
            "",
        ]
    sections: list[tuple[str, str, list[str] | None]] = [
        ("geometry", "Geometry: cycle reconstruction and kNN preservation (test rows)",
         ["method", "metric", "mse", "cosine", "value"]),
        ("stitching", "Stitching: a classifier on native target vectors applied to translations",
         None),
        ("missing_sweep", "Missing-modality sweep (sources dropped at test)",
         ["method", "missing_rate", "source", "target", "pool", "R@1", "R@5"]),
        ("noise_sweep", "Noise sweep (Gaussian noise on the sources at the given SNR)",
         ["method", "snr_db", "source", "target", "pool", "R@1", "R@5"]),
    ]  # fmt: skip
    for key, title, shown in sections:
        if results.get(key):
            lines += [f"## {title}", "", format_table(results[key], shown), ""]
    try:
        plots = _plots(out, results)
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    except ImportError:
        lines += ["(plots need matplotlib: pip install 'vallayz[plot]')"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plots(out: Path, results: dict[str, Any]) -> list[Path]:
    from vallayz_train.plots import _pyplot

    plt = _pyplot()
    paths = []
    retrieval = _select(results["retrieval"], queries_from="all")
    directions = list(dict.fromkeys((r["source"], r["target"]) for r in retrieval))
    pool = str(results["spec"]["pool"])
    fig, axes = plt.subplots(
        1, len(directions), figsize=(4.5 * len(directions), 3.8), squeeze=False
    )
    for ax, (source, target) in zip(axes.flat, directions, strict=True):
        chosen = [r for r in retrieval if (r["source"], r["target"]) == (source, target)]
        chosen = [r for r in chosen if r["pool"] == pool] or [
            r for r in chosen if r["pool"] == "all"
        ]
        for r in chosen:
            ax.plot([1, 5, 10], [r["R@1"], r["R@5"], r["R@10"]], marker="o", label=r["method"])
        ax.set_title(f"{source} → {target} (pool {chosen[0]['pool'] if chosen else '-'})")
        ax.set_xlabel("k")
        ax.set_ylabel("R@k")
        ax.set_ylim(0, 1)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "recall_at_k.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    for key, xlabel, name in (
        ("missing_sweep", "missing_rate", "missing.png"),
        ("noise_sweep", "snr_db", "noise.png"),
    ):
        rows = [r for r in results[key] if r["pool"] == pool] or [
            r for r in results[key] if r["pool"] == "all"
        ]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in dict.fromkeys(r["method"] for r in rows):
            chosen = [r for r in rows if r["method"] == method]
            ax.plot(
                [r[xlabel] for r in chosen], [r["R@1"] for r in chosen], marker="o", label=method
            )
        ax.set_xlabel(xlabel.replace("_", " "))
        ax.set_ylabel("R@1")
        ax.set_title(f"{rows[0]['source']} → {rows[0]['target']}")
        if key == "noise_sweep":
            ax.invert_xaxis()
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
