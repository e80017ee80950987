"""``vallayz fit``: train IMPN or a learned baseline, resume a run, extend one with new
modalities, or train a fused path for one (a second stage).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vallayz_train.names import LEARNED_METHODS

if TYPE_CHECKING:
    from vallayz_train.distributed import World
from vallayz_train.options import (
    UsageError,
    train_args,
    training_options,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz fit`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser("fit", help="train IMPN on a data directory")
    p.add_argument("data", nargs="?", help="data directory (optional with --resume)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument(
        "--extend",
        metavar="RUN_DIR",
        help="add the modalities of DATA that the finished run RUN_DIR lacks to its model, "
        "training only their parts (every old parameter frozen) into the new run --out; the "
        "method is the run's",
    )
    p.add_argument(
        "--add",
        action="append",
        metavar="MODALITY",
        help="with --extend: add this modality of DATA (repeatable; default: every one the run "
        "lacks)",
    )
    p.add_argument(
        "--fuse",
        metavar="RUN_DIR",
        help="train a fused path for the finished IMPN run RUN_DIR (its own copy of the bridge "
        "layers and a gate over the sources) by the combinatorial term, every other parameter "
        "frozen, into the new run --out: a second stage for multi-source queries",
    )
    p.add_argument(
        "--fuse-parts",
        choices=["both", "layers", "gate"],
        default="both",
        help="with --fuse: what the fused path trains (default: both)",
    )
    training_options(p, "(default: --lr)")
    p.add_argument("--planner", choices=["on", "off"])
    p.add_argument(
        "--method",
        choices=list(LEARNED_METHODS),
        help="IMPN (the default), or a learned baseline trained under the same budget",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz fit``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz_train import distributed
    from vallayz_train.trainer import fit, fit_extension

    _check_starts(args)
    # Under torchrun every process runs this command; fit() starts their process group.
    world = distributed.world_from_env()
    try:
        if args.extend:
            if args.out is None or args.data is None:
                raise UsageError("fit --extend RUN needs the data folder and --out NEW_RUN_DIR")
            model, train = train_args(args)
            summary = fit_extension(
                args.data,
                args.extend,
                args.out,
                train,
                args.add,
                model,
                progress=not args.quiet,
                world=world,
            )
        elif args.fuse:
            summary = _fuse(args, world)
        elif args.resume:
            _check_resume_options(args)
            summary = fit(args.data, args.resume, resume=True, progress=not args.quiet, world=world)
        else:
            if args.out is None:
                raise UsageError("fit needs --out RUN_DIR (or --resume RUN_DIR to continue a run)")
            model, train = train_args(args)
            summary = fit(
                args.data,
                args.out,
                model,
                train,
                progress=not args.quiet,
                method=args.method or "impn",
                world=world,
            )
    finally:
        distributed.stop()
    if world is None or world.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def _check_starts(args: argparse.Namespace) -> None:
    """Refuses ``--extend``, ``--fuse`` and ``--resume`` together, and ``--add`` without
    ``--extend``."""
    if args.extend and args.resume:
        raise UsageError(
            "--extend starts a new run from a finished one and --resume continues a run; pass "
            "one of them (an extension run is continued with --resume NEW alone)"
        )
    if args.add and not args.extend:
        raise UsageError("--add names a modality to add to the run of --extend; pass --extend RUN")
    if args.fuse and (args.extend or args.resume):
        raise UsageError(
            "--fuse starts a new run from a finished one; pass it without --extend and --resume "
            "(a fusion stage is continued with --resume NEW alone)"
        )


def _fuse(args: argparse.Namespace, world: World | None) -> dict[str, Any]:
    """Runs ``vallayz fit DATA --fuse RUN --out NEW``."""
    from vallayz_train.trainer import fit_fusion_stage

    if args.out is None or args.data is None:
        raise UsageError("fit --fuse RUN needs the data folder and --out NEW_RUN_DIR")
    model, train = train_args(args)
    if model or args.method:
        raise UsageError(
            "a fusion stage keeps the run's model; drop --model and --method (--fuse-parts "
            "chooses what the fused path trains)"
        )
    return fit_fusion_stage(
        args.data,
        args.fuse,
        args.out,
        train,
        layers=args.fuse_parts != "gate",
        gate=args.fuse_parts != "layers",
        progress=not args.quiet,
        world=world,
    )


# The options of fit that set a field of the run's training settings (run.json "train").
_RUN_OPTIONS = ("epochs", "max_steps", "batch_size", "lr", "front_end_lr", "seed", "device")


def _check_resume_options(args: argparse.Namespace) -> None:
    """Refuses the options of a new run that ``fit --resume`` would otherwise ignore: a run
    continues with the settings in its ``run.json`` (an option equal to them is accepted)."""
    from vallayz_train.run_folder import read_run

    run = read_run(Path(args.resume))
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise UsageError(
            f"--out {args.out} and --resume {args.resume} name different folders; a resumed run "
            "stays in its own folder, so drop --out (or copy the run folder first)"
        )
    given = [
        ("--config", args.config is not None),
        ("--model", bool(args.model_overrides)),
        ("--train", bool(args.train_overrides)),
        ("--method", args.method is not None and args.method != run.get("method", "impn")),
        (
            "--planner",
            args.planner is not None and (args.planner == "on") != run["train"].get("planner"),
        ),
    ]
    for key in _RUN_OPTIONS:
        value = getattr(args, key)
        given.append(
            (f"--{key.replace('_', '-')}", value is not None and value != run["train"].get(key))
        )
    for option, differs in given:
        if differs:
            raise UsageError(
                f"{option} cannot change a run being resumed: --resume continues with the "
                f"settings in {Path(args.resume) / 'run.json'}; drop {option}, or start a new run "
                "with --out to train with other settings"
            )
