"""A second-stage re-ranker: one joint pass of a query and a candidate, token by token, through
a small transformer, with the score read from a [CLS] state.

A first stage (any two-tower model: IMPN's shared space, the contrastive heads) ranks every
candidate by cosine similarity; the re-ranker rescores only its best few
(:func:`vallayz.eval.rerank.rerank_ranks`). Unlike a head over two pooled vectors, each token of
one side attends to each token of the other, which is where cross-encoders find their gains.

Each side is described by a :class:`SideConfig` and given as a :class:`SideContent`: any of a
pooled vector (one token), a sequence of hashed unit ids (e.g. a Tibetan line's syllables,
embedded by a table) and a sequence of per-token states of a frozen encoder (e.g. MiniLM's
output states of an English line). The sequence fed to the transformer is::

    [CLS] | query vector, query ids..., query states... | candidate vector, ids..., states...

each token carrying its side-and-kind embedding and its position within its kind; padding is
masked out of attention, so it never changes a score.

The re-ranker knows nothing of the first stage: it can re-rank any candidate list. Saved as
``reranker.json`` (config) and ``reranker.safetensors`` (weights).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vallayz.errors import VallayzUserError
from vallayz.losses.listwise import listwise_loss

RERANKER_SCHEMA = 1
"""Version of the re-ranker's files (``reranker.json`` + ``reranker.safetensors``)."""
CONFIG_NAME = "reranker.json"
WEIGHTS_NAME = "reranker.safetensors"
# The kinds of tokens of one side, in the order they enter the sequence.
KINDS = ("vector", "ids", "states")


@dataclass
class SideConfig:
    """What the re-ranker reads of one side (the query or the candidate)."""

    # Modality of this side (e.g. "bo" for the query, "en" for the candidate).
    modality: str
    # Width of the side's pooled vector, read as one token (0: no vector).
    vector_dim: int = 0
    # Rows of the table embedding the side's unit ids; ids are taken modulo it (0: no ids).
    id_buckets: int = 0
    # Width of the side's per-token states of a frozen encoder (0: no states).
    state_dim: int = 0
    # Most ids and most states read (each kind on its own); later ones are dropped.
    length: int = 32

    def __post_init__(self) -> None:
        for name in ("vector_dim", "id_buckets", "state_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} of side {self.modality!r} must be >= 0 (0 turns it off)")
        if not (self.vector_dim or self.id_buckets or self.state_dim):
            raise ValueError(
                f"side {self.modality!r} reads nothing; set vector_dim, id_buckets or state_dim"
            )
        if self.length < 1:
            raise ValueError(f"length of side {self.modality!r} must be >= 1, got {self.length}")


