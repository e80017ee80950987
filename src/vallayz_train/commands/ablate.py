"""``vallayz ablate``: named IMPN variants of the Tibetan benchmark under one budget."""

from __future__ import annotations

import argparse
from typing import Any

from vallayz_train.names import ABLATION_MODES
from vallayz_train.options import (
    UsageError,
    check_model_keys,
    check_pool,
    check_positive,
    override_options,
    parse_pair,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz ablate`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser(
        "ablate",
        help="named IMPN variants of the Tibetan benchmark, one budget, validation split",
        description="Each variant is one run of the trainer (planner off unless the variant "
        "turns it on) on the same data and steps, in its own folder under --out; finished "
        "variants are reused and interrupted ones resumed. Scores are validation R@1/R@5 on "
        "pools of --pool candidates; the table is also written to OUT/ablation.json "
        "(OUT/ablation-test.json with --split test), after the rows there of variants that "
        "earlier calls ran.",
    )
    _training_options(p)
    _scoring_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, only the table")
    p.set_defaults(func=run)


def _training_options(p: argparse.ArgumentParser) -> None:
    """What is trained: the data, the variants, their budget, seed and starting settings."""
    p.add_argument("data", nargs="?", help="data directory of vallayz bench tibetan")
    p.add_argument("--out", help="folder of the variants' runs")
    p.add_argument("--list", action="store_true", help="print the variant names and stop")
    p.add_argument("--only", nargs="+", metavar="NAME", help="a subset of variants")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    p.add_argument(
        "--base",
        choices=["plain", "bench"],
        default="plain",
        help="training settings every variant starts from: 'plain' (lr 1e-3 everywhere, every "
        "row's n-grams used) or 'bench' (the bench tibetan n-gram table learning rate and "
        "share of rows without n-grams)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed (initialisation, batch order, dropout); the split stays the same",
    )
    override_options(p)


def _scoring_options(p: argparse.ArgumentParser) -> None:
    """How each variant is scored: directions, pools, paths, split and perturbations."""
    p.add_argument("--pool", type=int, default=1000)
    p.add_argument("--pairs", nargs="+", default=["bo->en", "bo+speech->en"])
    p.add_argument(
        "--noisy-snr",
        dest="noisy_snr",
        type=float,
        help="also score bo->en with noise at this SNR on the Tibetan vector, n-grams withheld, "
        "and every multi-source pair with that noise on its first source only",
    )
    p.add_argument(
        "--missing",
        type=float,
        help="also score every multi-source pair with each source dropped for this share of "
        "the rows (at least one kept per row), as the missing-modality sweep does",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(ABLATION_MODES),
        default=["soil"],
        help="retrieval paths scored, each variant on those its method serves: soil (sources "
        "embedded alone, averaged: late fusion), bridged, fused (several sources in one "
        "message-passing pass; multi-source pairs only), translate (queries decoded into the "
        "target's native space; the pairwise MLPs serve only this one)",
    )
    p.add_argument(
        "--split",
        choices=["val", "test"],
        default="val",
        help="split scored: 'val' to choose among variants, 'test' only to report the variant "
        "chosen on validation (its finished run is reused)",
    )
    p.add_argument(
        "--rerank-depth",
        dest="rerank_depth",
        type=int,
        default=50,
        help="candidates re-scored per query by variants with a match head",
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz ablate``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz_train.bench.ablation import AblationSpec, run_ablation
    from vallayz_train.model_defaults import MODEL_DEFAULTS
    from vallayz_train.tibetan.ablations import VARIANTS
    from vallayz_train.tibetan.constants import FRONT_END_DEFAULTS, TOKEN_BUCKETS

    if args.list:
        print("\n".join(VARIANTS))
        return 0
    if args.data is None or args.out is None:
        raise UsageError("ablate needs a data directory and --out FOLDER (or --list)")
    given_model, given_train = _checked_options(args)
    front_end = dict(FRONT_END_DEFAULTS) if args.base == "bench" else {}
    spec = AblationSpec(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        base={**front_end, **given_train},
        pairs=[parse_pair(p) for p in args.pairs],
        pool=args.pool,
        modes=tuple(args.modes),
        rerank_depth=args.rerank_depth,
        noisy_snr=args.noisy_snr,
        noisy_pair=(("bo",), "en"),
        missing=args.missing,
        split=args.split,
    )
    model = {**MODEL_DEFAULTS, "token_buckets": {"bo": TOKEN_BUCKETS}, **given_model}
    log = (lambda *_: None) if args.quiet else (lambda *a: print(*a, flush=True))
    table = run_ablation(
        args.data, args.out, spec, VARIANTS, args.only, model, progress=not args.quiet, log=log
    )
    if args.quiet:
        from vallayz.eval import format_table

        print(format_table(table))
    return 0


def _checked_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Checks the budget, pool, missing share and overrides before anything is read; returns
    the ``--model`` and ``--train`` fields."""
    from vallayz.errors import VallayzUserError
    from vallayz_train.config import TrainConfig

    check_positive(args.steps, "--steps")
    check_positive(args.batch_size, "--batch-size")
    check_pool(args.pool)
    if args.missing is not None and not 0 <= args.missing < 1:
        raise UsageError(
            f"--missing must be a share of rows in [0, 1), got {args.missing}; e.g. 0.5 drops "
            "each source for half the rows"
        )
    given_model = dict(args.model_overrides or [])
    given_train = dict(args.train_overrides or [])
    check_model_keys(given_model)
    try:
        TrainConfig.from_dict(given_train)
    except VallayzUserError as err:
        raise UsageError(f"--train: {err}") from err
    return given_model, given_train
