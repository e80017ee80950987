"""Loss terms, each a pure function plus a small module, and the weights and settings of an
objective.

IMPN's own objective (:class:`~vallayz.impn_loss.IMPNLoss`,
:class:`~vallayz.impn_loss.IMPNObjective`) lives with its method in :mod:`vallayz.impn_loss`;
it is still reachable as ``vallayz.losses.IMPNLoss``, loaded on first use so that this package
imports no model.
"""

from typing import Any

from vallayz.losses.combinatorial import (
    combinatorial_info_nce,
    fusion_subsets,
    sample_subsets,
    subset_rows,
)
from vallayz.losses.infonce import InfoNCELoss, info_nce
from vallayz.losses.knn import KNNPreservationLoss, knn_jaccard, knn_preservation_loss
from vallayz.losses.listwise import ListwiseLoss, listwise_loss
from vallayz.losses.reconstruction import (
    ReconstructionLoss,
    cycle_loss,
    reconstruction_loss,
    translation_loss,
)
from vallayz.losses.regularisers import (
    DenoisingLoss,
    OrthogonalityLoss,
    denoising_loss,
    orthogonality_loss,
)
from vallayz.losses.total import LossOutput, LossSettings, LossWeights
from vallayz.losses.weighting import PAIR_WEIGHTINGS, check_pair_weighting, pair_mean

__all__ = [
    "PAIR_WEIGHTINGS",
    "DenoisingLoss",
    "IMPNLoss",
    "IMPNObjective",
    "InfoNCELoss",
    "KNNPreservationLoss",
    "ListwiseLoss",
    "LossOutput",
    "LossSettings",
    "LossWeights",
    "OrthogonalityLoss",
    "ReconstructionLoss",
    "check_pair_weighting",
    "combinatorial_info_nce",
    "cycle_loss",
    "denoising_loss",
    "fusion_subsets",
    "info_nce",
    "knn_jaccard",
    "knn_preservation_loss",
    "listwise_loss",
    "orthogonality_loss",
    "pair_mean",
    "reconstruction_loss",
    "sample_subsets",
    "subset_rows",
    "translation_loss",
]


def __getattr__(name: str) -> Any:
    """``IMPNLoss`` and ``IMPNObjective``, read from :mod:`vallayz.impn_loss` on first use."""
    if name in ("IMPNLoss", "IMPNObjective"):
        from vallayz import impn_loss

        return getattr(impn_loss, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
