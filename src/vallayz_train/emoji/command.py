"""``vallayz bench emoji``: its options and what it prints. Imports nothing heavy until run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vallayz_train.emoji import DEFAULT_CLOSED_FORM

# The command's name, its help line and its defaults of the shared benchmark options.
NAME = "emoji"
HELP = "Twemoji images (EfficientNet-lite0) / CLDR text (MiniLM)"
# The test split holds about 306 items: pools of 100 besides the whole split.
DEFAULTS: dict[str, Any] = {"pool": 100}


def add_options(b: argparse.ArgumentParser) -> None:
    """The options of ``vallayz bench emoji`` besides ``--out`` and the shared benchmark ones."""
    from vallayz_train.options import closed_form_option

    b.add_argument(
        "--data",
        help="folder with pairs.tsv and img/ (default: $VALLAYZ_EMOJI_DATA or shared/data/emoji)",
    )
    closed_form_option(
        b,
        DEFAULT_CLOSED_FORM,
        "default: all but affine, whose gradient steps on 1,280-d features exceed the CPU budget",
    )


def run(args: argparse.Namespace) -> int:
    from vallayz.eval import format_table
    from vallayz_train.emoji.bench import TRAIN_DEFAULTS, bench_emoji
    from vallayz_train.options import bench_arguments, train_args

    model, train = train_args(args, TRAIN_DEFAULTS)
    results = bench_emoji(args.out, args.data, train, model, **bench_arguments(args))
    rows = [r for r in results["retrieval"] if r["pool"] in (str(args.pool), "all")]
    columns = ["method", "source", "target", "pool", "queries", "R@1", "R@5", "MRR"]
    print(format_table(rows, columns))
    print(format_table(results["stitching"], ["method", "source", "target", "native", "stitched"]))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
