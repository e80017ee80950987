"""``vallayz check``: validate a data directory and print a summary."""

from __future__ import annotations

import argparse

from vallayz_train.options import (
    visible,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz check`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser("check", help="validate a data directory and print a summary")
    p.add_argument("data")
    p.add_argument("--split-seed", dest="split_seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz check``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz.data import PairedEmbeddings

    data = PairedEmbeddings(args.data)
    splits = data.split_indices(args.split_seed)
    print(f"{visible(args.data)}: {data.size} rows, {len(set(data.groups()))} groups")
    for summary in data.summary():
        kind = "nodes" if len(summary.shape) == 3 else "pooled"
        rate = summary.present / data.size
        print(
            f"  {visible(summary.name):<16} {kind:<6} {summary.shape!s:<20} {summary.dtype:<8} "
            f"present {rate:6.1%}"
        )
        for kind, found in (("tokens", data.tokens), ("node ids", data.node_ids)):
            if summary.name in found:
                ids, label = found[summary.name], f"{visible(summary.name)} {kind}"
                print(f"  {label:<16} ids    {ids.shape!s:<20} {ids.dtype!s:<8}")
    print("  splits: " + ", ".join(f"{name} {len(rows)}" for name, rows in splits.items()))
    for name, largest in data.largest.items():
        if largest > LARGE_VALUE:
            print(
                f"  warning: {visible(name)} holds values up to {largest:.3g} in magnitude, which "
                "can overflow the loss; rescale the embeddings (e.g. to unit norm)"
            )
    for line in data.notices:
        print(f"  notice: {visible(line)}")
    return 0


# Embeddings larger than this in magnitude get a warning from vallayz check.
LARGE_VALUE = 1e4
