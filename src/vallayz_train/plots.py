"""Figures of a run: training curves, planner decisions, gate heatmap, soil map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz.errors import VallayzUserError

SAMPLE_ROWS = 400
# The figures plot_run may write, and the PNG text that marks a figure as written by vallayz.
FIGURES = ("curves.png", "planner.png", "gates.png", "soil.png")
SOFTWARE = "vallayz plot"


def _save(fig: Any, path: Path) -> None:
    """Writes ``fig`` as a PNG marked as vallayz's, through a temporary file and a rename: a
    failure leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": SOFTWARE})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def written_by_vallayz(path: Path) -> bool:
    """Whether ``path`` is a PNG that vallayz plot wrote (its ``Software`` text says so)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Software\x00" + SOFTWARE.encode() in head


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(series: dict[str, tuple[list[int], list[float]]], out: Path) -> Path:
    """One panel per training loss term (log scale) plus validation R@1, from the run's
    metrics as name → (steps, values)."""
    plt = _pyplot()
    train = sorted(n for n in series if n.startswith("train/") and n.count("/") == 1)
    names = [*train, "val/R@1"] if "val/R@1" in series else train
    cols = 3
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]
        ax.plot(steps, values, lw=1, marker="o" if len(steps) < 30 else None, ms=3)
        if name.startswith("train/") and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "curves.png"
    _save(fig, path)
    plt.close(fig)
    return path


def plot_planner(decisions: list[dict[str, Any]], out: Path) -> Path:
    """Critic score at each of the planner's decisions, kept (green) and reverted (red) changes
    marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    starts = [d for d in decisions if d["action"] in ("propose", "control")]
    ax.plot(
        [d["step"] for d in starts],
        [d["score_before"] for d in starts],
        "k.-",
        lw=1,
        label="critic",
    )
    for action, colour in (("keep", "tab:green"), ("revert", "tab:red")):
        chosen = [d for d in decisions if d["action"] == action]
        ax.scatter(
            [d["step"] for d in chosen],
            [d["score_after"] for d in chosen],
            c=colour,
            label=action,
            zorder=3,
        )
        for d in chosen:
            ax.annotate(d["parameter"], (d["step"], d["score_after"]), fontsize=7, rotation=30)
    ax.set_xlabel("step")
    ax.set_ylabel("critic score (higher is better)")
    ax.legend()
    fig.tight_layout()
    path = out / "planner.png"
    _save(fig, path)
    plt.close(fig)
    return path


def plot_gates_and_soil(model: IMPN, data: PairedEmbeddings, out: Path) -> list[Path]:
    """Gate-mass heatmap (receiver × sender modality, last layer) and a PCA map of the soil."""
    plt = _pyplot()
    rows = np.arange(min(SAMPLE_ROWS, data.size))
    names = list(model.config.modalities)
    batch = data.batch(rows, names)
    with torch.no_grad():
        output = model.eval()(batch, return_gates=True)
        isolated = model(batch, isolate=True)
    assert output.gates is not None
    matrix = output.gates[-1].modality_matrix()
    grid = np.array([[matrix[r, s] for s in names] for r in names])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("sender modality")
    ax.set_ylabel("receiver modality")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, label="mean gate mass")
    ax.set_title("gate weights, last bridge layer")
    fig.tight_layout()
    gates_path = out / "gates.png"
    _save(fig, gates_path)
    plt.close(fig)

    points = torch.cat([isolated.soil[m][batch.present[m]] for m in names])
    labels = [m for m in names for _ in range(int(batch.present[m].sum()))]
    centred = points - points.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    xy = (centred @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(6, 5))
    for m in names:
        chosen = np.array([label == m for label in labels])
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=6, alpha=0.6, label=m)
    ax.set_title("soil space (PCA of unimodal embeddings)")
    ax.legend(markerscale=3)
    fig.tight_layout()
    soil_path = out / "soil.png"
    _save(fig, soil_path)
    plt.close(fig)
    return [gates_path, soil_path]


def plot_run(
    run_dir: Path, data_dir: str | None = None, out_dir: str | None = None, force: bool = False
) -> list[Path]:
    """Writes every figure a run supports; returns their paths.

    Raises:
        VallayzUserError: if the run has no metrics, ``out_dir`` is a file, or it holds a
            figure's name that vallayz did not write (unless ``force``; files in the run's own
            ``plots/`` folder are the run's).
    """
    from vallayz_train.run_folder import (
        METRICS,
        PLANNER_LOG,
        load_impn,
        read_metrics,
        read_planner_log,
        recorded_data,
    )

    if not (run_dir / METRICS).is_file():
        raise VallayzUserError(
            f"{run_dir} has no {METRICS}; plot a run directory written by vallayz fit"
        )
    out = Path(out_dir) if out_dir else run_dir / "plots"
    if out.exists() and not out.is_dir():
        raise VallayzUserError(f"--out {out} is a file; name a folder for the figures")
    if out_dir and not force:
        for name in FIGURES:
            if (out / name).exists() and not written_by_vallayz(out / name):
                raise VallayzUserError(
                    f"{out / name} exists and was not written by vallayz; choose another --out "
                    "or pass --force to replace it"
                )
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_curves(read_metrics(run_dir), out)]
    if (run_dir / PLANNER_LOG).is_file():
        paths.append(plot_planner(read_planner_log(run_dir), out))
    if data_dir is None:
        data_dir = recorded_data(run_dir)
    if data_dir is not None:
        paths += plot_gates_and_soil(load_impn(run_dir), PairedEmbeddings(data_dir), out)
    return paths
