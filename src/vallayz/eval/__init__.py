"""Evaluation: retrieval metrics, stitching, perturbations for robustness sweeps."""

from vallayz.eval.pairs import (
    ClosedFormEncoder,
    default_pairs,
    format_table,
    model_encoder,
    retrieval_table,
)
from vallayz.eval.perturb import PerturbedView, add_noise_snr, drop_rows, drop_sources
from vallayz.eval.rerank import rerank_ranks, rerank_table
from vallayz.eval.retrieval import keys_to_ids, random_pools, retrieval_metrics, retrieval_ranks
from vallayz.eval.stitching import fit_linear_classifier, stitching_accuracy

__all__ = [
    "ClosedFormEncoder",
    "PerturbedView",
    "add_noise_snr",
    "default_pairs",
    "drop_rows",
    "drop_sources",
    "fit_linear_classifier",
    "format_table",
    "keys_to_ids",
    "model_encoder",
    "random_pools",
    "rerank_ranks",
    "rerank_table",
    "retrieval_metrics",
    "retrieval_ranks",
    "retrieval_table",
    "stitching_accuracy",
]
