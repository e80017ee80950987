"""Encodings cached on disk by content hash, chunk by chunk, so an interrupted run resumes
where it stopped."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


def cached_encode(
    name: str,
    items: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    cache_dir: Path,
    chunk: int = 2048,
    progress: bool = True,
) -> np.ndarray:
    """Encodes ``items`` in chunks, reusing chunks cached under their content hash."""
    folder = cache_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    starts = range(0, len(items), chunk)
    for start in tqdm(starts, desc=f"encode {name}", unit="chunk", disable=not progress):
        texts = list(items[start : start + chunk])
        key = hashlib.sha256(("\x1e".join([name, *texts])).encode()).hexdigest()[:32]
        path = folder / f"{key}.npy"
        if path.exists():
            parts.append(np.load(path, allow_pickle=False))
            continue
        values = np.asarray(encode(texts))
        tmp = folder / f"{key}.tmp.npy"
        np.save(tmp, values)
        tmp.replace(path)
        parts.append(values)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
