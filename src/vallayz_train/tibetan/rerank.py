"""The re-ranker of the Tibetan benchmark: a Tibetan line (its fixed vector and its syllables)
against an English line (its MiniLM vector and MiniLM's token states), trained on negatives
mined by cross-fitting over the contrastive heads or IMPN (:mod:`vallayz_train.rerank_train`),
and scored bo→en on the validation (and test) split against the first stage evaluated."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.data import PairedEmbeddings
from vallayz.eval import format_table
from vallayz.reranker import Reranker, RerankerConfig, SideConfig, SideContent
from vallayz_train.bench.ablation import AblationSpec
from vallayz_train.bench.runs import train_run
from vallayz_train.encoders import cached_encode
from vallayz_train.encoders.english import TOKEN_STATES, english_token_encoder
from vallayz_train.model_defaults import MODEL_DEFAULTS
from vallayz_train.rerank_train import (
    RERANKER_DIR,
    CrossFit,
    RerankContent,
    RerankTrainConfig,
    build_reranker,
    cross_fit,
    fit_fusion_weight,
    rerank_eval,
    save_training,
    side_content,
    train_reranker,
    training_folds,
)
from vallayz_train.run_folder import load_model
from vallayz_train.tibetan.constants import FRONT_END_DEFAULTS, SYLLABLE_LENGTH, TOKEN_BUCKETS

# Cache name of the English token states (MiniLM's first TOKEN_STATES tokens, float16).
STATES_NAME = f"en-minilm-tokens-{TOKEN_STATES}"
# Rows of the re-ranker's syllable table (the data's hashed syllable ids taken modulo it).
SYLLABLE_TABLE = 2**14
# Lines per cached chunk of token states.
STATES_CHUNK = 512
PAIR: tuple[tuple[str, ...], str] = (("bo",), "en")
# Methods that cross-fitting can train as the first stage (and mine with).
FIRST_STAGES = ("contrastive-heads", "impn")


def tibetan_reranker_config(data: PairedEmbeddings, **changes: Any) -> RerankerConfig:
    """bo (fixed vector + syllable ids) against en (MiniLM vector + token states), a 2-layer
    transformer of width 64 (about 1.2 M parameters, most in the syllable table)."""
    dims = data.modalities
    return RerankerConfig(
        query=SideConfig("bo", dims["bo"], SYLLABLE_TABLE, 0, SYLLABLE_LENGTH),
        candidate=SideConfig("en", dims["en"], 0, dims["en"], TOKEN_STATES),
        **{"width": 64, "layers": 2, "heads": 4, **changes},
    )


def english_states(
    lines: list[str], cache: Path, progress: bool = True, encoder: Callable[..., Any] | None = None
) -> np.ndarray:
    """MiniLM token states of ``lines`` ``[N, TOKEN_STATES, 384]`` float16, cached by content."""
    encode = encoder or english_token_encoder()
    return cached_encode(STATES_NAME, lines, encode, cache, chunk=STATES_CHUNK, progress=progress)


def state_rows(
    data: PairedEmbeddings,
    train_rows: int | None,
    seed: int = 0,
    scored: tuple[str, ...] = ("val",),
) -> np.ndarray:
    """The rows whose token states are encoded: every row of the ``scored`` splits, then
    ``train_rows`` training rows in a seeded order (rounded up to whole cached chunks; None:
    all), so that a smaller budget reuses the chunks of a larger one.

    Raises:
        ValueError: if ``scored`` is empty or names a split other than ``val`` and ``test``.
    """
    if not scored or set(scored) - {"val", "test"}:
        raise ValueError(f"the scored splits must be 'val' and/or 'test', got {list(scored)}")
    splits = data.split_indices()
    first = np.concatenate([splits[name] for name in scored])
    train = np.random.default_rng(seed).permutation(splits["train"])
    count = len(train) if train_rows is None else min(len(train), train_rows)
    total = len(first) + count
    total = min(len(first) + len(train), -(-total // STATES_CHUNK) * STATES_CHUNK)
    return np.concatenate([first, train])[:total]


def first_stage_trainer(
    steps: int, seed: int = 0, progress: bool = False, method: str = "contrastive-heads"
) -> Callable[..., Any]:
    """Trains a first stage as ``vallayz ablate --base bench`` does (``steps`` steps of 256
    rows): the contrastive heads as its reference, or IMPN (``method="impn"``) as its
    ``default`` variant; the returned function trains into a run folder and loads the model.

    Raises:
        ValueError: if ``method`` is neither ``"contrastive-heads"`` nor ``"impn"``.
    """
    if method not in FIRST_STAGES:
        raise ValueError(f"the first stage must be one of {FIRST_STAGES}, got {method!r}")
    spec = AblationSpec(steps=steps, seed=seed, base=dict(FRONT_END_DEFAULTS))
    config = spec.train_config()
    overrides: dict[str, Any] = {"token_buckets": {"bo": TOKEN_BUCKETS}}
    if method == "impn":
        overrides = {**MODEL_DEFAULTS, **overrides}

    def train(data_dir: Path, run: Path) -> Any:
        train_run(data_dir, run, method, overrides, config, progress, print)
        return load_model(run)

    return train


def rerank_bench(
    data_dir: str | Path,
    out: str | Path,
    config: RerankTrainConfig | None = None,
    first_stage_steps: int = 250,
    train_rows: int | None = None,
    depths: tuple[int, ...] = (50,),
    pool: int = 1000,
    pools: int = 5,
    cache: str | Path | None = None,
    model_changes: dict[str, Any] | None = None,
    first_stage_run: str | Path | None = None,
    splits: tuple[str, ...] = ("val",),
    first_stage_method: str = "contrastive-heads",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Cross-fits, trains and saves the re-ranker, and scores bo→en on the ``splits`` (the
    validation split by default; nothing is fitted on them).

    Writes ``out/first-stage`` (the heads on every training row; the first stage evaluated),
    ``out/fold<k>-*`` (cross-fitting), ``out/first-stage/reranker`` (the re-ranker, read by
    ``--rerank``) and ``out/rerank.json`` (the table).

    Args:
        train_rows: Training rows whose English token states are encoded and may be mined
            (None: all).
        cache: Folder of the token-state cache (default ``out/cache``).
        first_stage_run: A run to evaluate as the first stage instead of training the heads
            on every training row into ``out/first-stage``: finished, or a fold's first stage
            that cross-fitting trains (``out/fold<k>-first-stage``, sparing a training); the
            re-ranker is saved in it.
        first_stage_method: What cross-fitting trains and mines with, and what is trained
            on every training row when no ``first_stage_run`` is given (:data:`FIRST_STAGES`).
    """
    data_dir, out = Path(data_dir), Path(out)
    config = config or RerankTrainConfig()
    data = PairedEmbeddings(data_dir, check_values=False)
    rows = state_rows(data, train_rows, config.seed, splits)
    reranker_config, content = _rerank_content(
        data, rows, Path(cache or out / "cache"), progress, model_changes
    )
    first_stage = first_stage_trainer(first_stage_steps, config.seed, progress, first_stage_method)
    evaluated = Path(first_stage_run) if first_stage_run else out / "first-stage"
    if not first_stage_run:
        first_stage(data_dir, evaluated)
    folds = training_folds(data, config.folds, config.seed)
    mined = cross_fit(data_dir, out, folds, first_stage, PAIR, config, rows, log)
    # Loaded after cross-fitting, which may have trained it (a fold's first stage).
    model = load_model(evaluated)
    trained = _train_on_mined(reranker_config, content, mined, config, log)
    _save_reranker(trained, evaluated, data_dir, mined, config)
    table = _score_bo_en(model, trained, content, data, splits, (pool, pools, config.seed), depths)
    record = _record(config, reranker_config, evaluated, mined, trained, table)
    (out / "rerank.json").write_text(json.dumps(record, indent=2) + "\n")
    columns = list(dict.fromkeys(key for row in table for key in row))
    log(format_table(table, columns))
    return table


