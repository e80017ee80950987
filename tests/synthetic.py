"""A small tri-modal data set with shared hidden structure, in the on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vallayz.data import write_paired_embeddings


def write_synthetic(directory: Path, rows: int = 240, seed: int = 0, groups: int = 40) -> Path:
    """Three views (pooled 12-d, 3 frames of 6-d, pooled 16-d) of one 5-d latent per item.

    Items come in ``groups`` documents; 15% of the "audio" rows are missing.
    """
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 5))
    maps = {
        name: rng.normal(size=(5, dim)) for name, dim in (("text", 12), ("audio", 6), ("image", 16))
    }
    text = np.tanh(latent @ maps["text"]) + 0.05 * rng.normal(size=(rows, 12))
    image = latent @ maps["image"] + 0.05 * rng.normal(size=(rows, 16))
    frames = latent[:, None, :] @ maps["audio"] + 0.1 * rng.normal(size=(rows, 3, 6))
    present = rng.random(rows) > 0.15
    frames[~present] = np.nan  # absent rows may hold anything
    padding = np.ones((rows, 3), dtype=bool)
    padding[rng.random(rows) < 0.3, 2] = False
    labels = latent[:, :3].argmax(axis=1)
    items = [
        {
            "id": f"item{i:04d}",
            "group": f"doc{i % groups}",
            "text": f"sentence {i}",
            "label": f"c{labels[i]}",
        }
        for i in range(rows)
    ]
    return write_paired_embeddings(
        directory,
        {
            "text": text.astype(np.float32),
            "audio": frames.astype(np.float16),
            "image": image.astype(np.float32),
        },
        items,
        present={"audio": present},
        padding={"audio": padding},
    )
