"""Retrieval over every ordered pair of modalities of a data set, for any method."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from vallayz.baselines import ClosedFormTranslators, LatentTranslator
from vallayz.data import PairedEmbeddings
from vallayz.eval.retrieval import keys_to_ids, random_pools, retrieval_metrics, retrieval_ranks
from vallayz.method import Method

if TYPE_CHECKING:
    from vallayz.index import SearchIndex

Encoder = Callable[[Sequence[str], str, np.ndarray], tuple[Tensor, Tensor]]
"""``(sources, target, rows) → (queries [n, d], candidates [n, d])`` in one space, row-aligned."""


def model_encoder(model: Method, data: Any, mode: str = "soil", batch_size: int = 1024) -> Encoder:
    """Query/candidate vectors of any :class:`~vallayz.method.Method` along one retrieval path.

    ``soil`` (``capabilities.embeds``): queries are the shared-space embeddings of the sources
    (for IMPN each embedded alone, averaged over present sources), candidates those of the
    target. ``bridged`` (``capabilities.bridges``): queries are the states the absent target's
    nodes reach by message passing from the sources (several sources fused by the bridge),
    candidates the target's own shared-space vectors. ``fused`` (``capabilities.fuses``):
    queries with several sources are embedded in one pass in which the sources exchange
    messages, candidates as for ``soil``; the encoder's ``min_sources`` is 2, so retrieval
    tables score it on pairs with several sources only. ``translate``
    (``capabilities.translates``): queries are the sources translated into the target's native
    space, candidates the native targets. A ``torch.nn.Module`` is encoded in eval mode.

    Raises:
        ValueError: if ``mode`` is not one of :data:`~vallayz.method.MODES` or the method does
            not serve it.
    """
    model.capabilities.check_mode(mode, type(model).__name__)
    module = model if isinstance(model, torch.nn.Module) else None

    @torch.no_grad()
    def encode(sources: Sequence[str], target: str, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        was_training = module is not None and module.training
        if module is not None:
            module.eval()
        queries, candidates = [], []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            src = data.batch(chunk, sources)
            if mode == "bridged":
                queries.append(model.embed(src, target=target).cpu())
                candidates.append(model.embed(data.batch(chunk, [target])).cpu())
            elif mode == "soil":
                queries.append(model.embed(src).cpu())
                candidates.append(model.embed(data.batch(chunk, [target])).cpu())
            elif mode == "fused":
                queries.append(model.embed(src, fusion="fused").cpu())  # type: ignore[call-arg]
                candidates.append(model.embed(data.batch(chunk, [target])).cpu())
            else:
                queries.append(model.translate(src, target=target).cpu())
                candidates.append(data.batch(chunk, [target]).pooled()[target])
        if module is not None:
            module.train(was_training)
        return torch.cat(queries), torch.cat(candidates)

    # The fused path equals the soil path on single-source pairs: retrieval tables skip them.
    encode.min_sources = 2 if mode == "fused" else 1  # type: ignore[attr-defined]
    return encode


class ClosedFormEncoder:
    """Translates with :class:`~vallayz.baselines.ClosedFormTranslators`: one closed-form map
    per ``(source, target)`` pair, fitted lazily on anchor rows where both are present; several
    sources are averaged (each translated on its own).

    Args:
        data: The data set whose rows are encoded.
        anchors: Row indices the maps are fitted on (the training split).
        method: A :class:`~vallayz.baselines.LatentTranslator` method.
        normalisation: Its normalisation.
        anchor_data: Where the anchors are read from (default ``data``), so that a perturbed
            view of the data is encoded with maps fitted on the clean rows.
        maps: A dict of fitted maps to share between encoders of one method and anchors
            (filled on first use).
    """

    def __init__(
        self,
        data: Any,
        anchors: np.ndarray,
        method: str,
        normalisation: str = "standard",
        anchor_data: PairedEmbeddings | None = None,
        maps: dict[tuple[str, str], Any] | None = None,
    ) -> None:
        self.data, self.anchors = data, anchors
        self.anchor_data = anchor_data if anchor_data is not None else data
        self.method, self.normalisation = method, normalisation
        self.translators = ClosedFormTranslators(method, normalisation, self._anchor_pairs, maps)
        self.maps = self.translators.maps

    def _anchor_pairs(self, source: str, target: str) -> tuple[Tensor, Tensor]:
        present = self.anchor_data.present
        rows = self.anchors[present[source][self.anchors] & present[target][self.anchors]]
        pooled = self.anchor_data.batch(rows, [source, target]).pooled()
        return pooled[source], pooled[target]

    def translator(self, source: str, target: str) -> LatentTranslator:
        """The fitted map ``source → target``."""
        return self.translators.translator(source, target)

    def __call__(
        self, sources: Sequence[str], target: str, rows: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        queries = self.translators.translate(self.data.batch(rows, sources), target=target)
        return queries, self.data.batch(rows, [target]).pooled()[target]


def default_pairs(modalities: Sequence[str]) -> list[tuple[tuple[str, ...], str]]:
    """Every ordered pair ``((source,), target)`` of distinct modalities."""
    return [((a,), b) for a, b in itertools.permutations(modalities, 2)]


def retrieval_table(
    data: Any,
    rows: np.ndarray,
    encode: Encoder,
    pairs: Sequence[tuple[tuple[str, ...], str]] | None = None,
    pool: int = 1000,
    pools: int = 5,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Retrieval metrics for each ``(sources → target)`` pair on the given rows of ``data`` (a
    :class:`~vallayz.data.PairedEmbeddings` or a :class:`~vallayz.eval.PerturbedView` of one).

    For each pair only rows where every source and the target are present take part. Metrics
    are reported for ``pools`` random pools of ``pool`` items (mean over pools; the same pools
    for every method with the same ``seed``) and for the whole set of rows.

    The whole set is ranked through a :class:`~vallayz.index.SearchIndex`, built once per
    target and set of candidates (pairs into one target over the same rows share it). Each
    random pool is ranked by :func:`~vallayz.eval.retrieval_ranks` directly: an index over a
    pool would be used once, and its :meth:`~vallayz.index.SearchIndex.ranks` calls that same
    function, so both give the same ranks.

    Returns:
        One dict per pair and pool kind: ``source``, ``target``, ``pool`` (``"1000"`` or
        ``"all"``), ``queries``, ``R@1``, ``R@5``, ``R@10``, ``MRR``, ``median_rank``.
    """
    pairs = list(pairs) if pairs is not None else default_pairs(list(data.arrays))
    table: list[dict[str, object]] = []
    indexes = WholeSetIndexes()
    for run in pair_pools(data, rows, encode, pairs, pool, pools, seed):
        table.append(run.summary(pool_metrics(run, indexes)))
    return table


