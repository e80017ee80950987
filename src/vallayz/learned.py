"""Learned baselines trained by the same trainer as IMPN, at an equal budget.

* :class:`ContrastiveHeads`: one linear head per modality into a shared space, trained with
  symmetric InfoNCE over every present pair (CLIP-style, both sides projected). ``M`` heads.
* :class:`MLPTranslator`: one MLP per *ordered pair* of modalities, trained on translation
  loss. ``M(M−1)`` maps: the pairwise design IMPN's adapters replace.
* :class:`SequenceHeads`: the contrastive heads reading a modality's nodes (speech frames, unit
  ids) instead of their mean: a head per node, one small self-attention layer over the nodes,
  then attention pooling by a learned query.
* :class:`FuseMix`: FuseMix-style adapters (Vouitsis et al., CVPR 2024): per modality, residual
  pre-LN MLP blocks at the encoder's width, then LayerNorm and a linear map into the shared
  space, trained with symmetric InfoNCE under a learnable temperature and latent mixup.

With a drop rate (``LossSettings.baseline_drop_rate``) either also trains the fusion that serves
a query with several sources, under modality dropout as IMPN is: modalities are dropped at
random and each dropped one is fitted from the mean over the kept ones.

All but :class:`SequenceHeads` take pooled inputs (node inputs are mean-pooled over real
nodes). Each speaks the same
modality-keyed vocabulary as :class:`~vallayz.model.IMPN`, implement the
:class:`~vallayz.method.TrainableMethod` contract (the heads embed, the MLPs translate; each
declares which in its ``capabilities``), and save as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vallayz.config import (
    IMPNConfig,
    build_checked,
    check_extension,
    check_frozen,
    check_parameter_count,
    check_token_buckets,
)
from vallayz.errors import VallayzUserError
from vallayz.functional import attention_pool, latent_mixup, mean_over_present
from vallayz.layers import FeedForward, HashedBag, ResidualMLP, SelfAttention, TokenNodes
from vallayz.losses import LossOutput, LossSettings, info_nce, pair_mean, translation_loss
from vallayz.masking import drop_modalities
from vallayz.method import Capabilities
from vallayz.model import CONFIG_NAME, IMPN, WEIGHTS_NAME, check_weights
from vallayz.types import Batch, Embeddings, Masks

ARCHITECTURES = ("contrastive-heads", "mlp-translator", "seq-heads", "fusemix")
# The range FuseMix clamps its learned temperature into before every loss.
TEMPERATURE_RANGE = (0.001, 0.5)

# The loss of one pair of modalities ``(a, b)`` on the rows (a boolean mask) that hold both.
_PairTerm = Callable[[str, str, Tensor], Tensor]
# The loss of one dropped modality ``m`` against the fusion of the kept modalities (masks), on
# the rows (a boolean mask) where ``m`` was dropped.
_FusedTerm = Callable[[str, Masks, Tensor], Tensor]


@dataclass(frozen=True)
class _PairLoss:
    """Which pairs of modalities a baseline's loss covers."""

    # The loss's name in the logged terms (each pair's term is "name/a-b").
    name: str
    # Ordered pairs (a -> b and b -> a apart) or unordered ones.
    ordered: bool
    # The fewest rows a pair must share to count.
    min_rows: int


