"""``vallayz translate``: embeddings of one modality translated into another's space."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vallayz_train.commands.shared import check_modality, load_run
from vallayz_train.options import (
    UsageError,
    check_output,
    check_positive,
    read_array,
    replace_atomically,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz translate`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser(
        "translate", help="translate embeddings into another modality's space"
    )
    p.add_argument("run")
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--input", required=True, help=".npy [N, d_source] or [N, T, d_source]")
    p.add_argument("--output", required=True, help=".npy to write [N, d_target]")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1024)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz translate``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    import torch

    check_positive(args.batch_size, "--batch-size")
    output = Path(args.output)
    check_output(output, args.force, ours=False)
    model = load_run(args.run, args.device)
    check_modality(model, args.source, "--source")
    check_modality(model, args.target, "--target")
    if args.source == args.target:
        raise UsageError("--source and --target are the same modality; name two different ones")
    dim = model.config.modalities[args.source]
    x = torch.from_numpy(read_array(args.input, dim)).to(args.device)
    outputs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], args.batch_size):
            chunk = x[start : start + args.batch_size]
            outputs.append(model.translate(chunk, source=args.source, target=args.target).cpu())
    result = (
        torch.cat(outputs).numpy()
        if outputs
        else np.zeros((0, model.config.modalities[args.target]), dtype=np.float32)
    )
    replace_atomically(output, lambda handle: np.save(handle, result))
    print(
        f"translated {x.shape[0]} rows {args.source} -> {args.target}: "
        f"{output} {tuple(result.shape)}"
    )
    return 0
