"""What a second training stage for fused queries needs besides the trainer (``vallayz fit
DATA --fuse RUN --out NEW``, :func:`vallayz_train.trainer.fit_fusion_stage`): its base run and
data checked, its training config, its record in ``run.json`` and its validation pairs.

The model of a finished IMPN run gets a fused path of its own (:meth:`vallayz.IMPN.fusion_stage`:
a copy of its bridge layers and a gate over the sources), trained by the combinatorial term
alone with every other parameter frozen. The single-source embeddings, bridged states and
translations stay the run's bit for bit, so an index built on the run stays valid and the
fused path can never cost the shared space (a combinatorial term trained with the first stage
costs it 1.6 to 5.1 points bo→en on the Tibetan validation split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vallayz.data import PairedEmbeddings
from vallayz.errors import VallayzUserError
from vallayz.losses import LossWeights, fusion_subsets
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import finished_base


def stage_record(
    base_dir: Path, model: torch.nn.Module, layers: bool, gate: bool
) -> dict[str, Any]:
    """What ``run.json`` records under ``fusion_stage``: the base run, the parts trained and
    the trained and frozen parameter counts."""
    return {
        "base": str(base_dir.resolve()),
        "layers": layers,
        "gate": gate,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen_parameters": sum(p.numel() for p in model.parameters() if not p.requires_grad),
    }


def stage_config(config: TrainConfig) -> TrainConfig:
    """``config`` for a fusion stage: the planner off, the combinatorial term's weight kept
    when positive (else 1) and every other term at 0."""
    weights = dict.fromkeys(LossWeights().as_dict(), 0.0)
    weights["combinatorial"] = config.loss_weights.get("combinatorial", 0.0) or 1.0
    return dataclasses.replace(config, planner=False, loss_weights=weights)


def fusable_base(base_dir: Path) -> Any:
    """The final model of the run a fusion stage starts from.

    Raises:
        VallayzUserError: if it is not a run, has not finished or has no fused path to train.
    """
    _, base = finished_base(base_dir, "--fuse")
    if not hasattr(base, "fusion_stage"):
        raise VallayzUserError(
            f"--fuse {base_dir}: its model ({type(base).__name__}) embeds several sources by "
            "late fusion only; a fusion stage trains IMPN's fused pass, so give an IMPN run"
        )
    return base


def check_fusion_rows(
    data: PairedEmbeddings, data_dir: str | Path, base: Any, base_dir: Path, split_seed: int
) -> None:
    """Checks that ``data`` holds the run's modalities at its dimensions and that the train
    and the val split each hold at least 2 rows with three or more of them.

    Raises:
        VallayzUserError: naming the modality or the split at fault.
    """
    for name, dim in base.config.modalities.items():
        if name not in data.modalities:
            raise VallayzUserError(
                f"modality {name!r} of the run {base_dir} is not in {data_dir} (it has "
                f"{sorted(data.modalities)}); give the data folder the run was trained on"
            )
        if data.modalities[name] != dim:
            raise VallayzUserError(
                f"modality {name!r} has dimension {data.modalities[name]} in {data_dir} but "
                f"{dim} in the run {base_dir}; encode it with the run's encoder"
            )
    held = fusion_rows(data, list(base.config.modalities))
    splits = data.split_indices(split_seed)
    for split in ("train", "val"):
        count = int(held[splits[split]].sum())
        if count < 2:
            raise VallayzUserError(
                f"{data_dir}: {count} row(s) of the {split} split hold three or more of the "
                f"run's modalities {list(base.config.modalities)}; a fused query needs two "
                "sources and a target, so training needs at least 2 such rows in the train and "
                "the val split"
            )


def fusion_rows(data: PairedEmbeddings, names: Sequence[str]) -> np.ndarray:
    """``[rows]`` whether a row of ``data`` holds three or more of ``names``: two sources of a
    fused query and a target outside them, the rows a fusion stage trains and validates on."""
    return np.stack([data.present[name] for name in names]).sum(axis=0) >= 3


def fused_pairs(names: Sequence[str]) -> list[tuple[tuple[str, ...], str]]:
    """Every multi-source pair of ``names``: each subset of two or more modalities as the
    sources, each modality outside it as the target."""
    return [(subset, t) for subset in fusion_subsets(list(names)) for t in names if t not in subset]