@dataclass
class BaselineConfig:
    """Configuration of a learned baseline."""

    # "contrastive-heads", "mlp-translator", "seq-heads" or "fusemix".
    architecture: str
    # Modality name -> native dimension.
    modalities: dict[str, int]
    # Shared embedding dimension of the contrastive heads (all three kinds) and of FuseMix.
    dim: int = 256
    # Hidden width of each pairwise MLP.
    hidden: int = 512
    # InfoNCE temperature of the contrastive heads; FuseMix's learned one starts here.
    temperature: float = 0.07
    # Modality -> table size of a trainable embedding-bag front end over hashed feature ids
    # (Batch.tokens), added to the native input as in IMPN; {} for none.
    token_buckets: dict[str, int] = field(default_factory=dict)
    # Modalities whose parameters are frozen (set by extend(), which adds modalities to a
    # trained baseline and trains only what they need); [] trains everything.
    frozen_modalities: list[str] = field(default_factory=list)
    # seq-heads: pre-LN self-attention layers (attention + feed-forward, starting as the
    # identity) over a modality's nodes before the pooling; 0 pools the head outputs directly.
    seq_layers: int = 1
    # seq-heads: attention heads of those layers and of the pooling query (divides dim).
    seq_heads: int = 4
    # seq-heads: longest node sequence, nodes and unit ids each (learned positions); longer
    # sequences are an error.
    positions: int = 64
    # seq-heads: modality -> rows of a table of unit nodes, one per id of Batch.node_ids (e.g.
    # a line's syllables), after the modality's own nodes; {} for none.
    token_nodes: dict[str, int] = field(default_factory=dict)
    # fusemix: residual MLP blocks per adapter, before its LayerNorm and linear map.
    depth: int = 2
    # fusemix: hidden width of a block, as a multiple of the encoder's width.
    expansion: int = 4
    # fusemix: dropout inside each block (FuseMix trains with up to 0.6).
    dropout: float = 0.1
    # fusemix: latent mixup in training, one lambda ~ Beta(1, 1) per batch.
    mixup: bool = True
    # fusemix: learn the temperature (from ``temperature``); False keeps it fixed there.
    learn_temperature: bool = True
    # Version of the checkpoint schema.
    schema_version: int = 1

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        if len(self.modalities) < 2:
            raise ValueError("a baseline links at least two modalities")
        if self.dim < 1 or self.hidden < 1 or not self.temperature > 0:
            raise ValueError("dim and hidden must be positive integers and temperature positive")
        check_token_buckets(self.token_buckets, self.modalities)
        check_token_buckets(self.token_nodes, self.modalities, "token_nodes")
        if self.seq_layers < 0 or self.seq_heads < 1 or self.positions < 1:
            raise ValueError(
                "seq_layers must be >= 0, and seq_heads and positions positive integers"
            )
        if self.architecture == "seq-heads" and self.dim % self.seq_heads:
            raise ValueError(
                f"seq_heads={self.seq_heads} does not divide dim={self.dim}; choose heads that "
                "cut the shared space into equal chunks"
            )
        if self.depth < 0 or self.expansion < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                "depth must be >= 0, expansion a positive integer and dropout in [0, 1) "
                f"(got {self.depth}, {self.expansion}, {self.dropout})"
            )
        low, high = TEMPERATURE_RANGE
        if self.architecture == "fusemix" and not low <= self.temperature <= high:
            raise ValueError(
                f"FuseMix clamps its temperature into [{low}, {high}]; start it there "
                f"(got {self.temperature})"
            )
        check_frozen(self.frozen_modalities, self.modalities)
        sizes = {
            "modalities": self.modalities,
            "dim": self.dim,
            "hidden": self.hidden,
            "token_buckets": self.token_buckets,
        }
        check_parameter_count(self.parameter_count(), self.architecture, sizes)

    def parameter_count(self) -> int:
        """The number of parameters of the baseline, computed without building it."""
        dims = self.modalities
        total = sum(buckets * dims[m] for m, buckets in self.token_buckets.items())
        if self.architecture == "contrastive-heads":
            return total + sum(d * self.dim + self.dim for d in dims.values())
        if self.architecture in ("seq-heads", "fusemix"):
            # Built on the meta device: shapes only, nothing allocated.
            with torch.device("meta"):
                model = _BASELINES[self.architecture](self)
            return sum(p.numel() for p in model.parameters())
        for a, b in itertools.permutations(dims, 2):
            total += 2 * dims[a] + dims[a] * self.hidden + self.hidden + self.hidden * dims[b]
            total += dims[b]
        return total


_Extended = TypeVar("_Extended", bound="_Baseline")


