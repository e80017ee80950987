"""What a benchmark evaluates: the spec (data, budget, pools, sweeps) and the methods as objects.

The spec names its methods; each name stands for one object of :data:`LEARNED` (trained by the
trainer into a run folder) or :data:`CLOSED_FORM` (fitted on the training rows). Adding a method
is adding one object to one of these tables. The multi-way closed forms (:class:`MultiWayMethod`)
are fitted on every modality at once and evaluated, like trained models, along each retrieval
path they offer.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vallayz.errors import VallayzUserError
from vallayz.eval import ClosedFormEncoder, model_encoder
from vallayz_train.names import (
    CLOSED_FORM_METHODS,
    LEARNED_METHODS,
    MULTIWAY_CLOSED_FORM,
    PAIRWISE_CLOSED_FORM,
)

Pair = tuple[tuple[str, ...], str]


@dataclass
class BenchSpec:
    """What a benchmark evaluates."""

    # (sources, target) retrieval directions; None means every ordered pair of modalities.
    pairs: list[Pair] | None = None
    # Candidate pool size, number of random pools, and their seed.
    pool: int = 1000
    pools: int = 5
    seed: int = 0
    # Learned methods trained under the same TrainConfig (names of LEARNED).
    methods: tuple[str, ...] = LEARNED_METHODS
    # Closed-form maps fitted on the training rows (names of CLOSED_FORM).
    closed_form: tuple[str, ...] = CLOSED_FORM_METHODS
    # Pre-processing of the closed-form maps.
    normalisation: str = "standard"
    # Test-time missing rates of the sweep (on pairs with several sources).
    missing_rates: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    # Signal-to-noise ratios (dB) of the noise sweep on the sources of the first pair.
    snrs: tuple[float, ...] = (20.0, 10.0, 5.0, 0.0)
    # Split of the evaluation.
    split: str = "test"
    # Also train every learned method once per positive missing rate, with modality dropout at
    # that rate (the baselines included), for the missing-modality sweep.
    matched_dropout: bool = False
    # Extra row subsets evaluated separately, e.g. {"novel": rows}.
    subsets: dict[str, list[int]] = field(default_factory=dict)
    # Candidates re-scored per query by the joint match head of models that have one (IMPN with
    # match_head), after the first stage of their default retrieval path.
    rerank_depth: int = 50
    # Trainable token front ends (modality -> buckets) given to every learned method alike,
    # for data with <modality>.tokens.npy; {} for none.
    token_buckets: dict[str, int] = field(default_factory=dict)

    def check(self, modalities: Collection[str]) -> None:
        """Raises :class:`VallayzUserError` for a setting no benchmark over data of
        ``modalities`` can run with: a direction naming an unknown modality or its target among
        its sources, pools of fewer than 2 candidates, an unknown method or split, a missing
        rate outside [0, 1), a non-finite noise level.
        """
        if self.pairs is not None:
            check_pairs(self.pairs, modalities)
        if self.pool < 2:
            raise VallayzUserError(
                f"--pool must be at least 2 candidates (a pool of {self.pool} ranks nothing); "
                "use e.g. --pool 100"
            )
        if self.pools < 1:
            raise VallayzUserError(f"--pools must be at least 1, got {self.pools}")
        unknown = [m for m in self.methods if m not in LEARNED]
        if unknown:
            raise VallayzUserError(f"unknown learned method(s) {unknown}; use {list(LEARNED)}")
        unknown = [m for m in self.closed_form if m not in CLOSED_FORM]
        if unknown:
            raise VallayzUserError(f"unknown closed-form map(s) {unknown}; use {list(CLOSED_FORM)}")
        if self.split not in ("train", "val", "test"):
            raise VallayzUserError(f"split must be 'train', 'val' or 'test', got {self.split!r}")
        if not all(0.0 <= rate < 1.0 for rate in self.missing_rates):
            raise VallayzUserError(
                f"missing rates must lie in [0, 1), got {list(self.missing_rates)}"
            )
        if not all(math.isfinite(snr) for snr in self.snrs):
            raise VallayzUserError(f"noise levels must be finite dB values, got {self.snrs}")
        if self.rerank_depth < 1:
            raise VallayzUserError(f"rerank_depth must be at least 1, got {self.rerank_depth}")


def pair_label(pair: Pair) -> str:
    """``(("a", "b"), "c")`` → ``"a+b->c"``."""
    return f"{'+'.join(pair[0])}->{pair[1]}"


def check_pairs(
    pairs: Sequence[Pair], modalities: Collection[str], option: str = "--pairs"
) -> None:
    """Raises :class:`VallayzUserError` unless every direction of ``pairs`` has at least one
    source, names only ``modalities``, repeats no source and does not name its target among its
    sources."""
    if not pairs:
        raise VallayzUserError(f"{option} names no direction; give e.g. {option} a->b")
    known = sorted(modalities)
    for pair in pairs:
        sources, target = pair
        label = pair_label(pair)
        if not sources or not target:
            raise VallayzUserError(
                f"{option} {label!r} needs at least one source and a target, e.g. a->b or a+b->c"
            )
        unknown = [m for m in dict.fromkeys((*sources, target)) if m not in modalities]
        if unknown:
            raise VallayzUserError(
                f"{option} {label!r} names {unknown}, not among the data's modalities {known}"
            )
        if target in sources:
            raise VallayzUserError(
                f"{option} {label!r} retrieves {target!r} from itself; name a target other than "
                "its sources"
            )
        if len(set(sources)) != len(sources):
            raise VallayzUserError(f"{option} {label!r} names a source twice; name each once")


def pair_modalities(pairs: Sequence[Pair]) -> dict[str, int]:
    """The modalities ``pairs`` name, each with a stand-in dimension of 1: what
    :func:`check_settings` reads before the data of a benchmark exists."""
    return {m: 1 for sources, target in pairs for m in (*sources, target)}


def check_settings(
    spec: BenchSpec,
    train: Any,
    model_overrides: Mapping[str, Any] | None,
    modalities: Mapping[str, int],
) -> None:
    """Checks what a benchmark can check before it builds data or trains anything: the spec
    (:meth:`BenchSpec.check`), the model config of every learned method (fields, types, ranges,
    size, without building a model), and the device of the training config.

    Args:
        spec: What the benchmark evaluates.
        train: Its :class:`~vallayz_train.config.TrainConfig`.
        model_overrides: The model config fields of the benchmark.
        modalities: The modalities of the data and their dimensions (before the data is built:
            the names it will have, with any positive dimension).

    Raises:
        VallayzUserError: naming the setting at fault.
    """
    import torch

    from vallayz.learned import model_config

    spec.check(modalities)
    for name in spec.methods:
        overrides = learned_method(name).overrides(dict(model_overrides or {}), spec)
        try:
            model_config(name, dict(modalities), overrides)
        except VallayzUserError as err:
            raise VallayzUserError(f"the model config of {name}: {err}") from err
    if str(train.device).startswith("cuda") and not torch.cuda.is_available():
        raise VallayzUserError("--device cuda was asked for but CUDA is not available; use cpu")


# The training settings of the small benchmarks (bench emoji, bench digits) besides their
# budget: batches of 128, validation every 50 steps, a checkpoint every 100.
SMALL_DATA_TRAIN: dict[str, Any] = {"batch_size": 128, "eval_every": 50, "checkpoint_every": 100}


def fixed_pairs_spec(
    pairs: list[Pair],
    pool: int,
    pools: int,
    seed: int,
    matched_dropout: bool,
    closed_form: tuple[str, ...],
) -> BenchSpec:
    """The spec of a benchmark with fixed directions whose pools, seed, matched dropout and
    closed-form maps come from its command line (bench emoji, bench digits)."""
    return BenchSpec(
        pairs=pairs,
        pool=pool,
        pools=pools,
        seed=seed,
        matched_dropout=matched_dropout,
        closed_form=closed_form,
    )


# The retrieval paths a trained model offers: (label suffix, model_encoder mode, whether the
# path reads the target's native space). A model offers a path when it has the capability.
# The shared-space path averages several sources (late fusion); the fused path, scored on
# pairs with several sources only, embeds them in one message-passing pass.
_PATHS = (
    ("shared space", "soil", False),
    ("bridged", "bridged", False),
    ("fused", "fused", False),
    ("translate", "translate", True),
)


def model_paths(model: Any) -> list[tuple[str, str, bool]]:
    """The retrieval paths of a trained model: a shared space (``embed``), the bridged
    message-passing path, fused multi-source queries (``embed(fusion="fused")``), and
    translation into the target's space (``translate``)."""
    offered = {
        "soil": model.capabilities.embeds,
        "bridged": model.capabilities.bridges,
        "fused": getattr(model.capabilities, "fuses", False),
        "translate": model.capabilities.translates,
    }
    return [path for path in _PATHS if offered[path[1]]]


