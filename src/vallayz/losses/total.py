"""The weights, settings and output of a training objective, shared by every method."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from torch import Tensor

from vallayz.losses.weighting import check_pair_weighting


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of the IMPN objective (0 switches a term off).

    Frozen: a change is a new object from :meth:`replace`, which checks the term names.
    """

    # Symmetric InfoNCE between unimodal soil vectors of every present pair of modalities.
    contrastive: float = 1.0
    # Decoded native vectors of dropped modalities against the true ones.
    translation: float = 1.0
    # A -> B -> A reconstruction of the kept modalities from the decoded dropped ones.
    cycle: float = 0.5
    # KL between soft neighbour distributions in native and soil space.
    knn: float = 0.1
    # ||W^T W - I||^2 on the adapters' projections.
    orthogonality: float = 0.01
    # Noisy-variant messages against clean (K = 1, sigma = 0) messages.
    denoising: float = 0.1
    # Symmetric InfoNCE between the soil state a dropped modality's nodes reach by message
    # passing from the kept ones and that modality's own (isolated) soil vector: trains the
    # "bridged" retrieval path, where a query is read from the absent target's nodes.
    bridged: float = 0.0
    # Cross-entropy of the match head (models with IMPNConfig.match_head) picking the true
    # partner among hard negatives (the partners' nearest neighbours in the isolated soil space)
    # in joint passes of the two modalities: trains re-ranking.
    rerank: float = 0.0
    # Combinatorial term: symmetric InfoNCE between the fused embedding of a subset of at least
    # two present modalities (one pass in which they exchange messages, IMPN.fuse) and each
    # present modality outside it (its isolated soil vector): trains fused queries.
    combinatorial: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0:
                raise ValueError(f"loss weight {name!r} must be >= 0, got {value}")

    def as_dict(self) -> dict[str, float]:
        """Term name → weight."""
        return asdict(self)

    def replace(self, **changes: float) -> LossWeights:
        """These weights with the named terms changed.

        Raises:
            ValueError: if a name is not a term of the objective, or a weight is negative.
        """
        known = self.as_dict()
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown loss term(s) {unknown}; the terms are {list(known)}")
        return dataclasses.replace(self, **{name: float(v) for name, v in changes.items()})


@dataclass(frozen=True)
class LossSettings:
    """How a method's training loss is computed; each method reads the settings its terms use
    (a learned baseline only ``pair_weighting`` and ``baseline_drop_rate``)."""

    # Weight of each term of the IMPN objective.
    weights: LossWeights = field(default_factory=LossWeights)
    # InfoNCE temperature of IMPN's contrastive and bridged terms.
    contrastive_temperature: float = 0.07
    # "mse", "cosine" or "mse+cosine" for IMPN's translation and cycle terms.
    reconstruction: str = "mse+cosine"
    # Probability of dropping each present modality in IMPN's translation pass.
    drop_rate: float = 0.5
    # How per-pair (and per-modality) terms are averaged: "rows" or "equal" (see pair_mean).
    pair_weighting: str = "rows"
    # Probability of dropping each present modality in a learned baseline's fused term (the
    # dropped modalities fitted from the baseline's fusion of the kept ones); 0 leaves the
    # baselines' loss pairwise only.
    baseline_drop_rate: float = 0.0
    # Most subsets of modalities IMPN's combinatorial term embeds per batch (one pass each),
    # drawn at random when the batch's modalities have more.
    fused_subsets: int = 4
    # Probability that a row of a fused subset of IMPN's combinatorial term has one source
    # corrupted (white noise at 0-20 dB, its tokens withheld; corrupt_one_source), so that
    # the fused query learns to lean away from a junk source. 0 corrupts none.
    fused_corruption: float = 0.0
    # Also translate the complement of each draw of IMPN's translation pass (the kept
    # modalities dropped, the dropped kept), so that a row of two modalities is translated in
    # both directions; doubles the passes with dropped modalities.
    translate_complement: bool = False
    # Compute every term of IMPN's objective, even a pass whose terms all have weight 0 (a
    # planner reads them); False skips such a pass, and its terms read 0.
    all_terms: bool = False

    def __post_init__(self) -> None:
        check_pair_weighting(self.pair_weighting)
        if self.fused_subsets < 1:
            raise ValueError(
                f"fused_subsets must be >= 1, got {self.fused_subsets}; it bounds the passes of "
                "the combinatorial term per batch (its weight switches it off)"
            )
        if not 0.0 <= self.fused_corruption <= 1.0:
            raise ValueError(
                f"fused_corruption must lie in [0, 1], got {self.fused_corruption}; it is the "
                "share of fused rows with one corrupted source"
            )
        if not 0.0 <= self.baseline_drop_rate <= 1.0:
            raise ValueError(
                f"baseline_drop_rate must lie in [0, 1], got {self.baseline_drop_rate}; 0 "
                "turns the baselines' modality dropout off"
            )


@dataclass
class LossOutput:
    """The weighted total and every (unweighted) term.

    Attributes:
        total: Weighted sum, the scalar to back-propagate.
        terms: Term name → unweighted scalar; also per-pair contrastive terms
            (``contrastive/a-b``) for logging.
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
