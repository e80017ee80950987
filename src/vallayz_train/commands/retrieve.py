"""``vallayz retrieve``: the nearest candidates of another modality, optionally re-ranked."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vallayz_train.commands.shared import check_data_fits, check_modality, load_run
from vallayz_train.options import (
    UsageError,
    check_positive,
    read_array,
    rerank_options,
    visible,
)

if TYPE_CHECKING:
    from vallayz.data import PairedEmbeddings
    from vallayz.types import Batch


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``vallayz retrieve`` and its options.

    Args:
        subparsers: the subcommands of ``vallayz``.
    """
    p = subparsers.add_parser("retrieve", help="nearest candidates of another modality")
    p.add_argument("run")
    p.add_argument(
        "--source",
        required=True,
        help="the query's modality, or several joined by '+' (e.g. bo+speech; with --query-ids)",
    )
    p.add_argument("--target", required=True)
    p.add_argument(
        "--fusion",
        default="late",
        choices=["late", "fused"],
        help="a query with several sources: the mean of their single-source embeddings "
        "(late), or one pass of the bridge in which they exchange messages (fused; IMPN, "
        "best after vallayz fit --fuse)",
    )
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``vallayz retrieve``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status, 0.
    """
    import torch

    from vallayz_train.run_folder import candidate_index

    model, data, candidate_rows = _checked_inputs(args)
    queries, labels = _queries(args, model, data)
    with torch.no_grad():
        q = model.embed(queries, fusion="fused") if args.fusion == "fused" else model.embed(queries)
    index = candidate_index(model, Path(args.run), data, args.target, candidate_rows, args.index)
    found = index.search(q, min(max(args.k, args.rerank), len(candidate_rows)))
    top_scores, top_indices = (
        _rerank_retrieved(args, data, queries, candidate_rows, found)
        if args.rerank
        else (list(found[0]), list(found[1]))
    )
    _print_found(args, data, candidate_rows, labels, top_scores, top_indices)
    return 0


def _checked_inputs(args: argparse.Namespace) -> tuple[Any, PairedEmbeddings, np.ndarray]:
    """The run's model, the candidates' data folder and its rows that hold a target, once
    the options are checked against them.

    Raises:
        UsageError: for a non-positive ``--k`` or one larger than the pool, a negative
            ``--rerank``, a modality the model or the data folder lacks, or several sources
            with ``--input``, ``--rerank``, the target among them or a model that cannot fuse.
    """
    from vallayz.data import PairedEmbeddings

    check_positive(args.k, "--k")
    if args.rerank < 0:
        raise UsageError(f"--rerank must be >= 0 (0: no re-ranking), got {args.rerank}")
    model = load_run(args.run, args.device)
    args.sources = _check_sources(args, model)
    check_modality(model, args.target, "--target")
    data = PairedEmbeddings(args.candidates)
    named = [("--source", name) for name in args.sources] + [("--target", args.target)]
    for option, name in named:
        if name not in data.modalities:
            raise UsageError(
                f"{option} {name!r} is not in {args.candidates}; it has {sorted(data.modalities)}"
            )
    check_data_fits(model, data, args.candidates)
    candidate_rows = np.flatnonzero(data.present[args.target])
    if args.k > len(candidate_rows):
        raise UsageError(
            f"--k {args.k} is larger than the pool: {args.candidates} has "
            f"{len(candidate_rows)} {args.target} candidates"
        )
    return model, data, candidate_rows


def _check_sources(args: argparse.Namespace, model: Any) -> list[str]:
    """The modalities of ``--source`` (one, or several joined by '+'), checked.

    Raises:
        UsageError: as :func:`_checked_inputs` says.
    """
    sources = args.source.split("+")
    for name in sources:
        check_modality(model, name, "--source")
    if len(set(sources)) != len(sources) or args.target in sources:
        raise UsageError(
            f"--source {args.source} names a modality twice or the target {args.target!r}; "
            "name each source once, the target not among them"
        )
    if len(sources) > 1 and (args.input or args.rerank):
        raise UsageError(
            "a query of several sources is read from the rows --query-ids names, and is not "
            "re-ranked; drop --input and --rerank, or give one --source"
        )
    if args.fusion == "fused" and "fused" not in model.capabilities.modes:
        raise UsageError(
            f"--fusion fused needs a model that embeds several sources in one pass (IMPN); "
            f"this run's {type(model).__name__} fuses late only, so drop --fusion"
        )
    return sources


def _queries(
    args: argparse.Namespace, model: Any, data: PairedEmbeddings
) -> tuple[Batch, list[str]]:
    """The queries (the rows of ``--input``, or the rows ``--query-ids`` names, with their
    tokens) and the label each is printed under.

    Raises:
        UsageError: for an empty ``--input``, or a query id that is unknown or has no source
            embedding.
    """
    import torch

    from vallayz.types import Batch

    if args.input:
        x = torch.from_numpy(read_array(args.input, model.config.modalities[args.source]))
        if x.shape[0] == 0:
            raise UsageError(f"--input {args.input} holds no rows; give at least one query")
        return Batch.of({args.source: x}), [f"row {i}" for i in range(x.shape[0])]
    ids = {item["id"]: i for i, item in enumerate(data.items)}
    unknown = [q for q in args.query_ids if q not in ids]
    if unknown:
        raise UsageError(f"query id(s) {unknown[:3]} are not in {args.candidates}/items.tsv")
    rows = np.array([ids[q] for q in args.query_ids])
    held = [any(data.present[name][row] for name in args.sources) for row in rows]
    absent = [q for q, has in zip(args.query_ids, held, strict=True) if not has]
    if absent:
        raise UsageError(f"query id(s) {absent[:3]} have no {args.source} embedding")
    # With its tokens, if the data has any; a row missing some sources is read from the rest.
    return data.batch(rows, args.sources), list(args.query_ids)


def _print_found(
    args: argparse.Namespace,
    data: PairedEmbeddings,
    candidate_rows: np.ndarray,
    labels: list[str],
    top_scores: list[Any],
    top_indices: list[Any],
) -> None:
    """Prints each query's candidates, best first: rank, id, score and gold key."""
    keys = data.keys(args.target)
    for label, scores, indices in zip(labels, top_scores, top_indices, strict=True):
        print(f"query {visible(label)}:")
        for rank, (score, index) in enumerate(
            zip(scores.tolist(), indices.tolist(), strict=True), start=1
        ):
            row = int(candidate_rows[index])
            print(f"  {rank}. {visible(data.items[row]['id'])}\t{score:.4f}\t{visible(keys[row])}")


def _rerank_retrieved(
    args: argparse.Namespace,
    data: Any,
    queries: Any,
    candidate_rows: np.ndarray,
    first: tuple[Any, Any],
) -> tuple[list[Any], list[Any]]:
    """``retrieve --rerank N``: each query's N best first-stage candidates (``first``: their
    cosines and indices) re-scored by the re-ranker (``RUN/reranker`` or ``--reranker``) with
    its saved weight of the first stage's cosine; returns each query's k best scores and
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
        for i, (cosine, found) in enumerate(zip(*first, strict=True)):
            kept = found >= 0  # an approximate index may find fewer
            top = found[kept]
            rows = candidate_rows[top.numpy()]
            if args.input:
                query = SideContent(queries.embeddings[args.source][i : i + 1].float())
                query = query.take(torch.zeros(len(rows), dtype=torch.long))
            else:
                query = rows_content(data, side, np.full(len(rows), ids[args.query_ids[i]]))
            candidates = rows_content(data, reranker.config.candidate, rows)
            score = reranker.rescore(query, candidates, cosine[kept])
            best = score.argsort(descending=True, stable=True)[: args.k]
            scores.append(score[best])
            indices.append(top[best])
    return scores, indices
