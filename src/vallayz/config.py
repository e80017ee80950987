"""Configuration of an IMPN model, with a JSON round trip."""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from vallayz.errors import VallayzUserError

SCHEMA_VERSION = 1
"""Version of the checkpoint layout (``config.json`` + ``model.safetensors``)."""

MAX_PARAMETERS = 1_000_000_000
"""The most parameters a model may have: a config above it is refused before anything is
allocated (4 GB of float32 weights, four times that with the optimiser's state). Raise it here
for a larger model."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_UPDATES = ("residual", "gru")
_ABSENT_INITS = ("seed", "attend", "pool")
_DECODE_FROM = ("target", "sources", "both", "carry")
_FLAGS = (
    "zero_init_residual",
    "zero_init_adapters",
    "adapter_norm",
    "adapter_branch",
    "bridge_attention",
    "bridge_ffn",
    "final_norm",
    "match_head",
    "token_nodes_in_pool",
    "fusion_gate",
    "fusion_layers",
    "fusion_stage",
    "carry_detach",
    "carry_front_end",
)


@dataclass
class IMPNConfig:
    """Hyper-parameters of :class:`~vallayz.model.IMPN`.

    Validated at construction; every error says how to fix the value.
    """

    # Modality name -> native embedding dimension d_m, e.g. {"bo": 512, "en": 384}.
    modalities: dict[str, int]
    # Dimension d of the shared soil space.
    soil_dim: int = 256
    # Number L of bridge layers (self-attention -> gated cross-modal passing -> feed-forward).
    layers: int = 2
    # Number K of micro-variants each sending node emits during training.
    variants: int = 4
    # Noise scale of the micro-variants: one value for every modality, or one per modality.
    sigma: float | dict[str, float] = 0.1
    # Learn sigma (per modality, through a log-parameterisation) instead of keeping it fixed.
    learn_sigma: bool = False
    # Receptor gating keeps the top_k highest-scoring incoming variants per receiving node.
    top_k: int = 4
    # What top_k counts: "senders" (sender nodes, each combining its K variants by their gate
    # weights; the same number of senders in training and evaluation) or "variants" (single
    # micro-variants, so K copies of one sender can fill the top-k; kept for ablations).
    selection: str = "senders"
    # Bound on the senders each receiving node's gate scores: the valid senders whose clean
    # states have the largest dot product with the receiver's (then top_k of them are kept).
    # None scores every sender, whose cost grows with the square of the number of nodes;
    # a number (>= top_k) makes it grow linearly. Changes the model when below the senders.
    sender_candidates: int | None = None
    # Softmax temperature T over the kept gate scores; lower is sharper.
    temperature: float = 1.0
    # State update after aggregation: "residual" (a + W_o m) or "gru" (GRU(m, a)).
    update: str = "residual"
    # Attention heads of the within-modality self-attention; must divide soil_dim.
    heads: int = 4
    # Dropout on attention, feed-forward and adapter activations during training.
    dropout: float = 0.0
    # Hidden width of adapters and decoders; None means 2 * soil_dim.
    hidden_dim: int | None = None
    # Hidden width of the receptor-gating MLP that scores [a_i; v_j; <a_i, v_j>].
    gate_hidden: int = 64
    # Expansion factor of the feed-forward block of each bridge layer.
    ffn_mult: int = 4
    # Modality -> table size of a trainable embedding-bag front end over hashed feature ids
    # (Batch.tokens), added to the native embedding before the adapter; {} for none.
    token_buckets: dict[str, int] = field(default_factory=dict)
    # Modality -> table size of trainable token nodes: each id of the row's unit sequence
    # (Batch.node_ids, e.g. a line's syllables) becomes one more node of that modality, its
    # state the table row of the id plus a learned position; {} for none.
    token_nodes: dict[str, int] = field(default_factory=dict)
    # Longest unit sequence the token nodes take (their learned positions); longer sequences
    # are an error.
    token_node_positions: int = 64
    # Whether a modality's pooled soil state averages its token nodes too (true), or only its
    # adapter's nodes (false), which then read the units through the bridge's attention alone.
    token_nodes_in_pool: bool = True
    # Start the residual branches of every bridge layer (attention output, feed-forward
    # down-projection, residual message projection) at zero, so that an untrained model passes
    # the adapters' output straight through to the soil space.
    zero_init_residual: bool = True
    # Start each adapter's MLP branch (W2) at zero, so that an untrained adapter is its linear
    # projection P alone.
    zero_init_adapters: bool = False
    # LayerNorm on each adapter's input before its MLP branch (the LN(x) of the adapter's
    # formula); false feeds the native vector to the branch as it is.
    adapter_norm: bool = True
    # Each adapter's MLP branch; false makes every adapter a learned linear map P·x alone (the
    # contrastive heads' map), with no LayerNorm or hidden layer.
    adapter_branch: bool = True
    # Modalities whose adapter alone is a learned linear map (as with adapter_branch=false),
    # the others keeping their MLP branch: e.g. the pooled sentence vectors linear and the
    # speech frames through an MLP. [] for none.
    linear_adapters: list[str] = field(default_factory=list)
    # Modalities whose nodes pass through a reader of their own (one self-attention block over
    # the modality's nodes, starting as the identity) after the adapter, before the bridge: a
    # sequence that IMPN.extend adds to a model whose shared bridge never read one. [] for none.
    node_readers: list[str] = field(default_factory=list)
    # Modalities whose nodes a reader of their own pools into one node (learned positions, one
    # self-attention block, attention pooling by a learned query; it starts as the mean) after
    # the adapter, before the bridge: a sequence that IMPN.extend adds to a model whose
    # modalities were one node each enters the bridge as the single node its frozen layers
    # were trained on. Not also in node_readers. [] for none.
    pooling_readers: list[str] = field(default_factory=list)
    # fuse() weighs the sources' pooled states by a learned softmax over the present sources
    # (FusionGate, starting uniform) instead of their mean, so that a fused query can learn to
    # lean away from a corrupted source (train it with TrainConfig.fused_corruption).
    fusion_gate: bool = False
    # fuse() runs its own copy of the bridge layers (the fusion layers; IMPN.fusion_stage starts
    # them from the trained ones) instead of the layers every single-source embedding passes,
    # so that training the fused path cannot move the shared space.
    fusion_layers: bool = False
    # A second fusion stage: every parameter but the fusion gate and the fusion layers is frozen
    # (IMPN.fusion_stage builds it from a trained model), so the single-source embeddings stay
    # the trained model's bit for bit. Needs fusion_gate or fusion_layers.
    fusion_stage: bool = False
    # The within-modality self-attention block of each bridge layer; false leaves it out (the
    # states go straight to cross-modal passing), for ablations.
    bridge_attention: bool = True
    # The feed-forward block of each bridge layer; false leaves it out, for ablations.
    bridge_ffn: bool = True
    # LayerNorm on the node states after the last bridge layer; false reads them as they are.
    final_norm: bool = True
    # Initial state of an absent modality's nodes: "seed" (one learned state per modality,
    # whatever the row holds), "attend" (the seed plus attention over the row's present nodes,
    # through a projection that starts at zero) or "pool" (the seed plus the mean over the row's
    # present modalities of their pooled initial states, so that the absent nodes start from
    # what the sources hold; a pass with messages blocked keeps the seed).
    absent_init: str = "seed"
    # What an absent modality's decoder reads (translation, and the translation and cycle
    # terms): "target" (the pooled state its own nodes reach by message passing), "sources"
    # (the mean of the present modalities' pooled soil states: the shared-space translation) or
    # "both" (their sum, a skip from the sources to the decoder), or "carry" (the carried code
    # of the sources alone, no soil state: needs carry_dim). A present modality's decoder
    # reads its own pooled state in every case.
    decode_from: str = "target"
    # Stop the gradient at the sources' pooled states that an absent modality's decoder reads
    # ("sources" or "both"): the translation and cycle terms then train the decoder from the
    # sources without pulling the shared space toward what predicts the target's native vector.
    decode_detach: bool = False
    # Width of the carried source code; 0 for none. Each modality's carry encoder (LayerNorm,
    # linear, GELU: the first half of the pairwise MLP translator) reads its pooled native input
    # with its token front end, and an absent modality's decoder adds a linear read of the
    # present sources' mean code (starting at zero), so that a translation carries its source
    # beside the soil state. Only the translation and cycle terms train it; retrieval never
    # reads it, and one encoder and one read per modality keep the cost linear in M.
    carry_dim: int = 0
    # Stop the gradient at the native input the carry encoders read, so that the translation
    # terms do not train the token front ends (which the soil space reads too). Needs carry_dim.
    carry_detach: bool = False
    # The carry encoder of a modality with a token front end (token_buckets) reads a table of
    # its own (as the pairwise MLP translator does) instead of the one the soil space reads, so
    # that translation and retrieval do not share it. Needs carry_dim.
    carry_front_end: bool = False
    # A match head that re-ranks retrieval candidates by a joint pass of query and candidate
    # (IMPN.match), trained by the "rerank" loss term with hard negatives.
    match_head: bool = False
    # Modalities whose parameters are frozen, along with every part shared by all modalities
    # (bridge layers, final norm, absent-state attention, match head); set by IMPN.extend, so
    # that only the modalities it added train and the frozen ones embed as before, bit for bit.
    # [] trains everything.
    frozen_modalities: list[str] = field(default_factory=list)
    # Version of the checkpoint schema this config was written with.
    schema_version: int = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        """Validates every field, in a fixed order (the first fault found is reported)."""
        _check_modalities(self.modalities)
        self._check_sizes()
        self._check_tables()
        self._check_choices()
        self._check_sigma()
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"this config has schema version {self.schema_version}, newer than this "
                f"vallayz ({SCHEMA_VERSION}); upgrade vallayz to read it"
            )
        check_parameter_count(self.parameter_count(), "IMPN", self._size_fields())

    def _check_sizes(self) -> None:
        """Raises ``ValueError`` unless every flag is a bool and every size a positive int."""
        for flag in _FLAGS:
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        _positive_int("soil_dim", self.soil_dim)
        _positive_int("layers", self.layers)
        _positive_int("variants", self.variants)
        _positive_int("top_k", self.top_k)
        _positive_int("heads", self.heads)
        _positive_int("gate_hidden", self.gate_hidden)
        _positive_int("ffn_mult", self.ffn_mult)
        if self.hidden_dim is not None:
            _positive_int("hidden_dim", self.hidden_dim)
        if self.sender_candidates is not None:
            _positive_int("sender_candidates", self.sender_candidates)
        if not isinstance(self.carry_dim, int) or isinstance(self.carry_dim, bool):
            raise ValueError(f"carry_dim must be an integer, got {self.carry_dim!r}")
        if self.carry_dim < 0:
            raise ValueError(
                f"carry_dim must be >= 0 (0 for no carried code), got {self.carry_dim}"
            )
        if self.carry_front_end and not self.carry_dim:
            raise ValueError(
                "carry_front_end gives the carry encoders tables of their own, and "
                "carry_dim=0 has no carry: set carry_dim (e.g. 512) or leave carry_front_end off"
            )
        if self.carry_detach and not self.carry_dim:
            raise ValueError(
                "carry_detach stops the gradient into the carry encoders, and carry_dim=0 has "
                "none: set carry_dim (e.g. 512) or leave carry_detach off"
            )

    def _check_tables(self) -> None:
        """Raises ``ValueError`` unless the token front ends, the token nodes (and their
        positions) and the frozen modalities name known modalities with valid values."""
        check_token_buckets(self.token_buckets, self.modalities)
        check_token_buckets(self.token_nodes, self.modalities, "token_nodes")
        _positive_int("token_node_positions", self.token_node_positions)
        check_frozen(self.frozen_modalities, self.modalities)
        check_modality_list("linear_adapters", self.linear_adapters, self.modalities)
        check_modality_list("node_readers", self.node_readers, self.modalities)
        check_modality_list("pooling_readers", self.pooling_readers, self.modalities)
        both = sorted(set(self.node_readers) & set(self.pooling_readers))
        if both:
            raise ValueError(
                f"{both} are in both node_readers and pooling_readers; a modality has one "
                "reader: keep it in pooling_readers to read its nodes into one, in "
                "node_readers to keep them"
            )

    def _check_choices(self) -> None:
        """Raises ``ValueError`` unless ``heads`` divides ``soil_dim``, the temperature is
        positive, the dropout lies in ``[0, 1)`` and every named choice is a known one."""
        if self.soil_dim % self.heads:
            raise ValueError(
                f"heads={self.heads} does not divide soil_dim={self.soil_dim}; choose heads "
                "among the divisors of soil_dim"
            )
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be positive, got {self.temperature}; use e.g. 1.0 (lower "
                "is sharper gating)"
            )
        if self.update not in _UPDATES:
            raise ValueError(f"update must be one of {_UPDATES}, got {self.update!r}")
        if self.selection not in ("senders", "variants"):
            raise ValueError(f"selection must be 'senders' or 'variants', got {self.selection!r}")
        if self.absent_init not in _ABSENT_INITS:
            raise ValueError(
                f"absent_init must be one of {_ABSENT_INITS}, got {self.absent_init!r}"
            )
        if self.decode_from not in _DECODE_FROM:
            raise ValueError(f"decode_from must be one of {_DECODE_FROM}, got {self.decode_from!r}")
        if self.decode_detach and self.decode_from in ("target", "carry"):
            raise ValueError(
                "decode_detach stops the gradient at the sources' soil states the decoder "
                f"reads, and decode_from={self.decode_from!r} reads none: set decode_from="
                "'sources' or 'both', or leave decode_detach off"
            )
        if self.decode_from == "carry" and not self.carry_dim:
            raise ValueError(
                "decode_from='carry' decodes an absent modality from the sources' carried "
                "code, and carry_dim=0 has none: set carry_dim (e.g. 512)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.fusion_stage and not (self.fusion_gate or self.fusion_layers):
            raise ValueError(
                "fusion_stage trains only the fusion gate and the fusion layers, and this "
                "config has neither: set fusion_gate or fusion_layers (IMPN.fusion_stage does)"
            )

    def _check_sigma(self) -> None:
        """Raises ``ValueError`` unless ``sigma`` gives every modality (and only those) a value
        ``>= 0``, ``> 0`` under ``learn_sigma``."""
        if isinstance(self.sigma, dict):
            unknown = set(self.sigma) - set(self.modalities)
            missing = set(self.modalities) - set(self.sigma)
            if unknown or missing:
                raise ValueError(
                    f"sigma is given per modality but its keys differ from the modalities: "
                    f"unknown {sorted(unknown)}, missing {sorted(missing)}; give one value per "
                    "modality or a single float"
                )
        for name, value in self.sigma_per_modality().items():
            if not value >= 0:
                raise ValueError(f"sigma for modality {name!r} must be >= 0, got {value}")
            if self.learn_sigma and value == 0:
                raise ValueError(
                    f"learn_sigma=True needs sigma > 0 for every modality ({name!r} has 0); "
                    "sigma is learned as log(sigma)"
                )

    def _size_fields(self) -> dict[str, object]:
        """The fields that set the parameter count, for the message of a config too large."""
        return {
            "modalities": self.modalities,
            "soil_dim": self.soil_dim,
            "hidden_dim": self.hidden_dim,
            "layers": self.layers,
            "gate_hidden": self.gate_hidden,
            "ffn_mult": self.ffn_mult,
            "token_buckets": self.token_buckets,
            "token_nodes": self.token_nodes,
            "token_node_positions": self.token_node_positions,
        }

    def parameter_count(self) -> int:
        """The number of parameters of an IMPN with this config, computed without building it
        (``log_sigma`` included)."""
        dim, hidden, gate, names = self.soil_dim, self.hidden, self.gate_hidden, self.modalities
        total = 2 * len(names) * dim + len(names)  # seeds, modality embeddings, log_sigma
        for name, native in names.items():
            branch = self.has_adapter_branch(name)
            adapter = native * dim if native != dim or not branch else 0
            if branch:
                adapter += 2 * native if self.adapter_norm else 0
                adapter += _linear(native, hidden) + _linear(hidden, dim)
            decoder = 2 * dim + _linear(dim, hidden) + _linear(hidden, native)
            total += adapter + decoder + _linear(dim, native)
        total += sum(buckets * names[m] for m, buckets in self.token_buckets.items())
        total += sum(
            (buckets + self.token_node_positions) * dim for buckets in self.token_nodes.values()
        )
        total += len(self.node_readers) * (4 * dim * dim + 6 * dim)
        total += 3 * dim + 1 if self.fusion_gate else 0
        total += len(self.pooling_readers) * (
            4 * dim * dim + 7 * dim + self.token_node_positions * dim
        )
        attention = 2 * dim + _linear(dim, 3 * dim) + _linear(dim, dim)
        gate_mlp = _linear(dim, gate) + dim * gate + gate + _linear(gate, 1)
        update = dim * dim if self.update == "residual" else 6 * dim * dim + 6 * dim
        cross = 2 * dim + gate_mlp + dim * dim + update
        ffn = 2 * dim + _linear(dim, self.ffn_mult * dim) + _linear(self.ffn_mult * dim, dim)
        layer = cross + (attention if self.bridge_attention else 0)
        layer += ffn if self.bridge_ffn else 0
        total += self.layers * layer * (2 if self.fusion_layers else 1)
        total += 2 * dim if self.final_norm else 0
        if self.absent_init == "attend":
            total += 2 * dim + _linear(dim, dim) + _linear(dim, 2 * dim) + _linear(dim, dim)
        if self.match_head:
            total += 2 * dim + _linear(3 * dim, 2 * gate) + _linear(2 * gate, 1)
        if self.carry_dim:
            # Per modality: the carry encoder (LayerNorm and linear) and the decoder's read.
            carry = self.carry_dim
            total += sum(2 * d + _linear(d, carry) + _linear(carry, d) for d in names.values())
            if self.carry_front_end:
                total += sum(buckets * names[m] for m, buckets in self.token_buckets.items())
        return total

    @property
    def hidden(self) -> int:
        """Hidden width of adapters and decoders."""
        return self.hidden_dim if self.hidden_dim is not None else 2 * self.soil_dim

    def has_adapter_branch(self, modality: str) -> bool:
        """Whether ``modality``'s adapter has its MLP branch (else it is a linear map alone)."""
        return self.adapter_branch and modality not in self.linear_adapters

    def sigma_per_modality(self) -> dict[str, float]:
        """The micro-variant noise scale of every modality."""
        if isinstance(self.sigma, dict):
            return {name: float(self.sigma[name]) for name in self.modalities}
        return {name: float(self.sigma) for name in self.modalities}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IMPNConfig:
        """Builds a config from :meth:`to_dict` output (or a user's JSON), checking the type of
        every field and rejecting unknown ones.

        Raises:
            VallayzUserError: naming the field at fault and what it must be.
        """
        return build_checked(cls, data, "IMPN config")

    def to_json(self, path: str | Path) -> None:
        """Writes the config as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> IMPNConfig:
        """Reads a config written by :meth:`to_json`.

        Raises:
            ValueError: if the file is missing, not valid JSON, or not a valid config.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise VallayzUserError(f"cannot read IMPN config {path}: {err}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise VallayzUserError(
                f"{path} is not valid JSON ({err.msg} at line {err.lineno}); "
                "rewrite it or regenerate it with IMPNConfig.to_json"
            ) from err
        try:
            return cls.from_dict(data)
        except VallayzUserError as err:
            raise VallayzUserError(f"{path}: {err}") from err


