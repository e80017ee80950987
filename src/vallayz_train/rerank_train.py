"""Training a second-stage re-ranker (:class:`vallayz.reranker.Reranker`) after a frozen first
stage, on hard negatives mined by cross-fitting.

On its own training rows a first stage ranks the positive first far more often than on unseen
rows, so negatives mined there are not the ones it confuses at query time. The training rows
are therefore split into ``k`` folds by document (:func:`document_folds`); the first stage
trained on the other ``k - 1`` folds (:func:`fold_data`, the trainer unchanged) mines each
fold (:func:`mine_negatives`): every held-out query's top first-stage candidates within pools
of held-out rows, the positive left out. The re-ranker then trains on groups of one positive
and ``negatives`` of those, with a listwise cross-entropy (:func:`train_reranker`). The first
stage used at query time is another run trained on every training row; the re-ranker only
rescores its candidate lists (:func:`rerank_eval`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vallayz.data import ITEMS_NAME, PairedEmbeddings
from vallayz.eval import model_encoder, retrieval_metrics, retrieval_ranks
from vallayz.eval.pairs import Encoder, PoolRun, pair_pools
from vallayz.eval.rerank import rerank_ranks
from vallayz.eval.retrieval import keys_to_ids
from vallayz.reranker import (
    Reranker,
    RerankerConfig,
    SideConfig,
    SideContent,
    fused_score,
    reranker_scorer,
)
from vallayz_train.split_folder import read_items, write_split_folder

# The split label the held-out fold gets in a fold's data folder: the trainer never reads it.
HELD_OUT = "test"
# Where a run keeps its re-ranker, and what the re-ranker's folder records of its training.
RERANKER_DIR = "reranker"
TRAINING_NAME = "rerank_training.json"


@dataclass
class RerankTrainConfig:
    """How the re-ranker's negatives are mined and how it trains. Saved beside it."""

    # Folds of the training rows (by document); the first stage of each fold trains on the rest.
    folds: int = 2
    # Held-out rows per mining pool (queries and candidates alike), as at evaluation.
    mine_pool: int = 1000
    # First-stage candidates kept per mined query (the positive excluded): negatives are drawn
    # from these, as the re-ranker sees the top of a list at query time.
    mine_depth: int = 50
    # Hard negatives per group (besides the positive).
    negatives: int = 7
    # Groups per optimizer step.
    batch_groups: int = 16
    # Optimizer steps (chosen on the Tibetan validation split: 200 learned nothing, 2,000
    # lifted R@1 by 2.7 points there).
    steps: int = 2000
    # Peak learning rate of AdamW (linear warm-up, cosine decay).
    lr: float = 1e-3
    # AdamW weight decay.
    weight_decay: float = 0.01
    # Warm-up steps.
    warmup_steps: int = 50
    # Seed of the folds, the mining pools, the group sampling and the initialisation.
    seed: int = 0
    # Joint passes per forward call.
    batch_size: int = 512
    # Folds whose rows are mined (each by the first stage trained on the other folds); empty:
    # every fold. Mining fewer folds trains fewer first stages.
    mined_folds: list[int] = field(default_factory=list)
    # Mined queries kept out of the re-ranker's training to fit the weight of the first
    # stage's cosine in the fused score (0: no fused score).
    fusion_queries: int = 300

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(
                f"folds must be >= 2 (cross-fitting needs a held-out fold), got {self.folds}"
            )
        for name in ("mine_pool", "mine_depth", "negatives", "batch_groups", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.mine_pool < 2:
            raise ValueError("mine_pool must be >= 2 (a query needs a negative)")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if any(not 0 <= f < self.folds for f in self.mined_folds):
            raise ValueError(
                f"mined_folds must name folds in [0, {self.folds}), got {self.mined_folds}"
            )


def document_folds(groups: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold ``0 .. k-1`` of each row, whole documents per fold, folds of nearly equal rows.

    Documents are ordered by a seeded hash and each goes to the fold with the fewest rows so far
    (the lowest fold on ties), so the assignment depends only on the documents and ``seed``.

    Shape:
        ``N`` group names → ``[N]`` (int64).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    counts: dict[str, int] = {}
    for group in groups:
        counts[group] = counts.get(group, 0) + 1
    order = sorted(counts, key=lambda d: hashlib.sha256(f"{seed}:{d}".encode()).hexdigest())
    sizes = [0] * k
    fold_of: dict[str, int] = {}
    for doc in order:
        fold = min(range(k), key=lambda f: (sizes[f], f))
        fold_of[doc] = fold
        sizes[fold] += counts[doc]
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def training_folds(data: PairedEmbeddings, k: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Fold → its training rows (the data's ``train`` split cut by :func:`document_folds`)."""
    train = data.split_indices()["train"]
    groups = data.groups()
    folds = document_folds([groups[i] for i in train], k, seed)
    return {f: train[folds == f] for f in range(k)}


def fold_data(data_dir: Path, out: Path, held_out: np.ndarray) -> Path:
    """A copy of the data folder (its arrays linked) whose ``held_out`` rows are relabelled
    :data:`HELD_OUT`, so that the unchanged trainer never trains on them. Reused when it
    exists; built aside and moved into place."""
    if (out / ITEMS_NAME).exists():
        return out
    items = read_items(data_dir)
    if "split" not in items.header:
        raise ValueError(f"{data_dir / ITEMS_NAME} needs a split column to make folds of")
    splits = [row["split"] for row in items.rows]
    for i in (int(r) for r in held_out):
        if splits[i] != "train":
            raise ValueError(f"row {i} is held out of training but is not a training row")
        splits[i] = HELD_OUT
    return write_split_folder(data_dir, out, items, splits)


def mine_negatives(
    encode: Encoder,
    data: PairedEmbeddings,
    rows: np.ndarray,
    source: str,
    target: str,
    pool: int,
    depth: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """Each query row's ``depth`` best first-stage candidates whose key differs from its own.

    ``rows`` (with ``source`` and ``target`` present) are shuffled and cut into pools of about
    ``pool``; within each, every row's ``source`` is a query against every row's ``target``.

    Returns:
        The query rows ``[Q]``, their negative rows ``[Q, depth]`` best first (``-1`` where a
        pool holds fewer), the first stage's R@1 on these pools, and the first stage's cosine
        of each query with its positive ``[Q]`` and with each negative ``[Q, depth]``.
    """
    mask = data.present[source][rows] & data.present[target][rows]
    rows = np.asarray(rows)[mask]
    order = np.random.default_rng(seed).permutation(len(rows))
    count = max(1, round(len(rows) / pool))
    keys = data.keys(target)
    queries_out, negatives_out, hits = [], [], 0
    positive_out, negative_cos_out = [], []
    for part in np.array_split(order, count):
        chosen = rows[np.sort(part)]
        q, c = encode([source], target, chosen)
        key_ids, _ = keys_to_ids([keys[i] for i in chosen], [])
        hits += int((retrieval_ranks(q, c, key_ids, key_ids) == 1).sum())
        sims = F.normalize(q.float(), dim=-1) @ F.normalize(c.float(), dim=-1).T
        positive_out.append(sims.diagonal().numpy().copy())
        same = key_ids[:, None] == key_ids[None, :]
        sims = sims.masked_fill(same, float("-inf"))
        keep = min(depth, len(chosen) - 1)
        top = sims.topk(keep, dim=1)
        negatives = np.full((len(chosen), depth), -1, dtype=np.int64)
        found = chosen[top.indices.numpy()]
        found[~torch.isfinite(top.values).numpy()] = -1
        negatives[:, :keep] = found
        cosines = np.zeros((len(chosen), depth), dtype=np.float32)
        cosines[:, :keep] = np.where(negatives[:, :keep] >= 0, top.values.numpy(), 0.0)
        queries_out.append(chosen)
        negatives_out.append(negatives)
        negative_cos_out.append(cosines)
    return (
        np.concatenate(queries_out),
        np.concatenate(negatives_out),
        hits / max(1, len(rows)),
        np.concatenate(positive_out),
        np.concatenate(negative_cos_out),
    )


def sample_groups(
    queries: np.ndarray, negatives: np.ndarray, count: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` groups: a mined query, then its positive (the query's own row) and ``size``
    negatives drawn without replacement from its mined list (repeated when it holds fewer).

    Returns:
        Query rows ``[count * (size + 1)]`` and candidate rows ``[count * (size + 1)]``, each
        group's rows consecutive, the positive first.
    """
    pick = rng.integers(0, len(queries), count)
    query_rows, candidate_rows = [], []
    for i in pick:
        pool = negatives[i][negatives[i] >= 0]
        if len(pool) == 0:
            raise ValueError(f"query row {queries[i]} has no mined negative")
        drawn = rng.choice(pool, size, replace=len(pool) < size)
        query_rows.append(np.full(size + 1, queries[i]))
        candidate_rows.append(np.concatenate([[queries[i]], drawn]))
    return np.concatenate(query_rows), np.concatenate(candidate_rows)


@dataclass
class RerankContent:
    """Every row's content for both sides, indexed by data row."""

    query: SideContent
    candidate: SideContent


def side_content(
    data: PairedEmbeddings,
    side: SideConfig,
    rows: np.ndarray | None = None,
    states: np.ndarray | None = None,
) -> SideContent:
    """One side's content for ``rows`` of ``data`` (default every row): its pooled vector, its
    unit ids (``data.node_ids``) and ``states`` (``[len(rows), T, d]``, row-aligned with
    ``rows``, zero vectors = padding), as the side reads them; states are kept in float16.

    Raises:
        ValueError: if the side reads ids the data lacks, or states are not given.
    """
    m = side.modality
    index = np.arange(data.size) if rows is None else np.asarray(rows, dtype=np.int64)
    vector = None
    if side.vector_dim:
        pooled = np.asarray(data.arrays[m][index], dtype=np.float32)
        vector = torch.from_numpy(pooled.reshape(len(index), -1)[:, : side.vector_dim])
    ids = None
    if side.id_buckets:
        if m not in data.node_ids:
            raise ValueError(f"the re-ranker reads unit ids of {m!r} but the data has none")
        ids = torch.from_numpy(np.asarray(data.node_ids[m][index, : side.length], np.int64))
    tensor = mask = None
    if side.state_dim:
        if states is None or len(states) != len(index):
            raise ValueError(f"the re-ranker reads token states of {m!r}; give one per row")
        tensor = torch.from_numpy(np.ascontiguousarray(states[:, : side.length])).half()
        mask = tensor.abs().amax(dim=-1) > 0
    return SideContent(vector, ids, tensor, mask)


def learning_rate(step: int, config: RerankTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 0 over the remaining steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + float(np.cos(np.pi * min(1.0, progress))))


def train_reranker(
    model: Reranker,
    content: RerankContent,
    queries: np.ndarray,
    negatives: np.ndarray,
    config: RerankTrainConfig,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Trains ``model`` on groups from the mined lists; returns the loss of every step."""
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    model.train()
    losses = []
    size = config.negatives + 1
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        q_rows, c_rows = sample_groups(
            queries, negatives, config.batch_groups, config.negatives, rng
        )
        q = content.query.take(torch.from_numpy(q_rows))
        c = content.candidate.take(torch.from_numpy(c_rows))
        loss = model.group_loss(q, c, size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step == 0:
            log(f"re-ranker step {step + 1}/{config.steps}: loss {np.mean(losses[-50:]):.4f}")
    model.eval()
    return losses


def rerank_eval(
    first_stage: Any,
    reranker: Reranker,
    content: RerankContent,
    data: PairedEmbeddings,
    rows: np.ndarray,
    pair: tuple[tuple[str, ...], str],
    pool: int = 1000,
    pools: int = 5,
    seed: int = 0,
    depths: Sequence[int] = (50,),
    batch_size: int = 1024,
    latency_queries: int = 50,
    repeats: int = 3,
    fusion_weight: float | None = None,
) -> list[dict[str, Any]]:
    """The first stage's rows and the re-ranked rows (one per depth) of one pair, on the
    pools of :func:`~vallayz.eval.pairs.pair_pools` (``pool`` rows each), with the cost.

    With ``fusion_weight``, each depth also gets a row re-ranked by the re-ranker's score plus
    ``fusion_weight`` times the first stage's cosine (:func:`fused_scorer`; the same joint
    passes, counted once).

    Cost per query: joint passes (the depth) and milliseconds, the median over ``repeats``
    timings of ``latency_queries`` queries each re-ranked alone (one forward of ``depth``
    pairs per query), and the whole table's wall time per query (``batched ms/query``,
    queries scored together).
    """
    encode = model_encoder(first_stage, data, "soil")
    runs = [
        run
        for run in pair_pools(data, rows, encode, [pair], pool, pools, seed)
        if run.label == str(pool) or pool >= len(run.used)
    ]
    table: list[dict[str, Any]] = []
    for run in runs[:1]:
        first = [
            retrieval_ranks(run.queries[s], run.candidates[s], run.key_ids[s], run.key_ids[s])
            for s in run.index_sets
        ]
        table.append({**run.summary([retrieval_metrics(r) for r in first]), "stage": "first"})
        for depth in depths:
            table += _depth_rows(
                run,
                reranker,
                content,
                depth,
                batch_size,
                latency_queries,
                repeats,
                fusion_weight,
            )
    return table


def _depth_rows(
    run: PoolRun,
    reranker: Reranker,
    content: RerankContent,
    depth: int,
    batch_size: int,
    latency_queries: int,
    repeats: int,
    fusion_weight: float | None,
) -> list[dict[str, Any]]:
    """The re-ranked row of one depth with its cost (see :func:`rerank_eval`), and the fused
    row after it when there is a fusion weight."""
    scored = _rerank_pools(run, reranker, content, depth, batch_size, fusion_weight)
    queries = sum(len(s) for s in run.index_sets)
    row = run.summary(scored.metrics)
    row.update(
        stage=f"re-ranked top {depth}",
        depth=depth,
        passes_per_query=scored.passes / queries,
        **{"batched ms/query": 1000 * scored.seconds / queries},
        **{"ms/query": single_query_ms(reranker, content, run, depth, latency_queries, repeats)},
    )
    rows = [row]
    if scored.fused:
        rows.append(
            {
                **run.summary(scored.fused),
                "stage": f"re-ranked top {depth} + {fusion_weight:g} x first-stage cosine",
                "depth": depth,
                "passes_per_query": scored.passes / queries,
            }
        )
    return rows


@dataclass
class _Reranked:
    """The re-ranked metrics of every pool of one pair at one depth, and their cost."""

    # Retrieval metrics of each pool, re-ranked by the re-ranker's score.
    metrics: list[dict[str, float]]
    # The same by the fused score (empty without a fusion weight).
    fused: list[dict[str, float]]
    # Wall time of re-ranking every pool's queries together (the fused pass not counted).
    seconds: float
    # Joint passes of the re-ranker over all pools (each distinct pair scored once).
    passes: int


def _rerank_pools(
    run: PoolRun,
    reranker: Reranker,
    content: RerankContent,
    depth: int,
    batch_size: int,
    fusion_weight: float | None,
) -> _Reranked:
    """Re-ranks the ``depth`` best first-stage candidates of every query of each pool of
    ``run`` (and, with ``fusion_weight``, again by the fused score, on the same passes)."""
    metrics, fused, seconds, passes = [], [], 0.0, [0]
    for subset in run.index_sets:
        chosen = torch.from_numpy(run.used[subset.numpy()])
        score = memoised(
            reranker_scorer(
                reranker,
                content.query.take(chosen),
                content.candidate.take(chosen),
                batch_size,
                passes,
            )
        )
        args = (run.queries[subset], run.candidates[subset])
        keys = (run.key_ids[subset], run.key_ids[subset])
        started = time.perf_counter()
        ranks = rerank_ranks(*args, *keys, score, depth)
        seconds += time.perf_counter() - started
        metrics.append(retrieval_metrics(ranks))
        if fusion_weight is not None:
            both = fused_scorer(score, *args, fusion_weight)
            fused.append(retrieval_metrics(rerank_ranks(*args, *keys, both, depth)))
    return _Reranked(metrics, fused, seconds, passes[0])


def memoised(score: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``score`` computed once per distinct ``(query_index, candidate_index)`` call."""
    seen: dict[tuple[bytes, bytes], Tensor] = {}

    def again(q: Tensor, c: Tensor) -> Tensor:
        key = (q.numpy().tobytes(), c.numpy().tobytes())
        if key not in seen:
            seen[key] = score(q, c)
        return seen[key]

    return again


def fused_scorer(
    score: Callable[[Tensor, Tensor], Tensor],
    queries: Tensor,
    candidates: Tensor,
    weight: float,
) -> Callable[[Tensor, Tensor], Tensor]:
    """``score(q, c) + weight * cosine(queries[q], candidates[c])``: the re-ranker's score
    plus the first stage's, so that a weak re-ranker can only break the first stage's near-ties.

    Shape:
        queries ``[Q, d]``, candidates ``[C, d]``; the scorer maps ``[R], [R] → [R]``.
    """
    qn = F.normalize(queries.float(), dim=-1)
    cn = F.normalize(candidates.float(), dim=-1)

    def both(q: Tensor, c: Tensor) -> Tensor:
        return fused_score(score(q, c), (qn[q] * cn[c]).sum(dim=-1), weight)

    return both


# Weights of the first stage's cosine tried by fit_fusion_weight.
FUSION_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


def fit_fusion_weight(
    reranker: Reranker,
    content: RerankContent,
    queries: np.ndarray,
    negatives: np.ndarray,
    positive_cosine: np.ndarray,
    negative_cosine: np.ndarray,
    weights: Sequence[float] = FUSION_WEIGHTS,
    batch_size: int = 1024,
) -> tuple[float, dict[str, float]]:
    """The weight of the first stage's cosine that puts the positive first most often among
    each query's positive and mined negatives, on mined queries the re-ranker did not train on
    (their cosines are those of the fold's first stage, which did not train on them either).

    Returns:
        The chosen weight (the smallest of the best) and each weight's share of positives first.
    """
    q_rows, c_rows, cos = [], [], []
    for i, row in enumerate(queries):
        kept = negatives[i] >= 0
        members = np.concatenate([[row], negatives[i][kept]])
        q_rows.append(np.full(len(members), row))
        c_rows.append(members)
        cos.append(np.concatenate([[positive_cosine[i]], negative_cosine[i][kept]]))
    score = reranker_scorer(reranker, content.query, content.candidate, batch_size)(
        torch.from_numpy(np.concatenate(q_rows)), torch.from_numpy(np.concatenate(c_rows))
    )
    shares: dict[str, float] = {}
    for weight in weights:
        start, first = 0, 0
        for group in cos:
            total = fused_score(score[start : start + len(group)], torch.from_numpy(group), weight)
            first += int(bool((total[1:] < total[0]).all()))
            start += len(group)
        shares[f"{weight:g}"] = first / max(1, len(cos))
    best = max(shares.values())
    return next(w for w in weights if shares[f"{w:g}"] == best), shares


def single_query_ms(
    reranker: Reranker,
    content: RerankContent,
    run: Any,
    depth: int,
    queries: int,
    repeats: int,
) -> float:
    """Median over ``repeats`` of the mean milliseconds to re-rank one query's ``depth`` best
    first-stage candidates of its pool (one forward of ``depth`` joint passes)."""
    subset = run.index_sets[0]
    chosen = torch.from_numpy(run.used[subset.numpy()])
    q = F.normalize(run.queries[subset].float(), dim=-1)
    c = F.normalize(run.candidates[subset].float(), dim=-1)
    count = min(queries, len(chosen))
    top = (q[:count] @ c.T).topk(min(depth, len(chosen)), dim=1).indices
    timings = []
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            for i in range(count):
                rows = chosen[top[i]]
                reranker(
                    content.query.take(chosen[i].repeat(len(rows))), content.candidate.take(rows)
                )
            timings.append(1000 * (time.perf_counter() - started) / count)
    return float(np.median(timings))


@dataclass
class CrossFit:
    """What cross-fitting mined: the query rows, their negatives, the fold of each query and
    the held-out R@1 of each fold's first stage."""

    queries: np.ndarray
    negatives: np.ndarray
    query_folds: np.ndarray
    positive_cosine: np.ndarray
    negative_cosine: np.ndarray
    held_out_r1: dict[int, float] = field(default_factory=dict)

    def select(self, index: np.ndarray) -> CrossFit:
        """The mined queries at ``index``."""
        return CrossFit(
            self.queries[index],
            self.negatives[index],
            self.query_folds[index],
            self.positive_cosine[index],
            self.negative_cosine[index],
            self.held_out_r1,
        )


def cross_fit(
    data_dir: Path,
    out: Path,
    folds: dict[int, np.ndarray],
    train_first_stage: Callable[[Path, Path], Any],
    pair: tuple[tuple[str, ...], str],
    config: RerankTrainConfig,
    usable: np.ndarray | None = None,
    log: Callable[[str], None] = print,
) -> CrossFit:
    """Trains one first stage per fold on the other folds (``train_first_stage(data, run)``
    returns the trained model) and mines the fold's rows with it.

    Args:
        usable: Rows that may be mined (e.g. those whose token states exist); default all.
    """
    data = PairedEmbeddings(data_dir, check_values=False)
    if config.mined_folds:
        folds = {f: folds[f] for f in config.mined_folds}
    queries, negatives, query_folds = [], [], []
    r1: dict[int, float] = {}
    positive_cosine, negative_cosine = [], []
    for fold, held_out in folds.items():
        folder = fold_data(data_dir, out / f"fold{fold}-data", held_out)
        model = train_first_stage(folder, out / f"fold{fold}-first-stage")
        rows = held_out if usable is None else np.intersect1d(held_out, usable)
        (source,), target = pair
        q, n, r1[fold], pc, nc = mine_negatives(
            model_encoder(model, data, "soil"),
            data,
            rows,
            source,
            target,
            config.mine_pool,
            config.mine_depth,
            config.seed + fold,
        )
        log(f"fold {fold}: {len(q)} queries mined, first-stage held-out R@1 {r1[fold]:.3f}")
        queries.append(q)
        negatives.append(n)
        query_folds.append(np.full(len(q), fold))
        positive_cosine.append(pc)
        negative_cosine.append(nc)
    return CrossFit(
        np.concatenate(queries),
        np.concatenate(negatives),
        np.concatenate(query_folds),
        np.concatenate(positive_cosine),
        np.concatenate(negative_cosine),
        r1,
    )


def save_training(directory: Path, config: RerankTrainConfig, extra: dict[str, Any]) -> None:
    """Records how the re-ranker in ``directory`` was trained (``rerank_training.json``)."""
    record = {"train": asdict(config), **extra}
    (directory / TRAINING_NAME).write_text(json.dumps(record, indent=2) + "\n")


def build_reranker(config: RerankerConfig, seed: int) -> Reranker:
    """A freshly initialised re-ranker (seeded)."""
    torch.manual_seed(seed)
    return Reranker(config)