@dataclass
class RerankerConfig:
    """The re-ranker's sides and transformer. Saved as ``reranker.json``."""

    # The query's side.
    query: SideConfig
    # The candidate's side.
    candidate: SideConfig
    # Width of every token and of the transformer.
    width: int = 128
    # Transformer layers.
    layers: int = 2
    # Attention heads (a divisor of width).
    heads: int = 4
    # Feed-forward width as a multiple of width.
    ffn_mult: int = 2
    # Dropout inside the transformer and on its input tokens (training only).
    dropout: float = 0.1
    # Weight of the first stage's cosine added to the re-ranker's score at query time
    # (fitted on mined queries kept out of training; 0: the re-ranker's score alone).
    first_stage_weight: float = 0.0
    # Version of the files' layout.
    schema_version: int = field(default=RERANKER_SCHEMA)

    def __post_init__(self) -> None:
        if isinstance(self.query, dict):
            self.query = SideConfig(**self.query)
        if isinstance(self.candidate, dict):
            self.candidate = SideConfig(**self.candidate)
        if self.width < 1 or self.layers < 1 or self.heads < 1 or self.ffn_mult < 1:
            raise ValueError("width, layers, heads and ffn_mult must be positive integers")
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0.0 <= self.first_stage_weight < float("inf"):
            raise ValueError(
                f"first_stage_weight must be finite and >= 0, got {self.first_stage_weight}"
            )
        if self.schema_version > RERANKER_SCHEMA:
            raise VallayzUserError(
                f"this re-ranker was written by a newer vallayz (schema {self.schema_version} > "
                f"{RERANKER_SCHEMA}); upgrade vallayz to read it"
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RerankerConfig:
        """Builds a config from its JSON dict.

        Raises:
            VallayzUserError: if a field is unknown or invalid.
        """
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            if isinstance(err, VallayzUserError):
                raise
            raise VallayzUserError(f"the re-ranker config is invalid: {err}") from err


@dataclass
class SideContent:
    """The content of ``B`` rows of one side, as a :class:`SideConfig` asks for it.

    Attributes:
        vector: Pooled vectors ``[B, vector_dim]`` (None when the side reads none).
        ids: Unit ids ``[B, L]`` (int, ``-1`` = padding; None when the side reads none).
        states: Per-token states ``[B, T, state_dim]`` (None when the side reads none).
        state_mask: ``[B, T]`` bool, ``True`` = a real token (None: every token is real).
    """

    vector: Tensor | None = None
    ids: Tensor | None = None
    states: Tensor | None = None
    state_mask: Tensor | None = None

    def take(self, index: Tensor) -> SideContent:
        """The rows ``index`` of every part.

        Shape:
            index ``[R]`` → rows ``[R, ...]``.
        """

        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[index.to(x.device)]

        return SideContent(
            pick(self.vector), pick(self.ids), pick(self.states), pick(self.state_mask)
        )

    def rows(self) -> int:
        """Number of rows."""
        for part in (self.vector, self.ids, self.states):
            if part is not None:
                return int(part.shape[0])
        raise ValueError("this SideContent holds nothing; give a vector, ids or states")


def fused_score(score: Tensor, first_stage_cosine: Tensor, weight: float) -> Tensor:
    """The re-ranker's score plus ``weight`` times the first stage's cosine of the same pairs,
    so that a re-ranker weaker than its first stage mostly breaks the first stage's near-ties.

    Shape:
        score ``[R]``, first_stage_cosine ``[R]`` → ``[R]``.
    """
    return score + weight * first_stage_cosine.to(score)


def score_head_input(cls_state: Tensor) -> Tensor:
    """The state the score is read from: the [CLS] token's output (a pure function so that
    another pooling can replace it).

    Shape:
        ``[B, S, width]`` → ``[B, width]``.
    """
    return cls_state[:, 0]


def _trim(x: Tensor, real: Tensor) -> Tensor:
    """``x`` without its trailing columns that are padding in every row (they change no score,
    only the cost).

    Shape:
        x ``[B, T, ...]``, real ``[B, T]`` → ``[B, T', ...]`` with ``T' <= T``.
    """
    used = real.any(dim=0).nonzero()
    keep = int(used.max()) + 1 if used.numel() else 1
    return x[:, :keep]


class _Side(nn.Module):
    """Turns one side's content into tokens ``[B, n, width]`` and their padding ``[B, n]``."""

    def __init__(self, config: SideConfig, width: int) -> None:
        super().__init__()
        self.config = config
        self.vector = nn.Linear(config.vector_dim, width) if config.vector_dim else None
        self.ids = nn.Embedding(config.id_buckets, width) if config.id_buckets else None
        self.states = (
            nn.Sequential(nn.LayerNorm(config.state_dim), nn.Linear(config.state_dim, width))
            if config.state_dim
            else None
        )
        # Side-and-kind embedding of every token of this side, and its position in its kind.
        self.kind = nn.Parameter(torch.zeros(len(KINDS), width))
        self.position = nn.Parameter(torch.zeros(config.length, width))
        nn.init.normal_(self.kind, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, content: SideContent) -> tuple[Tensor, Tensor]:
        tokens: list[Tensor] = []
        pads: list[Tensor] = []
        length = self.config.length
        if self.vector is not None:
            if content.vector is None:
                raise ValueError(f"side {self.config.modality!r} needs its pooled vector")
            v = self.vector(content.vector.float())[:, None] + self.kind[0]
            tokens.append(v)
            pads.append(torch.zeros(v.shape[:2], dtype=torch.bool, device=v.device))
        if self.ids is not None:
            if content.ids is None:
                raise ValueError(f"side {self.config.modality!r} needs its unit ids")
            ids = _trim(content.ids[:, :length].long(), content.ids[:, :length] >= 0)
            pad = ids < 0
            x = self.ids(ids.clamp(min=0) % self.config.id_buckets)
            tokens.append(x + self.kind[1] + self.position[: ids.shape[1]])
            pads.append(pad)
        if self.states is not None:
            if content.states is None:
                raise ValueError(f"side {self.config.modality!r} needs its token states")
            states = content.states[:, :length].float()
            if states.shape[-1] != self.config.state_dim:
                raise ValueError(
                    f"side {self.config.modality!r} reads states of width "
                    f"{self.config.state_dim}, got {states.shape[-1]}"
                )
            mask = content.state_mask
            real = (
                torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
                if mask is None
                else mask[:, :length].bool()
            )
            states, real = _trim(states, real), _trim(real, real)
            x = self.states(states)
            tokens.append(x + self.kind[2] + self.position[: states.shape[1]])
            pads.append(~real)
        return torch.cat(tokens, dim=1), torch.cat(pads, dim=1)


class Reranker(nn.Module):
    """Scores (query, candidate) pairs with one joint transformer pass each.

    Args:
        config: The sides and the transformer.

    Shape:
        query and candidate of ``B`` rows each → scores ``[B]``.
    """

    def __init__(self, config: RerankerConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.query_side = _Side(config.query, width)
        self.candidate_side = _Side(config.candidate, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.cls, std=0.02)
        self.input_norm = nn.LayerNorm(width)
        self.input_dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            width,
            config.heads,
            config.ffn_mult * width,
            config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, 1)

    def forward(self, query: SideContent, candidate: SideContent) -> Tensor:
        """Scores of each row's query against the same row's candidate (higher = better).

        Shape:
            query ``B`` rows, candidate ``B`` rows → ``[B]``.
        """
        q, q_pad = self.query_side(query)
        c, c_pad = self.candidate_side(candidate)
        if q.shape[0] != c.shape[0]:
            raise ValueError(
                f"query and candidate must have as many rows, got {q.shape[0]} and {c.shape[0]}"
            )
        cls = self.cls.expand(q.shape[0], -1, -1)
        x = torch.cat([cls, q, c], dim=1)
        pad = torch.cat([torch.zeros_like(q_pad[:, :1]), q_pad, c_pad], dim=1)
        x = self.input_dropout(self.input_norm(x))
        h = self.encoder(x, src_key_padding_mask=pad)
        return self.score(self.out_norm(score_head_input(h))).squeeze(-1)

    def rescore(
        self, query: SideContent, candidate: SideContent, first_stage_cosine: Tensor
    ) -> Tensor:
        """The query-time score: :func:`fused_score` of this re-ranker's score and the first
        stage's cosine, weighted by ``config.first_stage_weight``.

        Shape:
            query and candidate of ``B`` rows, first_stage_cosine ``[B]`` → ``[B]``.
        """
        weight = self.config.first_stage_weight
        return fused_score(self(query, candidate), first_stage_cosine, weight)

    def group_loss(self, query: SideContent, candidates: SideContent, group_size: int) -> Tensor:
        """Listwise cross-entropy (:func:`~vallayz.losses.listwise_loss`) over groups of
        ``group_size`` consecutive rows, the first of each group its positive.

        Shape:
            query and candidates ``[G * group_size]`` rows each → ``[]``.
        """
        scores = self(query, candidates)
        if scores.shape[0] % group_size:
            raise ValueError(
                f"{scores.shape[0]} rows do not split into groups of {group_size}; give each "
                "query's positive and negatives as consecutive rows"
            )
        return listwise_loss(scores.view(-1, group_size))

    def save(self, directory: str | Path) -> Path:
        """Writes ``reranker.json`` and ``reranker.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> Reranker:
        """Reads a re-ranker written by :meth:`save` (no pickle), in eval mode.

        Raises:
            VallayzUserError: if a file is missing or does not match the config.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            config = json.loads((directory / CONFIG_NAME).read_text())
            tensors = load_file(str(directory / WEIGHTS_NAME), device=device)
        except (OSError, json.JSONDecodeError, SafetensorError) as err:
            raise VallayzUserError(
                f"cannot read a re-ranker from {directory} ({err}); it needs {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} as written by Reranker.save"
            ) from err
        model = cls(RerankerConfig.from_dict(config)).to(device)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as err:
            raise VallayzUserError(
                f"{directory / WEIGHTS_NAME} does not match {CONFIG_NAME} ({err})"
            ) from err
        return model.eval()


def reranker_scorer(
    model: Reranker,
    queries: SideContent,
    candidates: SideContent,
    batch_size: int = 1024,
    counter: list[int] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """A :data:`~vallayz.eval.rerank.PairScorer` over content indexed by position: scores
    ``(query_index [R], candidate_index [R]) → [R]`` with ``model`` in batches, in eval mode
    and without gradients. ``counter``, when given, gets its first element raised by the
    number of joint passes made."""

    @torch.no_grad()
    def score(q: Tensor, c: Tensor) -> Tensor:
        was_training = model.training
        model.eval()
        out = []
        for start in range(0, len(q), batch_size):
            qi, ci = q[start : start + batch_size], c[start : start + batch_size]
            out.append(model(queries.take(qi), candidates.take(ci)).float().cpu())
        model.train(was_training)
        if counter is not None:
            counter[0] += len(q)
        return torch.cat(out) if out else torch.zeros(0)

    return score
