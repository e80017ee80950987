"""Encoder-capacity ablation: ``vallayz ablate`` with the encoder variants (this script maps its
arguments on).

Each kind is a named variant of ``vallayz ablate`` (see ``vallayz ablate --list``), trained by
the same trainer into its own run folder under ``--out`` and scored on the validation split:

    python scripts/ablate_encoder.py DATA_DIR --source bo --target en [--steps 400] \\
        [--val-rows 2000] [--kinds linear impn "impn no-ffn"]

runs ``vallayz ablate DATA_DIR --out runs/ablate-encoder --pairs bo->en --steps 400
--pool 2000 --only ...``. The variants train with the Tibetan benchmark's model settings and
n-gram table; the adapter-alone kinds, the 256-d linear head and the model without bridge
layers are no longer offered.
"""

from __future__ import annotations

import argparse
import sys

from vallayz_train.cli import main
from vallayz_train.tibetan.ablations import ENCODER_PROBE, REFERENCE

# The old kinds and the variants of vallayz ablate that run them: InfoNCE alone, from random
# bridge layers unless the kind says zero-init.
KINDS = {
    "linear": REFERENCE,
    "impn": ENCODER_PROBE,
    "impn zero-init": "contrastive only",
    "impn no-ffn": f"{ENCODER_PROBE}, no bridge feed-forward",
    "impn no-attention": f"{ENCODER_PROBE}, no bridge attention",
    "impn no-final-norm": f"{ENCODER_PROBE}, no final norm",
    "impn no-ffn no-attention no-final-norm": (
        f"{ENCODER_PROBE}, no bridge attention, feed-forward or final norm"
    ),
}
# Kinds of the earlier stand-alone probe that have no variant: an adapter or a linear head
# alone is not a model the trainer runs.
RETIRED = (
    "linear 256-d",
    "adapter",
    "adapter no-norm",
    "adapter zero-init",
    "adapter projection-only",
    "impn no-bridge",
    "impn zero-init no-norm",
)


def ablate_arguments(argv: list[str]) -> list[str]:
    """The ``vallayz ablate`` arguments of this script's command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data")
    parser.add_argument("--out", default="runs/ablate-encoder", help="folder of the runs")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--val-rows", type=int, default=0, help="validation pool size (0: ablate's default)"
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=[*KINDS, *RETIRED])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--token-buckets",
        type=int,
        help="accepted for old command lines: every variant has the benchmark's n-gram table",
    )
    args = parser.parse_args(argv)
    retired = [kind for kind in args.kinds if kind in RETIRED]
    if retired:
        parser.error(
            f"the kind(s) {retired} are no longer offered (an adapter or head alone is not a "
            f"model the trainer runs); choose among {list(KINDS)}"
        )
    out = [args.data, "--out", args.out, "--pairs", f"{args.source}->{args.target}"]
    out += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    out += ["--seed", str(args.seed)]
    if args.val_rows:
        out += ["--pool", str(args.val_rows)]
    return [*out, "--only", *(KINDS[kind] for kind in args.kinds)]


if __name__ == "__main__":
    sys.exit(main(["ablate", *ablate_arguments(sys.argv[1:])]))
