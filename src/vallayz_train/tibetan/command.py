"""``vallayz bench tibetan``: its options and what it prints. Imports nothing heavy until run."""

from __future__ import annotations

import argparse
from pathlib import Path

from vallayz_train.options import (
    UsageError,
    methods_option,
    positive_int,
    speech_amount_option,
    train_args,
    visible,
)
from vallayz_train.tibetan.settings import TibetanSettings

# The command's name, its help line and its settings, whose defaults are the command line's.
NAME = "tibetan"
HELP = "Classical Tibetan / generated speech / English"
SETTINGS = TibetanSettings


def add_options(b: argparse.ArgumentParser) -> None:
    """The options of ``vallayz bench tibetan`` besides ``--out`` and the shared benchmark ones."""
    b.add_argument(
        "--corpus",
        default=TibetanSettings.corpus_path,
        help="doc<TAB>bo<TAB>en TSV (.xz or plain) or a text-pairs folder",
    )
    size = b.add_mutually_exclusive_group()
    size.add_argument(
        "--pairs", type=int, default=TibetanSettings.max_pairs, help="random subset of unique pairs"
    )
    size.add_argument("--full", action="store_true", help="the whole corpus")
    b.add_argument(
        "--speech",
        type=speech_amount_option,
        default=TibetanSettings.speech_items,
        help="rows with synthesized speech, drawn at random: a count "
        f"({TibetanSettings.speech_items}, the default) or a fraction of the rows (0.34); the "
        "other rows have no speech",
    )
    b.add_argument(
        "--speech-workers",
        dest="speech_workers",
        type=positive_int,
        default=TibetanSettings.speech_workers,
        help="processes that synthesize the speech (default: one per available core; 1: none)",
    )
    b.add_argument(
        "--speech-features",
        dest="speech_features",
        default=TibetanSettings.speech_kind,
        choices=["mfcc", "oww"],
    )
    b.add_argument(
        "--speech-nodes",
        dest="speech_nodes",
        type=int,
        default=TibetanSettings.speech_nodes,
        help="nodes per utterance, the sequence length of the speech modality (default "
        f"{TibetanSettings.speech_nodes})",
    )
    b.add_argument(
        "--speech-pooling",
        dest="speech_pooling",
        choices=["mean", "pick"],
        default=TibetanSettings.speech_pooling,
        help="frames to nodes: averages of equal segments (the default), or single frames at "
        "even intervals",
    )
    b.add_argument(
        "--token-buckets",
        dest="token_buckets",
        type=int,
        default=TibetanSettings.token_buckets,
        help="rows of the trainable n-gram embedding bag of every learned method (0: none)",
    )
    methods_option(b, TibetanSettings.methods)
    b.add_argument("--examples", type=int, default=3, help="example translations to print")
    b.add_argument("--eval-corpus", dest="eval_corpus", help="evaluate --run on this corpus only")
    b.add_argument("--run", help="trained run for --eval-corpus")


def settings(args: argparse.Namespace) -> TibetanSettings:
    """The settings of ``vallayz bench tibetan`` that the parsed command line ``args`` gives."""
    return TibetanSettings(
        corpus_path=args.corpus,
        max_pairs=None if args.full else args.pairs,
        speech_items=args.speech,
        speech_kind=args.speech_features,
        # --speech-nodes 0 means the default.
        speech_nodes=args.speech_nodes or TibetanSettings.speech_nodes,
        speech_pooling=args.speech_pooling,
        speech_workers=args.speech_workers,
        token_buckets=args.token_buckets,
        pool=args.pool,
        pools=args.pools,
        seed_eval=args.seed_eval,
        matched_dropout=args.matched_dropout,
        methods=tuple(args.methods),
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz bench tibetan`` (or, with ``--eval-corpus``, evaluates a run on a corpus);
    prints the retrieval table and a few example translations."""
    from vallayz.data import PairedEmbeddings
    from vallayz.eval import format_table
    from vallayz_train.tibetan.bench import bench_tibetan, evaluate_corpus
    from vallayz_train.tibetan.constants import TRAIN_DEFAULTS
    from vallayz_train.tibetan.translate import translate_text

    if args.eval_corpus:
        if not args.run:
            raise UsageError("--eval-corpus needs --run RUN_DIR, a trained run to evaluate")
        evaluate_corpus(
            args.run,
            args.eval_corpus,
            args.out,
            args.pool,
            args.pools,
            not args.quiet,
            seed_eval=args.seed_eval,
        )
        return 0
    if args.corpus and not Path(args.corpus).exists():
        raise UsageError(f"--corpus {args.corpus} does not exist")
    model, train = train_args(args, TRAIN_DEFAULTS)
    results = bench_tibetan(args.out, settings(args), train, model, progress=not args.quiet)
    rows = [
        r
        for r in results["retrieval"]
        if r["pool"] in (str(args.pool), "all") and r["queries_from"] == "all"
    ]
    print(
        format_table(rows, ["method", "source", "target", "pool", "queries", "R@1", "R@5", "MRR"])
    )
    items = PairedEmbeddings(results["data"], check_values=False).items
    for item in [i for i in items if i["split"] == "test"][: args.examples]:
        best = translate_text(Path(args.out) / "impn", "bo", item["text_bo"], k=1)[0]
        print(f"\nbo:        {visible(item['text_bo'])}\ngold en:   {visible(item['text_en'])}")
        print(f"retrieved: {visible(best[2])} (score {best[1]:.3f})")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
