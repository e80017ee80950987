"""``vallayz bench tibetan``: every method on the encoded corpus at an equal budget, and a
trained run evaluated on another corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.eval import format_table, model_encoder, retrieval_table
from vallayz_train.bench import BenchSpec, run_benchmark
from vallayz_train.bench.spec import check_settings, pair_modalities
from vallayz_train.config import TrainConfig
from vallayz_train.encoders import cached_encode, english_encoder
from vallayz_train.model_defaults import MODEL_DEFAULTS
from vallayz_train.parallel_corpus import build_corpus, read_segments
from vallayz_train.run_folder import load_model, run_data
from vallayz_train.tibetan.constants import ENCODER_DIR, PAIRS, TRAIN_DEFAULTS
from vallayz_train.tibetan.data import build_data, encode_tibetan
from vallayz_train.tibetan.encoders import TibetanEncoder
from vallayz_train.tibetan.settings import TibetanSettings


def bench_tibetan(
    out: str | Path,
    settings: TibetanSettings | None = None,
    train: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Encodes the corpus, trains every method at an equal budget and writes the report.

    ``settings.speech_items`` rows get synthesized speech, the rest none: a count (``int``) or
    a fraction of the rows (``float`` in (0, 1]); ``settings.speech_workers`` processes
    synthesize it (``None``: one per available core).

    Every learned method reads Tibetan through a trainable embedding-bag front end of
    ``settings.token_buckets`` rows over the hashed n-grams (0: the fixed TF-IDF + SVD vector
    only); the closed-form maps read the fixed vector.

    Args:
        out: The benchmark's folder.
        settings: What the benchmark builds and how it evaluates (default
            ``TibetanSettings()``).
        train: Training config of every learned method (default :data:`TRAIN_DEFAULTS`).
        model_overrides: IMPN config fields over :data:`MODEL_DEFAULTS`.
        progress: Whether to show progress bars.
        log: Prints the benchmark's messages.
    """
    settings = settings or TibetanSettings()
    train = train or TrainConfig(**TRAIN_DEFAULTS)
    model = {**MODEL_DEFAULTS, **(model_overrides or {})}
    buckets = settings.token_buckets
    spec = BenchSpec(
        pairs=PAIRS,
        pool=settings.pool,
        pools=settings.pools,
        seed=settings.seed_eval,
        matched_dropout=settings.matched_dropout,
        token_buckets={"bo": buckets} if buckets else {},
        methods=settings.methods,
    )
    # Checked before the corpus is encoded and its speech synthesized.
    check_settings(spec, train, model, pair_modalities(PAIRS))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir, subsets = build_data(
        out,
        settings.corpus_path,
        settings.max_pairs,
        settings.speech_items,
        settings.speech_kind,
        train.seed,
        train.device,
        progress,
        log,
        settings.speech_nodes,
        settings.speech_pooling,
        speech_workers=settings.speech_workers,
    )
    spec.subsets = subsets
    return run_benchmark(data_dir, out, spec, train, model, progress, log)


def evaluate_corpus(
    run_dir: str | Path,
    corpus_path: str,
    out: str | Path,
    pool: int = 1000,
    pools: int = 5,
    progress: bool = True,
    seed_eval: int = 0,
) -> list[dict[str, Any]]:
    """Evaluates a trained run on another corpus file of the same format, without retraining.

    The other corpus is encoded with the run's own Tibetan encoder and MiniLM; all its
    (deduplicated) pairs are queries. Speech is not synthesized for it. ``seed_eval`` seeds
    the random pools.
    """
    run_dir, out = Path(run_dir), Path(out)
    model = load_model(run_dir)
    source = run_data(run_dir)
    corpus = build_corpus(read_segments(corpus_path), fractions=(0.0, 0.0))
    tibetan = TibetanEncoder.load(source.directory / ENCODER_DIR)
    cache = out / "cache"
    english = cached_encode("en-minilm", corpus.en, english_encoder(), cache, progress=progress)
    bo, bo_tokens, bo_syllables = encode_tibetan(corpus.bo, tibetan, cache, progress)
    items = [
        {
            "id": f"e{i:06d}",
            "group": corpus.docs[i],
            "split": "test",
            "text_en": corpus.en[i],
            "text_bo": corpus.bo[i],
        }
        for i in range(len(corpus))
    ]
    data_dir = write_paired_embeddings(
        out / "data",
        {"bo": bo.astype(np.float32), "en": english.astype(np.float16)},
        items,
        tokens={"bo": bo_tokens},
        node_ids={"bo": bo_syllables},
    )
    data = PairedEmbeddings(data_dir)
    rows = np.arange(data.size)
    table = retrieval_table(
        data,
        rows,
        model_encoder(model, data, "soil" if model.capabilities.embeds else "translate"),
        [(("bo",), "en"), (("en",), "bo")],
        pool,
        pools,
        seed=seed_eval,
    )
    (out / "eval.json").write_text(
        json.dumps({"run": str(run_dir), "corpus": corpus_path, "results": table}, indent=2) + "\n"
    )
    print(format_table(table))
    return table