class _Baseline(nn.Module):
    # What the baseline serves; each subclass declares its own.
    capabilities: Capabilities

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.config = config
        self.names = list(config.modalities)
        self.front_ends = nn.ModuleDict(
            {
                m: HashedBag(buckets, config.modalities[m])
                for m, buckets in config.token_buckets.items()
            }
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def trainable_modalities(self) -> list[str]:
        """The modalities that train: every one, or after :meth:`extend` the added ones."""
        return [m for m in self.names if m not in self.config.frozen_modalities]

    def _trains(self, key: str) -> bool:
        """Whether the parameter ``key`` (of the state dict) belongs to a trainable modality.
        Here every table is keyed by modality (``heads.<m>.*``, ``readers.<m>.*``,
        ``front_ends.<m>.*``), and a parameter of no modality (a shared temperature) stays
        frozen; a subclass with other keys says which of its parameters belong to which."""
        parts = key.split(".")
        return len(parts) > 2 and parts[1] in self.trainable_modalities

    def _freeze(self) -> None:
        """Applies ``config.frozen_modalities`` (each subclass calls it once built)."""
        if self.config.frozen_modalities:
            for key, parameter in self.named_parameters():
                parameter.requires_grad_(self._trains(key))

    def extend(
        self: _Extended,
        new_modalities: Mapping[str, int],
        *,
        token_buckets: Mapping[str, int] | None = None,
    ) -> _Extended:
        """This baseline with more modalities, in which only what the new ones need trains
        (the new heads, or the maps to and from the new modalities), against the frozen rest.

        Every parameter of this baseline is copied and frozen (``requires_grad=False``), so the
        old modalities embed and translate as before, bit for bit; the new parameters are
        drawn from torch's global random generator, as by the constructor.

        Args:
            new_modalities: Name → native dimension of each modality to add.
            token_buckets: New modality → table size of a token front end.

        Returns:
            The extended baseline, on this one's device and in its train/eval mode.

        Raises:
            VallayzUserError: if no modality is given, one already exists, or a front end is
                asked for an old modality.

        Shape:
            The extended baseline maps ``{m: [B, d_m]}`` over old and new modalities alike.
        """
        check_extension(new_modalities, self.names, {"token_buckets": token_buckets})
        try:
            config = replace(
                self.config,
                modalities={**self.config.modalities, **dict(new_modalities)},
                token_buckets={**self.config.token_buckets, **dict(token_buckets or {})},
                frozen_modalities=list(self.names),
            )
        except ValueError as err:
            raise VallayzUserError(f"cannot add {dict(new_modalities)}: {err}") from err
        model = type(self)(config).to(self.device)
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(model._trains(key) for key in missing), missing
        return model.train(self.training)

    # The pairs the loss covers and its name; each subclass sets it.
    _pair_loss: _PairLoss

    def loss(
        self,
        batch: Batch,
        generator: torch.Generator | None = None,
        pair_weighting: str = "rows",
        drop_rate: float = 0.0,
    ) -> LossOutput:
        """Mean of the baseline's pair term (:meth:`_pair_term`) over every pair of modalities
        present together in enough rows, weighted as ``pair_weighting`` says (see
        :func:`~vallayz.losses.pair_mean`); with ``drop_rate > 0`` plus the fused term of
        modality dropout (:meth:`_fused_objective`, drawn with ``generator``). With
        ``drop_rate = 0`` the loss draws nothing."""
        inputs = self._clean_inputs(batch)
        spec = self._pair_loss
        combine = itertools.permutations if spec.ordered else itertools.combinations
        frozen = set(self.config.frozen_modalities)
        out = self._pair_objective(
            batch,
            (pair for pair in combine(batch.embeddings, 2) if not set(pair) <= frozen),
            spec.name,
            spec.min_rows,
            self._pair_term(batch, inputs),
            pair_weighting,
        )
        if drop_rate == 0.0:
            return out
        fused = self._fused_objective(batch, inputs, drop_rate, generator, pair_weighting)
        return LossOutput(total=out.total + fused.total, terms={**out.terms, **fused.terms})

    def _fused_objective(
        self,
        batch: Batch,
        inputs: dict[str, Tensor],
        drop_rate: float,
        generator: torch.Generator | None,
        weighting: str,
    ) -> LossOutput:
        """Modality dropout: each present modality of a row is dropped with probability
        ``drop_rate`` (a row keeps at least one), and each dropped modality ``m`` is fitted from
        the fusion of the kept ones by :meth:`_fused_term` on the rows where ``m`` was dropped
        (logged as ``fused/m``); their :func:`~vallayz.losses.pair_mean` is ``fused``."""
        present = {m: p.to(self.device) for m, p in batch.present.items()}
        dropped = drop_modalities(present, drop_rate, generator)
        kept = {m: present[m] & ~dropped[m] for m in present}
        term = self._fused_term(batch, inputs)
        terms: dict[str, Tensor] = {}
        counts = []
        for m in batch.embeddings:
            count = int(dropped[m].sum())
            if count >= self._pair_loss.min_rows:
                terms[f"fused/{m}"] = term(m, kept, dropped[m])
                counts.append(count)
        total = (
            pair_mean(list(terms.values()), counts, weighting)
            if terms
            else torch.zeros((), device=self.device)
        )
        terms["fused"] = total
        return LossOutput(total=total, terms=terms)

    def _fused_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _FusedTerm:
        """``term(m, kept, rows)``: the loss of the dropped modality ``m`` against the fusion
        of the ``kept`` modalities on ``rows`` (each subclass defines it)."""
        raise NotImplementedError

    def _pair_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _PairTerm:
        """``term(a, b, rows)``: the loss of one pair on the rows that hold both, given the
        batch and its :meth:`_clean_inputs` (each subclass defines it)."""
        raise NotImplementedError

    def objective(self, settings: LossSettings | None = None) -> BaselineObjective:
        """This baseline's loss under ``settings`` (it reads ``pair_weighting`` and
        ``baseline_drop_rate``)."""
        return BaselineObjective(self, settings or LossSettings())

    def _unserved(self, call: str) -> ValueError:
        """The error of a call this baseline's ``capabilities`` do not include."""
        modes = " or ".join(repr(m) for m in self.capabilities.modes)
        return ValueError(
            f"{type(self).__name__} has no {call}; it serves the retrieval path {modes} only"
        )

    def _batch(
        self,
        x: Tensor | Embeddings | Batch,
        source: str | None,
        present: Masks | None = None,
        padding: Masks | None = None,
    ) -> Batch:
        if isinstance(x, Tensor):
            if source is None:
                raise ValueError("a single tensor needs its modality: pass source='<name>'")
            x = {source: x}
        batch = Batch.of(x, present, padding)
        batch.validate(IMPNConfig(modalities=self.config.modalities))
        return batch

    def _pair_objective(
        self,
        batch: Batch,
        pairs: Iterable[tuple[str, str]],
        name: str,
        min_rows: int,
        term: Callable[[str, str, Tensor], Tensor],
        weighting: str,
    ) -> LossOutput:
        """``term(a, b, rows)`` for every pair present together in at least ``min_rows`` rows,
        logged as ``name/a-b``, and their :func:`~vallayz.losses.pair_mean` as ``name`` and the
        total (zero when no pair had rows)."""
        terms: dict[str, Tensor] = {}
        counts = []
        for a, b in pairs:
            both = (batch.present[a] & batch.present[b]).to(self.device)
            count = int(both.sum())
            if count >= min_rows:
                terms[f"{name}/{a}-{b}"] = term(a, b, both)
                counts.append(count)
        total = (
            pair_mean(list(terms.values()), counts, weighting)
            if terms
            else torch.zeros((), device=self.device)
        )
        terms[name] = total
        return LossOutput(total=total, terms=terms)

    def _clean_inputs(self, batch: Batch) -> dict[str, Tensor]:
        """Pooled inputs on the model's device (plus the token front end's output where there
        is one), zero in absent rows (which may hold NaN)."""
        out = {}
        for name, x in batch.pooled().items():
            x = x.to(self.device)
            if name in self.front_ends and name in batch.tokens:
                x = x + self.front_ends[name](batch.tokens[name])
            keep = batch.present[name].to(self.device)[:, None]
            out[name] = torch.where(keep, x, torch.zeros_like(x))
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes ``config.json`` and ``model.safetensors``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / (WEIGHTS_NAME + ".tmp")))
        (directory / (CONFIG_NAME + ".tmp")).write_text(
            json.dumps(asdict(self.config), indent=2) + "\n"
        )
        (directory / (WEIGHTS_NAME + ".tmp")).replace(directory / WEIGHTS_NAME)
        (directory / (CONFIG_NAME + ".tmp")).replace(directory / CONFIG_NAME)


