"""A second-stage re-ranker over the contrastive heads (or IMPN), bo→en on the validation split:

    python scripts/rerank_tibetan.py DATA_DIR --out runs/rerank [--folds 2] \\
        [--first-stage-steps 250] [--steps 2000] [--negatives 7] [--depth 50 128] \\
        [--train-rows N] [--cache runs/cache] [--first-stage-method impn] [--splits val test]

trains the heads (IMPN with ``--first-stage-method impn``) on every training row (the first
stage evaluated, ``OUT/first-stage``, unless ``--first-stage-run`` names one) and on
each fold's complement (cross-fitting, ``OUT/fold<k>-first-stage``), mines each fold's hard
negatives with its complement's first stage, trains the re-ranker on groups of the positive and
``--negatives`` of them, saves it in ``OUT/first-stage/reranker`` (read by ``vallayz retrieve``
and ``vallayz translate-text`` with ``--rerank N``) and prints the first-stage and re-ranked
rows on pools of 1,000 lines of the ``--splits`` scored, with the cost per query
(``OUT/rerank.json``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vallayz_train.rerank_train import RerankTrainConfig


def build_parser() -> argparse.ArgumentParser:
    """The script's arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="data folder of the Tibetan benchmark (build_data's OUT/data)")
    p.add_argument("--out", required=True, help="folder of the runs and the table")
    p.add_argument("--folds", type=int, default=2, help="cross-fitting folds (by document)")
    p.add_argument("--first-stage-steps", dest="first_stage_steps", type=int, default=250)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps of the re-ranker")
    p.add_argument("--negatives", type=int, default=7, help="hard negatives per group")
    p.add_argument("--batch-groups", dest="batch_groups", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--depth", type=int, nargs="+", default=[50], help="candidates re-ranked")
    p.add_argument("--pools", type=int, default=5, help="validation pools of 1,000")
    p.add_argument(
        "--train-rows",
        dest="train_rows",
        type=int,
        help="training rows whose English token states are encoded and mined (default all)",
    )
    p.add_argument("--cache", help="token-state cache folder (default OUT/cache)")
    p.add_argument(
        "--mined-folds",
        dest="mined_folds",
        type=int,
        nargs="+",
        default=[],
        help="folds to mine (default every fold); fewer folds train fewer first stages",
    )
    p.add_argument(
        "--first-stage-run",
        dest="first_stage_run",
        help="the run evaluated as the first stage: a finished run, or a fold's first stage "
        "that cross-fitting trains (OUT/fold<k>-first-stage); default: the heads trained on "
        "every training row into OUT/first-stage. The re-ranker is saved in it",
    )
    p.add_argument(
        "--first-stage-method",
        dest="first_stage_method",
        choices=["contrastive-heads", "impn"],
        default="contrastive-heads",
        help="the method cross-fitting trains and mines with (and trains on every training row "
        "as the first stage evaluated, unless --first-stage-run names one)",
    )
    p.add_argument(
        "--fusion-queries",
        dest="fusion_queries",
        type=int,
        default=300,
        help="mined queries kept out of training to fit the fused score's weight (0: none)",
    )
    p.add_argument(
        "--splits",
        nargs="+",
        choices=["val", "test"],
        default=["val"],
        help="splits scored (nothing is fitted on them); choose on val, report on test",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vallayz_train.tibetan.rerank import rerank_bench

    config = RerankTrainConfig(
        folds=args.folds,
        negatives=args.negatives,
        steps=args.steps,
        batch_groups=args.batch_groups,
        lr=args.lr,
        seed=args.seed,
        mined_folds=list(args.mined_folds),
        fusion_queries=args.fusion_queries,
    )
    rerank_bench(
        args.data,
        args.out,
        config,
        first_stage_steps=args.first_stage_steps,
        train_rows=args.train_rows,
        depths=tuple(args.depth),
        pools=args.pools,
        cache=args.cache,
        first_stage_run=args.first_stage_run,
        splits=tuple(args.splits),
        first_stage_method=args.first_stage_method,
        log=lambda line: print(line, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
