"""Tibetan: no packaged model understands it, so the project builds one: hashed syllable
(uni- and bigram) and character (2–4-gram) features, TF-IDF weighted with document frequencies
of the training split only, reduced by a truncated SVD fitted on the training split only. Its
state (IDF vector and SVD basis) is saved as safetensors + JSON. The same hashed features, as id
lists (:meth:`TibetanEncoder.token_ids`), feed the trainable embedding-bag front end of the
learned models.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.errors import VallayzUserError

TSHEG = "་"
_PUNCT = re.compile(r"[།༎༏༐༑༔༄༅༆༇༈༉༊࿐࿑࿒࿓࿔༴༼༽༺༻\s]+")


def syllables(text: str) -> list[str]:
    """Tibetan syllables: split on the tsheg, shad and other punctuation."""
    return [s for s in _PUNCT.sub(TSHEG, text).split(TSHEG) if s]


def tibetan_features(text: str) -> list[str]:
    """Syllable unigrams and bigrams, and character 2–4-grams within syllables."""
    syl = syllables(text)
    feats = [f"s:{s}" for s in syl] + [f"b:{a}|{b}" for a, b in itertools.pairwise(syl)]
    for s in syl:
        padded = f"<{s}>"
        for n in (2, 3, 4):
            feats += [f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1)]
    return feats


class TibetanEncoder:
    """Hashed n-gram TF-IDF + truncated SVD, fitted on training lines only.

    Args:
        buckets: Number of hash buckets of the sparse features.
        dim: Output dimension (SVD components).
    """

    def __init__(self, buckets: int = 2**18, dim: int = 256) -> None:
        self.buckets, self.dim = buckets, dim
        self.idf: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def _counts(self, texts: Sequence[str]) -> Any:
        from scipy.sparse import csr_matrix

        indptr, indices, data = [0], [], []
        for text in texts:
            row: dict[int, float] = {}
            for feat in tibetan_features(text):
                bucket = zlib.crc32(feat.encode()) % self.buckets
                row[bucket] = row.get(bucket, 0.0) + 1.0
            indices += list(row)
            data += list(row.values())
            indptr.append(len(indices))
        return csr_matrix(
            (np.array(data, np.float32), np.array(indices), np.array(indptr)),
            shape=(len(texts), self.buckets),
        )

    def _tfidf(self, texts: Sequence[str]) -> Any:
        from sklearn.preprocessing import normalize

        counts = self._counts(texts)
        counts.data = 1.0 + np.log(counts.data)
        assert self.idf is not None
        return normalize(counts.multiply(self.idf[None, :]).tocsr())

    def fit(self, texts: Sequence[str], seed: int = 0) -> TibetanEncoder:
        """Fits IDF and the SVD basis on (training) lines."""
        from sklearn.decomposition import TruncatedSVD

        counts = self._counts(texts)
        df = np.bincount(counts.indices, minlength=self.buckets)
        self.idf = (np.log((1 + len(texts)) / (1 + df)) + 1.0).astype(np.float32)
        x = self._tfidf(texts)
        svd = TruncatedSVD(self.dim, algorithm="randomized", n_iter=4, random_state=seed).fit(x)
        self.components = np.ascontiguousarray(svd.components_, dtype=np.float32)
        return self

    def token_ids(self, texts: Sequence[str], length: int = 256) -> np.ndarray:
        """Bucket ids of each line's distinct features, in order, ``-1``-padded to ``length``.

        These feed a trainable embedding-bag front end (``Batch.tokens``). Syllable features
        come first, so a line with more than ``length`` distinct features loses character
        n-grams of its last syllables.

        Shape:
            ``N`` lines → ``[N, length]`` int32.
        """
        out = np.full((len(texts), length), -1, dtype=np.int32)
        for row, text in enumerate(texts):
            feats = list(dict.fromkeys(tibetan_features(text)))[:length]
            out[row, : len(feats)] = [zlib.crc32(f.encode()) % self.buckets for f in feats]
        return out

    def syllable_ids(self, texts: Sequence[str], length: int) -> np.ndarray:
        """Bucket ids of each line's syllables in order (repeats kept), ``-1``-padded and cut
        to ``length``: the unit sequence of the token nodes (``Batch.node_ids``).

        Shape:
            ``N`` lines → ``[N, length]`` int32.
        """
        out = np.full((len(texts), length), -1, dtype=np.int32)
        for row, text in enumerate(texts):
            syl = syllables(text)[:length]
            out[row, : len(syl)] = [zlib.crc32(f"s:{s}".encode()) % self.buckets for s in syl]
        return out

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.components is None:
            raise ValueError("fit the Tibetan encoder on the training lines first (or load it)")
        return np.asarray(self._tfidf(texts) @ self.components.T, dtype=np.float32)

    def save(self, directory: Path) -> None:
        """Writes ``tibetan_encoder.json`` and ``tibetan_encoder.safetensors``."""
        from safetensors.numpy import save_file

        assert self.idf is not None and self.components is not None
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "idf": np.ascontiguousarray(self.idf),
                "components": np.ascontiguousarray(self.components, dtype=np.float16),
            },
            str(directory / "tibetan_encoder.safetensors"),
        )
        (directory / "tibetan_encoder.json").write_text(
            json.dumps(
                {
                    "buckets": self.buckets,
                    "dim": self.dim,
                    "features": "syllable 1-2 + char 2-4 crc32",
                }
            )
            + "\n"
        )

    @classmethod
    def load(cls, directory: Path) -> TibetanEncoder:
        """Reads :meth:`save` output (no pickle)."""
        from safetensors.numpy import load_file

        try:
            meta = json.loads((directory / "tibetan_encoder.json").read_text())
            tensors = load_file(str(directory / "tibetan_encoder.safetensors"))
        except (OSError, json.JSONDecodeError) as err:
            raise VallayzUserError(
                f"no Tibetan encoder in {directory} ({err}); run vallayz bench tibetan first"
            ) from err
        encoder = cls(meta["buckets"], meta["dim"])
        encoder.idf = tensors["idf"]
        encoder.components = tensors["components"].astype(np.float32)
        return encoder

    def fingerprint(self) -> str:
        """Hash of the fitted state, to key caches."""
        assert self.idf is not None and self.components is not None
        return hashlib.sha256(self.idf.tobytes() + self.components[:8].tobytes()).hexdigest()[:16]
