"""``vallayz bench stitch``: its options and what it prints. Imports nothing heavy until run."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from vallayz_train.stitch.settings import StitchSettings

# The command's name, its help line and its settings, whose defaults are the command line's.
NAME = "stitch"
HELP = "MiniLM-L6 <-> multilingual-e5-small on English lines, held-out documents"
SETTINGS = StitchSettings


def add_options(b: argparse.ArgumentParser) -> None:
    """The options of ``vallayz bench stitch`` besides ``--out`` and the shared benchmark ones."""
    from vallayz_train.options import closed_form_option

    b.add_argument(
        "--corpus",
        default=StitchSettings.corpus_path,
        help="doc<TAB>bo<TAB>en TSV (.xz or plain) or a text-pairs folder (default: "
        "$VALLAYZ_TIBETAN_CORPUS or shared/data/tibetan)",
    )
    size = b.add_mutually_exclusive_group()
    size.add_argument(
        "--pairs",
        type=int,
        default=StitchSettings.max_pairs,
        help=f"random subset of unique pairs (default {StitchSettings.max_pairs:,}, sized for 15 "
        "minutes on 2 CPU cores; multilingual-e5-small reads about 1,000 lines in 23 s there)",
    )
    size.add_argument("--full", action="store_true", help="the whole corpus")
    closed_form_option(
        b,
        StitchSettings.closed_form,
        "each with standard scaling and with L2 normalisation; default: all seven",
    )
    b.add_argument(
        "--control-anchors",
        dest="control_anchors",
        type=int,
        default=StitchSettings.control_anchors,
        help="training pairs whose Tibetan line the negative control encodes to fit its maps "
        "(0: zero-shot only)",
    )
    b.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        default=StitchSettings.control,
        help="skip the negative control (Tibetan read by both encoders)",
    )


def settings(args: argparse.Namespace) -> StitchSettings:
    """The settings of ``vallayz bench stitch`` that the parsed command line ``args`` gives
    (``--corpus`` as given: :func:`run` resolves the default corpus)."""
    return StitchSettings(
        corpus_path=args.corpus,
        max_pairs=None if args.full else args.pairs,
        pool=args.pool,
        pools=args.pools,
        seed_eval=args.seed_eval,
        closed_form=tuple(args.closed_form),
        control_anchors=args.control_anchors,
        control=args.control,
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz bench stitch``; prints the tables of the methods, of the normalisations
    and of the negative control."""
    from vallayz.errors import VallayzUserError
    from vallayz.eval import format_table
    from vallayz_train.options import train_args
    from vallayz_train.parallel_corpus import SOURCE_HINT, default_corpus_path
    from vallayz_train.stitch.bench import TRAIN_DEFAULTS, bench_stitch, normalisation_table

    if args.matched_dropout:
        raise VallayzUserError(
            "bench stitch has no query with several sources, so --matched-dropout does not "
            "apply; leave it out"
        )
    model, train = train_args(args, TRAIN_DEFAULTS)
    corpus = Path(args.corpus) if args.corpus else default_corpus_path()
    if not corpus.exists():
        raise VallayzUserError(f"no Tibetan corpus at {corpus}; get {SOURCE_HINT}")
    results = bench_stitch(
        args.out,
        replace(settings(args), corpus_path=corpus),
        train,
        model,
        progress=not args.quiet,
        log=(lambda *_: None) if args.quiet else print,
    )
    pool = str(args.pool)
    shown = [r for r in results["results"] if r["pool"] in (pool, "all")]
    columns = ["method", "source", "target", "pool", "queries", "R@1", "R@5", "cosine"]
    columns.append("centred cosine")
    print(format_table(shown, columns))
    print(format_table(normalisation_table(results["results"], pool)))
    if results["control"]:
        control = [r for r in results["control"] if r["pool"] in (pool, "all")]
        print(format_table(control, columns))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