def pool_metrics(run: PoolRun, indexes: WholeSetIndexes | None = None) -> list[dict[str, float]]:
    """The retrieval metrics of each pool of ``run`` (one dict per pool, see
    :func:`~vallayz.eval.retrieval.retrieval_metrics`). With ``indexes``, the whole set is
    ranked through its saved search index, which gives the same ranks."""
    if indexes is not None and run.label == "all":
        ranks = [indexes.get(run).ranks(run.queries, run.key_ids)]
    else:
        ranks = [
            retrieval_ranks(run.queries[i], run.candidates[i], run.key_ids[i], run.key_ids[i])
            for i in run.index_sets
        ]
    return [retrieval_metrics(r) for r in ranks]


class WholeSetIndexes:
    """The search index of each target's whole set of candidates, built on first use and
    reused while the candidates are the same rows with the same vectors."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, bytes], tuple[Tensor, SearchIndex]] = {}

    def get(self, run: PoolRun) -> SearchIndex:
        """The index over ``run``'s candidates with its gold keys."""
        from vallayz.index import SearchIndex

        key = (run.target, run.used.tobytes())
        built = self._built.get(key)
        if built is None or not torch.equal(built[0], run.candidates):
            built = (run.candidates, SearchIndex().build(run.candidates, run.key_ids))
            self._built[key] = built
        return built[1]


@dataclass
class PoolRun:
    """The encoded rows of one ``(sources → target)`` pair and one kind of pool.

    Attributes:
        sources: The query modalities.
        target: The candidate modality.
        label: ``str(pool)`` for random pools, ``"all"`` for every row.
        used: Data rows where every source and the target are present.
        queries: Query vectors of ``used`` ``[n, d]``.
        candidates: Candidate vectors of ``used`` ``[n, d]``.
        key_ids: Integer gold key of each row of ``used`` ``[n]``.
        index_sets: Positions in ``used`` of each pool.
    """

    sources: tuple[str, ...]
    target: str
    label: str
    used: np.ndarray
    queries: Tensor
    candidates: Tensor
    key_ids: Tensor
    index_sets: list[Tensor]

    def summary(self, metrics: Sequence[dict[str, float]]) -> dict[str, object]:
        """One table row: the pair, the pool kind and each metric's mean over the pools."""
        row: dict[str, object] = {
            "source": "+".join(self.sources),
            "target": self.target,
            "pool": self.label,
            "pools": len(self.index_sets),
            "queries": len(self.index_sets[0]),
        }
        for name in metrics[0]:
            row[name] = float(np.mean([m[name] for m in metrics]))
        return row


def pair_pools(
    data: Any,
    rows: np.ndarray,
    encode: Encoder,
    pairs: Sequence[tuple[tuple[str, ...], str]],
    pool: int,
    pools: int,
    seed: int,
) -> Iterator[PoolRun]:
    """For each pair, its rows with every source and the target present (pairs with fewer
    than two are skipped), encoded once, then ``pools`` random pools of ``pool`` items (when
    there are more rows) and the whole set: the runs every retrieval table scores. Pairs with
    fewer sources than the encoder's ``min_sources`` attribute (1 when it has none) are
    skipped."""
    min_sources = getattr(encode, "min_sources", 1)
    for sources, target in pairs:
        if len(sources) < min_sources:
            continue
        mask = data.present[target][rows].copy()
        for source in sources:
            mask &= data.present[source][rows]
        used = rows[mask]
        if len(used) < 2:
            continue
        queries, candidates = encode(sources, target, used)
        all_keys = data.keys(target)
        key_ids, _ = keys_to_ids([all_keys[i] for i in used], [])
        runs = [("all", [torch.arange(len(used))])]
        if pool < len(used):
            runs.insert(0, (str(pool), random_pools(len(used), pool, pools, seed)))
        for label, index_sets in runs:
            yield PoolRun(
                tuple(sources), target, label, used, queries, candidates, key_ids, index_sets
            )


def format_table(table: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table (also valid Markdown)."""
    if not table:
        return "(no rows)"
    columns = list(columns or table[0].keys())

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join(lines)