class ContrastiveHeads(_Baseline):
    """A linear head per modality into a shared space (CLIP-style).

    Shape:
        ``embed``: ``{m: [B, d_m] or [B, T, d_m]}`` → ``[B, dim]``.
    """

    capabilities = Capabilities(embeds=True)
    """The heads embed into a shared space; they neither bridge nor translate."""

    # Symmetric InfoNCE over every unordered pair present in at least two rows.
    _pair_loss = _PairLoss("contrastive", ordered=False, min_rows=2)

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__(config)
        self.heads = nn.ModuleDict(
            {m: nn.Linear(d, config.dim) for m, d in config.modalities.items()}
        )
        self._freeze()

    def embed(
        self,
        x: Tensor | Embeddings | Batch,
        modality: str | None = None,
        *,
        target: str | None = None,
        present: Masks | None = None,
        padding: Masks | None = None,
    ) -> Tensor:
        """Mean of the normalised head outputs of the present modalities of each row.

        Raises:
            ValueError: if ``target`` is given: the heads pass no messages, so there is no
                state of an absent modality to read.
        """
        if target is not None:
            raise self._unserved("bridged embedding (embed(..., target=...))")
        batch = self._batch(x, modality, present, padding)
        inputs = self._clean_inputs(batch)
        heads = {m: F.normalize(self.heads[m](x), dim=-1) for m, x in inputs.items()}
        return mean_over_present(heads, batch.present)

    def translate(self, batch: Batch, /, *, target: str) -> Tensor:
        """Not served: the heads have no way back into a native space (raises ``ValueError``)."""
        raise self._unserved("translate()")

    def _pair_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _PairTerm:
        def term(a: str, b: str, both: Tensor) -> Tensor:
            za, zb = self.heads[a](inputs[a][both]), self.heads[b](inputs[b][both])
            return info_nce(za, zb, self.config.temperature)

        return term

    def _fused_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _FusedTerm:
        # InfoNCE between the mean of the kept modalities' normalised heads (what embed()
        # gives a query with several sources) and the dropped modality's head.
        def term(m: str, kept: Masks, rows: Tensor) -> Tensor:
            heads = {
                k: F.normalize(self.heads[k](x[rows]), dim=-1) for k, x in inputs.items() if k != m
            }
            fused = mean_over_present(heads, {k: kept[k][rows] for k in heads})
            return info_nce(fused, self.heads[m](inputs[m][rows]), self.config.temperature)

        return term


