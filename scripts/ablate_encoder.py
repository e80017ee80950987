"""Encoder-capacity ablation: which part of the IMPN encoder path generalises on a data set?

Trains, with symmetric InfoNCE only and one budget, a linear head per modality, the IMPN
adapter alone, and the isolated IMPN path (adapter + L bridge layers) with components removed,
then prints validation R@1 (source -> target) for each. Uses the validation split only.

    python scripts/ablate_encoder.py DATA_DIR --source bo --target en [--steps 400]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from vallayz import IMPN, IMPNConfig
from vallayz.data import PairedEmbeddings
from vallayz.eval import format_table, keys_to_ids, retrieval_metrics, retrieval_ranks
from vallayz.layers import Adapter
from vallayz.losses import info_nce


class Skip(nn.Module):
    def forward(self, states: torch.Tensor, *args: object) -> torch.Tensor:
        return states


class Isolated(nn.Module):
    """The unimodal (isolated) soil embedding of one modality of an IMPN model."""

    def __init__(self, model: IMPN, modality: str) -> None:
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x, self.modality)


def build(kind: str, dims: dict[str, int], soil: int, hidden: int, layers: int) -> nn.ModuleDict:
    if kind == "linear":
        return nn.ModuleDict({m: nn.Linear(d, soil) for m, d in dims.items()})
    if kind == "adapter":
        return nn.ModuleDict({m: Adapter(d, soil, hidden) for m, d in dims.items()})
    config = IMPNConfig(
        modalities=dims,
        soil_dim=soil,
        hidden_dim=hidden,
        layers=layers,
        heads=4,
        ffn_mult=2,
        gate_hidden=32,
    )
    model = IMPN(config)
    for layer in model.layers:
        if "no-ffn" in kind:
            layer.ffn = nn.Identity()
        if "no-attention" in kind:
            layer.attention = Skip()
    if "no-final-norm" in kind:
        model.norm = nn.Identity()
    return nn.ModuleDict({m: Isolated(model, m) for m in dims})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--soil", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = PairedEmbeddings(args.data)
    splits = data.split_indices(0)
    names = [args.source, args.target]
    both = lambda rows: rows[data.present[args.source][rows] & data.present[args.target][rows]]  # noqa: E731
    train, val = both(splits["train"]), both(splits["val"])
    x = {m: data.batch(np.arange(data.size), [m]).pooled()[m] for m in names}
    dims = {m: int(x[m].shape[1]) for m in names}
    keys = data.keys(args.target)
    query_keys, _ = keys_to_ids([keys[i] for i in val], [])
    kinds = [
        "linear",
        "adapter",
        "impn",
        "impn no-ffn",
        "impn no-attention",
        "impn no-final-norm",
        "impn no-ffn no-attention no-final-norm",
    ]
    table = []
    for kind in kinds:
        torch.manual_seed(args.seed)
        heads = build(kind, dims, args.soil, args.hidden, args.layers)
        optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-3, weight_decay=0.01)
        rng = np.random.default_rng(args.seed)
        started = time.perf_counter()
        for _ in range(args.steps):
            rows = torch.from_numpy(
                rng.choice(train, min(args.batch_size, len(train)), replace=False)
            )
            loss = info_nce(
                heads[args.source](x[args.source][rows]), heads[args.target](x[args.target][rows])
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        heads.eval()
        with torch.no_grad():
            ranks = retrieval_ranks(
                heads[args.source](x[args.source][val]),
                heads[args.target](x[args.target][val]),
                query_keys,
                query_keys,
            )
        metrics = retrieval_metrics(ranks)
        table.append(
            {
                "encoder": kind,
                "train InfoNCE": float(loss.detach()),
                "val R@1": metrics["R@1"],
                "val R@5": metrics["R@5"],
                "seconds": time.perf_counter() - started,
            }
        )
        print(format_table(table[-1:]), flush=True)
    print(format_table(table))


if __name__ == "__main__":
    main()
