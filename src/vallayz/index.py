"""Nearest-neighbour search over candidate embeddings by cosine similarity.

:func:`exact_search` streams the candidates in chunks and keeps a running top-k, so memory
does not grow with the pool. :class:`VectorIndex` wraps an approximate index (HNSW or IVF, from
the optional ``faiss-cpu`` package: ``pip install 'vallayz[index]'``) that builds once from the
candidates, searches many queries, and saves to a folder (the library's own binary format plus
JSON, no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

INDEX_KINDS = ("hnsw", "ivf", "flat")


def exact_search(
    queries: Tensor, candidates: Tensor, k: int, chunk_size: int = 8192
) -> tuple[Tensor, Tensor]:
    """The ``k`` candidates of highest cosine similarity to each query, in one streaming pass.

    Args:
        queries: Query vectors.
        candidates: Candidate vectors (same space as the queries).
        k: Neighbours per query (at most the number of candidates).
        chunk_size: Candidates scored at a time.

    Returns:
        ``(scores, indices)``, best first.

    Shape:
        queries ``[Q, d]``, candidates ``[C, d]`` → ``[Q, k]``, ``[Q, k]``.
    """
    if queries.dim() != 2 or candidates.dim() != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} must be "
            "[N, d] in one space"
        )
    if not 1 <= k <= candidates.shape[0]:
        raise ValueError(f"k must be in [1, {candidates.shape[0]}] (the candidates), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    q = F.normalize(queries.float(), dim=-1)
    best_scores = torch.empty((q.shape[0], 0), device=q.device)
    best_indices = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
    for start in range(0, candidates.shape[0], chunk_size):
        c = F.normalize(candidates[start : start + chunk_size].float().to(q.device), dim=-1)
        scores, indices = (q @ c.T).topk(min(k, c.shape[0]), dim=1)
        scores = torch.cat([best_scores, scores], dim=1)
        indices = torch.cat([best_indices, indices + start], dim=1)
        best_scores, keep = scores.topk(min(k, scores.shape[1]), dim=1)
        best_indices = indices.gather(1, keep)
    return best_scores, best_indices


def recall_at_k(found: Tensor, exact: Tensor) -> float:
    """Mean fraction of each query's exact top-k that an approximate search found.

    Shape:
        found ``[Q, k]``, exact ``[Q, k]`` → scalar.
    """
    if found.shape != exact.shape or found.dim() != 2:
        raise ValueError(f"found {tuple(found.shape)} and exact {tuple(exact.shape)} must match")
    hits = (found[:, :, None] == exact[:, None, :]).any(dim=2).sum()
    return float(hits) / max(exact.numel(), 1)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "approximate search needs faiss: pip install 'vallayz[index]' (or faiss-cpu)"
        ) from err
    return faiss


def _unit_rows(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(F.normalize(x.detach().float(), dim=-1).cpu().numpy())


class VectorIndex:
    """An approximate cosine-similarity index over candidate embeddings (FAISS).

    Args:
        kind: ``"hnsw"`` (graph; no training, best recall per query time), ``"ivf"``
            (inverted lists; fast to build, recall set by ``probes``) or ``"flat"`` (exact,
            for reference).
        links: HNSW neighbours per node (``M``).
        build_breadth: HNSW candidate list while building (``efConstruction``).
        breadth: HNSW candidate list while searching (``efSearch``); larger is slower and
            more exact.
        lists: IVF cells; ``0`` picks ``4 √C`` at build time.
        probes: IVF cells visited per query.

    Example:
        >>> import torch
        >>> x = torch.randn(500, 16)
        >>> index = VectorIndex("flat").build(x)
        >>> scores, ids = index.search(x[:3], 1)
        >>> ids[:, 0].tolist()
        [0, 1, 2]
    """

    def __init__(
        self,
        kind: str = "hnsw",
        links: int = 32,
        build_breadth: int = 80,
        breadth: int = 64,
        lists: int = 0,
        probes: int = 16,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {INDEX_KINDS}, got {kind!r}")
        if min(links, build_breadth, breadth, probes) < 1 or lists < 0:
            raise ValueError("links, build_breadth, breadth and probes must be >= 1, lists >= 0")
        self.kind = kind
        self.links = links
        self.build_breadth = build_breadth
        self.breadth = breadth
        self.lists = lists
        self.probes = probes
        self.dim = 0
        self.size = 0
        self._index: Any = None

    @property
    def built(self) -> bool:
        """Whether :meth:`build` (or :meth:`load`) has run."""
        return self._index is not None

    def build(self, candidates: Tensor, seed: int = 0) -> VectorIndex:
        """Indexes the candidates; result ids are their row numbers.

        Shape:
            candidates ``[C, d]``.
        """
        if candidates.dim() != 2 or candidates.shape[0] < 1:
            raise ValueError(f"build needs candidates [C, d] with C >= 1, got {candidates.shape}")
        faiss = _faiss()
        x = _unit_rows(candidates)
        self.dim, self.size = x.shape[1], x.shape[0]
        ip = faiss.METRIC_INNER_PRODUCT
        if self.kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.links, ip)
            index.hnsw.efConstruction = self.build_breadth
        else:
            lists = self.lists or max(1, min(int(4 * self.size**0.5), self.size // 39))
            self.lists = lists
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, lists, ip)
            rng = np.random.default_rng(seed)
            sample = x[rng.choice(self.size, min(self.size, 64 * lists), replace=False)]
            index.cp.seed = seed
            index.train(sample)
        index.add(x)
        self._index = index
        self._tune()
        return self

    def _tune(self) -> None:
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.breadth
        elif self.kind == "ivf":
            self._index.nprobe = self.probes

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` approximate nearest candidates of each query by cosine similarity.

        Returns:
            ``(scores, indices)``, best first; ``-1`` indices where fewer than ``k`` were found.

        Shape:
            queries ``[Q, d]`` → ``[Q, k]``, ``[Q, k]``.
        """
        if not self.built:
            raise ValueError("this index is not built; call build(candidates) or load(directory)")
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"search expects [Q, {self.dim}] queries, got {tuple(queries.shape)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, ids = self._index.search(_unit_rows(queries), k)
        return torch.from_numpy(scores), torch.from_numpy(ids).long()

    def save(self, directory: str | Path) -> None:
        """Writes ``index.json`` and ``index.faiss`` (FAISS's own format, no pickle)."""
        if not self.built:
            raise ValueError("build the index before saving it")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self._index, str(directory / "index.faiss"))
        meta = {
            "kind": self.kind,
            "links": self.links,
            "build_breadth": self.build_breadth,
            "breadth": self.breadth,
            "lists": self.lists,
            "probes": self.probes,
            "dim": self.dim,
            "size": self.size,
            "schema_version": 1,
        }
        (directory / "index.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> VectorIndex:
        """Reads an index written by :meth:`save`.

        Raises:
            ValueError: if a file is missing or corrupt.
        """
        faiss = _faiss()
        directory = Path(directory)
        try:
            meta = json.loads((directory / "index.json").read_text())
            raw = faiss.read_index(str(directory / "index.faiss"))
        except (OSError, json.JSONDecodeError, RuntimeError) as err:
            raise ValueError(
                f"cannot read an index from {directory} ({err}); it needs index.json and "
                "index.faiss as written by VectorIndex.save"
            ) from err
        index = cls(
            meta["kind"],
            meta["links"],
            meta["build_breadth"],
            meta["breadth"],
            meta["lists"],
            meta["probes"],
        )
        index.dim, index.size, index._index = meta["dim"], meta["size"], raw
        index._tune()
        return index
