"""The IMPN model: adapters into a shared soil space, bridge layers, decoders back out."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vallayz.config import SCHEMA_VERSION, IMPNConfig, check_extension
from vallayz.errors import VallayzUserError
from vallayz.functional import (
    masked_mean,
    mean_of_present_sources,
    mean_over_present,
    softmax_over_present,
)
from vallayz.impn_loss import IMPNObjective
from vallayz.layers import (
    AbsentInit,
    Adapter,
    BridgeLayer,
    Carry,
    Decoder,
    FusionGate,
    HashedBag,
    MatchHead,
    NodeReader,
    PoolingReader,
    TokenNodes,
)
from vallayz.losses.total import LossSettings
from vallayz.method import Capabilities
from vallayz.types import Batch, Embeddings, Masks

CONFIG_NAME = "config.json"
FUSIONS = ("late", "fused")
"""How :meth:`IMPN.embed` combines several present sources: the mean of single-source
embeddings (``late``), or one pass in which they exchange messages (``fused``)."""
WEIGHTS_NAME = "model.safetensors"


@dataclass
class GateWeights:
    """Gate weights of one bridge layer, for inspection and plots.

    Attributes:
        weights: ``[B, N, N*K]`` weight of incoming variant ``j`` at receiving node ``i``.
        node_modality: Modality name of each of the ``N`` nodes (receivers).
        variants: ``K``; incoming variant ``j`` comes from node ``j // K``.
    """

    weights: Tensor
    node_modality: list[str]
    variants: int

    def modality_matrix(self) -> dict[tuple[str, str], float]:
        """Mean gate mass that receivers of one modality give to senders of another.

        Returns:
            ``(receiver, sender) → mean over rows and receiving nodes`` of the summed weights.
        """
        names = self.node_modality
        sender_names = [name for name in names for _ in range(self.variants)]
        out: dict[tuple[str, str], float] = {}
        for receiver in dict.fromkeys(names):
            rows = [i for i, name in enumerate(names) if name == receiver]
            for sender in dict.fromkeys(names):
                cols = [j for j, name in enumerate(sender_names) if name == sender]
                mass = self.weights[:, rows][:, :, cols].sum(-1)
                out[receiver, sender] = float(mass.detach().mean())
        return out


@dataclass
class IMPNOutput:
    """Everything one forward pass produces, keyed by modality.

    Attributes:
        soil: Pooled soil state per modality ``[B, soil_dim]`` (for absent modalities: the
            state their seed nodes reached from the present ones).
        nodes: Per-node soil states ``[B, T_m, soil_dim]``.
        node_mask: ``[B, T_m]``, ``True`` for real nodes (an absent row has one seed node).
        present: ``[B]`` presence mask of every modality of the model.
        decoded: Native-space vector per modality ``[B, d_m]``: a present modality's decoded
            pooled state; an absent one's decoded from what ``IMPNConfig.decode_from`` names
            (its own pooled state, the present sources' mean, or their sum), plus the read of
            the present sources' carried code under ``IMPNConfig.carry_dim``.
        gates: Gate weights per bridge layer, when asked for.
        messages: ``(noisy, clean)`` aggregated messages per bridge layer ``[B, N, d]``, when
            asked for (denoising loss).
    """

    soil: dict[str, Tensor]
    nodes: dict[str, Tensor]
    node_mask: dict[str, Tensor]
    present: dict[str, Tensor]
    decoded: dict[str, Tensor]
    gates: list[GateWeights] | None = None
    messages: list[tuple[Tensor, Tensor]] | None = None


@dataclass
class _Nodes:
    """Every node of a batch packed into one tensor, with the masks the bridge needs.

    Attributes:
        states: Initial soil states ``[B, N, d]`` (adapters' output or seed states, plus the
            modality embedding).
        real: ``[B, N]`` real nodes (not padding; an absent modality has one seed node).
        present_node: ``[B, N]`` nodes of modalities present in the row.
        pooled: ``[B, N]`` real nodes that a modality's pooled soil state averages (all of them,
            or with ``token_nodes_in_pool=False`` all but the token nodes).
        senders: ``[B, N]`` nodes that may send messages (real nodes of present modalities).
        modality: ``[N]`` index of each node's modality in the model's ``names``.
        same_modality: ``[N, N]`` whether two nodes belong to one modality.
        present: Modality → ``[B]`` presence.
        spans: Modality → ``(begin, end)`` of its nodes along ``N``.
        codes: Modality of the batch → its carried source code ``[B, carry_dim]``
            (``config.carry_dim``; empty without it).
    """

    states: Tensor
    real: Tensor
    present_node: Tensor
    pooled: Tensor
    senders: Tensor
    modality: Tensor
    same_modality: Tensor
    present: dict[str, Tensor]
    spans: dict[str, tuple[int, int]]
    codes: dict[str, Tensor]


class IMPN(nn.Module):
    """Interspecies Message Passing Network.

    One adapter per modality roots its native embeddings into the soil space; ``L`` bridge layers
    let the nodes of every modality exchange gated, noisy messages with the nodes of the other
    present modalities; absent modalities start from learned seed states; one decoder per
    modality maps pooled soil states back to its native space. A modality named in
    ``config.token_buckets`` also has a trainable embedding-bag front end over the batch's hashed
    feature ids (``Batch.tokens``) whose output is added to its native input before the adapter;
    a batch without tokens for it (e.g. decoded embeddings fed back) uses the native input alone.
    A modality named in ``config.token_nodes`` gets one more node per id of the row's unit
    sequence (``Batch.node_ids``, e.g. the syllables of a line), after its adapter's nodes, so
    that message passing runs over the sequence as well as over the pooled vector.

    Example:
        >>> import torch
        >>> from vallayz import IMPN, IMPNConfig
        >>> model = IMPN(IMPNConfig(modalities={"text": 8, "audio": 6}, soil_dim=16, heads=2))
        >>> model.translate(torch.randn(3, 8), source="text", target="audio").shape
        torch.Size([3, 6])
    """

    message_passing = True
    """Whether queries can be read from an absent target's nodes (``embed(x, target=...)``)."""

    def __init__(self, config: IMPNConfig) -> None:
        super().__init__()
        self.config = config
        self.names = list(config.modalities)
        dim = config.soil_dim
        self._build_native_parts(config)
        # Keyed by name, so that a checkpoint does not depend on the order of the modalities.
        self.seeds = _small_vectors(self.names, dim)
        self.modality_embedding = _small_vectors(self.names, dim)
        self.layers = _bridge_layers(config)
        self._zero_init()
        self.norm: nn.Module = nn.LayerNorm(dim) if config.final_norm else nn.Identity()
        self.absent_init = AbsentInit(dim, config.heads) if config.absent_init == "attend" else None
        self.match_head = MatchHead(dim, config.gate_hidden * 2) if config.match_head else None
        # Multiplies every sigma during training (a schedule sets it; it is not saved).
        self.sigma_scale = 1.0
        # log(sigma) per modality; trained only when config.learn_sigma.
        self.log_sigma = nn.ParameterDict(
            {
                m: nn.Parameter(torch.tensor(value).log(), requires_grad=config.learn_sigma)
                for m, value in config.sigma_per_modality().items()
            }
        )
        # Readers of their own nodes for the modalities config.node_readers names (built last,
        # so that a model without them draws its other parameters as before).
        self.readers = nn.ModuleDict(
            {m: NodeReader(dim, config.heads) for m in config.node_readers}
        )
        self.pooling_readers = nn.ModuleDict(
            {
                m: PoolingReader(dim, config.heads, config.token_node_positions)
                for m in config.pooling_readers
            }
        )
        self.fusion_gate = FusionGate(dim) if config.fusion_gate else None
        # The fused pass's own bridge layers (IMPN.fusion_stage copies the trained ones in).
        self.fusion_layers = _bridge_layers(config) if config.fusion_layers else None
        self.carries = nn.ModuleDict(
            {m: Carry(d, config.carry_dim) for m, d in config.modalities.items()}
            if config.carry_dim
            else {}
        )
        self.carry_front_ends = nn.ModuleDict(
            {
                m: HashedBag(buckets, config.modalities[m])
                for m, buckets in config.token_buckets.items()
            }
            if config.carry_front_end
            else {}
        )
        self._freeze()

    def _build_native_parts(self, config: IMPNConfig) -> None:
        """Builds each modality's adapter, decoder, token front end and token nodes (in this
        order, which fixes how parameters draw from the random generator)."""
        dim, hidden = config.soil_dim, config.hidden
        self.adapters = nn.ModuleDict(
            {
                m: Adapter(
                    d,
                    dim,
                    hidden,
                    config.dropout,
                    config.adapter_norm,
                    config.has_adapter_branch(m),
                )
                for m, d in config.modalities.items()
            }
        )
        self.decoders = nn.ModuleDict(
            {m: Decoder(dim, d, hidden, config.dropout) for m, d in config.modalities.items()}
        )
        self.front_ends = nn.ModuleDict(
            {
                m: HashedBag(buckets, config.modalities[m])
                for m, buckets in config.token_buckets.items()
            }
        )
        self.token_nodes = nn.ModuleDict(
            {
                m: TokenNodes(buckets, dim, config.token_node_positions)
                for m, buckets in config.token_nodes.items()
            }
        )

    def _zero_init(self) -> None:
        """Starts the adapters' MLP branches and the bridge layers' residual branches at zero
        where ``config.zero_init_adapters`` and ``config.zero_init_residual`` ask for it."""
        if self.config.zero_init_adapters:
            for adapter in self.adapters.values():
                assert isinstance(adapter, Adapter)
                adapter.zero_init_branch()
        if self.config.zero_init_residual:
            for layer in self.layers:
                assert isinstance(layer, BridgeLayer)
                layer.zero_init_residual()

    # ------------------------------------------------------------------ hyper-parameters
    @property
    def sigma(self) -> dict[str, float]:
        """Current micro-variant noise scale per modality."""
        return {m: float(self.log_sigma[m].detach().exp()) for m in self.names}

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.seeds[self.names[0]].device

    def _sigma_vector(self) -> Tensor:
        return torch.stack([self.log_sigma[m] for m in self.names]).exp()

    def set_sigma(self, sigma: float | Mapping[str, float]) -> None:
        """Sets the noise scale (all modalities, or those named), e.g. for a schedule."""
        values = sigma if isinstance(sigma, Mapping) else dict.fromkeys(self.names, sigma)
        for name, value in values.items():
            self._index(name)
            if not value >= 0 or (self.config.learn_sigma and value == 0):
                raise ValueError(f"sigma for {name!r} must be > 0 when learned, >= 0 otherwise")
            with torch.no_grad():
                self.log_sigma[name].fill_(math.log(value) if value > 0 else -math.inf)
        self.config.sigma = self.sigma

    def set_gating(self, top_k: int | None = None, temperature: float | None = None) -> None:
        """Changes top-k and/or the gate temperature of every bridge layer (and the config).

        Raises:
            ValueError: if a value is invalid, or the model has frozen modalities (the gating
                is part of what :meth:`extend` keeps fixed).
        """
        if self.config.frozen_modalities and (top_k, temperature) != (None, None):
            raise ValueError(
                "the gating of an extended model is frozen with its old modalities "
                f"({self.config.frozen_modalities}), whose bridged states it would change"
            )
        if self.config.fusion_stage and (top_k, temperature) != (None, None):
            raise ValueError(
                "the gating of a fusion stage is frozen with the model it was built from, "
                "whose bridged states it would change"
            )
        if top_k is not None:
            if top_k < 1:
                raise ValueError(f"top_k must be >= 1, got {top_k}")
            self.config.top_k = top_k
        if temperature is not None:
            if not temperature > 0:
                raise ValueError(f"temperature must be positive, got {temperature}")
            self.config.temperature = temperature
        for layer in [*self.layers, *(self.fusion_layers or ())]:
            assert isinstance(layer, BridgeLayer)
            layer.cross.top_k = self.config.top_k
            layer.cross.temperature = self.config.temperature

    def projection_weights(self, modalities: Collection[str] | None = None) -> list[Tensor]:
        """The adapters' projections ``P`` (only adapters with ``d_m != soil_dim`` have one), of
        the named modalities or of all."""
        weights = []
        for name, adapter in self.adapters.items():
            assert isinstance(adapter, Adapter)
            if modalities is not None and name not in modalities:
                continue
            if adapter.projection is not None:
                weights.append(adapter.projection.weight)
        return weights

    # ------------------------------------------------------------------ extension
    @property
    def trainable_modalities(self) -> list[str]:
        """The modalities whose own parameters train: every one, or after :meth:`extend` the
        added ones (``config.frozen_modalities`` names the others)."""
        return [m for m in self.names if m not in self.config.frozen_modalities]

    def own_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters that belong to modality ``name`` alone: its adapter, decoder, token
        front end and token nodes (if any), seed state, modality embedding and noise scale.
        Every other parameter is shared by all modalities."""
        self._index(name)
        params = [*self.adapters[name].parameters(), *self.decoders[name].parameters()]
        for table in (
            self.front_ends,
            self.token_nodes,
            self.readers,
            self.pooling_readers,
            self.carries,
            self.carry_front_ends,
        ):
            if name in table:
                params += list(table[name].parameters())
        return [*params, self.seeds[name], self.modality_embedding[name], self.log_sigma[name]]

    def fusion_parameters(self) -> list[nn.Parameter]:
        """The parameters of the fused path alone: the fusion gate and the fusion layers
        (empty without ``config.fusion_gate`` and ``config.fusion_layers``)."""
        parts = [part for part in (self.fusion_gate, self.fusion_layers) if part is not None]
        return [parameter for part in parts for parameter in part.parameters()]

    def _freeze(self) -> None:
        """Applies ``config.fusion_stage`` (every parameter stops training but the fused
        path's) or ``config.frozen_modalities`` (with any frozen, every parameter stops
        training but the own parameters of the other modalities, their noise scale only under
        ``learn_sigma``)."""
        if self.config.fusion_stage:
            for parameter in self.parameters():
                parameter.requires_grad_(False)
            for parameter in self.fusion_parameters():
                parameter.requires_grad_(True)
            return
        if not self.config.frozen_modalities:
            return
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        for name in self.trainable_modalities:
            for parameter in self.own_parameters(name):
                parameter.requires_grad_(True)
            self.log_sigma[name].requires_grad_(self.config.learn_sigma)

    def extend(
        self,
        new_modalities: Mapping[str, int],
        *,
        sigma: float | None = None,
        token_buckets: Mapping[str, int] | None = None,
        token_nodes: Mapping[str, int] | None = None,
        node_readers: Collection[str] | None = None,
        pooling_readers: Collection[str] | None = None,
    ) -> IMPN:
        """This model with more modalities, in which only what the new ones need trains.

        Every parameter of this model is copied and frozen (the old modalities' own parts and
        every shared part, gating included: :meth:`set_gating` refuses to change it). Each new
        modality gets a fresh adapter, decoder, seed, modality embedding and noise scale (and
        the front end, token nodes or readers asked for); an optimizer over the parameters
        with ``requires_grad`` trains only these. Queries of old modalities only pack their
        own nodes, so their embeddings, bridged states and translations stay this model's bit
        for bit: a search index built before the extension stays valid.

        Args:
            new_modalities: Name → native dimension of each modality to add.
            sigma: Micro-variant noise scale of the new modalities; ``None`` gives them the
                old modalities' mean.
            token_buckets: New modality → table size of a token front end (as
                ``IMPNConfig.token_buckets``).
            token_nodes: New modality → table size of token nodes (as
                ``IMPNConfig.token_nodes``).
            node_readers: New modalities with a reader of their own nodes (as
                ``IMPNConfig.node_readers``).
            pooling_readers: New modalities whose nodes a reader pools into one node (as
                ``IMPNConfig.pooling_readers``).

        Returns:
            The extended model, on this model's device and in its train/eval mode; the new
            modalities come after the old ones in ``names``. Parameters are initialised from
            torch's global random generator, as by the constructor.

        Raises:
            VallayzUserError: if no modality is given, one already exists, a name or dimension
                is invalid, or a front end or token nodes are asked for an old modality.

        Shape:
            The extended model maps ``{m: [B, d_m]}`` over old and new modalities alike.
        """
        readers = {"node_readers": node_readers, "pooling_readers": pooling_readers}
        parts = _extension_parts(token_buckets, token_nodes, readers)
        check_extension(new_modalities, self.names, parts)
        model = self._fresh_extension(
            new_modalities,
            sigma,
            token_buckets,
            token_nodes,
            {key: list(value or ()) for key, value in readers.items()},
        )
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        added = {key for m in new_modalities for key in model._own_keys(m)}
        assert not unexpected and set(missing) <= added, (missing, unexpected)
        model.sigma_scale = self.sigma_scale
        return model.train(self.training)

    def fusion_stage(self, *, layers: bool = True, gate: bool = True) -> IMPN:
        """This model with a fused path of its own, in which only that path trains.

        A second stage for fused queries, trained after this model (by the combinatorial
        term, e.g. ``vallayz fit --fuse``) with everything else frozen, as a re-ranker is
        trained after its first stage: :meth:`fuse` runs the fusion layers (a copy of this
        model's bridge layers) and the fusion gate (starting as the mean), while every
        single-source embedding, bridged state and translation stays this model's bit for bit,
        so the fused path can never cost the shared space. Before training, the fused
        embedding is this model's own fused embedding (with its gate, if it has one).

        Args:
            layers: Give the fused pass its own bridge layers (``config.fusion_layers``).
            gate: Weigh the sources by a learned gate (``config.fusion_gate``; a gate this
                model already has is kept, trained further).

        Returns:
            The new model, on this model's device and in its train/eval mode.

        Raises:
            ValueError: if neither part is asked for, or this model is a fusion stage already.
        """
        if not (layers or gate):
            raise ValueError(
                "a fusion stage trains the fusion layers, the fusion gate or both; ask for one"
            )
        if self.config.fusion_stage:
            raise ValueError(
                "this model is a fusion stage already; train its fused path further with "
                "vallayz fit --resume, or build the stage from the model it started from"
            )
        config = self.config.to_dict()
        config.update(
            fusion_layers=layers or self.config.fusion_layers,
            fusion_gate=gate or self.config.fusion_gate,
            fusion_stage=True,
        )
        model = IMPN(IMPNConfig.from_dict(config)).to(self.device)
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("fusion_") for k in missing), missing
        if layers and self.fusion_layers is None:
            model.fusion_layers.load_state_dict(self.layers.state_dict())  # type: ignore[union-attr]
        model.sigma_scale = self.sigma_scale
        return model.train(self.training)

    def _fresh_extension(
        self,
        new_modalities: Mapping[str, int],
        sigma: float | None,
        token_buckets: Mapping[str, int] | None,
        token_nodes: Mapping[str, int] | None,
        readers: dict[str, list[str]],
    ) -> IMPN:
        """A newly initialised model of this config with ``new_modalities`` added after the old
        ones (with the parts asked for) and every old modality frozen, on this model's device;
        :meth:`extend` then copies this model's weights into it.

        Raises:
            VallayzUserError: if the extended config is invalid.
        """
        config = self.config.to_dict()
        old_sigma = self.sigma
        if sigma is None:
            sigma = sum(old_sigma.values()) / len(old_sigma)
        modalities = {**self.config.modalities, **dict(new_modalities)}
        config.update(
            modalities=modalities,
            sigma={**old_sigma, **dict.fromkeys(new_modalities, float(sigma))},
            token_buckets={**self.config.token_buckets, **dict(token_buckets or {})},
            token_nodes={**self.config.token_nodes, **dict(token_nodes or {})},
            node_readers=[*self.config.node_readers, *readers["node_readers"]],
            pooling_readers=[*self.config.pooling_readers, *readers["pooling_readers"]],
            frozen_modalities=list(self.names),
            # The fused path of a fusion stage is frozen with the rest; the new ones train.
            fusion_stage=False,
        )
        try:
            return type(self)(IMPNConfig.from_dict(config)).to(self.device)
        except ValueError as err:
            if isinstance(err, VallayzUserError):
                raise
            raise VallayzUserError(f"cannot add {dict(new_modalities)}: {err}") from err

    def _own_keys(self, name: str) -> set[str]:
        """State-dict keys of :meth:`own_parameters` of ``name``."""
        own = {id(p) for p in self.own_parameters(name)}
        return {key for key, p in self.named_parameters() if id(p) in own}

    def _index(self, name: str) -> int:
        if name not in self.config.modalities:
            raise ValueError(
                f"unknown modality {name!r}; this model knows {self.names}. Use one of those names"
            )
        return self.names.index(name)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        batch: Batch | Embeddings,
        *,
        isolate: bool = False,
        sample: bool | None = None,
        generator: torch.Generator | None = None,
        return_gates: bool = False,
        return_messages: bool = False,
        validate: bool = True,
        decode: bool = True,
        modalities: Collection[str] | None = None,
        fused: bool = False,
    ) -> IMPNOutput:
        """Runs adapters, bridge layers and decoders.

        Args:
            batch: Native embeddings per modality (a :class:`~vallayz.types.Batch`, or a mapping
                when every given modality is present in every row). Modalities of the model
                that are not given are absent.
            isolate: Block every cross-modal message, so that each modality's states are those
                it would reach alone (the unimodal embeddings used for contrastive learning
                and retrieval).
            sample: Draw ``K`` noisy micro-variants per sending node. Defaults to
                ``self.training``; evaluation is deterministic (``K = 1``, ``sigma = 0``).
            generator: Random generator for the micro-variants.
            return_gates: Also return the gate weights of every bridge layer.
            return_messages: Also return noisy and clean aggregated messages per layer.
            validate: Check the batch against the config first. Callers that pass one batch
                (or batches derived from it) several times check it once and skip the rest.
            decode: Also decode the pooled states into native spaces (else ``decoded`` is {}).
            modalities: Pack the nodes of these modalities only (they must include every
                modality of the batch); ``None`` packs every modality. A modality absent from
                every row sends no message, so leaving it out changes no other states; it keeps
                the arithmetic's shapes those of the modalities asked for (see :meth:`extend`).
            fused: Run the fusion layers (``config.fusion_layers``) instead of the bridge
                layers: the pass of :meth:`fuse`.

        Returns:
            An :class:`IMPNOutput` covering the packed modalities.

        Shape:
            ``{m: [B, d_m] or [B, T_m, d_m]}`` → soil ``{m: [B, d]}``, decoded ``{m: [B, d_m]}``.
        """
        batch = Batch.of(batch)
        if validate:
            batch.validate(self.config)
        nodes = self._encode(batch, modalities, codes=decode)
        # No senders at all when isolated: the layers skip their gates.
        senders = None if isolate else nodes.senders
        states = self._init_absent(nodes, senders)
        sample = self.training if sample is None else sample
        layers = self.fusion_layers if fused and self.fusion_layers is not None else self.layers
        states, gates, messages = self._bridge(
            states, nodes, senders, sample, generator, return_gates, return_messages, layers
        )
        out = self._read_out(states, nodes, decode)
        out.gates = gates if return_gates else None
        out.messages = messages if return_messages else None
        return out

    def _encode(
        self, batch: Batch, modalities: Collection[str] | None = None, codes: bool = False
    ) -> _Nodes:
        """Adapters (and token front ends) into soil states, absent modalities as seed nodes,
        all packed into one node tensor (of ``modalities`` only, when given); with ``codes``,
        also the given modalities' carried codes (only a pass that decodes reads them)."""
        names = self._packed(batch, modalities)
        size, device = batch.batch_size, self.device
        pieces, reals, present_nodes, pooled, presents, spans = [], [], [], [], {}, {}
        carried = {}
        start = 0
        for name in names:
            if name in batch.embeddings:
                raw, present, real = self._native_input(batch, name)
                fed = self._front_end(raw, batch, name, self.front_ends)
                if codes and name in self.carries:
                    carried[name] = self._carry_code(batch, name, raw, fed, present, real)
                states, real, units = self._encode_present(batch, name, fed, present, real)
            else:
                states = self.seeds[name].expand(size, 1, -1)
                real = torch.ones(size, 1, dtype=torch.bool, device=device)
                present = torch.zeros(size, dtype=torch.bool, device=device)
                units = torch.zeros_like(real)
            pieces.append(states + self.modality_embedding[name])
            reals.append(real)
            pooled.append(real & ~units if not self.config.token_nodes_in_pool else real)
            present_nodes.append(present[:, None].expand_as(real))
            presents[name] = present
            spans[name] = (start, start + states.shape[1])
            start += states.shape[1]
        modality = torch.cat(
            [
                torch.full((stop - begin,), self.names.index(name), device=device)
                for name, (begin, stop) in spans.items()
            ]
        )
        real = torch.cat(reals, dim=1)
        present_node = torch.cat(present_nodes, dim=1)
        return _Nodes(
            states=torch.cat(pieces, dim=1),
            real=real,
            present_node=present_node,
            pooled=torch.cat(pooled, dim=1),
            senders=real & present_node,
            modality=modality,
            same_modality=modality[:, None] == modality[None, :],
            present=presents,
            spans=spans,
            codes=carried,
        )

    def _packed(self, batch: Batch, modalities: Collection[str] | None) -> list[str]:
        """The modalities a pass packs, in the model's order: ``modalities`` (which must hold
        every modality of ``batch``), or all of them when ``None``.

        Raises:
            ValueError: if ``modalities`` leaves out a modality of the batch.
        """
        if modalities is None:
            return self.names
        if not set(batch.embeddings) <= set(modalities):
            raise ValueError(
                f"modalities={sorted(modalities)} leaves out modalities of the batch "
                f"({sorted(set(batch.embeddings) - set(modalities))}); name every one"
            )
        return [m for m in self.names if m in modalities]

    def _encode_present(
        self, batch: Batch, name: str, x: Tensor, present: Tensor, real: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Soil states ``[B, T, d]``, real-node mask ``[B, T]`` and token-node mask ``[B, T]``
        of a given modality (its adapter's nodes, then its token nodes), from its native input
        ``x`` (token front end added), presence and real entries (:meth:`_native_input`); its
        absent rows hold one real node, the seed."""
        seed = self.seeds[name]
        keep = present[:, None] & real
        # Zero ignored entries first: NaN in an absent row must not reach the gradients.
        states = self.adapters[name](torch.where(keep[..., None], x, torch.zeros_like(x)))
        states = torch.where(present[:, None, None], states, seed.expand_as(states))
        first = torch.zeros_like(real)
        first[:, 0] = True
        real = torch.where(present[:, None], real, first)
        if name in self.readers:
            read = self.readers[name](states, real)
            states = torch.where(present[:, None, None], read, states)
        if name in self.pooling_readers:
            pooled = self.pooling_readers[name](states, real)[:, None]
            states = torch.where(present[:, None, None], pooled, seed.expand_as(pooled))
            real = torch.ones_like(real[:, :1])
        units = torch.zeros_like(real)
        if name in self.token_nodes and name in batch.node_ids:
            unit_states, unit_real = self.token_nodes[name](batch.node_ids[name])
            unit_real = unit_real & present[:, None]
            states = torch.cat([states, unit_states.to(states.dtype)], dim=1)
            real = torch.cat([real, unit_real], dim=1)
            units = torch.cat([units, torch.ones_like(unit_real)], dim=1)
        return states, real, units

    def _native_input(self, batch: Batch, name: str) -> tuple[Tensor, Tensor, Tensor]:
        """A given modality's native input ``[B, T, d_m]`` on the model's device and dtype, its
        presence ``[B]`` and its real (not padding) entries ``[B, T]``."""
        device, seed = self.device, self.seeds[name]
        x = batch.embeddings[name].to(device=device, dtype=seed.dtype)
        x = x.unsqueeze(1) if x.dim() == 2 else x
        present = batch.present[name].to(device)
        padding = batch.padding.get(name)
        real = (
            torch.ones(x.shape[:2], dtype=torch.bool, device=device)
            if padding is None
            else padding.to(device)
        )
        return x, present, real

    @staticmethod
    def _front_end(x: Tensor, batch: Batch, name: str, tables: nn.ModuleDict) -> Tensor:
        """``x`` with the bag of the batch's token ids for ``name`` from ``tables`` added, when
        both exist."""
        if name in tables and name in batch.tokens:
            return x + tables[name](batch.tokens[name])[:, None]
        return x

    def _carry_code(
        self, batch: Batch, name: str, raw: Tensor, fed: Tensor, present: Tensor, real: Tensor
    ) -> Tensor:
        """The carried source code of a given modality: its carry encoder on the mean of its
        real native entries (zero in absent rows), read with the token front end the soil
        space reads (``fed``) or with its own under ``config.carry_front_end`` (added to
        ``raw``), and with no gradient into the input under ``config.carry_detach``.

        Shape:
            ``[B, carry_dim]``.
        """
        x = fed
        if self.config.carry_front_end:
            x = self._front_end(raw, batch, name, self.carry_front_ends)
        keep = present[:, None] & real
        # Zero ignored entries first: NaN in an absent row must not reach the gradients.
        pooled = masked_mean(torch.where(keep[..., None], x, torch.zeros_like(x)), keep)
        if self.config.carry_detach:
            pooled = pooled.detach()
        carry = self.carries[name]
        assert isinstance(carry, Carry)
        return carry.encode(pooled)

    def _init_absent(self, nodes: _Nodes, senders: Tensor | None) -> Tensor:
        """Initial states: with ``absent_init="attend"``, absent nodes add what they read from
        the senders to their seed; with ``"pool"``, the mean over the row's present modalities
        of their pooled initial states; with ``"seed"``, or with every message blocked
        (``senders=None``), the encoded states as they are."""
        absent = ~nodes.present_node
        if self.config.absent_init == "pool":
            if senders is None:
                return nodes.states
            pooled = {
                name: masked_mean(
                    nodes.states[:, begin:stop], (nodes.pooled & nodes.present_node)[:, begin:stop]
                )
                for name, (begin, stop) in nodes.spans.items()
            }
            sources, _ = mean_of_present_sources(pooled, nodes.present)
            return torch.where(absent[..., None], nodes.states + sources[:, None], nodes.states)
        if self.absent_init is None:
            return nodes.states
        alone = torch.zeros_like(nodes.real) if senders is None else senders
        increment = self.absent_init(nodes.states, alone)
        return torch.where(absent[..., None], nodes.states + increment, nodes.states)

    def _noise(self, sample: bool, nodes: _Nodes) -> Tensor | None:
        """Noise scale per node ``[N]`` when micro-variants are sampled, ``None`` when they are
        clean copies (not sampling, or every sigma is zero: decided from the config's values,
        kept in step by :meth:`set_sigma`, without reading the device)."""
        if not sample or self.sigma_scale == 0:
            return None
        if not self.config.learn_sigma and not any(self.config.sigma_per_modality().values()):
            return None
        return self._sigma_vector()[nodes.modality] * self.sigma_scale

    def _bridge(
        self,
        states: Tensor,
        nodes: _Nodes,
        senders: Tensor | None,
        sample: bool,
        generator: torch.Generator | None,
        return_gates: bool,
        return_messages: bool,
        layers: nn.ModuleList,
    ) -> tuple[Tensor, list[GateWeights], list[tuple[Tensor, Tensor]]]:
        """``layers`` (the bridge or the fusion layers), then the final norm: node states, and
        per layer the gate weights and ``(noisy, clean)`` messages when asked for."""
        variants = self.config.variants if sample else 1
        sigma = self._noise(sample, nodes)
        single = all(stop - begin == 1 for begin, stop in nodes.spans.values())
        names = [name for name, (begin, stop) in nodes.spans.items() for _ in range(stop - begin)]
        gates: list[GateWeights] = []
        messages: list[tuple[Tensor, Tensor]] = []
        for layer in layers:
            result = layer(
                states,
                nodes.real,
                senders,
                nodes.same_modality,
                sigma,
                variants=variants,
                generator=generator,
                clean=return_messages,
                single_nodes=single,
            )
            states = result.states
            if return_gates:
                gates.append(GateWeights(result.weights, names, variants))
            if return_messages:
                assert result.clean_message is not None
                messages.append((result.message, result.clean_message))
        return self.norm(states), gates, messages

    def _read_out(self, states: Tensor, nodes: _Nodes, decode: bool) -> IMPNOutput:
        """Per modality: its nodes, their mask, the pooled soil state and (when ``decode``) its
        native-space vector, decoded from what ``config.decode_from`` names."""
        out_nodes, out_mask, soil, decoded = {}, {}, {}, {}
        for name, (begin, stop) in nodes.spans.items():
            out_nodes[name] = states[:, begin:stop]
            out_mask[name] = nodes.real[:, begin:stop]
            soil[name] = masked_mean(out_nodes[name], nodes.pooled[:, begin:stop])
        if decode:
            decoded = {
                name: self.decoders[name](read)
                for name, read in self._decoder_inputs(soil, nodes.present).items()
            }
            decoded = self._add_carried(decoded, nodes)
        return IMPNOutput(soil, out_nodes, out_mask, nodes.present, decoded)

    def _add_carried(self, decoded: dict[str, Tensor], nodes: _Nodes) -> dict[str, Tensor]:
        """``decoded`` with, in the rows where a modality is absent and a source with a carried
        code present, its carry's read of the sources' mean code added (``config.carry_dim``),
        or put in its place under ``decode_from="carry"``.

        Shape:
            ``{m: [B, d_m]}`` → ``{m: [B, d_m]}``.
        """
        if not nodes.codes:
            return decoded
        out = dict(decoded)
        for name in decoded:
            others = {m: code for m, code in nodes.codes.items() if m != name}
            if not others:
                continue
            code, any_source = mean_of_present_sources(
                others, {m: nodes.present[m] for m in others}
            )
            carry = self.carries[name]
            assert isinstance(carry, Carry)
            use = (~nodes.present[name] & any_source)[:, None]
            read = carry.read(code)
            if self.config.decode_from == "carry":
                out[name] = torch.where(use, read, decoded[name])
            else:
                out[name] = decoded[name] + torch.where(use, read, torch.zeros_like(read))
        return out

    def _decoder_inputs(
        self, soil: dict[str, Tensor], present: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """What each modality's decoder reads: its pooled state, and in the rows where it is
        absent and some other modality present, the sources' mean pooled state instead
        (``decode_from="sources"``) or added to it (``"both"``), with no gradient into the
        sources under ``decode_detach``.

        Shape:
            ``{m: [B, d]}``, ``{m: [B]}`` → ``{m: [B, d]}``.
        """
        if self.config.decode_from in ("target", "carry"):
            return soil
        reads = {}
        for name in soil:
            others = [m for m in soil if m != name]
            if not others:
                # A pass over one modality alone (``modalities=[name]``): no other source.
                reads[name] = soil[name]
                continue
            sources, any_source = mean_of_present_sources(
                {m: soil[m] for m in others}, {m: present[m] for m in others}
            )
            if self.config.decode_detach:
                sources = sources.detach()
            use = (~present[name] & any_source)[:, None]
            if self.config.decode_from == "sources":
                reads[name] = torch.where(use, sources, soil[name])
            else:
                reads[name] = soil[name] + torch.where(use, sources, torch.zeros_like(sources))
        return reads

    # ------------------------------------------------------------------ convenience API
    def _sources(
        self,
        x: Tensor | Embeddings | Batch,
        source: str | None,
        present: Masks | None,
        padding: Masks | None,
    ) -> Batch:
        if isinstance(x, Tensor):
            if source is None:
                raise ValueError(
                    "a single tensor needs its modality: pass source='<name>' (one of "
                    f"{self.names}), or pass a dict {{name: tensor}}"
                )
            self._index(source)
            x = {source: x}
        elif source is not None:
            raise ValueError(
                "source= names the modality of a single tensor; with a dict of modalities "
                "leave it out (the keys name them)"
            )
        return Batch.of(x, present, padding)

    def embed(
        self,
        x: Tensor | Embeddings | Batch,
        modality: str | None = None,
        *,
        target: str | None = None,
        present: Masks | None = None,
        padding: Masks | None = None,
        fusion: str = "late",
    ) -> Tensor:
        """Soil vectors of the given inputs.

        Args:
            x: Embeddings of one modality (with ``modality``), or a dict of several.
            modality: The modality of ``x`` when it is a single tensor.
            target: If given, return the soil state that the (absent) ``target`` modality's
                seed nodes reach from the given inputs — soil-space translation. Otherwise the
                present modalities are embedded as ``fusion`` says.
            present: Optional presence masks ``{m: [B]}`` for dict inputs.
            padding: Optional padding masks ``{m: [B, T_m]}`` for node inputs.
            fusion: ``"late"``: each modality embedded on its own, the mean of the present
                modalities' soil vectors per row. ``"fused"``: rows with several present
                sources are embedded by :meth:`fuse` (the sources exchange messages in one
                pass); rows with one keep the late (single-source) embedding, bit for bit.

        Returns:
            Soil vectors ``[B, soil_dim]``.

        Shape:
            ``{m: [B, d_m] or [B, T_m, d_m]}`` → ``[B, soil_dim]``.
        """
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        batch = self._sources(x, modality, present, padding)
        if target is not None:
            self._check_target(batch, target)
            return self(batch, modalities=[*batch.embeddings, target]).soil[target]
        out = self(batch, isolate=True, modalities=batch.embeddings)
        late = mean_over_present({m: out.soil[m] for m in batch.embeddings}, out.present)
        if fusion == "late" or len(batch.embeddings) < 2:
            return late
        # Rows with one present source keep their single-source embedding exactly; the others
        # are read from one pass of their sources together.
        counts = torch.stack([p.to(late.device) for p in batch.present.values()]).sum(dim=0)
        several = torch.nonzero(counts >= 2).squeeze(1)
        if len(several) == 0:
            return late
        fused = self.fuse(batch.select(several.to(batch.present_device)), validate=False)
        return late.index_copy(0, several, fused.to(late.dtype))

    def fuse(
        self,
        batch: Batch | Embeddings,
        *,
        generator: torch.Generator | None = None,
        validate: bool = True,
    ) -> Tensor:
        """Fused embedding of the present sources of each row: one pass of the bridge (with
        ``config.fusion_layers``, of the fusion layers) in which the sources exchange messages
        (not isolated), then the mean of their pooled soil states (with ``config.fusion_gate``,
        their mean weighted by the gate's softmax over the present sources). A row with one
        present source has no other sender, so its state is the one it reaches alone (up to
        rounding, and without fusion layers; :meth:`embed` with ``fusion="fused"`` returns
        exactly the single-source embedding there).

        Args:
            batch: The sources; every row needs at least one present.
            generator: Random generator of the micro-variants (sampled in training only).
            validate: Check the batch against the config first.

        Returns:
            Soil vectors ``[B, soil_dim]``.

        Shape:
            ``{m: [B, d_m] or [B, T_m, d_m]}`` → ``[B, soil_dim]``.
        """
        batch = Batch.of(batch)
        out = self(batch, generator=generator, validate=validate, decode=False, fused=True)
        soil = {m: out.soil[m] for m in batch.embeddings}
        if self.fusion_gate is None:
            return mean_over_present(soil, out.present)
        scores = {m: self.fusion_gate(z) for m, z in soil.items()}
        return softmax_over_present(soil, scores, out.present)

    def match(
        self,
        batch: Batch | Embeddings,
        target: str,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Match scores of joint rows: the sources and a candidate ``target`` of each row pass
        through the bridge together, and the match head scores the sources' pooled soil state
        (the mean over present sources) against the target's.

        Args:
            batch: Every row holds its query's sources and one candidate of ``target``.
            target: The candidate's modality (present in every row).
            generator: Random generator of the micro-variants (training only).

        Returns:
            Logits ``[B]``; higher means the candidate fits the query better.

        Raises:
            ValueError: if the model has no match head (``IMPNConfig.match_head``).

        Shape:
            ``{m: [B, d_m] or [B, T_m, d_m]}`` → ``[B]``.
        """
        if self.match_head is None:
            raise ValueError(
                "this model has no match head; train one with IMPNConfig(match_head=True) and "
                "a positive 'rerank' loss weight to re-rank candidates"
            )
        self._index(target)
        batch = Batch.of(batch)
        if target not in batch.embeddings or len(batch.embeddings) < 2:
            raise ValueError(
                f"match needs the candidate modality {target!r} and at least one source in "
                "every row"
            )
        out = self(batch, generator=generator, modalities=batch.embeddings)
        sources = {m: out.soil[m] for m in batch.embeddings if m != target}
        query = mean_over_present(sources, out.present)
        return self.match_head(query, out.soil[target])

    def translate(
        self,
        x: Tensor | Embeddings | Batch,
        source: str | None = None,
        target: str = "",
        *,
        present: Masks | None = None,
        padding: Masks | None = None,
        ensemble: int = 0,
        seed: int = 0,
    ) -> Tensor:
        """Translates embeddings into ``target``'s native space.

        Args:
            x: Embeddings of one modality (with ``source``), or a dict of several present
                source modalities (rows may miss some of them via ``present``).
            source: The modality of ``x`` when it is a single tensor.
            target: The modality whose native space to decode into; it must not be among the
                inputs.
            present: Optional presence masks ``{m: [B]}`` for dict inputs.
            padding: Optional padding masks ``{m: [B, T_m]}`` for node inputs.
            ensemble: If > 0, average the decoded vectors over this many stochastic passes
                with ``K`` micro-variants each (test-time ensemble); 0 is deterministic.
            seed: Seed of the ensemble's random generator.

        Returns:
            Native ``target`` vectors ``[B, d_target]``: ``target``'s decoder applied to what
            ``IMPNConfig.decode_from`` names (the state its absent nodes reach by message
            passing, the sources' pooled soil states, or their sum).
        """
        batch = self._sources(x, source, present, padding)
        self._check_target(batch, target)
        packed = [*batch.embeddings, target]
        if ensemble <= 0:
            return self(batch, sample=False, modalities=packed).decoded[target]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        batch.validate(self.config)  # once, not once per pass
        runs = [
            self(
                batch, sample=True, generator=generator, validate=False, modalities=packed
            ).decoded[target]
            for _ in range(ensemble)
        ]
        return torch.stack(runs).mean(dim=0)

    def _check_target(self, batch: Batch, target: str) -> None:
        if not target:
            raise ValueError(f"name the target modality, one of {self.names}")
        self._index(target)
        if target in batch.embeddings:
            raise ValueError(
                f"target modality {target!r} is also an input; translation decodes an absent "
                "modality, so leave it out of the inputs"
            )

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path) -> None:
        """Writes ``config.json`` and ``model.safetensors`` into ``directory``.

        Files are written to temporary names and renamed, so an interrupted save never leaves
        a half-written checkpoint under the final names.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = self.config.to_dict()
        config["schema_version"] = SCHEMA_VERSION
        tmp_weights = directory / (WEIGHTS_NAME + ".tmp")
        tmp_config = directory / (CONFIG_NAME + ".tmp")
        save_file(state, str(tmp_weights), metadata={"format": "pt", "library": "vallayz"})
        tmp_config.write_text(json.dumps(config, indent=2) + "\n")
        tmp_weights.replace(directory / WEIGHTS_NAME)
        tmp_config.replace(directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> IMPN:
        """Loads a model written by :meth:`save_pretrained` (no pickle involved).

        Raises:
            VallayzUserError: if a file is missing or corrupt, or the weights do not match the
                config.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise VallayzUserError(
                    f"{path} is missing; a vallayz checkpoint directory holds {CONFIG_NAME} and "
                    f"{WEIGHTS_NAME} as written by IMPN.save_pretrained"
                )
        config = IMPNConfig.from_json(config_path)
        try:
            state = load_file(str(weights_path), device=str(device))
        except (SafetensorError, OSError, ValueError) as err:
            raise VallayzUserError(
                f"{weights_path} is not a readable safetensors file ({err}); the checkpoint is "
                "corrupt or truncated, save it again"
            ) from err
        model = cls(config).to(device)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        reshaped = sorted(
            k for k in set(state) & set(expected) if state[k].shape != expected[k].shape
        )
        if missing or unexpected or reshaped:
            raise VallayzUserError(
                f"{weights_path} does not match {config_path}: missing tensors {missing[:3]}, "
                f"unexpected tensors {unexpected[:3]}, tensors of another shape {reshaped[:3]}; "
                "keep the two files of one checkpoint together"
            )
        check_weights(state, expected, weights_path)
        model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ method contract
    capabilities = Capabilities(embeds=True, bridges=True, fuses=True, translates=True)
    """IMPN embeds into the soil space, bridges to absent modalities, fuses several sources by
    message passing and translates."""

    def objective(self, settings: LossSettings | None = None) -> IMPNObjective:
        """The IMPN loss of this model under ``settings`` (defaults when ``None``), whose
        gating, noise and term weights a planner may change."""
        return IMPNObjective(self, settings or LossSettings())


def _extension_parts(
    token_buckets: Mapping[str, int] | None,
    token_nodes: Mapping[str, int] | None,
    readers: Mapping[str, Collection[str] | None],
) -> dict[str, Mapping[str, int] | None]:
    """The per-modality parts an extension asks for, by option, for ``check_extension``
    (``readers``: option name → the modalities it lists).

    Raises:
        VallayzUserError: if a list of readers is a bare name rather than a list of names.
    """
    for option, names in readers.items():
        if isinstance(names, str):
            raise VallayzUserError(
                f"{option} must be a list of modality names, got {names!r}; write ['{names}']"
            )
    return {
        "token_buckets": token_buckets,
        "token_nodes": token_nodes,
        **{option: dict.fromkeys(names or (), 1) for option, names in readers.items()},
    }


def _small_vectors(names: list[str], dim: int) -> nn.ParameterDict:
    """One vector per modality drawn from ``N(0, 0.02²)`` (seed states, modality embeddings),
    in the order of ``names``.

    Shape:
        ``{m: [dim]}``.
    """
    return nn.ParameterDict({m: nn.Parameter(torch.randn(dim) * 0.02) for m in names})


def _bridge_layers(config: IMPNConfig) -> nn.ModuleList:
    """The ``config.layers`` bridge layers, shared by every modality."""
    return nn.ModuleList(
        BridgeLayer(
            config.soil_dim,
            config.heads,
            config.gate_hidden,
            config.top_k,
            config.temperature,
            config.update,
            config.ffn_mult,
            config.dropout,
            config.selection,
            config.sender_candidates,
            config.bridge_attention,
            config.bridge_ffn,
        )
        for _ in range(config.layers)
    )


def check_weights(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], path: str | Path
) -> None:
    """Refuses weights that would load into numbers without meaning: a tensor of another kind
    than the model's (integers where it holds floats; ``load_state_dict`` would cast them) or a
    floating tensor holding NaN or Inf.

    Raises:
        VallayzUserError: naming ``path``, the tensor and the fix.
    """
    for name, tensor in state.items():
        want = expected.get(name)
        if want is None:
            continue
        if tensor.is_floating_point() != want.is_floating_point() or tensor.dtype == torch.bool:
            raise VallayzUserError(
                f"{path}: tensor {name!r} has dtype {tensor.dtype} where the model holds "
                f"{want.dtype}; the checkpoint was not written by save_pretrained, save it again"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise VallayzUserError(
                f"{path}: tensor {name!r} holds NaN or Inf; the checkpoint is damaged (or its "
                "training diverged), so use an earlier one or train again"
            )