class MLPTranslator(_Baseline):
    """One MLP per ordered pair of modalities: ``M(M−1)`` maps.

    Shape:
        ``translate``: ``{m: [B, d_m]}`` → ``[B, d_target]``.
    """

    capabilities = Capabilities(translates=True)
    """The MLPs translate; they have no shared space."""

    # Translation loss over every ordered pair present in a row.
    _pair_loss = _PairLoss("translation", ordered=True, min_rows=1)

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__(config)
        dims = config.modalities
        self.maps = nn.ModuleDict(
            {
                f"{a}__{b}": nn.Sequential(
                    nn.LayerNorm(dims[a]),
                    nn.Linear(dims[a], config.hidden),
                    nn.GELU(),
                    nn.Linear(config.hidden, dims[b]),
                )
                for a, b in itertools.permutations(dims, 2)
            }
        )
        self._freeze()

    def _trains(self, key: str) -> bool:
        # maps.<a>__<b>.* belongs to both a and b (it trains when either does), front_ends.<m>.*
        # to m; modality names hold no '.'.
        trainable = self.trainable_modalities
        for a, b in itertools.permutations(self.names, 2):
            if key.startswith(f"maps.{a}__{b}."):
                return a in trainable or b in trainable
        return key.split(".")[1] in trainable

    def translate(
        self,
        x: Tensor | Embeddings | Batch,
        source: str | None = None,
        target: str = "",
        *,
        present: Masks | None = None,
        padding: Masks | None = None,
    ) -> Tensor:
        """Mean of the translations from every present source modality of each row."""
        if target not in self.config.modalities:
            raise ValueError(f"unknown target modality {target!r}; this model knows {self.names}")
        batch = self._batch(x, source, present, padding)
        if target in batch.embeddings:
            raise ValueError(f"target modality {target!r} is also an input; leave it out")
        inputs = self._clean_inputs(batch)
        translations = {m: self.maps[f"{m}__{target}"](x) for m, x in inputs.items()}
        return mean_over_present(translations, batch.present)

    def embed(self, batch: Batch, /, *, target: str | None = None) -> Tensor:
        """Not served: the pairwise maps share no space (raises ``ValueError``)."""
        raise self._unserved("embed()")

    def _pair_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _PairTerm:
        pooled = {m: x.to(self.device) for m, x in batch.pooled().items()}

        def term(a: str, b: str, both: Tensor) -> Tensor:
            prediction = self.maps[f"{a}__{b}"](inputs[a][both])
            return translation_loss(prediction, pooled[b][both])

        return term

    def _fused_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _FusedTerm:
        # Translation loss of the mean of the kept modalities' translations into the dropped
        # one (what translate() gives a query with several sources).
        pooled = {m: x.to(self.device) for m, x in batch.pooled().items()}

        def term(m: str, kept: Masks, rows: Tensor) -> Tensor:
            maps = {k: self.maps[f"{k}__{m}"](x[rows]) for k, x in inputs.items() if k != m}
            prediction = mean_over_present(maps, {k: kept[k][rows] for k in maps})
            return translation_loss(prediction, pooled[m][rows])

        return term


