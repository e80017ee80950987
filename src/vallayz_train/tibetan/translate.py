"""``vallayz translate-text``: the English lines of a run's corpus nearest to a Tibetan line or a
recording, searched in the run's saved candidate index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.data import PairedEmbeddings
from vallayz.errors import VallayzUserError
from vallayz.reranker import SideContent
from vallayz.types import Batch
from vallayz_train.encoders import audio_features
from vallayz_train.run_folder import candidate_index, load_model, run_data
from vallayz_train.tibetan.constants import (
    ENCODER_DIR,
    SYLLABLE_LENGTH,
    TOKEN_LENGTH,
)
from vallayz_train.tibetan.encoders import TibetanEncoder


def translate_text(
    run_dir: str | Path,
    source: str,
    text: str | None = None,
    audio: str | None = None,
    k: int = 5,
    rerank: int = 0,
    reranker: str | Path | None = None,
) -> list[tuple[str, float, str]]:
    """The ``k`` best English candidates of the run's corpus for a Tibetan line or a recording.

    With ``rerank`` > 0, the ``rerank`` best first-stage candidates are re-scored by the
    re-ranker in ``reranker`` (default ``RUN/reranker``) and the ``k`` best of them returned,
    with the re-ranker's scores.

    Returns:
        ``(id, score, English text)`` best first (cosine, or the re-ranker's score).
    """
    run_dir = Path(run_dir)
    model: Any = load_model(run_dir)
    data = run_data(run_dir)
    if audio is not None:
        query = _audio_query(run_dir, model, data, audio)
    elif source == "bo":
        query = _tibetan_query(data, text)
    else:
        raise VallayzUserError(
            f"translate-text reads Tibetan text (--source bo) or --audio, not {source!r}"
        )
    english = data.keys("en")
    first: dict[str, int] = {}
    for row, line in enumerate(english):
        first.setdefault(line, row)
    rows = np.array(sorted(first.values()))
    with torch.no_grad():
        q = model.embed(query) if model.capabilities.embeds else model.translate(query, target="en")
    # Embedded once per model and saved in the run folder; later calls only read it.
    index = candidate_index(
        model, run_dir, data, "en", rows, embed=None if model.capabilities.embeds else _native_en
    )
    scores, found = index.search(q, min(max(k, rerank), len(rows)))
    if rerank:
        if audio is not None:
            raise VallayzUserError("--rerank reads a Tibetan line's syllables; give the line")
        scores, found = _rerank_found(query, data, rows, (scores, found), reranker or run_dir, k)
    return [
        (data.items[int(rows[i])]["id"], float(s), english[int(rows[i])])
        for s, i in zip(scores[0], found[0], strict=True)
    ]


def _audio_query(run_dir: Path, model: Any, data: PairedEmbeddings, audio: str) -> Batch:
    """The speech query of a recording, read with the features the run's speech had.

    Raises:
        VallayzUserError: if the run was not trained with speech, or its ``speech.json`` is
            unreadable.
    """
    meta_path = data.directory / "speech.json"
    if "speech" not in model.config.modalities or not meta_path.is_file():
        raise VallayzUserError(
            f"the run {run_dir} was not trained with speech (its data has no "
            f"{meta_path.name}); give a Tibetan line, or a run of vallayz bench tibetan "
            "with --speech above 0"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind, nodes, pooling = meta["kind"], meta["nodes"], meta.get("pooling", "pick")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise VallayzUserError(
            f"{meta_path} is not readable ({err}); run vallayz bench tibetan again to "
            "rewrite the data"
        ) from err
    # Runs made before the pooling choice existed picked single frames.
    frames = audio_features(audio, kind, nodes, pooling)
    return Batch.of({"speech": torch.from_numpy(frames)})


def _tibetan_query(data: PairedEmbeddings, text: str | None) -> Batch:
    """The ``bo`` query of a Tibetan line: its vector, n-gram ids and syllable ids, from the
    encoder saved with the data.

    Raises:
        VallayzUserError: if there is no line.
    """
    if not text:
        raise VallayzUserError("give a Tibetan line to translate, or --audio FILE.wav")
    encoder = TibetanEncoder.load(data.directory / ENCODER_DIR)
    return Batch.of(
        {"bo": torch.from_numpy(encoder([text]))},
        tokens={"bo": torch.from_numpy(encoder.token_ids([text], TOKEN_LENGTH)).long()},
        node_ids={"bo": torch.from_numpy(encoder.syllable_ids([text], SYLLABLE_LENGTH)).long()},
    )


def _rerank_found(
    query: Batch,
    data: PairedEmbeddings,
    rows: np.ndarray,
    first: tuple[torch.Tensor, torch.Tensor],
    reranker: str | Path,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of the first-stage candidates of the one query (``first``: their
    cosines and indices, ``[1, N]`` each), re-scored by the re-ranker in ``reranker``
    (:meth:`~vallayz.reranker.Reranker.rescore`): ``([1, k] scores, [1, k] indices)``."""
    from vallayz_train.tibetan.rerank import load_reranker, rows_content

    model_r = load_reranker(reranker)
    side = model_r.config.query
    cosine, found = first
    candidates = rows[found[0].numpy()]
    count = len(candidates)
    parts = {
        "vector": query.embeddings["bo"].float().expand(count, -1),
        "ids": query.node_ids["bo"][:, : side.length].expand(count, -1),
    }
    q_side = SideContent(
        parts["vector"] if side.vector_dim else None, parts["ids"] if side.id_buckets else None
    )
    with torch.no_grad():
        score = model_r.rescore(
            q_side, rows_content(data, model_r.config.candidate, candidates), cosine[0]
        )
    best = score.argsort(descending=True, stable=True)[:k]
    return score[best][None], found[0][best][None]


def _native_en(batch: Batch) -> torch.Tensor:
    """English candidates as they are, for a model that translates into their space."""
    return batch.pooled()["en"]