def _rerank_content(
    data: PairedEmbeddings,
    rows: np.ndarray,
    cache: Path,
    progress: bool,
    model_changes: dict[str, Any] | None,
) -> tuple[RerankerConfig, RerankContent]:
    """The re-ranker's config and every row's content for both sides, the English token
    states encoded (cached in ``cache``) for ``rows`` only (zero elsewhere)."""
    lines = data.keys("en")
    states = english_states([lines[i] for i in rows], cache, progress)
    full = np.zeros((data.size, *states.shape[1:]), dtype=np.float16)
    full[rows] = states
    reranker_config = tibetan_reranker_config(data, **(model_changes or {}))
    content = RerankContent(
        side_content(data, reranker_config.query),
        side_content(data, reranker_config.candidate, None, full),
    )
    return reranker_config, content


@dataclass
class _TrainedReranker:
    """A re-ranker trained on mined groups, and the weight of its fused score."""

    reranker: Reranker
    # The loss of every training step.
    losses: list[float]
    # Weight of the first-stage cosine in the fused score; None when none was fitted.
    weight: float | None
    # Share of the set-aside groups each tried weight puts the positive first in.
    shares: dict[str, float]


def _train_on_mined(
    reranker_config: RerankerConfig,
    content: RerankContent,
    mined: CrossFit,
    config: RerankTrainConfig,
    log: Callable[[str], None],
) -> _TrainedReranker:
    """Trains a fresh re-ranker on the mined queries but ``config.fusion_queries`` of them
    (drawn with ``config.seed``), on which the fused score's weight is then fitted."""
    # A few mined queries stay out of training, to fit the fused score's weight on.
    order = np.random.default_rng(config.seed).permutation(len(mined.queries))
    aside, used = (
        mined.select(order[: config.fusion_queries]),
        mined.select(order[config.fusion_queries :]),
    )
    reranker = build_reranker(reranker_config, config.seed)
    log(f"re-ranker: {sum(p.numel() for p in reranker.parameters())} parameters")
    losses = train_reranker(reranker, content, used.queries, used.negatives, config, log)
    weight: float | None = None
    shares: dict[str, float] = {}
    if config.fusion_queries:
        weight, shares = fit_fusion_weight(
            reranker,
            content,
            aside.queries,
            aside.negatives,
            aside.positive_cosine,
            aside.negative_cosine,
        )
        log(f"fused score: weight {weight:g} of the first-stage cosine ({shares})")
        # Saved with the re-ranker, so that --rerank scores as the fused rows do.
        reranker.config.first_stage_weight = weight
    return _TrainedReranker(reranker, losses, weight, shares)


