"""``vallayz eval``: retrieval metrics of a run for every ordered pair of modalities."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vallayz_train.commands.shared import check_data_fits, load_run
from vallayz_train.options import (
    WRITTEN_BY,
    UsageError,
    check_output,
    check_pool,
    check_positive,
    replace_atomically,
    visible,
    written_by_vallayz,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz eval`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser("eval", help="retrieval metrics for every ordered pair of modalities")
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--pool", type=int, default=1000)
    p.add_argument("--pools", type=int, default=5)
    p.add_argument("--mode", default="soil", choices=["soil", "translate"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split-seed",
        dest="split_seed",
        type=int,
        help="seed of the split (default and only accepted value: the run's own)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--output", help="JSON file (default RUN/eval-SPLIT-MODE.json)")
    p.add_argument(
        "--force", action="store_true", help="replace --output even if vallayz did not write it"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz eval``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    from vallayz.data import PairedEmbeddings
    from vallayz.eval import default_pairs, format_table, model_encoder, retrieval_table

    check_pool(args.pool)
    check_positive(args.pools, "--pools")
    out = (
        Path(args.output) if args.output else Path(args.run) / f"eval-{args.split}-{args.mode}.json"
    )
    check_output(out, args.force, written_by_vallayz(out))
    model = load_run(args.run, args.device)
    data = PairedEmbeddings(args.data)
    split_seed = _eval_split_seed(Path(args.run), data, args.split, args.split_seed)
    rows = (
        data.split_indices(split_seed)[args.split] if args.split != "all" else np.arange(data.size)
    )
    if len(rows) < 2:
        raise UsageError(
            f"the {args.split} split of {args.data} has {len(rows)} rows; pick another --split"
        )
    known = _known_modalities(model, data, args.data, args.mode)
    table = retrieval_table(
        data,
        rows,
        model_encoder(model, data, args.mode),
        default_pairs(known),
        pool=args.pool,
        pools=args.pools,
        seed=args.seed,
    )
    print(format_table(table))
    meta = {
        WRITTEN_BY: "vallayz eval",
        "split": args.split,
        "mode": args.mode,
        "pool": args.pool,
        "pools": args.pools,
        "seed": args.seed,
    }
    text = json.dumps({**meta, "results": table}, indent=2) + "\n"
    _write(out, Path(args.run), text)
    print(f"saved {visible(out)}")
    return 0


def _write(out: Path, run_dir: Path, text: str) -> None:
    """Writes the results file; one inside the run folder under the run's lock, so that it is
    not written beside a process training into the run."""
    from vallayz_train.run_folder import lock_run

    if out.resolve().parent != run_dir.resolve():
        replace_atomically(out, lambda handle: handle.write(text.encode()))
        return
    with lock_run(run_dir):
        replace_atomically(out, lambda handle: handle.write(text.encode()))


def _eval_split_seed(run_dir: Path, data: Any, split: str, given: int | None) -> int:
    """The split seed ``eval`` cuts the data with: the run's own (from its ``run.json``; 0 for
    a model folder without one). Another ``--split-seed`` would put the run's training rows in
    the evaluated split, so it is refused unless the data's ``split`` column decides the
    splits or the whole data is evaluated."""
    from vallayz_train.run_folder import RUN_FILE, read_run

    own = 0
    if (run_dir / RUN_FILE).is_file():
        seed = read_run(run_dir)["train"].get("split_seed", 0)
        own = seed if isinstance(seed, int) else 0
    fixed = split == "all" or bool(data.items and "split" in data.items[0])
    if given is not None and given != own and not fixed:
        raise UsageError(
            f"--split-seed {given} is not the seed the run was trained with ({own}): its "
            f"{split} split would hold training rows; drop --split-seed to use the run's split"
        )
    return own if given is None else given


def _check_mode(model: Any, mode: str) -> None:
    """Refuses a ``--mode`` the run's method does not serve, naming the ones it does."""
    modes = model.capabilities.modes
    if mode not in modes:
        raise UsageError(
            f"this run's method ({type(model).__name__}) cannot serve --mode {mode}; use --mode "
            f"{' or --mode '.join(m for m in modes if m in ('soil', 'translate'))}"
        )


def _known_modalities(model: Any, data: Any, path: str, mode: str) -> list[str]:
    """The data's modalities the run knows, in the data's order, after checking that the data
    holds every one of the model's, fits it, and that the method serves ``mode``; the others
    are named in a note and left out."""
    missing = set(model.config.modalities) - set(data.modalities)
    if missing:
        raise UsageError(f"{path} lacks modalities {sorted(missing)} that the model was trained on")
    check_data_fits(model, data, path)
    _check_mode(model, mode)
    known = [m for m in data.modalities if m in model.config.modalities]
    extra = sorted(set(data.modalities) - set(known))
    if extra:
        print(
            f"note: {visible(path)} also holds {extra}, which the run does not know; they are "
            "left out",
            file=sys.stderr,
        )
    return known
