"""Nearest-neighbour search over candidate embeddings by cosine similarity.

:class:`SearchIndex` is what a run keeps: candidates embedded once, with their gold keys,
searched exactly (one streaming pass, duplicates-aware ranks) or through an approximate index,
and saved to a folder as safetensors + JSON.

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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from vallayz.eval.retrieval import normalized_chunks, retrieval_ranks

INDEX_KINDS = ("hnsw", "ivf", "flat")
# Kinds of SearchIndex: exact streaming search, or an approximate VectorIndex kind.
SEARCH_KINDS = ("exact", "ivf", "hnsw")
# Layout version of a saved SearchIndex folder.
SEARCH_INDEX_SCHEMA = 1


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
    chunk_scores = torch.empty(0, device=q.device)
    for start, c in normalized_chunks(candidates, chunk_size, q.device):
        if chunk_scores.shape != (q.shape[0], c.shape[0]):
            chunk_scores = torch.empty((q.shape[0], c.shape[0]), device=q.device)
        torch.matmul(q, c.T, out=chunk_scores)
        scores, indices = chunk_scores.topk(min(k, c.shape[0]), dim=1)
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


class SearchIndex:
    """Candidate embeddings indexed once and searched many times, saved with a run.

    ``"exact"`` scores every candidate in one streaming pass (:func:`exact_search`) and gives
    duplicates-aware ranks (:func:`~vallayz.eval.retrieval_ranks`: a candidate with the query's
    gold key counts as a hit). ``"ivf"`` and ``"hnsw"`` search an approximate
    :class:`VectorIndex` (``pip install 'vallayz[index]'``) built over the same candidates.

    Args:
        kind: One of :data:`SEARCH_KINDS`.
        chunk_size: Candidates scored at a time by the exact search.
        meta: JSON-able facts saved with the index (e.g. what the candidates were embedded
            with), so that a reader can tell whether the index is still current.

    Example:
        >>> import torch
        >>> c = torch.eye(4)
        >>> index = SearchIndex().build(c, keys=torch.tensor([0, 1, 1, 2]))
        >>> index.search(c[:1], 1)[1].tolist()
        [[0]]
        >>> index.ranks(c[1:3], torch.tensor([1, 1])).tolist()
        [1, 1]
    """

    def __init__(
        self, kind: str = "exact", chunk_size: int = 8192, meta: dict[str, Any] | None = None
    ) -> None:
        if kind not in SEARCH_KINDS:
            raise ValueError(f"kind must be one of {SEARCH_KINDS}, got {kind!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.kind = kind
        self.chunk_size = chunk_size
        self.meta: dict[str, Any] = dict(meta or {})
        self.candidates = torch.empty(0, 0)
        self.keys = torch.empty(0, dtype=torch.long)
        self._approximate: VectorIndex | None = None

    @property
    def size(self) -> int:
        """Number of indexed candidates (0 before :meth:`build`)."""
        return int(self.candidates.shape[0])

    def build(self, candidates: Tensor, keys: Tensor | None = None, seed: int = 0) -> SearchIndex:
        """Indexes ``candidates``; search results are their row numbers.

        Args:
            candidates: Candidate vectors.
            keys: Integer gold key of each candidate (equal keys: interchangeable candidates,
                such as duplicate translations); default: every candidate its own key.
            seed: Seed of the approximate index's training sample (IVF).

        Raises:
            ImportError: for an approximate kind without faiss installed.

        Shape:
            candidates ``[C, d]``, keys ``[C]``.
        """
        if candidates.dim() != 2 or candidates.shape[0] < 1:
            raise ValueError(f"build needs candidates [C, d] with C >= 1, got {candidates.shape}")
        keys = torch.arange(candidates.shape[0]) if keys is None else keys.long().cpu()
        if keys.shape != (candidates.shape[0],):
            raise ValueError(f"keys {tuple(keys.shape)} must hold one key per candidate")
        self.candidates = F.normalize(candidates.detach().float().cpu(), dim=-1).contiguous()
        self.keys = keys.contiguous()
        self._approximate = (
            VectorIndex(self.kind).build(self.candidates, seed) if self.kind != "exact" else None
        )
        return self

    def _check(self, queries: Tensor) -> None:
        if self.size == 0:
            raise ValueError("this index is empty; call build(candidates) or load(directory)")
        if queries.dim() != 2 or queries.shape[1] != self.candidates.shape[1]:
            raise ValueError(
                f"queries {tuple(queries.shape)} must be [Q, {self.candidates.shape[1]}], in the "
                "space of the indexed candidates"
            )

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` candidates of highest cosine similarity to each query (approximately, for
        an approximate kind).

        Returns:
            ``(scores, indices)``, best first.

        Shape:
            queries ``[Q, d]`` → ``[Q, k]``, ``[Q, k]``.
        """
        self._check(queries)
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be in [1, {self.size}] (the candidates), got {k}")
        if self._approximate is not None:
            return self._approximate.search(queries.detach().cpu(), k)
        return exact_search(queries.detach().cpu(), self.candidates, k, self.chunk_size)

    def ranks(self, queries: Tensor, query_keys: Tensor) -> Tensor:
        """Exact 1-based rank of each query's best gold candidate (see
        :func:`~vallayz.eval.retrieval_ranks`), whatever the kind of the index.

        Shape:
            queries ``[Q, d]``, query_keys ``[Q]`` → ``[Q]``.
        """
        self._check(queries)
        return retrieval_ranks(
            queries.detach().cpu(), self.candidates, query_keys.long().cpu(), self.keys,
            self.chunk_size,
        )  # fmt: skip

    def save(self, directory: str | Path) -> None:
        """Writes ``index.json`` and ``candidates.safetensors`` (plus ``approximate/``, the
        FAISS index, for an approximate kind) into ``directory``."""
        if self.size == 0:
            raise ValueError("build the index before saving it")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"candidates": self.candidates, "keys": self.keys},
            str(directory / "candidates.safetensors"),
        )
        if self._approximate is not None:
            self._approximate.save(directory / "approximate")
        meta = {
            "kind": self.kind,
            "chunk_size": self.chunk_size,
            "size": self.size,
            "dim": int(self.candidates.shape[1]),
            "meta": self.meta,
            "schema_version": SEARCH_INDEX_SCHEMA,
        }
        # Written last: a folder without it is an unfinished save, and is not read.
        tmp = directory / "index.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(directory / "index.json")

    @classmethod
    def load(cls, directory: str | Path) -> SearchIndex:
        """Reads an index written by :meth:`save`.

        Raises:
            ValueError: if a file is missing, corrupt or of another layout version.
            ImportError: for an approximate kind without faiss installed.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
            tensors = load_file(str(directory / "candidates.safetensors"))
            kind, candidates, keys = meta["kind"], tensors["candidates"], tensors["keys"]
        except (OSError, UnicodeDecodeError, ValueError, SafetensorError, KeyError) as err:
            raise ValueError(
                f"cannot read a search index from {directory} ({err!r}); it needs index.json and "
                "candidates.safetensors as written by SearchIndex.save"
            ) from err
        if meta.get("schema_version") != SEARCH_INDEX_SCHEMA:
            raise ValueError(
                f"{directory} holds a search index of layout {meta.get('schema_version')!r}; "
                f"this version reads {SEARCH_INDEX_SCHEMA}: build it again"
            )
        if candidates.dim() != 2 or keys.shape != (candidates.shape[0],):
            raise ValueError(f"{directory}/candidates.safetensors has inconsistent shapes")
        index = cls(kind, int(meta.get("chunk_size", 8192)), meta.get("meta"))
        index.candidates, index.keys = candidates, keys
        if kind != "exact":
            index._approximate = VectorIndex.load(directory / "approximate")
        return index