def _save_reranker(
    trained: _TrainedReranker,
    evaluated: Path,
    data_dir: Path,
    mined: CrossFit,
    config: RerankTrainConfig,
) -> None:
    """Saves the re-ranker in the first stage's run folder (``reranker/``, its config holding
    the fitted weight of the first stage's cosine), with how it was trained."""
    folder = trained.reranker.save(evaluated / RERANKER_DIR)
    save_training(
        folder,
        config,
        {
            "data": str(data_dir),
            "pair": "bo->en",
            "token_states": STATES_NAME,
            "first_stage": str(evaluated),
            "mined_queries": len(mined.queries),
            "held_out_r1": mined.held_out_r1,
            "final_loss": float(np.mean(trained.losses[-50:])),
            "fusion_weight": trained.weight,
            "fusion_shares": trained.shares,
        },
    )


def _score_bo_en(
    model: Any,
    trained: _TrainedReranker,
    content: RerankContent,
    data: PairedEmbeddings,
    splits: tuple[str, ...],
    pools: tuple[int, int, int],
    depths: tuple[int, ...],
) -> list[dict[str, Any]]:
    """:func:`~vallayz_train.rerank_train.rerank_eval` of bo→en on each of ``splits`` (a
    ``split`` column first), on ``pools`` (rows per pool, number of pools, seed of the pools),
    with gradients off."""
    indices = data.split_indices()
    torch.set_grad_enabled(False)
    try:
        return [
            {"split": split, **row}
            for split in splits
            for row in rerank_eval(
                model,
                trained.reranker,
                content,
                data,
                indices[split],
                PAIR,
                *pools,
                depths,
                fusion_weight=trained.weight,
            )
        ]
    finally:
        torch.set_grad_enabled(True)


def _record(
    config: RerankTrainConfig,
    reranker_config: RerankerConfig,
    evaluated: Path,
    mined: CrossFit,
    trained: _TrainedReranker,
    table: list[dict[str, Any]],
) -> dict[str, Any]:
    """What ``rerank.json`` holds: the settings, the first stage, what cross-fitting and the
    fused score's fit gave, and the table."""
    return {
        "train": asdict(config),
        "reranker": reranker_config.to_dict(),
        "first_stage": str(evaluated),
        "held_out_r1": mined.held_out_r1,
        "fusion_weight": trained.weight,
        "fusion_shares": trained.shares,
        "results": table,
    }


def rows_content(data: PairedEmbeddings, side: SideConfig, rows: np.ndarray) -> SideContent:
    """One side's content for ``rows`` of ``data``; token states (English only) encoded now
    from the rows' lines."""
    states = None
    if side.state_dim:
        if side.modality != "en":
            raise ValueError(f"token states are encoded for English only, not {side.modality!r}")
        lines = data.keys("en")
        states = english_token_encoder(length=side.length)([lines[int(r)] for r in rows])
    return side_content(data, side, rows, states)


def load_reranker(folder: str | Path) -> Reranker:
    """The re-ranker saved in ``folder`` (a run folder holding ``reranker/``, or the
    re-ranker's own folder)."""
    folder = Path(folder)
    return Reranker.load(folder / RERANKER_DIR if (folder / RERANKER_DIR).is_dir() else folder)
