"""Configuration of a training run, serialised next to the model as ``train_config.json``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vallayz.config import build_checked
from vallayz.losses import LossWeights, check_pair_weighting

SIGMA_SCHEDULES = ("constant", "cosine")
RETRIEVAL_MODES = ("soil", "bridged")


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the model config. Validated at construction."""

    # Passes over the training split (ignored when max_steps is set).
    epochs: int = 20
    # Stop after this many optimizer steps in total; None runs `epochs` epochs.
    max_steps: int | None = None
    # Rows per optimizer step: the global batch, whatever the number of processes.
    batch_size: int = 256
    # Equal slices the global batch is cut into. Each slice's loss is computed on its own (its
    # in-batch negatives are the slice's rows) and the slices' gradients are averaged. None
    # gives one slice per process (one without torchrun); a fixed value, a multiple of the
    # number of processes, makes the run independent of how many processes train it.
    batch_shards: int | None = None
    # Peak learning rate of AdamW.
    lr: float = 1e-3
    # Peak learning rate of the trainable hashed-feature tables (the models' `front_ends`),
    # which see a gradient only on the rows whose features occur in a batch; None uses `lr`.
    front_end_lr: float | None = None
    # AdamW weight decay.
    weight_decay: float = 0.01
    # Linear warm-up steps before the cosine decay.
    warmup_steps: int = 100
    # Clip the global gradient norm to this value (0 disables clipping).
    grad_clip: float = 1.0
    # Validate (retrieval R@1 on the validation split, the mean over every ordered pair of
    # modalities weighted by each pair's queries) every this many steps.
    eval_every: int = 100
    # Stop after this many validations without a new best R@1 (0 never stops early).
    patience: int = 5
    # Candidate pool size of the validation retrieval.
    val_pool: int = 1000
    # Write a resumable checkpoint every this many steps (and at the end).
    checkpoint_every: int = 100
    # Random seed of initialisation, shuffling, dropout and micro-variants.
    seed: int = 0
    # Seed of the group-wise train/val/test split (when the items table has no split column).
    split_seed: int = 0
    # "cpu" or "cuda".
    device: str = "cpu"
    # Mixed precision (bfloat16 autocast) on CUDA; ignored on CPU.
    amp: bool = True
    # Probability of hiding each present modality in the translation pass (modality dropout).
    modality_dropout: float = 0.5
    # Also train the learned baselines with modality dropout at modality_dropout: each dropped
    # modality is fitted from their fusion of the kept ones, beside their pairwise loss. IMPN
    # always trains with it; off, the baselines' loss is pairwise only.
    baseline_dropout: bool = False
    # Probability of withholding each hashed feature id (Batch.tokens) of a training batch, for
    # every method alike; a row keeps at least one id. 0 disables it.
    token_dropout: float = 0.0
    # Probability that a training row loses all its hashed feature ids and is read from its
    # native vector alone (as a noisy modality is at test time). 0 disables it.
    token_row_dropout: float = 0.0
    # InfoNCE temperature of the contrastive term.
    contrastive_temperature: float = 0.07
    # "mse", "cosine" or "mse+cosine" for translation and cycle terms.
    reconstruction: str = "mse+cosine"
    # How per-pair (and per-modality) loss terms are averaged: "rows" weighs each by the rows
    # it was computed on, so a modality present in few rows does not dominate; "equal" does not.
    pair_weighting: str = "rows"
    # Weights of the loss terms.
    loss_weights: dict[str, float] = field(default_factory=lambda: LossWeights().as_dict())
    # Most subsets of modalities IMPN's combinatorial term embeds per batch, one pass
    # each, drawn at random when there are more (3 modalities have 3 subsets of two).
    fused_subsets: int = 4
    # Share of the rows of IMPN's fused subsets with one source corrupted (white noise at
    # 0-20 dB, tokens withheld), so that a fused query learns to lean away from a junk source.
    fused_corruption: float = 0.0
    # Also translate the complement of each draw of IMPN's translation pass (the kept
    # modalities dropped, the dropped ones kept): a row of two modalities is translated in
    # both directions, as a pair of MLP translators is. Doubles the passes with drops.
    translate_complement: bool = False
    # Micro-variant noise over the run: "constant" keeps every sigma, "cosine" scales it from
    # 1 at the first step to 0 at the last, as the learning rate decays.
    sigma_schedule: str = "constant"
    # Retrieval path of a message-passing model (IMPN) in validation, which picks the best
    # checkpoint: "soil" (each source embedded alone) or "bridged" (queries read from the
    # absent target's nodes after message passing).
    retrieval_mode: str = "soil"
    # Run the planner-actor-critic loop.
    planner: bool = True
    # Steps between planner decisions; every other interval tries one change, the others are
    # change-free controls to judge it against.
    planner_every: int = 50

    def __post_init__(self) -> None:
        """Validates every field, raising a ``ValueError`` that names the first one at fault."""
        self._check_counts()
        self._check_numbers()
        self._check_choices()
        self._check_loss()

    def _check_counts(self) -> None:
        """Checks the step, batch and validation counts.

        Raises:
            ValueError: if one is not a positive integer (``warmup_steps`` and ``patience``:
                negative), or ``batch_shards`` does not divide ``batch_size``.
        """
        for name in (
            "epochs",
            "batch_size",
            "eval_every",
            "checkpoint_every",
            "planner_every",
            "val_pool",
            "fused_subsets",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_shards is not None and (
            not isinstance(self.batch_shards, int)
            or isinstance(self.batch_shards, bool)
            or self.batch_shards < 1
            or self.batch_size % self.batch_shards
        ):
            raise ValueError(
                f"batch_shards must be null or a positive divisor of batch_size "
                f"({self.batch_size}), got {self.batch_shards!r}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer or null, got {self.max_steps}")
        if self.warmup_steps < 0 or self.patience < 0:
            raise ValueError("warmup_steps and patience must be >= 0")

    def _check_numbers(self) -> None:
        """Checks the rates and the learning rates.

        Raises:
            ValueError: if a token dropout rate lies outside [0, 1), a float is not finite, or
                a learning rate is not positive.
        """
        for name in ("token_dropout", "token_row_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.fused_corruption <= 1.0:
            raise ValueError(f"fused_corruption must lie in [0, 1], got {self.fused_corruption}")
        for name, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.front_end_lr is not None and not self.front_end_lr > 0:
            raise ValueError(
                f"front_end_lr must be positive or null (null uses lr), got {self.front_end_lr}"
            )

    def _check_choices(self) -> None:
        """Checks the fields that name one of a few choices.

        Raises:
            ValueError: for an unknown device, sigma schedule or retrieval mode.
        """
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(
                f"sigma_schedule must be one of {SIGMA_SCHEDULES}, got {self.sigma_schedule!r}"
            )
        if self.retrieval_mode not in RETRIEVAL_MODES:
            raise ValueError(
                f"retrieval_mode must be one of {RETRIEVAL_MODES}, got {self.retrieval_mode!r}"
            )

    def _check_loss(self) -> None:
        """Checks the loss weights and the pair weighting.

        Raises:
            ValueError: for an unknown or invalid term weight, every weight 0, or an unknown
                pair weighting.
        """
        known = LossWeights().as_dict()
        unknown = set(self.loss_weights) - set(known)
        if unknown:
            raise ValueError(
                f"loss_weights names unknown term(s) {sorted(unknown)}; the terms are {list(known)}"
            )
        weights = LossWeights(**self.loss_weights)  # validates the values
        if not any(weights.as_dict().values()):
            raise ValueError(
                "every loss weight is 0, so training would minimise a loss of 0 and learn "
                "nothing; give at least one term a positive weight (e.g. contrastive)"
            )
        check_pair_weighting(self.pair_weighting)

    def to_json(self, path: str | Path) -> None:
        """Writes the config as indented JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Builds a config from a dict (a user's JSON), checking the type of every field and
        rejecting unknown ones.

        Raises:
            VallayzUserError: naming the field at fault and what it must be.
        """
        return build_checked(cls, data, "training config")