class _SequenceReader(nn.Module):
    """Reads one modality's nodes in the shared space: a learned position per node (the first
    ``own`` nodes, the modality's own; unit nodes bring theirs), pre-LN self-attention layers
    among the real nodes (starting as the identity), then :func:`attention_pool` by a learned
    query (starting at zero: the mean of the real nodes).

    Shape:
        states ``[B, T, dim]``, real ``[B, T]`` → ``[B, dim]``.
    """

    def __init__(self, dim: int, heads: int, layers: int, positions: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(positions, dim))
        self.query = nn.Parameter(torch.zeros(heads, dim // heads))
        attention = [SelfAttention(dim, heads) for _ in range(layers)]
        ffn = [FeedForward(dim, 2) for _ in range(layers)]
        for linear in [a.proj for a in attention] + [f.down for f in ffn]:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.attention = nn.ModuleList(attention)
        self.ffn = nn.ModuleList(ffn)

    def forward(self, states: Tensor, real: Tensor, own: int) -> Tensor:
        if own > self.position.shape[0]:
            raise ValueError(
                f"{own} nodes per row, but the model has positions for "
                f"{self.position.shape[0]}; cut the sequences or raise BaselineConfig.positions"
            )
        shift = torch.zeros_like(states)
        shift[:, :own] = self.position[:own]
        states = states + shift
        everyone = torch.ones(real.shape[1], real.shape[1], dtype=torch.bool, device=real.device)
        for attention, ffn in zip(self.attention, self.ffn, strict=True):
            states = ffn(attention(states, real, everyone))
        return attention_pool(states, real, self.query)


class SequenceHeads(_Baseline):
    """The contrastive heads, reading the nodes of a modality rather than their mean.

    A node input ``[B, T, d_m]`` (speech frames), and the unit ids of a modality named in
    ``config.token_nodes`` (``Batch.node_ids``, one table row per id, after the modality's own
    nodes), become a sequence in the shared space: the modality's linear head on every node
    plus a learned position, ``seq_layers`` pre-LN self-attention layers among the real nodes,
    then attention pooling by one learned query per attention head (padding ignored). A pooled
    input ``[B, d_m]`` without unit ids goes through the plain head, as in
    :class:`ContrastiveHeads`. The layers start as the identity, the positions and queries at
    zero, so an untrained model is the heads on the mean of the real nodes. The token front end
    (``config.token_buckets``) is added to every node, as in IMPN.

    Shape:
        ``embed``: ``{m: [B, d_m] or [B, T, d_m]}`` → ``[B, dim]``.
    """

    capabilities = Capabilities(embeds=True)
    """The heads embed into a shared space; they neither bridge nor translate."""

    # Symmetric InfoNCE over every unordered pair present in at least two rows.
    _pair_loss = _PairLoss("contrastive", ordered=False, min_rows=2)

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__(config)
        dim, names = config.dim, config.modalities
        self.heads = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in names.items()})
        self.readers = nn.ModuleDict(
            {
                m: _SequenceReader(dim, config.seq_heads, config.seq_layers, config.positions)
                for m in names
            }
        )
        self.token_nodes = nn.ModuleDict(
            {
                m: TokenNodes(buckets, dim, config.positions)
                for m, buckets in config.token_nodes.items()
            }
        )
        self._freeze()

    def embed(
        self,
        x: Tensor | Embeddings | Batch,
        modality: str | None = None,
        *,
        target: str | None = None,
        present: Masks | None = None,
        padding: Masks | None = None,
    ) -> Tensor:
        """Mean of the normalised pooled states of the present modalities of each row.

        Raises:
            ValueError: if ``target`` is given: the heads pass no messages between modalities.
        """
        if target is not None:
            raise self._unserved("bridged embedding (embed(..., target=...))")
        batch = self._batch(x, modality, present, padding)
        states = self._clean_inputs(batch)
        return mean_over_present(
            {m: F.normalize(z, dim=-1) for m, z in states.items()}, batch.present
        )

    def translate(self, batch: Batch, /, *, target: str) -> Tensor:
        """Not served: the heads have no way back into a native space (raises ``ValueError``)."""
        raise self._unserved("translate()")

    def _clean_inputs(self, batch: Batch) -> dict[str, Tensor]:
        """Every modality's pooled shared-space state ``[B, dim]`` (not normalised), zero in
        absent rows (whose inputs, NaN included, are ignored)."""
        out = {}
        for name, x in batch.embeddings.items():
            present = batch.present[name].to(self.device)
            x = x.to(self.device)
            front = (
                self.front_ends[name](batch.tokens[name])
                if name in self.front_ends and name in batch.tokens
                else None
            )
            units = batch.node_ids.get(name) if name in self.token_nodes else None
            if x.dim() == 2 and units is None:
                x = x if front is None else x + front
                keep = present[:, None]
                out[name] = self.heads[name](torch.where(keep, x, torch.zeros_like(x)))
                continue
            nodes = x if x.dim() == 3 else x[:, None]
            padding = batch.padding.get(name)
            real = (
                torch.ones(nodes.shape[:2], dtype=torch.bool, device=self.device)
                if padding is None
                else padding.to(self.device)
            )
            if front is not None:
                nodes = nodes + front[:, None]
            keep = (present[:, None] & real)[..., None]
            states = self.heads[name](torch.where(keep, nodes, torch.zeros_like(nodes)))
            if units is not None:
                unit_states, unit_real = self.token_nodes[name](units)
                states = torch.cat([states, unit_states], dim=1)
                real = torch.cat([real, unit_real], dim=1)
            # An absent row reads its first node alone, so that every softmax has a real node.
            first = torch.zeros_like(real)
            first[:, 0] = True
            real = torch.where(present[:, None], real, first)
            pooled = self.readers[name](states, real, nodes.shape[1])
            out[name] = torch.where(present[:, None], pooled, torch.zeros_like(pooled))
        return out

    def _pair_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _PairTerm:
        def term(a: str, b: str, both: Tensor) -> Tensor:
            return info_nce(inputs[a][both], inputs[b][both], self.config.temperature)

        return term

    def _fused_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _FusedTerm:
        # As the heads': the mean of the kept modalities' normalised states against the
        # dropped one's.
        def term(m: str, kept: Masks, rows: Tensor) -> Tensor:
            states = {k: F.normalize(z[rows], dim=-1) for k, z in inputs.items() if k != m}
            fused = mean_over_present(states, {k: kept[k][rows] for k in states})
            return info_nce(fused, inputs[m][rows], self.config.temperature)

        return term


