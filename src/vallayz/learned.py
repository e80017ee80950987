"""Learned baselines trained by the same trainer as IMPN, at an equal budget.

* :class:`ContrastiveHeads`: one linear head per modality into a shared space, trained with
  symmetric InfoNCE over every present pair (CLIP-style, both sides projected). ``M`` heads.
* :class:`MLPTranslator`: one MLP per *ordered pair* of modalities, trained on translation
  loss. ``M(M−1)`` maps: the pairwise design IMPN's adapters replace.

With a drop rate (``LossSettings.baseline_drop_rate``) either also trains the fusion that serves
a query with several sources, under modality dropout as IMPN is: modalities are dropped at
random and each dropped one is fitted from the mean over the kept ones.

Both take pooled inputs (node inputs are mean-pooled over real nodes), speak the same
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
    check_frozen,
    check_parameter_count,
    check_token_buckets,
)
from vallayz.errors import VallayzUserError
from vallayz.functional import mean_over_present
from vallayz.layers import HashedBag
from vallayz.losses import LossOutput, LossSettings, info_nce, pair_mean, translation_loss
from vallayz.masking import drop_modalities
from vallayz.method import Capabilities
from vallayz.model import CONFIG_NAME, IMPN, WEIGHTS_NAME, check_weights
from vallayz.types import Batch, Embeddings, Masks

ARCHITECTURES = ("contrastive-heads", "mlp-translator")

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

    # "contrastive-heads" or "mlp-translator".
    architecture: str
    # Modality name -> native dimension.
    modalities: dict[str, int]
    # Shared embedding dimension of the contrastive heads.
    dim: int = 256
    # Hidden width of each pairwise MLP.
    hidden: int = 512
    # InfoNCE temperature of the contrastive heads.
    temperature: float = 0.07
    # Modality -> table size of a trainable embedding-bag front end over hashed feature ids
    # (Batch.tokens), added to the native input as in IMPN; {} for none.
    token_buckets: dict[str, int] = field(default_factory=dict)
    # Modalities whose parameters are frozen (set by extend(), which adds modalities to a
    # trained baseline and trains only what they need); [] trains everything.
    frozen_modalities: list[str] = field(default_factory=list)
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
        """Whether the parameter ``key`` (of the state dict) belongs to a trainable modality;
        each subclass says which of its parameters belong to which modalities."""
        raise NotImplementedError

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
        if not new_modalities:
            raise VallayzUserError("extend needs at least one new modality as {name: dimension}")
        existing = sorted(set(new_modalities) & set(self.names))
        if existing:
            raise VallayzUserError(
                f"modality {existing[0]!r} already exists in this model (it knows {self.names}); "
                "give the new modality another name, or train a new model to change an old one"
            )
        old = sorted(set(token_buckets or {}) - set(new_modalities))
        if old:
            raise VallayzUserError(
                f"token_buckets names {old}, which are not new modalities; only a new modality "
                "may get a front end"
            )
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

    def _trains(self, key: str) -> bool:
        # heads.<m>.* and front_ends.<m>.* belong to modality m.
        return key.split(".")[1] in self.trainable_modalities

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


LearnedMethod = IMPN | ContrastiveHeads | MLPTranslator
"""Every trainable method that :func:`build_model` and :func:`load_pretrained` make."""


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
    return ContrastiveHeads(config) if method == "contrastive-heads" else MLPTranslator(config)


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
    model: ContrastiveHeads | MLPTranslator = (
        ContrastiveHeads(config)
        if config.architecture == "contrastive-heads"
        else MLPTranslator(config)
    )
    try:
        state = load_file(str(directory / WEIGHTS_NAME), device=str(device))
        check_weights(state, model.state_dict(), directory / WEIGHTS_NAME)
        model.load_state_dict(state)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise VallayzUserError(
            f"{directory / WEIGHTS_NAME} is missing, corrupt or does not match {config_path}: {err}"
        ) from err
    return model.to(device)
