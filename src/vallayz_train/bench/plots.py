"""The plots of a benchmark report (PNG, when matplotlib is installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def bench_plots(out: Path, results: dict[str, Any]) -> list[Path]:
    """Recall at k of every direction, and R@1 along the missing-modality and noise sweeps."""
    from vallayz_train.plots import _pyplot

    plt = _pyplot()
    paths = []
    retrieval = [r for r in results["retrieval"] if r.get("queries_from") == "all"]
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