class _Block(ResidualMLP):
    """FuseMix's residual block at the encoder's width: ``x + W2·Drop(GELU(W1·LN(x)))``.

    Shape:
        ``[..., d]`` → ``[..., d]``.
    """

    def shortcut(self, x: Tensor) -> Tensor:
        return x


class FuseMix(_Baseline):
    """FuseMix-style adapters (Vouitsis et al., CVPR 2024) into a shared space.

    Per modality, ``depth`` residual pre-LN MLP blocks at the encoder's width (hidden width
    ``expansion`` times it, dropout inside), then LayerNorm and a linear map to ``dim``.
    Trained with symmetric InfoNCE over every present pair under a learned temperature (started
    at ``config.temperature``, clamped into :data:`TEMPERATURE_RANGE` before every loss) and,
    in training mode with ``config.mixup``, latent mixup: one ``lambda ~ Beta(1, 1)`` per
    batch, and per pair one permutation of the rows holding both, applied to both modalities'
    inputs (:func:`~vallayz.functional.latent_mixup`). Node inputs are mean-pooled over real
    nodes, plus the token front end, as the heads read them.

    Shape:
        ``embed``: ``{m: [B, d_m] or [B, T, d_m]}`` → ``[B, dim]``.
    """

    capabilities = Capabilities(embeds=True)
    """The adapters embed into a shared space; they neither bridge nor translate."""

    # Symmetric InfoNCE over every unordered pair present in at least two rows.
    _pair_loss = _PairLoss("contrastive", ordered=False, min_rows=2)

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__(config)
        self.adapters = nn.ModuleDict(
            {
                m: nn.Sequential(
                    *[
                        _Block(d, d, config.expansion * d, config.dropout)
                        for _ in range(config.depth)
                    ],
                    nn.LayerNorm(d),
                    nn.Linear(d, config.dim),
                )
                for m, d in config.modalities.items()
            }
        )
        self.temperature = nn.Parameter(
            torch.tensor(float(config.temperature)), requires_grad=config.learn_temperature
        )
        self._freeze()

    def embed(
        self,
        x: Tensor | Embeddings | Batch,
        modality: str | None = None,
        *,
        target: str | None = None,
        present: Masks | None = None,
        padding: Masks | None = None,
    ) -> Tensor:
        """Mean of the normalised adapter outputs of the present modalities of each row.

        Raises:
            ValueError: if ``target`` is given: the adapters pass no messages.
        """
        if target is not None:
            raise self._unserved("bridged embedding (embed(..., target=...))")
        batch = self._batch(x, modality, present, padding)
        inputs = self._clean_inputs(batch)
        out = {m: F.normalize(self.adapters[m](x), dim=-1) for m, x in inputs.items()}
        return mean_over_present(out, batch.present)

    def translate(self, batch: Batch, /, *, target: str) -> Tensor:
        """Not served: the adapters have no way back into a native space (raises
        ``ValueError``)."""
        raise self._unserved("translate()")

    def loss(
        self,
        batch: Batch,
        generator: torch.Generator | None = None,
        pair_weighting: str = "rows",
        drop_rate: float = 0.0,
    ) -> LossOutput:
        """As the other baselines' (:meth:`_Baseline.loss`), after clamping the temperature;
        in training mode with ``config.mixup``, the pair terms read mixed inputs, ``lambda``
        and the permutations drawn with ``generator``."""
        with torch.no_grad():
            self.temperature.clamp_(*TEMPERATURE_RANGE)
        if not (self.training and self.config.mixup):
            return super().loss(batch, generator, pair_weighting, drop_rate)
        device = self.device if generator is None else generator.device
        # Beta(1, 1) is the uniform distribution on [0, 1].
        lam = torch.rand((), generator=generator, device=device).to(self.device)
        inputs = self._clean_inputs(batch)
        out = self._pair_objective(
            batch,
            itertools.combinations(batch.embeddings, 2),
            self._pair_loss.name,
            self._pair_loss.min_rows,
            self._mixed_term(inputs, lam, generator),
            pair_weighting,
        )
        if drop_rate == 0.0:
            return out
        fused = self._fused_objective(batch, inputs, drop_rate, generator, pair_weighting)
        return LossOutput(total=out.total + fused.total, terms={**out.terms, **fused.terms})

    def _mixed_term(
        self, inputs: dict[str, Tensor], lam: Tensor | None, generator: torch.Generator | None
    ) -> _PairTerm:
        """The pair term; with ``lam``, on inputs mixed by one permutation of the pair's rows
        (drawn with ``generator``) shared by both modalities."""

        def term(a: str, b: str, both: Tensor) -> Tensor:
            xa, xb = inputs[a][both], inputs[b][both]
            if lam is not None:
                device = self.device if generator is None else generator.device
                order = torch.randperm(xa.shape[0], generator=generator, device=device)
                xa, xb = latent_mixup([xa, xb], lam, order.to(self.device))
            return info_nce(self.adapters[a](xa), self.adapters[b](xb), self.temperature)

        return term

    def _pair_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _PairTerm:
        return self._mixed_term(inputs, None, None)

    def _fused_term(self, batch: Batch, inputs: dict[str, Tensor]) -> _FusedTerm:
        # As the heads': the mean of the kept modalities' normalised adapter outputs against
        # the dropped one's (no mixup).
        def term(m: str, kept: Masks, rows: Tensor) -> Tensor:
            out = {
                k: F.normalize(self.adapters[k](x[rows]), dim=-1)
                for k, x in inputs.items()
                if k != m
            }
            fused = mean_over_present(out, {k: kept[k][rows] for k in out})
            return info_nce(fused, self.adapters[m](inputs[m][rows]), self.temperature)

        return term


