"""``vallayz plot``: the figures of a run (training curves, planner, gates, soil map)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vallayz_train.commands.shared import check_data_fits, load_run
from vallayz_train.options import (
    UsageError,
    visible,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz plot`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser(
        "plot", help="training curves, planner decisions, gates, soil map (PNG)"
    )
    p.add_argument("run")
    p.add_argument(
        "--data", help="data directory for the gate heatmap and soil map (default: the run's)"
    )
    p.add_argument("--out", help="folder for the PNG files (default RUN/plots)")
    p.add_argument(
        "--force", action="store_true", help="replace figures in --out that vallayz did not write"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz plot``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz_train.plots import plot_run
    from vallayz_train.run_folder import RUN_FILE, recorded_data

    if not (Path(args.run) / RUN_FILE).is_file():
        raise UsageError(f"{args.run} is not a run folder of vallayz fit (no {RUN_FILE})")
    data = args.data
    if data is None:
        data = recorded_data(Path(args.run))
    if data is not None:
        from vallayz.data import PairedEmbeddings

        check_data_fits(load_run(args.run), PairedEmbeddings(data), str(data))
    for path in plot_run(Path(args.run), args.data, args.out, force=args.force):
        print(f"wrote {visible(path)}")
    return 0
