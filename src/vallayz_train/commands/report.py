"""``vallayz report``: rewrite ``report.md`` and the plots of a benchmark folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vallayz_train.options import (
    UsageError,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz report`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser("report", help="rewrite report.md and plots of a benchmark folder")
    p.add_argument("bench")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz report``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz_train.bench import write_report

    path = Path(args.bench) / "results.json"
    if not path.is_file():
        raise UsageError(f"{path} is missing; run vallayz bench first")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(
            f"{path} is not valid JSON ({err}); run the benchmark again to rewrite it"
        ) from err
    if not isinstance(results, dict):
        raise UsageError(
            f"{path} holds a JSON {type(results).__name__}, not the object vallayz bench writes; "
            "run the benchmark again to rewrite it"
        )
    required = ("data", "split", "split_sizes", "spec", "train", "hardware", "retrieval")
    lacking = [key for key in required if key not in results]
    if lacking:
        raise UsageError(
            f"{path} is not the results of vallayz bench data or bench tibetan (it lacks "
            f"{lacking}); run the benchmark again to rewrite it"
        )
    try:
        report = write_report(Path(args.bench), results)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise UsageError(
            f"{path} is malformed ({type(err).__name__}: {err}); run the benchmark again to "
            "rewrite it"
        ) from err
    print(f"wrote {report}")
    return 0
