"""``vallayz bench emoji``: Twemoji images ↔ their CLDR label and tags.

Each emoji is one item with two modalities: ``image`` (EfficientNet-lite0 pooled features,
1,280-d) and ``text`` (MiniLM-L6 of ``"<label>: <tags>"``, 384-d). Items are split at random
with a fixed seed (70 / 10 / 20 % train / val / test). Retrieval counts a hit when the retrieved
text (or image file) equals the query's own, so two identical pictures are not misses; the
emoji's CLDR category is the label of the stitching classifier. Every method of
:func:`~vallayz_train.bench.run_benchmark` is trained and evaluated on the same split.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.data import write_paired_embeddings
from vallayz.errors import VallayzUserError
from vallayz_train.bench import Pair, run_benchmark
from vallayz_train.bench.spec import (
    SMALL_DATA_TRAIN,
    check_settings,
    fixed_pairs_spec,
    pair_modalities,
)
from vallayz_train.config import TrainConfig
from vallayz_train.emoji.encoders import image_encoder
from vallayz_train.emoji.settings import EmojiSettings
from vallayz_train.encoders import cached_encode, english_encoder
from vallayz_train.model_defaults import MODEL_DEFAULTS as CPU_MODEL
from vallayz_train.shared_data import file_digest, find_data

ENV_DATA = "VALLAYZ_EMOJI_DATA"
SOURCE = (
    "Twemoji PNGs (npm emoji-datasource-twitter) with CLDR labels and tags (npm emojibase-data); "
    "a folder with pairs.tsv (image, hexcode, label, tags, category, subcategory) and img/"
)
COLUMNS = ("image", "hexcode", "label", "tags", "category")
PAIRS: list[Pair] = [(("image",), "text"), (("text",), "image")]
# Shares of the items held out for validation and test.
FRACTIONS = (0.1, 0.2)
# The CPU-sized model every benchmark starts from: its tuning (identity-initialised bridge
# layers) is about the method, not the data.
MODEL_DEFAULTS: dict[str, Any] = dict(CPU_MODEL)
# About 100 epochs of the ~1,070 training items; under three minutes per method on 2 cores.
TRAIN_DEFAULTS: dict[str, Any] = {**SMALL_DATA_TRAIN, "max_steps": 400, "warmup_steps": 30}


@dataclass
class Emoji:
    """One row of ``pairs.tsv``."""

    image: Path
    hexcode: str
    label: str
    tags: str
    category: str

    @property
    def text(self) -> str:
        """What MiniLM reads: the CLDR label, then its tags."""
        return f"{self.label}: {self.tags}" if self.tags else self.label


def read_pairs(root: str | Path | None = None) -> list[Emoji]:
    """The emoji of ``root/pairs.tsv`` (``root`` defaults to :func:`find_data`)."""
    folder = find_data("emoji", ENV_DATA, root)
    table = folder / "pairs.tsv"
    if not table.is_file():
        raise VallayzUserError(
            f"{table} is missing; give --data FOLDER or set {ENV_DATA} to a folder of {SOURCE}"
        )
    with table.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise VallayzUserError(f"{table} lacks the column(s) {missing}; expected {SOURCE}")
        rows = list(reader)
    emoji = [
        Emoji(folder / "img" / r["image"], r["hexcode"], r["label"], r["tags"], r["category"])
        for r in rows
    ]
    absent = [e.image for e in emoji if not e.image.is_file()]
    if absent:
        raise VallayzUserError(f"{len(absent)} image(s) of {table} are missing, e.g. {absent[0]}")
    if not emoji:
        raise VallayzUserError(f"{table} lists no emoji")
    return emoji


def random_split(
    count: int, seed: int = 0, fractions: tuple[float, float] = FRACTIONS
) -> list[str]:
    """``train`` / ``val`` / ``test`` for ``count`` items, a seeded random permutation cut at
    ``fractions`` (val, test); at least one item in each held-out split."""
    order = np.random.default_rng(seed).permutation(count)
    test = max(1, round(fractions[1] * count))
    val = max(1, round(fractions[0] * count))
    labels = np.full(count, "train", dtype=object)
    labels[order[:test]] = "test"
    labels[order[test : test + val]] = "val"
    return [str(s) for s in labels]


def build_data(
    out: Path,
    root: str | Path | None = None,
    split_seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    log: Any = print,
) -> Path:
    """Encodes the emoji into ``out/data`` (cached by content under ``out/cache``)."""
    emoji = read_pairs(root)
    cache = out / "cache"
    digests = [file_digest(e.image) for e in emoji]
    by_digest = {d: e.image for d, e in zip(digests, emoji, strict=True)}
    encode_images = image_encoder(device)
    images = cached_encode(
        "image-efficientnet-lite0",
        digests,
        lambda chunk: encode_images([by_digest[d] for d in chunk]),
        cache,
        chunk=256,
        progress=progress,
    )
    texts = [e.text for e in emoji]
    text = cached_encode("text-minilm", texts, english_encoder(device), cache, progress=progress)
    split = random_split(len(emoji), split_seed)
    log(f"emoji: {len(emoji)} items, split {dict(Counter(split))}")
    items = [
        {
            "id": e.hexcode,
            "split": s,
            "label": e.category,
            "text_text": e.text,
            # Identical pictures share a key, so retrieving the twin is not a miss.
            "text_image": d,
        }
        for e, s, d in zip(emoji, split, digests, strict=True)
    ]
    return write_paired_embeddings(
        out / "data",
        {"image": images.astype(np.float32), "text": text.astype(np.float16)},
        items,
    )


def bench_emoji(
    out: str | Path,
    settings: EmojiSettings | None = None,
    train: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Encodes the emoji, trains every method at an equal budget and writes the report.

    The random item split uses ``train.split_seed``.

    Args:
        out: The benchmark's folder.
        settings: What the benchmark builds and how it evaluates (default ``EmojiSettings()``).
        train: Training config of every learned method (default :data:`TRAIN_DEFAULTS`).
        model_overrides: IMPN config fields over :data:`MODEL_DEFAULTS`.
        progress: Whether to show progress bars.
        log: Prints the benchmark's messages.
    """
    settings = settings or EmojiSettings()
    train = train or TrainConfig(**TRAIN_DEFAULTS)
    spec = fixed_pairs_spec(
        PAIRS,
        settings.pool,
        settings.pools,
        settings.seed_eval,
        settings.matched_dropout,
        settings.closed_form,
    )
    model = {**MODEL_DEFAULTS, **(model_overrides or {})}
    # Checked before the images and texts are encoded.
    check_settings(spec, train, model, pair_modalities(PAIRS))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = build_data(out, settings.data_path, train.split_seed, train.device, progress, log)
    return run_benchmark(data_dir, out, spec, train, model, progress, log)