@dataclass(frozen=True)
class LearnedMethod:
    """A method trained by the trainer into its own run folder, under the benchmark's budget.

    Attributes:
        name: The trainer's method name (``vallayz fit --method``), also the run folder's.
        model_overrides: Whether the benchmark's model overrides apply to it (the IMPN config);
            the token front ends of the spec apply to every learned method.
    """

    name: str
    model_overrides: bool = False

    def overrides(self, model: dict[str, Any] | None, spec: BenchSpec) -> dict[str, Any]:
        """The model config changes this method is trained with."""
        out = dict(model or {}) if self.model_overrides else {}
        if spec.token_buckets:
            out["token_buckets"] = spec.token_buckets
        return out

    def encoders(
        self, label: str, model: Any, data: Any, native_only: bool = False
    ) -> dict[str, Any]:
        """One encoder per retrieval path of ``model`` over ``data`` (only those into the
        target's native space when ``native_only``), labelled ``"<label> (<path>)"``."""
        return {
            f"{label} ({suffix})": model_encoder(model, data, mode)
            for suffix, mode, native in model_paths(model)
            if native or not native_only
        }


@dataclass(frozen=True)
class ClosedFormMethod:
    """A closed-form map of :mod:`vallayz.baselines`, fitted on the training rows."""

    name: str

    def label(self, normalisation: str) -> str:
        """The method's name in the tables."""
        return f"{self.name} ({normalisation})"

    def encoder(
        self,
        data: Any,
        train_rows: np.ndarray,
        normalisation: str,
        maps: dict[tuple[str, str], Any],
        anchor_data: Any = None,
    ) -> ClosedFormEncoder:
        """Its encoder over ``data``; maps fitted once (on ``anchor_data``) into ``maps``."""
        return ClosedFormEncoder(
            data, train_rows, self.name, normalisation, anchor_data=anchor_data, maps=maps
        )

    def encoders(
        self,
        data: Any,
        train_rows: np.ndarray,
        normalisation: str,
        maps: dict[tuple[str, str], Any],
        anchor_data: Any = None,
        native_only: bool = False,
    ) -> dict[str, Any]:
        """Its one encoder (a translator into the target's native space), labelled."""
        return {
            self.label(normalisation): self.encoder(
                data, train_rows, normalisation, maps, anchor_data
            )
        }


