"""The data folder of the Tibetan benchmark: the corpus encoded (English MiniLM, the Tibetan
TF-IDF + SVD vectors and n-gram ids, synthesized speech) into ``OUT/data``, cached under
``OUT/cache``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.data import write_paired_embeddings
from vallayz_train.encoders import cached_encode, english_encoder
from vallayz_train.parallel_corpus import Corpus, build_corpus, read_segments
from vallayz_train.tibetan.constants import (
    ENCODER_DIR,
    SPEECH_NODES,
    SPEECH_POOLING,
    SYLLABLE_LENGTH,
    TOKEN_LENGTH,
)
from vallayz_train.tibetan.encoders import TibetanEncoder, speech_encoder
from vallayz_train.tibetan.encoders.speech import check_workers, speech_amount, speech_row_count


def encode_tibetan(
    lines: list[str], tibetan: TibetanEncoder, cache: Path, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed TF-IDF + SVD vectors, the hashed n-gram ids and the syllable ids of
    ``lines``, all cached."""
    vectors = cached_encode(
        f"bo-tfidf-{tibetan.fingerprint()}", lines, tibetan, cache, progress=progress
    )
    ids = cached_encode(
        f"bo-tokens-{tibetan.buckets}-{TOKEN_LENGTH}",
        lines,
        lambda chunk: tibetan.token_ids(chunk, TOKEN_LENGTH),
        cache,
        progress=progress,
    )
    syllable_ids = cached_encode(
        f"bo-syllables-{tibetan.buckets}-{SYLLABLE_LENGTH}",
        lines,
        lambda chunk: tibetan.syllable_ids(chunk, SYLLABLE_LENGTH),
        cache,
        progress=progress,
    )
    return vectors, ids, syllable_ids


def encode_speech(
    lines: list[str],
    kind: str,
    nodes: int,
    pooling: str,
    cache: Path,
    progress: bool = True,
    workers: int | None = None,
) -> np.ndarray:
    """``[N, nodes, d]`` features of the synthesized speech of ``lines``, cached by content
    in chunks of 256 lines, each synthesized by ``workers`` processes (``None``: one per
    available core; 1: in this process). The cached features do not depend on ``workers``."""
    with speech_encoder(kind, nodes, pooling, workers) as encoder:
        return cached_encode(
            f"speech-{kind}-{pooling}-{nodes}",
            lines,
            encoder,
            cache,
            chunk=256,
            progress=progress,
        )


def write_speech_meta(data_dir: Path, kind: str, nodes: int, pooling: str) -> None:
    """Records how the speech of a data directory was encoded, for recordings at query time."""
    meta = {"kind": kind, "nodes": nodes, "pooling": pooling}
    (data_dir / "speech.json").write_text(json.dumps(meta) + "\n")


def build_data(
    out: Path,
    corpus_path: str | None,
    max_pairs: int | None,
    speech_items: int | float,
    speech_kind: str = "mfcc",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    log: Any = print,
    speech_nodes: int = SPEECH_NODES,
    speech_pooling: str = SPEECH_POOLING,
    *,
    speech_workers: int | None = None,
) -> tuple[Path, dict[str, list[int]]]:
    """Encodes the corpus into a data directory; returns it and the "novel" test rows.

    ``speech_items`` rows, drawn at random from every split, get synthesized speech: a count
    (an ``int``) or a fraction of the rows (a ``float`` in (0, 1]); the others have none. With
    no speech rows (``0``) the folder has no speech modality and nothing is synthesized.
    """
    speech_items = speech_amount(speech_items)
    speech_workers = check_workers(speech_workers)
    data_dir = out / "data"
    cache = out / "cache"
    corpus = build_corpus(read_segments(corpus_path), seed=seed, max_pairs=max_pairs)
    sizes = {s: len(corpus.indices(s)) for s in ("train", "val", "test")}
    log(f"corpus: {len(corpus)} unique pairs, {len(set(corpus.docs))} documents, splits {sizes}")

    arrays, bo_tokens, bo_syllables = _text_arrays(corpus, data_dir, cache, seed, device, progress)
    texts = {"text_en": corpus.en, "text_bo": corpus.bo}
    speech_rows = _speech_rows(len(corpus), speech_items, seed)
    has_speech = np.zeros(len(corpus), dtype=bool)
    has_speech[speech_rows] = True
    lines = [corpus.bo[i] for i in speech_rows]
    if lines:
        log(f"speech: {len(lines)} of {len(corpus)} rows, {speech_workers} synthesis process(es)")
        frames = encode_speech(
            lines, speech_kind, speech_nodes, speech_pooling, cache, progress, speech_workers
        )
        arrays["speech"] = np.zeros((len(corpus), *frames.shape[1:]), dtype=np.float16)
        arrays["speech"][speech_rows] = frames
        texts["text_speech"] = corpus.bo
    else:
        log("speech: none (0 rows asked for); the folder holds bo and en only")

    write_paired_embeddings(
        data_dir,
        arrays,
        corpus.items(texts),
        present={"speech": has_speech} if lines else {},
        tokens={"bo": bo_tokens},
        node_ids={"bo": bo_syllables},
    )
    if lines:
        write_speech_meta(data_dir, speech_kind, speech_nodes, speech_pooling)
    return data_dir, {"novel": corpus.novel().tolist()}


def _text_arrays(
    corpus: Corpus, data_dir: Path, cache: Path, seed: int, device: str, progress: bool
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The ``bo`` and ``en`` arrays of the corpus, and the Tibetan n-gram and syllable ids;
    the Tibetan encoder is fitted on the training lines and saved in ``data_dir``."""
    english = cached_encode(
        "en-minilm", corpus.en, english_encoder(device), cache, progress=progress
    )
    train_bo = [corpus.bo[i] for i in corpus.indices("train")]
    tibetan = TibetanEncoder().fit(train_bo, seed=seed)
    tibetan.save(data_dir / ENCODER_DIR)
    bo, bo_tokens, bo_syllables = encode_tibetan(corpus.bo, tibetan, cache, progress)
    arrays: dict[str, np.ndarray] = {"bo": bo.astype(np.float32), "en": english.astype(np.float16)}
    return arrays, bo_tokens, bo_syllables


def _speech_rows(rows: int, speech_items: int | float, seed: int) -> np.ndarray:
    """The sorted rows, drawn at random (``seed``) from all ``rows``, that get speech."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=speech_row_count(speech_items, rows), replace=False))
