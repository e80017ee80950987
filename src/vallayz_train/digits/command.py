"""``vallayz bench digits``: its options and what it prints. Imports nothing heavy until run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vallayz_train.names import CLOSED_FORM_METHODS

# The command's name, its help line and its defaults of the shared benchmark options.
NAME = "digits"
HELP = "spoken digits (FSDD) / digit images / digit words, split by speaker"
# A held-out speaker has 500 recordings: pools of 100 besides the whole split.
DEFAULTS: dict[str, Any] = {"pool": 100}


def add_options(b: argparse.ArgumentParser) -> None:
    """The options of ``vallayz bench digits`` besides ``--out`` and the shared benchmark ones."""
    from vallayz_train.options import closed_form_option

    b.add_argument(
        "--data",
        help="FSDD folder of {digit}_{speaker}_{take}.wav files (default: $VALLAYZ_FSDD_DATA or "
        "shared/data/fsdd)",
    )
    b.add_argument(
        "--speech-features",
        dest="speech_features",
        default="oww",
        choices=["oww", "mfcc"],
        help="openwakeword speech_embedding frames (default) or MFCC frames (cheaper)",
    )
    b.add_argument(
        "--speakers", nargs="+", help="speakers to hold out, one fold each (default: every one)"
    )
    closed_form_option(b, CLOSED_FORM_METHODS, "default: all seven")


def run(args: argparse.Namespace) -> int:
    from vallayz_train.digits.bench import TRAIN_DEFAULTS, bench_digits
    from vallayz_train.options import bench_arguments, train_args

    model, train = train_args(args, TRAIN_DEFAULTS)
    bench_digits(
        args.out,
        args.data,
        args.speech_features,
        train,
        model,
        speakers=args.speakers,
        **bench_arguments(args),
    )
    report = Path(args.out) / "report.md"
    text = report.read_text(encoding="utf-8")
    print(text.split("## Retrieval per held-out speaker")[0].rstrip())
    print(f"report: {report}")
    return 0
