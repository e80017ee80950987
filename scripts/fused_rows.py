"""Fused and late-fused queries against each of their sources alone, on the same rows:

    python scripts/fused_rows.py DATA_DIR RUN [RUN ...] --sources bo speech --target en

For each run and split, retrieval R@1 (every query, the pool being all rows of the split that
hold every source and the target) of each source alone, of the late-fused query (the mean of
the single-source embeddings) and, for IMPN, of the fused query (one pass in which the sources
exchange messages); for a model with a fusion gate, the gate's mean weight per source and the
mean cosine between the fused query and each source's embedding alone. ``vallayz ablate`` scores
a multi-source pair on its own rows but a single-source pair on pools of all rows, so the two are
compared here on the same rows. Writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.data import PairedEmbeddings
from vallayz.eval import format_table, model_encoder, retrieval_table
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import load_model, read_run


def shared_rows(data: PairedEmbeddings, rows: np.ndarray, names: list[str]) -> np.ndarray:
    """The rows of ``rows`` that hold every modality of ``names``."""
    held = np.stack([data.present[name][rows] for name in names]).all(axis=0)
    return rows[held]


def gate_weights(
    model: Any, data: PairedEmbeddings, rows: np.ndarray, sources: list[str]
) -> tuple[dict[str, float] | None, dict[str, float]]:
    """Per source: the fusion gate's mean softmax weight over ``rows`` (None without a gate),
    and the mean cosine between the fused query and the source's embedding alone."""
    batch = data.batch(rows, sources)
    with torch.no_grad():
        fused = model.embed(batch, fusion="fused")
        cosines = {
            m: float(
                torch.nn.functional.cosine_similarity(
                    fused,
                    model.embed(data.batch(rows, [m])),
                ).mean()
            )
            for m in sources
        }
        gate = getattr(model, "fusion_gate", None)
        if gate is None:
            return None, cosines
        out = model(batch, decode=False, fused=True)
        scores = torch.stack([gate(out.soil[m]) for m in sources])
        weights = torch.softmax(scores, dim=0).mean(dim=1)
    return dict(zip(sources, weights.tolist(), strict=True)), cosines


def score_run(
    run: str, data: PairedEmbeddings, sources: list[str], target: str, splits: list[str]
) -> list[dict[str, object]]:
    """The table rows of one run: each source alone, late and (IMPN) fused, per split."""
    model = load_model(run).eval()
    split_seed = TrainConfig.from_dict(read_run(Path(run))["train"]).split_seed
    pairs = [((m,), target) for m in sources] + [(tuple(sources), target)]
    modes = ["soil"] + (["fused"] if "fused" in model.capabilities.modes else [])
    table: list[dict[str, object]] = []
    for split in splits:
        rows = shared_rows(data, data.split_indices(split_seed)[split], [*sources, target])
        for mode in modes:
            chosen = pairs if mode == "soil" else pairs[-1:]
            encode = model_encoder(model, data, mode)
            for row in retrieval_table(data, rows, encode, chosen, pool=len(rows)):
                if row["pool"] == "all":
                    several = "+" in str(row["source"])
                    path = "late" if mode == "soil" and several else mode
                    table.append(
                        {
                            "run": run,
                            "split": split,
                            "pair": f"{row['source']}->{target}",
                            "path": path,
                            "queries": row["queries"],
                            "R@1": row["R@1"],
                        }
                    )
        if "fused" in modes:
            weights, cosines = gate_weights(model, data, rows, sources)
            for m in sources:
                gate = "" if weights is None else f"{weights[m]:.3f}"
                table.append(
                    {
                        "run": run,
                        "split": split,
                        "pair": f"gate weight of {m}",
                        "path": gate,
                        "queries": "",
                        "R@1": f"cos {cosines[m]:.4f}",
                    }
                )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the data folder the runs were trained on")
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--sources", nargs="+", required=True, help="the query's modalities")
    parser.add_argument("--target", required=True, help="the candidates' modality")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    args = parser.parse_args(argv)
    if len(args.sources) < 2 or args.target in args.sources:
        parser.error("give two or more --sources and a --target that is not among them")
    data = PairedEmbeddings(args.data, check_values=False)
    table = [
        row
        for run in args.runs
        for row in score_run(run, data, args.sources, args.target, args.splits)
    ]
    print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