@dataclass(frozen=True)
class MultiWayMethod(ClosedFormMethod):
    """A multi-way closed form of :mod:`vallayz.multiway` (``cca``, ``gpa``, ``gcpa``), fitted
    on every modality of the training rows at once: a shared space, and for those that
    translate, translation through it."""

    def aligner(
        self, data: Any, train_rows: np.ndarray, normalisation: str, maps: dict[Any, Any]
    ) -> Any:
        """The aligner fitted on ``data``'s training rows, once per normalisation."""
        from vallayz.multiway import MultiWayAligner

        key = ("aligner", normalisation)
        if key not in maps:
            batch = data.batch(train_rows)
            maps[key] = MultiWayAligner(self.name, normalisation).fit(batch.pooled(), batch.present)
        return maps[key]

    def encoder(
        self,
        data: Any,
        train_rows: np.ndarray,
        normalisation: str,
        maps: dict[tuple[str, str], Any],
        anchor_data: Any = None,
    ) -> Any:
        """Its translator as ``translator(source, target).transform(x)`` (for the cycle
        measures), or ``None`` when it does not translate."""
        aligner = self.aligner(
            anchor_data if anchor_data is not None else data, train_rows, normalisation, maps
        )
        return _Translations(aligner) if aligner.capabilities.translates else None

    def encoders(
        self,
        data: Any,
        train_rows: np.ndarray,
        normalisation: str,
        maps: dict[tuple[str, str], Any],
        anchor_data: Any = None,
        native_only: bool = False,
    ) -> dict[str, Any]:
        """One encoder per retrieval path of the fitted aligner over ``data``."""
        aligner = self.aligner(
            anchor_data if anchor_data is not None else data, train_rows, normalisation, maps
        )
        return LearnedMethod(self.name).encoders(
            self.label(normalisation), aligner, data, native_only
        )


@dataclass(frozen=True)
class _Translation:
    aligner: Any
    source: str
    target: str

    def transform(self, x: Any) -> Any:
        return self.aligner.decode(self.target, self.aligner.encode(self.source, x))


@dataclass(frozen=True)
class _Translations:
    """A multi-way aligner's translations in the shape of a closed-form encoder's maps."""

    aligner: Any

    def translator(self, source: str, target: str) -> _Translation:
        return _Translation(self.aligner, source, target)


LEARNED: dict[str, LearnedMethod] = {
    name: LearnedMethod(name, model_overrides=name == "impn") for name in LEARNED_METHODS
}
CLOSED_FORM: dict[str, ClosedFormMethod] = {
    **{name: ClosedFormMethod(name) for name in PAIRWISE_CLOSED_FORM},
    **{name: MultiWayMethod(name) for name in MULTIWAY_CLOSED_FORM},
}


def learned_method(name: str) -> LearnedMethod:
    """The learned method of that name, or a plain one for a name the trainer knows."""
    return LEARNED.get(name, LearnedMethod(name))


def closed_form_method(name: str) -> ClosedFormMethod:
    """The closed-form method of that name."""
    return CLOSED_FORM.get(name, ClosedFormMethod(name))