class BaselineObjective:
    """A learned baseline's loss under fixed settings; it has no knobs for a planner.

    Args:
        model: The baseline.
        settings: The loss settings (the baseline reads ``pair_weighting`` and
            ``baseline_drop_rate``).
    """

    tunables: None = None

    def __init__(self, model: _Baseline, settings: LossSettings) -> None:
        self.model, self.settings = model, settings

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        """The baseline's loss on ``batch``."""
        settings = self.settings
        return self.model.loss(
            batch, generator, settings.pair_weighting, settings.baseline_drop_rate
        )


Baseline = ContrastiveHeads | MLPTranslator | SequenceHeads | FuseMix
"""Every learned baseline."""

LearnedMethod = IMPN | Baseline
"""Every trainable method that :func:`build_model` and :func:`load_pretrained` make."""

# Baseline architecture name -> its class.
_BASELINES: dict[str, Callable[[BaselineConfig], Baseline]] = {
    "contrastive-heads": ContrastiveHeads,
    "mlp-translator": MLPTranslator,
    "seq-heads": SequenceHeads,
    "fusemix": FuseMix,
}


def model_config(
    method: str, modalities: dict[str, int], overrides: dict[str, Any] | None = None
) -> IMPNConfig | BaselineConfig:
    """The checked config of a fresh model of ``method`` for ``modalities``, built without
    allocating the model: field names, types, ranges and the parameter count are validated.

    Raises:
        VallayzUserError: naming the field at fault (or the method, when it is unknown).
    """
    if method != "impn" and method not in ARCHITECTURES:
        raise VallayzUserError(
            f"unknown method {method!r}; use 'impn' or one of {list(ARCHITECTURES)}"
        )
    fields = {k: v for k, v in (overrides or {}).items() if k != "modalities"}
    if method == "impn":
        return IMPNConfig.from_dict({**fields, "modalities": modalities})
    return build_checked(
        BaselineConfig,
        {**fields, "architecture": method, "modalities": modalities},
        f"{method} config",
    )


def build_model(
    method: str, modalities: dict[str, int], overrides: dict[str, Any] | None = None
) -> LearnedMethod:
    """A fresh model of ``method`` (``"impn"`` or a baseline architecture) for ``modalities``."""
    config = model_config(method, modalities, overrides)
    if isinstance(config, IMPNConfig):
        return IMPN(config)
    return _BASELINES[config.architecture](config)


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> LearnedMethod:
    """Loads any checkpoint written by ``save_pretrained`` (IMPN or a learned baseline).

    Raises:
        VallayzUserError: if ``config.json`` or the weights of a baseline are missing, unreadable
            or do not match (IMPN's own checks raise ``ValueError``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise VallayzUserError(
            f"cannot read {config_path} ({err}); is {directory} a vallayz checkpoint?"
        ) from err
    if "architecture" not in raw:
        return IMPN.from_pretrained(directory, device)
    try:
        config = build_checked(BaselineConfig, raw, "baseline config")
    except VallayzUserError as err:
        raise VallayzUserError(f"{config_path}: {err}") from err
    model = _BASELINES[config.architecture](config)
    try:
        state = load_file(str(directory / WEIGHTS_NAME), device=str(device))
        check_weights(state, model.state_dict(), directory / WEIGHTS_NAME)
        model.load_state_dict(state)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise VallayzUserError(
            f"{directory / WEIGHTS_NAME} is missing, corrupt or does not match {config_path}: {err}"
        ) from err
    return model.to(device)
