"""``vallayz bench emoji``: its options and what it prints. Imports nothing heavy until run."""

from __future__ import annotations

import argparse
from pathlib import Path

from vallayz_train.emoji.settings import EmojiSettings

# The command's name, its help line and its settings, whose defaults are the command line's.
NAME = "emoji"
HELP = "Twemoji images (EfficientNet-lite0) / CLDR text (MiniLM)"
SETTINGS = EmojiSettings


def add_options(b: argparse.ArgumentParser) -> None:
    """The options of ``vallayz bench emoji`` besides ``--out`` and the shared benchmark ones."""
    from vallayz_train.options import closed_form_option

    b.add_argument(
        "--data",
        default=EmojiSettings.data_path,
        help="folder with pairs.tsv and img/ (default: $VALLAYZ_EMOJI_DATA or shared/data/emoji)",
    )
    closed_form_option(
        b,
        EmojiSettings.closed_form,
        "default: all but affine, whose gradient steps on 1,280-d features exceed the CPU budget",
    )


def settings(args: argparse.Namespace) -> EmojiSettings:
    """The settings of ``vallayz bench emoji`` that the parsed command line ``args`` gives."""
    return EmojiSettings(
        data_path=args.data,
        pool=args.pool,
        pools=args.pools,
        seed_eval=args.seed_eval,
        matched_dropout=args.matched_dropout,
        closed_form=tuple(args.closed_form),
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz bench emoji``; prints the retrieval and stitching tables."""
    from vallayz.eval import format_table
    from vallayz_train.emoji.bench import TRAIN_DEFAULTS, bench_emoji
    from vallayz_train.options import train_args

    model, train = train_args(args, TRAIN_DEFAULTS)
    results = bench_emoji(args.out, settings(args), train, model, progress=not args.quiet)
    rows = [r for r in results["retrieval"] if r["pool"] in (str(args.pool), "all")]
    columns = ["method", "source", "target", "pool", "queries", "R@1", "R@5", "MRR"]
    print(format_table(rows, columns))
    print(format_table(results["stitching"], ["method", "source", "target", "native", "stitched"]))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
