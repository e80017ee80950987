"""``vallayz bench``: ``bench data``, ``bench scaling`` and the data sets' benchmarks (each
data set's ``command.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from vallayz_train.options import (
    UsageError,
    bench_defaults,
    bench_options,
    check_positive,
    parse_pair,
    train_args,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz bench`` with ``data``, ``scaling`` and every data set's benchmark.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser("bench", help="benchmarks: a data directory, O(M) scaling, Tibetan")
    bench = p.add_subparsers(dest="bench", required=True)
    _data_parser(bench)
    b = bench.add_parser("scaling", help="parameters and step time for M = 2..N modalities")
    b.add_argument("--max-modalities", dest="max_modalities", type=int, default=8)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    b.add_argument("--output", help="also write the table to this file")
    b.set_defaults(func=run_scaling)

    from vallayz_train.digits import command as digits
    from vallayz_train.emoji import command as emoji
    from vallayz_train.stitch import command as stitch
    from vallayz_train.tibetan import command as tibetan

    # Each data set's command: its name, help, own options, output folder runs/NAME, and the
    # shared benchmark options with the defaults of its settings.
    for command in (tibetan, emoji, digits, stitch):
        b = bench.add_parser(command.NAME, help=command.HELP)
        b.add_argument("--out", default=f"runs/{command.NAME}")
        command.add_options(b)
        bench_options(b)
        b.set_defaults(func=_locked(command.run), **bench_defaults(command.SETTINGS()))


def _data_parser(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz bench data``, its shared options defaulting to :class:`BenchSpec`'s."""
    from vallayz_train.bench.spec import BenchSpec

    b = bench.add_parser(
        "data", help="every method on one data directory, with sweeps and a report"
    )
    b.add_argument("data")
    b.add_argument("--out", required=True)
    b.add_argument("--pairs", nargs="+", help="directions such as bo->en or bo+speech->en")
    bench_options(b)
    spec = BenchSpec()
    b.set_defaults(
        func=run_data,
        pool=spec.pool,
        pools=spec.pools,
        seed_eval=spec.seed,
        matched_dropout=spec.matched_dropout,
    )


def _locked(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` holding the lock of its ``--out`` folder: one writer per benchmark folder (its
    data, caches and report), as each method's run folder has."""

    def locked(args: argparse.Namespace) -> int:
        from vallayz_train.run_folder import lock_run

        with lock_run(Path(args.out)):
            return run(args)

    return locked


def run_data(args: argparse.Namespace) -> int:
    """Runs ``vallayz bench data``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz.eval import format_table
    from vallayz_train.bench import BenchSpec, run_benchmark

    model, train = train_args(args)
    pairs = [parse_pair(p) for p in args.pairs] if args.pairs else None
    spec = BenchSpec(
        pairs=pairs,
        pool=args.pool,
        pools=args.pools,
        seed=args.seed_eval,
        matched_dropout=args.matched_dropout,
    )
    results = run_benchmark(args.data, args.out, spec, train, model, progress=not args.quiet)
    rows = [r for r in results["retrieval"] if r["pool"] == "all" and r["queries_from"] == "all"]
    print(format_table(rows, ["method", "source", "target", "queries", "R@1", "R@5", "MRR"]))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def run_scaling(args: argparse.Namespace) -> int:
    """Runs ``vallayz bench scaling``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz.eval import format_table
    from vallayz_train.scaling import scaling_table

    if args.max_modalities < 2:
        raise UsageError(f"--max-modalities must be at least 2, got {args.max_modalities}")
    check_positive(args.repeats, "--repeats")
    check_positive(args.batch_size, "--batch-size")
    counts = tuple(range(2, args.max_modalities + 1))
    table = format_table(scaling_table(counts, repeats=args.repeats, batch_size=args.batch_size))
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0
