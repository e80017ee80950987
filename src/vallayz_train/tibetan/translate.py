"""``vallayz translate-text``: the English lines of a run's corpus nearest to a Tibetan line or a
recording, searched in the run's saved candidate index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.errors import VallayzUserError
from vallayz.types import Batch
from vallayz_train.run_folder import candidate_index, load_model, run_data
from vallayz_train.tibetan.constants import (
    ENCODER_DIR,
    SYLLABLE_LENGTH,
    TOKEN_LENGTH,
)
from vallayz_train.tibetan.encoders import (
    TibetanEncoder,
    audio_features,
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
        query = Batch.of({"speech": torch.from_numpy(frames)})
    elif source == "bo":
        if not text:
            raise VallayzUserError("give a Tibetan line to translate, or --audio FILE.wav")
        encoder = TibetanEncoder.load(data.directory / ENCODER_DIR)
        query = Batch.of(
            {"bo": torch.from_numpy(encoder([text]))},
            tokens={"bo": torch.from_numpy(encoder.token_ids([text], TOKEN_LENGTH)).long()},
            node_ids={"bo": torch.from_numpy(encoder.syllable_ids([text], SYLLABLE_LENGTH)).long()},
        )
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
    scores, found = index.search(q, min(k, len(rows)))
    return [
        (data.items[int(rows[i])]["id"], float(s), english[int(rows[i])])
        for s, i in zip(scores[0], found[0], strict=True)
    ]


def _native_en(batch: Batch) -> torch.Tensor:
    """English candidates as they are, for a model that translates into their space."""
    return batch.pooled()["en"]
