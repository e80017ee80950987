"""The report of a benchmark: ``report.md`` from its results, and the shared tail (the tables
of the measures and sweeps that ran, the plots, the file) that every benchmark's report ends with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vallayz.eval import format_table
from vallayz_train.bench.plots import bench_plots

# (results key, section title, how its table is written) of the sections after the tables.
Section = tuple[str, str, Callable[[list[dict[str, Any]]], str]]


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
        ("corrupted_sweep", "One source corrupted (Gaussian noise on the first source only)",
         ["method", "corrupted", "snr_db", "source", "target", "pool", "R@1", "R@5"]),
    ]  # fmt: skip
    return finish_report(
        out,
        results,
        lines,
        [(key, title, _columns(shown)) for key, title, shown in sections],
        bench_plots,
    )


def _columns(shown: list[str] | None) -> Callable[[list[dict[str, Any]]], str]:
    return lambda rows: format_table(rows, shown)


def finish_report(
    out: Path,
    results: dict[str, Any],
    lines: list[str],
    sections: Sequence[Section],
    plots: Callable[[Path, dict[str, Any]], list[Path]],
) -> Path:
    """Appends to ``lines`` each section whose results are not empty and the plots (or how to
    get them), and writes ``out/report.md``; returns its path."""
    for key, title, table in sections:
        if results.get(key):
            lines += [f"## {title}", "", table(results[key]), ""]
    try:
        paths = plots(out, results)
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in paths]
    except ImportError:
        lines += ["(plots need matplotlib: pip install 'vallayz[plot]')"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