_Config = typing.TypeVar("_Config")


def build_checked(cls: type[_Config], data: object, what: str) -> _Config:
    """``cls(**data)`` for a config dataclass read from JSON: unknown keys, values of the wrong
    JSON type and values its own validation refuses all raise one :class:`VallayzUserError`
    that names the field, instead of a ``TypeError`` from deep inside (as does ``data`` that is
    not a JSON object)."""
    if not isinstance(data, dict):
        raise VallayzUserError(f"{what} must be a JSON object, got {type(data).__name__}")
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    unknown = set(data) - set(fields)
    if unknown:
        raise VallayzUserError(
            f"unknown {what} field(s) {sorted(unknown)}; known fields are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if not _matches(value, hints[name]):
            raise VallayzUserError(
                f"{what} field {name!r} must be {_describe(hints[name])}, got {value!r} "
                f"({_json_type(value)})"
            )
    missing = [
        n
        for n, f in fields.items()
        if n not in data and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise VallayzUserError(f"{what} lacks the field(s) {missing}")
    try:
        return cls(**data)
    except VallayzUserError:
        raise
    except ValueError as err:
        raise VallayzUserError(f"{what}: {err}") from err


def _matches(value: object, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (ints count as floats, bools as neither)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(
            _matches(k, key) and _matches(v, item) for k, v in value.items()
        )
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    return isinstance(hint, type) and isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is dict:
        return f"an object {{name: {_describe(typing.get_args(hint)[1])}}}"
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object"})
    return names.get(type(value), type(value).__name__)


def _check_modalities(modalities: object) -> None:
    """Raises ``ValueError`` unless ``modalities`` maps at least two usable names to positive
    integer dimensions."""
    if not isinstance(modalities, dict) or len(modalities) < 2:
        raise ValueError(
            "IMPNConfig.modalities needs at least two modalities as {name: native_dim}, "
            f"got {modalities!r}"
        )
    for name, dim in modalities.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"modality name {name!r} is not usable as a key; use letters, digits, '_' "
                "or '-', starting with a letter or '_' (e.g. 'en', 'speech_frames')"
            )
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(
                f"modality {name!r} has native dimension {dim!r}; give a positive integer"
            )


def check_token_buckets(
    token_buckets: object, modalities: dict[str, int], field_name: str = "token_buckets"
) -> None:
    """Raises ``ValueError`` unless ``token_buckets`` maps known modalities to positive ints."""
    if not isinstance(token_buckets, dict):
        raise ValueError(
            f"{field_name} must be {{modality: buckets}}, e.g. {{'bo': 65536}}; "
            f"got {token_buckets!r}"
        )
    for name, buckets in token_buckets.items():
        if name not in modalities:
            raise ValueError(
                f"{field_name} names modality {name!r}, which is not one of "
                f"{sorted(modalities)}; remove it or add the modality"
            )
        _positive_int(f"{field_name}[{name!r}]", buckets)


def check_extension(
    new_modalities: Mapping[str, int],
    names: Sequence[str],
    parts: Mapping[str, Mapping[str, int] | None],
) -> None:
    """The checks of ``extend`` (IMPN's and the learned baselines'): at least one new modality,
    none of them among the model's ``names``, and the per-modality ``parts`` asked for
    (``{"token_buckets": {...}}``) naming new modalities only.

    Raises:
        VallayzUserError: naming the modality or option at fault and the fix.
    """
    if not new_modalities:
        raise VallayzUserError("extend needs at least one new modality as {name: dimension}")
    existing = sorted(set(new_modalities) & set(names))
    if existing:
        raise VallayzUserError(
            f"modality {existing[0]!r} already exists in this model (it knows {list(names)}); "
            "give the new modality another name, or train a new model to change an old one"
        )
    for option, given in parts.items():
        old = sorted(set(given or {}) - set(new_modalities))
        if old:
            raise VallayzUserError(
                f"{option} names {old}, which are not new modalities; an old modality's "
                "parts are frozen, so only the new ones may get a front end or token nodes"
            )


def check_modality_list(field_name: str, names: object, modalities: dict[str, int]) -> None:
    """Raises ``ValueError`` unless ``names`` is a list of known modalities, each once."""
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{field_name} must be a list of modality names, got {names!r}")
    unknown = sorted(set(names) - set(modalities))
    if unknown:
        raise ValueError(
            f"{field_name} names {unknown}, not among the modalities {sorted(modalities)}; "
            "remove them or add the modalities"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{field_name} names a modality twice: {names}")


def check_frozen(frozen: object, modalities: dict[str, int]) -> None:
    """Raises ``ValueError`` unless ``frozen`` lists known modalities, each once, and leaves at
    least one modality to train."""
    check_modality_list("frozen_modalities", frozen, modalities)
    assert isinstance(frozen, list)
    if frozen and len(set(frozen)) == len(modalities):
        raise ValueError(
            "frozen_modalities names every modality, so nothing would train; freeze the old "
            "modalities only (IMPN.extend does)"
        )


def _linear(inputs: int, outputs: int) -> int:
    """The parameters of ``nn.Linear(inputs, outputs)`` with its bias."""
    return inputs * outputs + outputs


def check_parameter_count(count: int, what: str, sizes: dict[str, object]) -> None:
    """Raises :class:`VallayzUserError` when a model of ``count`` parameters would exceed
    :data:`MAX_PARAMETERS`, naming the count and the config's size fields (``sizes``)."""
    if count > MAX_PARAMETERS:
        given = ", ".join(f"{name}={value}" for name, value in sizes.items())
        raise VallayzUserError(
            f"this {what} config would have {count:,} parameters ({count * 4 / 1e9:,.1f} GB of "
            f"float32 weights), more than the limit of {MAX_PARAMETERS:,}; lower its sizes "
            f"({given}) or raise vallayz.config.MAX_PARAMETERS for a model that large"
        )


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
