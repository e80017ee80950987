"""``vallayz bench tibetan`` and ``vallayz translate-text``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.eval import format_table, model_encoder, retrieval_table
from vallayz.types import Batch
from vallayz_train.bench import BenchSpec, run_benchmark
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import candidate_index, load_model, run_data
from vallayz_train.tibetan.corpus import build_corpus, read_segments
from vallayz_train.tibetan.encoders import (
    TibetanEncoder,
    audio_features,
    cached_encode,
    english_encoder,
    speech_encoder,
)

# speech->bo is the transliteration link: the spoken line against its own Tibetan text.
PAIRS = [
    (("bo",), "en"),
    (("en",), "bo"),
    (("speech",), "en"),
    (("speech",), "bo"),
    (("bo", "speech"), "en"),
]
ENCODER_DIR = "encoders"

# Sized so that a CPU subset run stays within minutes; raise soil_dim/hidden_dim on a GPU.
MODEL_DEFAULTS: dict[str, Any] = {
    "soil_dim": 128,
    "hidden_dim": 256,
    "layers": 2,
    "heads": 4,
    "variants": 2,
    "top_k": 4,
    "sigma": 0.05,
    "gate_hidden": 32,
    "ffn_mult": 2,
    "dropout": 0.0,
    # Bridge layers start as the identity: +5.6 points of validation R@1 in the ablation.
    "zero_init_residual": True,
}
# Speech nodes per utterance, and how the frames become them: the means of equal segments
# ("mean"), which let every frame reach a node, or single frames at even intervals ("pick").
# 16 segment means took IMPN's speech->bo R@1 from 0.024 (8 picked frames) to 0.368 on the
# validation split (BENCHMARKS.md, "Speech features").
SPEECH_NODES = 16
SPEECH_POOLING = "mean"
# Length of the hashed-feature id lists of a Tibetan line (90 % of lines have fewer features),
# and the default table size of the trainable embedding-bag front end every learned method gets.
TOKEN_LENGTH = 256
TOKEN_BUCKETS = 2**16
# Peak learning rate of those tables when the command line and config file name none (the
# rest of each model trains at TrainConfig.lr): a bucket sees a gradient only in the batches
# that hold one of its n-grams. See BENCHMARKS.md, "Learning rates".
FRONT_END_LR = 3e-2
# Share of training rows whose n-gram ids are all withheld, so that every learned method also
# learns to read the fixed vector alone (the noise sweep withholds the ids of noisy rows).
TOKEN_ROW_DROPOUT = 0.2
# Optimizer steps of every learned method of the benchmark (an equal budget).
MAX_STEPS = 800
# The TrainConfig fields `bench tibetan` sets where the command line and config file name
# none; the rest (warm-up, validation and checkpoint intervals, batch size) are TrainConfig's.
# The command line and bench_tibetan() both start from TRAIN_DEFAULTS; the ablations'
# "--base bench" from FRONT_END_DEFAULTS (their budget is their own).
FRONT_END_DEFAULTS: dict[str, Any] = {
    "front_end_lr": FRONT_END_LR,
    "token_row_dropout": TOKEN_ROW_DROPOUT,
}
TRAIN_DEFAULTS: dict[str, Any] = {"max_steps": MAX_STEPS, **FRONT_END_DEFAULTS}


def encode_tibetan(
    lines: list[str], tibetan: TibetanEncoder, cache: Path, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed TF-IDF + SVD vectors and the hashed n-gram ids of ``lines``, both cached."""
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
    return vectors, ids


def encode_speech(
    lines: list[str],
    kind: str,
    nodes: int,
    pooling: str,
    cache: Path,
    progress: bool = True,
) -> np.ndarray:
    """``[N, nodes, d]`` features of the synthesized speech of ``lines``, cached by content."""
    return cached_encode(
        f"speech-{kind}-{pooling}-{nodes}",
        lines,
        speech_encoder(kind, nodes, pooling),
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
    speech_items: int,
    speech_kind: str = "mfcc",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    log: Any = print,
    speech_nodes: int = SPEECH_NODES,
    speech_pooling: str = SPEECH_POOLING,
) -> tuple[Path, dict[str, list[int]]]:
    """Encodes the corpus into a data directory; returns it and the "novel" test rows."""
    data_dir = out / "data"
    cache = out / "cache"
    corpus = build_corpus(read_segments(corpus_path), seed=seed, max_pairs=max_pairs)
    sizes = {s: len(corpus.indices(s)) for s in ("train", "val", "test")}
    log(f"corpus: {len(corpus)} unique pairs, {len(set(corpus.docs))} documents, splits {sizes}")

    english = cached_encode(
        "en-minilm", corpus.en, english_encoder(device), cache, progress=progress
    )
    train_bo = [corpus.bo[i] for i in corpus.indices("train")]
    tibetan = TibetanEncoder().fit(train_bo, seed=seed)
    tibetan.save(data_dir / ENCODER_DIR)
    bo, bo_tokens = encode_tibetan(corpus.bo, tibetan, cache, progress)

    rng = np.random.default_rng(seed)
    speech_rows = np.sort(
        rng.choice(len(corpus), size=min(speech_items, len(corpus)), replace=False)
    )
    has_speech = np.zeros(len(corpus), dtype=bool)
    has_speech[speech_rows] = True
    lines = [corpus.bo[i] for i in speech_rows]
    frames = encode_speech(lines, speech_kind, speech_nodes, speech_pooling, cache, progress)
    speech = np.zeros((len(corpus), *frames.shape[1:]), dtype=np.float16)
    speech[speech_rows] = frames

    items = [
        {
            "id": f"s{i:06d}",
            "group": corpus.docs[i],
            "split": corpus.split[i],
            "text_en": corpus.en[i],
            "text_bo": corpus.bo[i],
            "text_speech": corpus.bo[i],
        }
        for i in range(len(corpus))
    ]
    write_paired_embeddings(
        data_dir,
        {"bo": bo.astype(np.float32), "en": english.astype(np.float16), "speech": speech},
        items,
        present={"speech": has_speech},
        tokens={"bo": bo_tokens},
    )
    write_speech_meta(data_dir, speech_kind, speech_nodes, speech_pooling)
    return data_dir, {"novel": corpus.novel().tolist()}


