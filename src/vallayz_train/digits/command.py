"""``vallayz bench digits``: its options and what it prints. Imports nothing heavy until run."""

from __future__ import annotations

import argparse
from pathlib import Path

from vallayz_train.digits.settings import DigitsSettings

# The command's name, its help line and its settings, whose defaults are the command line's.
NAME = "digits"
HELP = "spoken digits (FSDD) / digit images / digit words, split by speaker"
SETTINGS = DigitsSettings


def add_options(b: argparse.ArgumentParser) -> None:
    """The options of ``vallayz bench digits`` besides ``--out`` and the shared benchmark ones."""
    from vallayz_train.options import closed_form_option

    b.add_argument(
        "--data",
        default=DigitsSettings.data_path,
        help="FSDD folder of {digit}_{speaker}_{take}.wav files (default: $VALLAYZ_FSDD_DATA or "
        "shared/data/fsdd)",
    )
    b.add_argument(
        "--speech-features",
        dest="speech_features",
        default=DigitsSettings.speech_kind,
        choices=["oww", "mfcc"],
        help="openwakeword speech_embedding frames (default) or MFCC frames (cheaper)",
    )
    b.add_argument(
        "--speakers",
        nargs="+",
        default=DigitsSettings.speakers,
        help="speakers to hold out, one fold each (default: every one)",
    )
    closed_form_option(b, DigitsSettings.closed_form, "default: all seven")


def settings(args: argparse.Namespace) -> DigitsSettings:
    """The settings of ``vallayz bench digits`` that the parsed command line ``args`` gives."""
    return DigitsSettings(
        data_path=args.data,
        speech_kind=args.speech_features,
        speakers=tuple(args.speakers) if args.speakers else None,
        pool=args.pool,
        pools=args.pools,
        seed_eval=args.seed_eval,
        matched_dropout=args.matched_dropout,
        closed_form=tuple(args.closed_form),
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz bench digits``; prints the summary of the report."""
    from vallayz_train.digits.bench import TRAIN_DEFAULTS, bench_digits
    from vallayz_train.options import train_args

    model, train = train_args(args, TRAIN_DEFAULTS)
    bench_digits(args.out, settings(args), train, model, progress=not args.quiet)
    report = Path(args.out) / "report.md"
    text = report.read_text(encoding="utf-8")
    print(text.split("## Retrieval per held-out speaker")[0].rstrip())
    print(f"report: {report}")
    return 0
