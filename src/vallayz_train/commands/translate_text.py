"""``vallayz translate-text``: English candidates for a Tibetan line or recording."""

from __future__ import annotations

import argparse
from pathlib import Path

from vallayz_train.options import (
    UsageError,
    rerank_options,
    visible,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz translate-text`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser(
        "translate-text", help="English candidates for a Tibetan line or recording"
    )
    p.add_argument("run", help="a run of vallayz bench tibetan, e.g. runs/tibetan/impn")
    p.add_argument("text", nargs="?", help="a Tibetan line")
    p.add_argument("--source", default="bo")
    p.add_argument("--audio", help="a WAV recording instead of text")
    p.add_argument("--k", type=int, default=5)
    rerank_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz translate-text``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz_train.tibetan.translate import translate_text

    if not args.text and not args.audio:
        raise UsageError('give a Tibetan line ("...") or --audio FILE.wav')
    if args.audio and not Path(args.audio).is_file():
        raise UsageError(f"--audio {args.audio} is not a file; give a WAV recording")
    if args.rerank < 0:
        raise UsageError(f"--rerank must be >= 0 (0: no re-ranking), got {args.rerank}")
    found = translate_text(
        args.run, args.source, args.text, args.audio, args.k, args.rerank, args.reranker
    )
    for rank, (item, score, english) in enumerate(found, start=1):
        print(f"{rank}. {score:.4f}  {visible(english)}  [{visible(item)}]")
    return 0