def bench_tibetan(
    out: str | Path,
    corpus_path: str | None = None,
    max_pairs: int | None = 20000,
    speech_items: int = 2000,
    speech_kind: str = "mfcc",
    train: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    pool: int = 1000,
    pools: int = 5,
    progress: bool = True,
    log: Any = print,
    matched_dropout: bool = False,
    token_buckets: int = TOKEN_BUCKETS,
    speech_nodes: int = SPEECH_NODES,
    speech_pooling: str = SPEECH_POOLING,
) -> dict[str, Any]:
    """Encodes the corpus, trains every method at an equal budget and writes the report.

    Every learned method reads Tibetan through a trainable embedding-bag front end of
    ``token_buckets`` rows over the hashed n-grams (0: the fixed TF-IDF + SVD vector only);
    the closed-form maps read the fixed vector.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = train or TrainConfig(**TRAIN_DEFAULTS)
    data_dir, subsets = build_data(
        out,
        corpus_path,
        max_pairs,
        speech_items,
        speech_kind,
        train.seed,
        train.device,
        progress,
        log,
        speech_nodes,
        speech_pooling,
    )
    spec = BenchSpec(
        pairs=PAIRS,
        pool=pool,
        pools=pools,
        subsets=subsets,
        matched_dropout=matched_dropout,
        token_buckets={"bo": token_buckets} if token_buckets else {},
    )
    return run_benchmark(
        data_dir, out, spec, train, {**MODEL_DEFAULTS, **(model_overrides or {})}, progress, log
    )


def translate_text(
    run_dir: str | Path, source: str, text: str | None = None, audio: str | None = None, k: int = 5
) -> list[tuple[str, float, str]]:
    """The ``k`` best English candidates of the run's corpus for a Tibetan line or a recording.

    Returns:
        ``(id, cosine score, English text)`` best first.
    """
    run_dir = Path(run_dir)
    model: Any = load_model(run_dir)
    data = run_data(run_dir)
    if audio is not None:
        meta = json.loads((data.directory / "speech.json").read_text())
        # Runs made before the pooling choice existed picked single frames.
        frames = audio_features(audio, meta["kind"], meta["nodes"], meta.get("pooling", "pick"))
        query = Batch.of({"speech": torch.from_numpy(frames)})
    elif source == "bo":
        if not text:
            raise ValueError("give a Tibetan line to translate, or --audio FILE.wav")
        encoder = TibetanEncoder.load(data.directory / ENCODER_DIR)
        query = Batch.of(
            {"bo": torch.from_numpy(encoder([text]))},
            tokens={"bo": torch.from_numpy(encoder.token_ids([text], TOKEN_LENGTH)).long()},
        )
    else:
        raise ValueError(
            f"translate-text reads Tibetan text (--source bo) or --audio, not {source!r}"
        )
    english = data.keys("en")
    first: dict[str, int] = {}
    for row, line in enumerate(english):
        first.setdefault(line, row)
    rows = np.array(sorted(first.values()))
    with torch.no_grad():
        q = model.embed(query) if hasattr(model, "embed") else model.translate(query, target="en")
    # Embedded once per model and saved in the run folder; later calls only read it.
    index = candidate_index(
        model, run_dir, data, "en", rows, embed=None if hasattr(model, "embed") else _native_en
    )
    scores, found = index.search(q, min(k, len(rows)))
    return [
        (data.items[int(rows[i])]["id"], float(s), english[int(rows[i])])
        for s, i in zip(scores[0], found[0], strict=True)
    ]


def _native_en(batch: Batch) -> torch.Tensor:
    """English candidates as they are, for a model that translates into their space."""
    return batch.pooled()["en"]


def evaluate_corpus(
    run_dir: str | Path,
    corpus_path: str,
    out: str | Path,
    pool: int = 1000,
    pools: int = 5,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluates a trained run on another corpus file of the same format, without retraining.

    The other corpus is encoded with the run's own Tibetan encoder and MiniLM; all its
    (deduplicated) pairs are queries. Speech is not synthesized for it.
    """
    run_dir, out = Path(run_dir), Path(out)
    model = load_model(run_dir)
    source = run_data(run_dir)
    corpus = build_corpus(read_segments(corpus_path), fractions=(0.0, 0.0))
    tibetan = TibetanEncoder.load(source.directory / ENCODER_DIR)
    cache = out / "cache"
    english = cached_encode("en-minilm", corpus.en, english_encoder(), cache, progress=progress)
    bo, bo_tokens = encode_tibetan(corpus.bo, tibetan, cache, progress)
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
    )
    data = PairedEmbeddings(data_dir)
    rows = np.arange(data.size)
    table = retrieval_table(
        data,
        rows,
        model_encoder(model, data, "soil" if hasattr(model, "embed") else "translate"),
        [(("bo",), "en"), (("en",), "bo")],
        pool,
        pools,
    )
    (out / "eval.json").write_text(
        json.dumps({"run": str(run_dir), "corpus": corpus_path, "results": table}, indent=2) + "\n"
    )
    print(format_table(table))
    return table
