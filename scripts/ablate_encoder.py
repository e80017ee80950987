"""Encoder-capacity ablation: which part of the IMPN encoder path generalises on a data set?

Trains, with symmetric InfoNCE only and one budget, a linear head per modality, the IMPN
adapter alone, and the isolated IMPN path (adapter + L bridge layers) with components removed
or initialised differently, then prints validation R@1 (source -> target) for each. With
``--token-buckets N`` every encoder of the source adds a trainable embedding bag over the data's
``<source>.tokens.npy``. Uses the validation split only (``--val-rows`` of it as the pool).

    python scripts/ablate_encoder.py DATA_DIR --source bo --target en [--steps 400]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import Tensor, nn

from vallayz import IMPN, Batch, IMPNConfig
from vallayz.data import PairedEmbeddings
from vallayz.eval import format_table, keys_to_ids, retrieval_metrics, retrieval_ranks
from vallayz.layers import Adapter, BridgeLayer, HashedBag
from vallayz.losses import info_nce

KINDS = [
    "linear",
    "linear 256-d",
    "adapter",
    "adapter no-norm",
    "adapter zero-init",
    "adapter projection-only",
    "impn no-bridge",
    "impn",
    "impn zero-init",
    "impn zero-init no-norm",
    "impn no-ffn",
    "impn no-attention",
    "impn no-final-norm",
    "impn no-ffn no-attention no-final-norm",
]


class Skip(nn.Module):
    def forward(self, states: Tensor, *args: object) -> Tensor:
        return states


def _change_adapter(adapter: nn.Module, kind: str) -> None:
    """Removes or re-initialises parts of an adapter as the kind's name says."""
    assert isinstance(adapter, Adapter)
    if "no-norm" in kind.split():
        adapter.norm = nn.Identity()  # type: ignore[assignment]
    if kind.startswith("adapter zero-init"):
        adapter.zero_init_branch()
    if "projection-only" in kind:
        adapter.up = nn.Identity()  # type: ignore[assignment]
        adapter.down = Zero()  # type: ignore[assignment]


class Zero(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros((), dtype=x.dtype, device=x.device)


class Encoder(nn.Module):
    """One encoder per modality, plus an optional n-gram bag on the source."""

    def __init__(self, kind: str, dims: dict[str, int], args: argparse.Namespace) -> None:
        super().__init__()
        soil = 256 if "256-d" in kind else args.soil
        self.bag = HashedBag(args.token_buckets, dims[args.source]) if args.token_buckets else None
        self.model: IMPN | None = None
        if kind.startswith("linear"):
            self.heads = nn.ModuleDict({m: nn.Linear(d, soil) for m, d in dims.items()})
        elif kind.startswith("adapter"):
            self.heads = nn.ModuleDict({m: Adapter(d, soil, args.hidden) for m, d in dims.items()})
            for adapter in self.heads.values():
                _change_adapter(adapter, kind)
        else:
            config = IMPNConfig(
                modalities=dims,
                soil_dim=soil,
                hidden_dim=args.hidden,
                layers=args.layers,
                heads=4,
                ffn_mult=2,
                gate_hidden=32,
                # Random bridge layers unless the kind asks for the identity start.
                zero_init_residual="zero-init" in kind,
            )
            self.model = IMPN(config)
            if "no-bridge" in kind:
                self.model.layers = nn.ModuleList()
            for layer in self.model.layers:
                assert isinstance(layer, BridgeLayer)
                if "no-ffn" in kind:
                    layer.ffn = nn.Identity()  # type: ignore[assignment]
                if "no-attention" in kind:
                    layer.attention = Skip()  # type: ignore[assignment]
            for adapter in self.model.adapters.values():
                _change_adapter(adapter, kind)
            if "no-final-norm" in kind:
                self.model.norm = nn.Identity()  # type: ignore[assignment]

    def forward(self, modality: str, x: Tensor, tokens: Tensor | None) -> Tensor:
        if self.bag is not None and tokens is not None:
            x = x + self.bag(tokens)
        if self.model is not None:
            return self.model.embed(Batch.of({modality: x}))
        return self.heads[modality](x)


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
    parser.add_argument("--token-buckets", type=int, default=0, help="n-gram bag rows (0: none)")
    parser.add_argument("--val-rows", type=int, default=0, help="random validation rows (0: all)")
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = PairedEmbeddings(args.data, check_values=False)
    if args.token_buckets and args.source not in data.tokens:
        parser.error(f"--token-buckets needs {args.source}.tokens.npy in {args.data}")
    splits = data.split_indices(0)
    names = [args.source, args.target]

    def both(rows: np.ndarray) -> np.ndarray:
        return rows[data.present[args.source][rows] & data.present[args.target][rows]]

    train, val = both(splits["train"]), both(splits["val"])
    if args.val_rows and args.val_rows < len(val):
        val = np.sort(np.random.default_rng(args.seed).choice(val, args.val_rows, replace=False))
    dims = data.modalities
    dims = {m: dims[m] for m in names}
    keys = data.keys(args.target)
    query_keys, _ = keys_to_ids([keys[i] for i in val], [])

    def encode(encoder: Encoder, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        batch = data.batch(rows, names)
        return (
            encoder(args.source, batch.embeddings[args.source], batch.tokens.get(args.source)),
            encoder(args.target, batch.embeddings[args.target], None),
        )

    table = []
    for kind in args.kinds:
        torch.manual_seed(args.seed)
        encoder = Encoder(kind, dims, args)
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.lr, weight_decay=0.01)
        rng = np.random.default_rng(args.seed)
        started = time.perf_counter()
        for _ in range(args.steps):
            rows = np.sort(rng.choice(train, min(args.batch_size, len(train)), replace=False))
            loss = info_nce(*encode(encoder, rows))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        encoder.eval()
        with torch.no_grad():
            ranks = retrieval_ranks(*encode(encoder, val), query_keys, query_keys)
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
