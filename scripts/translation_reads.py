"""What an IMPN run's shared space holds for translation into a target's native space:

    python scripts/translation_reads.py RUN DATA_DIR --source bo --target en [--ridge 1e-2]

scores, on pools of 1,000 validation rows (the pools of ``vallayz ablate``), retrieval among the
target's native vectors of: the run's own translation; its target decoder applied to the
target's and to the source's pooled soil states; and closed-form ridge maps (in float64, fitted
on the training rows only) from the target's soil state to its native vector, applied to the
target's own state (how much of the native vector the state keeps) and to the source's (the
shared-space translation with a linear decoder), and from the source's state straight to the
target's native vector (the best linear read of the source's state), and from the source's own
native vector (the linear pairwise translator, which reads no shared space); and the pairwise
MLP translator's shape fitted by its loss on the frozen source states and, as a control, on the
source's native vectors (without the n-gram bag the MLP translator also reads). The shared-space
retrieval (``soil``) is the reference each read loses against. Writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz.eval import format_table, model_encoder, retrieval_table
from vallayz.eval.pairs import Encoder
from vallayz.losses.reconstruction import reconstruction_loss
from vallayz_train.run_folder import load_model


def soil_and_native(
    model: IMPN, data: PairedEmbeddings, rows: np.ndarray, names: Sequence[str]
) -> dict[str, Tensor]:
    """Each modality's pooled soil state embedded alone (the ``soil`` path of
    :func:`~vallayz.eval.model_encoder`), and both native vectors.

    Shape:
        ``rows [N]`` → ``{m: [N, d]}``, ``{"native": [N, d_target]}`` and
        ``{"source native": [N, d_source]}``, float64.
    """
    source, target = names
    states = model_encoder(model, data)((source,), target, rows)
    native = data.batch(rows, [source, target]).pooled()
    out = {source: states[0], target: states[1]}
    out.update({"native": native[target], "source native": native[source]})
    return {key: value.double() for key, value in out.items()}


def ridge(x: Tensor, y: Tensor, strength: float) -> Callable[[Tensor], Tensor]:
    """The affine map of least squares from ``x`` to ``y``, every coefficient (the bias too)
    penalised by ``strength`` times the mean diagonal of the Gram matrix.

    Shape:
        ``x [N, d]``, ``y [N, e]`` → a map ``[M, d]`` → ``[M, e]``.
    """
    ones = torch.ones(len(x), 1, dtype=x.dtype)
    design = torch.cat([x, ones], dim=1)
    gram = design.T @ design
    gram += strength * gram.diagonal().mean() * torch.eye(len(gram), dtype=x.dtype)
    weight = torch.linalg.solve(gram, design.T @ y)
    return lambda z: torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1) @ weight


def fitted_mlp(
    x: Tensor, y: Tensor, steps: int, batch: int = 256, hidden: int = 512, seed: int = 0
) -> Callable[[Tensor], Tensor]:
    """The pairwise MLP translator's shape (LayerNorm, Linear, GELU, Linear) fitted from ``x``
    to ``y`` by its loss (mean squared error plus cosine distance), AdamW at lr 1e-3 and weight
    decay 0.01 (the trainer's defaults), ``steps`` batches of ``batch`` rows drawn at random.

    Shape:
        ``x [N, d]``, ``y [N, e]`` → a map ``[M, d]`` → ``[M, e]`` (float32).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(
        torch.nn.LayerNorm(x.shape[1]),
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, y.shape[1]),
    )
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=0.01)
    x, y = x.float(), y.float()
    for _ in range(steps):
        chosen = torch.randint(len(x), (batch,), generator=generator)
        loss = reconstruction_loss(mlp(x[chosen]), y[chosen], "mse+cosine")
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    mlp.eval()
    return lambda z: mlp(z.float()).detach().double()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished IMPN run folder")
    p.add_argument("data", help="its data folder")
    p.add_argument("--source", default="bo")
    p.add_argument("--target", default="en")
    p.add_argument("--ridge", type=float, default=1e-2, help="ridge strength of the maps")
    p.add_argument(
        "--mlp-steps",
        dest="mlp_steps",
        type=int,
        default=250,
        help="steps of the MLPs fitted on the frozen states and on the native vectors",
    )
    p.add_argument("--split-seed", dest="split_seed", type=int, default=0)
    args = p.parse_args(argv)
    data = PairedEmbeddings(args.data, check_values=False)
    splits = data.split_indices(args.split_seed)
    model = load_model(args.run).eval()
    if not isinstance(model, IMPN):
        p.error(f"{args.run} holds a {type(model).__name__}; this reads an IMPN run")
    names = (args.source, args.target)
    train = soil_and_native(model, data, splits["train"], names)
    rows = splits["val"]
    val = soil_and_native(model, data, rows, names)
    src, tgt = (val[n] for n in names)
    decoder = model.decoders[args.target]
    own = ridge(train[args.target], train["native"], args.ridge)
    with torch.no_grad():
        reads = {
            "decoder(target's soil state)": decoder(tgt.float()).double(),
            "decoder(source's soil state)": decoder(src.float()).double(),
        }
    reads.update(
        {
            "ridge target state → native, on the target's state": own(tgt),
            "ridge target state → native, on the source's state": own(src),
            "ridge source state → native": ridge(train[args.source], train["native"], args.ridge)(
                src
            ),
            "ridge source's native vector → native (no shared space)": ridge(
                train["source native"], train["native"], args.ridge
            )(val["source native"]),
            f"MLP, {args.mlp_steps} steps, source state → native": fitted_mlp(
                train[args.source], train["native"], args.mlp_steps
            )(src),
            f"MLP, {args.mlp_steps} steps, source's native vector → native": fitted_mlp(
                train["source native"], train["native"], args.mlp_steps
            )(val["source native"]),
        }
    )
    at = {int(r): i for i, r in enumerate(rows)}
    pair = [((args.source,), args.target)]

    def scored(name: str, encode: Encoder) -> dict[str, object]:
        table = retrieval_table(data, rows, encode, pair, 1000)
        row = next(r for r in table if r["pool"] == "1000")
        return {"read": name, "R@1": row["R@1"], "R@5": row["R@5"]}

    def fixed(query: Tensor) -> Encoder:
        def encode(sources: Sequence[str], target: str, chunk: np.ndarray) -> tuple[Tensor, Tensor]:
            index = [at[int(r)] for r in chunk]
            return query[index].float(), val["native"][index].float()

        return encode

    table = [scored("soil (shared-space retrieval, reference)", model_encoder(model, data))]
    table.append(scored("the run's translation", model_encoder(model, data, "translate")))
    table += [scored(name, fixed(query)) for name, query in reads.items()]
    print(format_table(table, ["read", "R@1", "R@5"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
