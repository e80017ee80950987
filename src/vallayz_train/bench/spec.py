"""What a benchmark evaluates: the spec (data, budget, pools, sweeps) and the methods as objects.

The spec names its methods; each name stands for one object of :data:`LEARNED` (trained by the
trainer into a run folder) or :data:`CLOSED_FORM` (fitted on the training rows). Adding a method
is adding one object to one of these tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vallayz.eval import ClosedFormEncoder, model_encoder

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
    methods: tuple[str, ...] = (
        "impn",
        "contrastive-heads",
        "mlp-translator",
        "seq-heads",
        "fusemix",
    )
    # Closed-form maps fitted on the training rows (names of CLOSED_FORM).
    closed_form: tuple[str, ...] = ("ortho", "l-ortho", "linear", "affine")
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
_PATHS = (
    ("shared space", "soil", False),
    ("bridged", "bridged", False),
    ("translate", "translate", True),
)


def model_paths(model: Any) -> list[tuple[str, str, bool]]:
    """The retrieval paths of a trained model: a shared space (``embed``), the bridged
    message-passing path, and translation into the target's space (``translate``)."""
    offered = {
        "soil": model.capabilities.embeds,
        "bridged": model.capabilities.bridges,
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


LEARNED: dict[str, LearnedMethod] = {
    "impn": LearnedMethod("impn", model_overrides=True),
    "contrastive-heads": LearnedMethod("contrastive-heads"),
    "mlp-translator": LearnedMethod("mlp-translator"),
    "seq-heads": LearnedMethod("seq-heads"),
    "fusemix": LearnedMethod("fusemix"),
}
CLOSED_FORM: dict[str, ClosedFormMethod] = {
    name: ClosedFormMethod(name) for name in ("ortho", "l-ortho", "linear", "affine")
}


def learned_method(name: str) -> LearnedMethod:
    """The learned method of that name, or a plain one for a name the trainer knows."""
    return LEARNED.get(name, LearnedMethod(name))


def closed_form_method(name: str) -> ClosedFormMethod:
    """The closed-form method of that name."""
    return CLOSED_FORM.get(name, ClosedFormMethod(name))
