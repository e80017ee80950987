"""The training loop: AdamW, warm-up + cosine, clipping, validation, early stopping, resume."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vallayz.data import PairedEmbeddings
from vallayz.errors import DivergenceError, VallayzUserError
from vallayz.eval import default_pairs, model_encoder, random_pools, retrieval_table
from vallayz.learned import build_model
from vallayz.losses import LossSettings, LossWeights
from vallayz.masking import drop_tokens
from vallayz.method import TrainableMethod
from vallayz.types import Batch
from vallayz_train.config import TrainConfig
from vallayz_train.distributed import (
    World,
    average_gradients,
    barrier,
    broadcast,
    broadcast_parameters,
    combine_terms,
    start,
)
from vallayz_train.fusion_stage import (
    check_fusion_rows,
    fusable_base,
    fused_pairs,
    fusion_rows,
    stage_config,
    stage_record,
)
from vallayz_train.names import LEARNED_METHODS
from vallayz_train.planner import Planner
from vallayz_train.run_folder import (
    BEST,
    LATEST,
    METRICS,
    OPTIMIZER,
    PLANNER_LOG,
    RUN_FILE,
    SUMMARY,
    TENSORBOARD,
    check_out_dir,
    claim_run_dir,
    clear_run,
    finished_base,
    is_finished,
    load_state,
    lock_run,
    notice,
    read_run,
    save_state,
    states,
    truncate_logs,
    write_run,
    write_summary,
)

CRITIC_ROWS = 512
# Offset between the random streams of two slices of one global batch (slice 0 keeps the
# streams of an unsliced batch).
SLICE_STREAMS = 1000


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up to ``config.lr``, then cosine decay to zero at ``total`` steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def sigma_scale(step: int, total: int, config: TrainConfig) -> float:
    """Factor on every micro-variant sigma at ``step``: 1 throughout (``"constant"``), or a
    cosine from 1 to 0 over ``total`` steps (``"cosine"``)."""
    if config.sigma_schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the hashed-feature tables (``front_ends.*``, and an
    IMPN carry's own ``carry_front_ends.*``) and the rest, each with the ``lr_scale`` by which
    the scheduled learning rate is multiplied."""
    tables: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            table = name.startswith(("front_ends.", "carry_front_ends."))
            (tables if table else rest).append(parameter)
    scale = (config.front_end_lr or config.lr) / config.lr
    groups = [{"params": rest, "lr_scale": 1.0}, {"params": tables, "lr_scale": scale}]
    return [group for group in groups if group["params"]]


def _step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + stream) % 2**63


def loss_settings(config: TrainConfig) -> LossSettings:
    """The loss settings a training config gives every method."""
    return LossSettings(
        weights=LossWeights(**config.loss_weights),
        contrastive_temperature=config.contrastive_temperature,
        reconstruction=config.reconstruction,
        drop_rate=config.modality_dropout,
        pair_weighting=config.pair_weighting,
        baseline_drop_rate=config.modality_dropout if config.baseline_dropout else 0.0,
        fused_subsets=config.fused_subsets,
        fused_corruption=config.fused_corruption,
        translate_complement=config.translate_complement,
        # The planner judges and turns the weights by the unweighted terms, off ones included.
        all_terms=config.planner,
    )


def data_modalities(data: PairedEmbeddings, overrides: dict[str, Any] | None) -> dict[str, int]:
    """The data's modalities and dimensions, restricted to those ``overrides`` names (if any)."""
    given = (overrides or {}).get("modalities")
    modalities = data.modalities
    if given is not None and not isinstance(given, dict):
        raise VallayzUserError(
            f"the config's 'modalities' must be an object {{name: dimension}}, got {given!r}"
        )
    if given is not None:
        for name, dim in given.items():
            if name not in modalities:
                raise VallayzUserError(
                    f"the config names modality {name!r} but the data has {sorted(modalities)}; "
                    "remove it from the config or add its embeddings"
                )
            if dim != modalities[name]:
                raise VallayzUserError(
                    f"the config gives modality {name!r} dimension {dim} but its data has "
                    f"{modalities[name]}; fix the config or re-encode the data"
                )
        modalities = {name: modalities[name] for name in given}
    return modalities


def _training_device(config: TrainConfig, world: World) -> torch.device:
    """The device this process trains on: ``config.device``, or the GPU of its local rank for
    ``"cuda"`` in a data-parallel run.

    Raises:
        VallayzUserError: if CUDA is asked for but not available.
    """
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise VallayzUserError(
            "--device cuda was asked for but CUDA is not available; use --device cpu"
        )
    device = config.device
    if device == "cuda" and world.distributed:
        device = f"cuda:{world.local_rank}"
    return torch.device(device)


def _validation_mode(model: TrainableMethod, config: TrainConfig) -> str:
    """The retrieval path validation reads: ``config.retrieval_mode`` for a method that
    bridges, else the first of the method's modes.

    Raises:
        ValueError: if the method neither embeds nor translates.
    """
    modes = model.capabilities.modes
    if not modes:
        raise ValueError(
            f"{type(model).__name__} declares neither embedding nor translation in its "
            "capabilities; validation needs one of them"
        )
    return config.retrieval_mode if "bridged" in modes else modes[0]


class Trainer:
    """Trains any :class:`~vallayz.method.TrainableMethod` on a data directory into a run
    directory, reading only that contract: the method's objective gives the loss of a batch,
    its capabilities the retrieval path of validation, its objective's tunables (if any) the
    knobs of the sigma schedule and the planner.

    Args:
        data: The paired embeddings.
        run_dir: Where checkpoints, metrics and logs go.
        model: The method to train (fresh or resumed), a ``torch.nn.Module``.
        config: Training settings.
        progress: Show a tqdm progress bar (on rank 0 only).
        world: This process's place in a data-parallel run under ``torchrun`` (its process
            group already started); ``None`` for one process.
        new_modalities: For a model extended with these modalities (its others frozen): train
            and validate on the rows that pair a new modality with a known one only, validate
            the pairs that involve a new modality only, and read from the data the modalities
            it holds only (it may lack some of the model's old ones).
        fusion_stage: For a fusion stage (:meth:`~vallayz.IMPN.fusion_stage`; everything but
            its fused path frozen): train on the rows that hold three or more modalities (a
            fused subset and a target outside it) and validate the fused multi-source pairs.

    Each global batch (``config.batch_size`` rows) is cut into ``config.batch_shards`` equal
    slices (default: one per process); every process computes the loss of its own slices, each
    with the slice's rows as in-batch negatives, and the gradients are averaged over all slices
    before the optimizer step. Rank 0 validates, writes the run folder and broadcasts what
    decides early stopping; the planner runs on every process on identical inputs (loss terms
    averaged over all slices, rank 0's critic score), so its changes are the same everywhere.
    """

    def __init__(
        self,
        data: PairedEmbeddings,
        run_dir: Path,
        model: TrainableMethod,
        config: TrainConfig,
        progress: bool = True,
        world: World | None = None,
        new_modalities: Sequence[str] = (),
        fusion_stage: bool = False,
    ) -> None:
        self.data, self.run_dir, self.config = data, run_dir, config
        self.fusion_stage = fusion_stage
        self.world = world or World()
        self.progress = progress and self.world.is_main
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(model).__name__} implements TrainableMethod but is not a "
                "torch.nn.Module; the trainer needs its parameters"
            )
        self.device = _training_device(config, self.world)
        model.to(self.device)
        # One object seen twice: through the method contract and as a torch module.
        self.method: TrainableMethod = model
        self.model: nn.Module = model
        self.names = list(model.names)
        self.new_modalities = list(new_modalities)
        if self.new_modalities:
            self.names = [m for m in model.names if m in data.modalities]
        self.mode = "fused" if fusion_stage else _validation_mode(model, config)
        self.train_rows, self.val_rows = self._split_rows()
        pool = random_pools(len(self.val_rows), config.val_pool, 1, config.seed)[0]
        self.val_pool = self.val_rows[pool.numpy()]
        self.critic_rows = self.val_rows[:CRITIC_ROWS]
        self.objective = model.objective(loss_settings(config))
        # The knobs of the sigma schedule and the planner; None for a method without any.
        self.tunables = self.objective.tunables
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay
        )
        self.planner = (
            Planner(config.planner_every) if config.planner and self.tunables is not None else None
        )
        self.shards, self.own_shards, self.batch_size = self._slicing()
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        broadcast_parameters(self.world, model)
        self.steps_per_epoch = len(self.train_rows) // self.batch_size
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.step = 0
        self.best = -1.0
        self.bad_evals = 0
        self.writer: Any = None
        # The loss terms of the last step whose loss was finite (for a divergence report).
        self.last_terms: dict[str, float] = {}

    def _split_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The training and validation rows (for an extension, those that pair a new modality
        with a known one only).

        Raises:
            VallayzUserError: if either split has fewer than 2 rows, or a modality is present
                in no training row.
        """
        data = self.data
        splits = data.split_indices(self.config.split_seed)
        train_rows, val_rows = splits["train"], splits["val"]
        if self.new_modalities:
            pairing = extension_rows(data, self.new_modalities, self.names)
            train_rows = train_rows[pairing[train_rows]]
            val_rows = val_rows[pairing[val_rows]]
        if self.fusion_stage:
            held = fusion_rows(data, self.names)
            train_rows, val_rows = train_rows[held[train_rows]], val_rows[held[val_rows]]
        if len(train_rows) < 2:
            raise VallayzUserError(
                f"{data.directory}: the training split has {len(train_rows)} rows; training "
                "needs at least 2 (check the split column or add data)"
            )
        for name in self.names:
            if not data.present[name][train_rows].any():
                where = "row" if not data.present[name].any() else "training row"
                raise VallayzUserError(
                    f"{data.directory}: modality {name!r} is present in no {where} "
                    f"({name}.present.npy), so nothing could link it; add its embeddings, or "
                    "train without it by listing the other modalities under 'modalities' in "
                    "the model config"
                )
        if len(val_rows) < 2:
            raise VallayzUserError(
                f"{data.directory}: the validation split has {len(val_rows)} rows; add "
                "'split' = val rows to items.tsv or more groups"
            )
        return train_rows, val_rows

    def _slicing(self) -> tuple[int, list[int], int]:
        """How every global batch is cut: the number of slices, this process's slices and the
        global batch size (a multiple of the number of slices, at most the training rows).

        Raises:
            VallayzUserError: if the slices do not divide among the processes, or the training
                rows are too few for slices of at least 2 rows.
        """
        shards = self.config.batch_shards or self.world.size
        if shards % self.world.size:
            raise VallayzUserError(
                f"batch_shards is {shards} but {self.world.size} processes train the run; "
                "set batch_shards to a multiple of the number of processes (or null for one "
                "slice per process)"
            )
        # This process's slices of every global batch.
        own_shards = list(range(self.world.rank, shards, self.world.size))
        bs = min(self.config.batch_size, len(self.train_rows))
        bs -= bs % shards
        if shards > 1 and bs < 2 * shards:
            raise VallayzUserError(
                f"{self.data.directory}: the training split has {len(self.train_rows)} rows, too "
                f"few to cut a batch into {shards} slices of at least 2 rows; use fewer "
                "processes (or a smaller batch_shards) or add data"
            )
        return shards, own_shards, bs

    # ------------------------------------------------------------------ state
    def scalars(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "bad_evals": self.bad_evals,
            "loss_weights": (
                self.tunables.loss_weights.as_dict() if self.planner and self.tunables else {}
            ),
            "planner": self.planner.state_dict() if self.planner else None,
            "lr_schedule": {"kind": "warmup-cosine", "total_steps": self.total_steps},
        }

    def restore(self, optimizer_state: dict[str, Any], scalars: dict[str, Any]) -> None:
        saved, made = len(optimizer_state["param_groups"]), len(self.optimizer.param_groups)
        if saved != made:
            raise VallayzUserError(
                f"the run's optimizer state has {saved} parameter group(s) but this version "
                f"trains {made}; resume it with the vallayz version that started it, or start "
                "a new run"
            )
        try:
            self.optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, RuntimeError) as err:
            raise VallayzUserError(
                f"the optimizer state of {self.run_dir} ({OPTIMIZER}) does not fit the model: "
                f"{err}; start the run again with vallayz fit --out"
            ) from err
        for group in self.optimizer.param_groups:
            group.setdefault("lr_scale", 1.0)  # states written before the groups had scales
        self.step = int(scalars["step"]) + 1
        self.best, self.bad_evals = float(scalars["best"]), int(scalars["bad_evals"])
        self._restore_loss_weights(scalars["loss_weights"])
        if self.planner and scalars["planner"]:
            self.planner.load_state_dict(scalars["planner"])
        if self.world.is_main:
            truncate_logs(self.run_dir, self.step - 1)

    def _restore_loss_weights(self, saved: dict[str, Any]) -> None:
        """Puts back the loss weights a planner had reached (``{}`` when it was off)."""
        if not saved:
            return
        if self.tunables is None:
            raise VallayzUserError(
                f"the state of {self.run_dir} holds loss weights but its method has no tunable "
                "loss; resume it with the vallayz version that started it, or start a new run"
            )
        try:
            weights = self.tunables.loss_weights.replace(**saved)
        except (TypeError, ValueError) as err:
            raise VallayzUserError(
                f"the loss weights in the state of {self.run_dir} are invalid ({err}); start the "
                "run again with vallayz fit --out"
            ) from err
        self.tunables.set_loss_weights(weights)

    # ------------------------------------------------------------------ pieces
    def _rows(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train_rows))
        return self.train_rows[order[index * self.batch_size : (index + 1) * self.batch_size]]

    def _generator(
        self, step: int, stream: int, device: torch.device | None = None, shard: int = 0
    ) -> torch.Generator:
        return torch.Generator(device=device or self.device).manual_seed(
            _step_seed(self.config.seed, step, stream + SLICE_STREAMS * shard)
        )

    def _batch(self, step: int, shard: int, rows: np.ndarray) -> Batch:
        """The training batch of one slice of ``step``'s global batch, with its token dropout;
        seeds the dropout of the slice's forward pass."""
        torch.manual_seed(_step_seed(self.config.seed, step, 1 + SLICE_STREAMS * shard))
        batch = self.data.batch(rows, self.names)
        rates = (self.config.token_dropout, self.config.token_row_dropout)
        if any(rates) and batch.tokens:
            # The ids are still on the CPU here.
            generator = self._generator(step, 3, torch.device("cpu"), shard=shard)
            tokens = {
                m: drop_tokens(ids, rates[0], generator, row_rate=rates[1])
                for m, ids in batch.tokens.items()
            }
            batch = Batch.of(batch, tokens=tokens)
        return batch

    def validate(self) -> dict[str, float]:
        """Retrieval R@1 of every ordered pair on the validation pool, and ``val/R@1``: their
        mean weighted by each pair's number of queries.

        Weighting by queries keeps a pair that few rows share (speech on a handful of
        validation items) from moving the score that selects the best checkpoint and stops
        training early as much as a pair with thousands of queries.
        """
        encode = model_encoder(self.method, self.data, self.mode)
        # The model's modalities, which may be fewer than the data's.
        pairs = default_pairs(self.names)
        if self.fusion_stage:
            pairs = fused_pairs(self.names)
        if self.new_modalities:
            new = set(self.new_modalities)
            pairs = [(src, tgt) for src, tgt in pairs if new & {*src, tgt}]
        table = retrieval_table(
            self.data, self.val_pool, encode, pairs, pool=len(self.val_pool) + 1
        )
        out = {f"val/R@1/{r['source']}->{r['target']}": float(r["R@1"]) for r in table}  # type: ignore[arg-type]
        queries = np.array([float(r["queries"]) for r in table])  # type: ignore[arg-type]
        scores = np.array(list(out.values()))
        out["val/R@1"] = float(scores @ queries / queries.sum()) if queries.sum() > 0 else 0.0
        return out

    def critic(self) -> float:
        """The tunables' critic score of the loss on a fixed validation batch, deterministic."""
        if self.tunables is None:
            raise ValueError("the critic needs a method with tunables")
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            batch = self.data.batch(self.critic_rows, self.names)
            out = self.objective(batch, self._generator(0, 99))
        self.model.train(was_training)
        return self.tunables.critic_score(out)

    def _shared_critic(self) -> float:
        """Rank 0's critic score, on every process (the critic itself runs on rank 0 only)."""
        if not self.world.distributed:
            return self.critic()
        return float(broadcast(self.world, self.critic() if self.world.is_main else None))

    def save(self, directory: Path) -> None:
        self.method.save_pretrained(directory)

    def _log(self, step: int, values: dict[str, float]) -> None:
        if not self.world.is_main:
            return
        path = self.run_dir / METRICS
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "name", "value"])
            for name, value in values.items():
                writer.writerow([step, name, f"{value:.6g}"])
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def _diverged(
        self, step: int, terms: dict[str, float], batch: Batch, what: str
    ) -> DivergenceError:
        """The error of a step whose loss or gradient is not finite; no state is written, so
        the last checkpoint is the last good one."""
        shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        if terms is self.last_terms:
            shown = f"the loss terms of step {step - 1} were {shown}" if shown else "no loss yet"
        pointer = self.run_dir / LATEST
        kept = (
            f"the last good checkpoint, {pointer.read_text().strip()}, is kept"
            if pointer.is_file()
            else "no checkpoint was written yet"
        )
        if step == 0:
            largest = max(float(x.abs().nan_to_num(0.0).max()) for x in batch.pooled().values())
            hint = (
                "this is the first step, before any update, so the inputs overflow the loss: the "
                f"largest |value| of the batch is {largest:.3g}; rescale the embeddings (e.g. to "
                "unit norm) and run vallayz check"
            )
        else:
            hint = (
                f"lower the learning rate (lr is {self.config.lr:g}) or keep gradient clipping "
                "on (grad_clip), and start again with vallayz fit --out"
            )
        return DivergenceError(
            f"training diverged at step {step}: the {what} is not finite ({shown}); {hint}; {kept}",
            step,
            terms,
        )

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Trains until ``total_steps`` or early stopping; returns a summary."""
        self.writer = _tensorboard(self.run_dir) if self.world.is_main else None
        self.model.train()
        amp = self.config.amp and self.device.type == "cuda"
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.progress,
            desc="fit",
            unit="step",
        )
        stopped = False
        last_val: dict[str, float] = {}
        while self.step < self.total_steps and not stopped:
            step = self.step
            lr = self._schedule(step)
            terms = self._train_step(step, amp)
            self._log(step, {**{f"train/{k}": v for k, v in terms.items()}, "lr": lr})
            if self.planner:
                self.planner.observe(terms)
            last = step + 1 == self.total_steps
            if (step + 1) % self.config.eval_every == 0 or last:
                last_val, stopped = self._evaluate(step, last_val)
            self._plan(step, final=last or stopped)
            if (step + 1) % self.config.checkpoint_every == 0 or last or stopped:
                if self.world.is_main:
                    save_state(self.run_dir, step, self.model, self.optimizer, self.scalars())
                barrier(self.world)
            self.step += 1
            bar.update(1)
            bar.set_postfix(
                loss=f"{terms['total']:.3f}", val_r1=f"{last_val.get('val/R@1', float('nan')):.3f}"
            )
        bar.close()
        return self._finish(stopped, last_val)

    def _schedule(self, step: int) -> float:
        """Sets the learning rate of every parameter group and the sigma scale of ``step``;
        returns the scheduled learning rate."""
        lr = learning_rate(step, self.total_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        if self.tunables is not None:
            self.tunables.set_sigma_scale(sigma_scale(step, self.total_steps, self.config))
        return lr

    def _train_step(self, step: int, amp: bool) -> dict[str, float]:
        """One optimizer step on ``step``'s global batch; returns its loss terms, averaged over
        every slice.

        Raises:
            DivergenceError: if a loss, the model's output or the gradient is not finite.
        """
        rows = self._rows(step)
        self.optimizer.zero_grad(set_to_none=True)
        slices = self._backward_slices(step, rows, amp)
        failure, terms = combine_terms(self.world, slices.failure, slices.terms)
        batch = slices.batch
        if failure == 2:
            raise self._diverged(step, self.last_terms, batch, "model's output") from slices.cause
        if failure == 1:
            raise self._diverged(step, terms, batch, "loss")
        self.last_terms = terms
        average_gradients(self.world, self.parameters)
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            if not math.isfinite(float(norm)):
                raise self._diverged(step, terms, batch, "gradient")
        self.optimizer.step()
        return terms

    def _backward_slices(self, step: int, rows: np.ndarray, amp: bool) -> _Slices:
        """The loss of each of this process's slices of the global batch ``rows``, its gradient
        (scaled by the process's share of the slices) added to the parameters' when finite."""
        width = len(rows) // self.shards
        shard_terms: list[dict[str, float]] = []
        # 0: every slice's loss finite; 1: a loss not finite; 2: the model's output not
        # finite. Every process learns the worst, so all stop together.
        failure = 0
        cause: ValueError | None = None
        for shard in self.own_shards:
            batch = self._batch(step, shard, rows[shard * width : (shard + 1) * width])
            try:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                    out = self.objective(batch, self._generator(step, 2, shard=shard))
            except ValueError as err:
                # The data folder was checked for NaN/Inf when loaded, so non-finite
                # values met inside the loss (the cycle pass re-reads the model's own
                # outputs) are the model's: it diverged.
                if "NaN or Inf" not in str(err):
                    raise
                failure, cause = 2, err
                continue
            terms = {name: float(value.detach()) for name, value in out.terms.items()}
            terms["total"] = float(out.total.detach())
            shard_terms.append(terms)
            if not math.isfinite(terms["total"]):
                failure = max(failure, 1)
                continue
            share = len(self.own_shards)
            total = out.total if share == 1 else out.total / share
            total.backward()  # type: ignore[no-untyped-call]
        return _Slices(failure, cause, shard_terms, batch)

    def _evaluate(self, step: int, last_val: dict[str, float]) -> tuple[dict[str, float], bool]:
        """Validates after ``step`` on rank 0, saves a new best model and counts the
        validations without one; returns the validation metrics (``last_val`` on the other
        processes until broadcast) and whether training stops early, the same everywhere."""
        stopped = False
        if self.world.is_main:
            last_val = self.validate()
            self._log(step, last_val)
            if last_val["val/R@1"] > self.best:
                self.best, self.bad_evals = last_val["val/R@1"], 0
                self.save(self.run_dir / BEST)
            else:
                self.bad_evals += 1
                stopped = self.config.patience > 0 and self.bad_evals >= self.config.patience
        if self.world.distributed:
            last_val, self.best, self.bad_evals, stopped = broadcast(
                self.world, [last_val, self.best, self.bad_evals, stopped]
            )
        return last_val, stopped

    def _plan(self, step: int, final: bool) -> None:
        """The planner's decisions after ``step`` (an unjudged trial undone when ``final``),
        appended to the planner log by rank 0."""
        if not (self.planner and self.tunables):
            return
        decisions = self.planner.step(step, self.tunables, self._shared_critic)
        if final:
            # The final model must be a judged state: an unjudged trial is undone.
            decisions += self.planner.finish(step, self.tunables)
        if decisions and self.world.is_main:
            with (self.run_dir / PLANNER_LOG).open("a") as handle:
                for decision in decisions:
                    handle.write(json.dumps(decision) + "\n")

    def _finish(self, stopped: bool, last_val: dict[str, float]) -> dict[str, Any]:
        """Closes the logs and writes the final model and the summary (rank 0); returns it."""
        if self.writer is not None:
            self.writer.close()
        summary = {
            "steps": self.step,
            "best_val_R@1": self.best,
            "early_stopped": stopped,
            **last_val,
        }
        if self.world.is_main:
            self.save(self.run_dir)
            write_summary(self.run_dir, summary)
        barrier(self.world)
        return summary


@dataclasses.dataclass
class _Slices:
    """What the forward and backward passes of one process's slices of a global batch gave."""

    # 0: every slice's loss finite; 1: a loss not finite; 2: the model's output not finite.
    failure: int
    # The error that reported the model's non-finite output (failure 2).
    cause: ValueError | None
    # The loss terms (and "total") of each slice whose forward pass finished.
    terms: list[dict[str, float]]
    # The last slice's batch (for a divergence report).
    batch: Batch


def _finished_summary(run_dir: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished run.

    Raises:
        VallayzUserError: if it is unreadable.
    """
    path = run_dir / SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VallayzUserError(
            f"{path} is unreadable ({err}); the run finished, so evaluate it as it is or start "
            "a new one with vallayz fit --out"
        ) from err
    if not isinstance(summary, dict):
        raise VallayzUserError(f"{path} must hold a JSON object; the run's summary is damaged")
    return summary


def extension_rows(data: PairedEmbeddings, new: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """``[rows]`` whether a row of ``data`` pairs a modality of ``new`` with one of the other
    ``names`` (those an extended model already knew)."""
    rows = np.zeros(data.size, dtype=bool)
    known = np.zeros(data.size, dtype=bool)
    for name in names:
        if name in new:
            rows |= data.present[name]
        else:
            known |= data.present[name]
    return rows & known


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / TENSORBOARD))


def fit(
    data_dir: str | Path | None,
    run_dir: str | Path,
    model_overrides: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    method: str = "impn",
    world: World | None = None,
) -> dict[str, Any]:
    """Trains a model (or resumes a run) and returns the run summary.

    Args:
        data_dir: The data directory (optional when resuming: the run remembers it).
        run_dir: The run directory.
        model_overrides: Model config fields other than the modalities (taken from the data).
        train_config: Training settings (ignored when resuming: the run's own are used).
        resume: Continue the run in ``run_dir`` from its last complete state.
        progress: Show a progress bar.
        method: ``"impn"`` or a learned baseline (``vallayz_train.names.LEARNED_METHODS``);
            every method runs under the same training config, so equal ``max_steps`` means an
            equal budget.
        world: This process's place among the processes ``torchrun`` started (see
            :func:`vallayz_train.distributed.world_from_env`); its process group is started
            here, once the device is known. ``None`` trains in one process. A run may be
            resumed by any number of processes: its state holds nothing per process.
    """
    run_dir = Path(run_dir)
    world = world or World()
    # Read-only checks first, so that a mistaken path gets no folder or lock file.
    if resume:
        read_run(run_dir)
    elif world.is_main:
        check_out_dir(run_dir)
    # One writer per run folder: rank 0 writes it, so rank 0 holds the lock.
    with lock_run(run_dir) if world.is_main else contextlib.nullcontext():
        return _fit(
            data_dir,
            run_dir,
            model_overrides,
            train_config,
            resume=resume,
            progress=progress,
            method=method,
            world=world,
        )


def _fit(
    data_dir: str | Path | None,
    run_dir: Path,
    model_overrides: dict[str, Any] | None,
    train_config: TrainConfig | None,
    resume: bool,
    progress: bool,
    method: str,
    world: World,
) -> dict[str, Any]:
    """:func:`fit`, with the run folder's lock held."""
    if resume:
        return _resume(data_dir, run_dir, progress, world)
    if data_dir is None:
        raise VallayzUserError("name the data directory to train on (or pass --resume RUN_DIR)")
    config = train_config or TrainConfig()
    if world.distributed:
        start(world, config.device)
    if world.is_main:
        claim_run_dir(run_dir)
    if method not in LEARNED_METHODS:
        raise VallayzUserError(f"method must be one of {LEARNED_METHODS}, got {method!r}")
    data = PairedEmbeddings(data_dir)
    torch.manual_seed(config.seed)
    try:
        model = build_model(method, data_modalities(data, model_overrides), model_overrides)
    except (ValueError, TypeError) as err:
        if isinstance(err, VallayzUserError):
            raise
        raise VallayzUserError(f"the model config is invalid: {err}") from err
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run(run_dir, data_dir, method, model_overrides, config)
    barrier(world)
    return Trainer(data, run_dir, model, config, progress, world).fit()


def _resume(
    data_dir: str | Path | None, run_dir: Path, progress: bool, world: World
) -> dict[str, Any]:
    """Continues the unfinished run in ``run_dir`` from its last complete state, with the
    run's own settings (a finished run's summary is returned as it is)."""
    run = read_run(run_dir)
    if is_finished(run_dir):
        # Training again would replace the final model (and, after an early stop, go on
        # past the stop): a finished run is left as it is.
        if world.is_main:
            notice(
                f"{run_dir} has finished ({SUMMARY} is written), so there is nothing to "
                "resume and nothing was changed; start a new run with vallayz fit --out to "
                "train longer"
            )
        return _finished_summary(run_dir)
    config = TrainConfig.from_dict(run["train"])
    if world.distributed:
        start(world, config.device)
    if not states(run_dir):
        return _restart(data_dir, run_dir, run, config, progress, world)
    data = PairedEmbeddings(data_dir or run["data"])
    notices: list[str] = []
    model, optimizer_state, scalars = load_state(run_dir, config.device, notices)
    for line in notices if world.is_main else []:
        notice(line)
    if not isinstance(model, TrainableMethod):
        raise VallayzUserError(
            f"the model of {run_dir} is not a trainable method; resume it with the vallayz "
            "version that started it"
        )
    new = run["extend"]["new_modalities"] if "extend" in run else ()
    trainer = Trainer(data, run_dir, model, config, progress, world, new, "fusion_stage" in run)
    trainer.restore(optimizer_state, scalars)
    return trainer.fit()


def _restart(
    data_dir: str | Path | None,
    run_dir: Path,
    run: dict[str, Any],
    config: TrainConfig,
    progress: bool,
    world: World,
) -> dict[str, Any]:
    """Starts again, with the settings its ``run.json`` records, a run that stopped before
    its first checkpoint.

    Raises:
        VallayzUserError: if its ``run.json`` does not record the model config.
    """
    if "model" not in run:
        raise VallayzUserError(
            f"{run_dir} stopped before its first checkpoint and its {RUN_FILE} does not "
            f"record the model config; start it again with vallayz fit DATA --out {run_dir}"
        )
    if world.is_main:
        notice(
            f"{run_dir} stopped before its first checkpoint, so --resume starts it "
            f"fresh with the settings in its {RUN_FILE}"
        )
        clear_run(run_dir)
    barrier(world)
    if "fusion_stage" in run:
        parts = {k: run["fusion_stage"][k] for k in ("layers", "gate")}
        return fit_fusion_stage(
            data_dir or run["data"],
            run["fusion_stage"]["base"],
            run_dir,
            config,
            progress=progress,
            world=world,
            **parts,
        )
    if "extend" in run:
        return fit_extension(
            data_dir or run["data"],
            run["extend"]["base"],
            run_dir,
            config,
            run["extend"]["new_modalities"],
            run["model"],
            progress,
            world,
        )
    return fit(
        data_dir or run["data"],
        run_dir,
        run["model"],
        config,
        progress=progress,
        method=run.get("method", "impn"),
        world=world,
    )


# Model config fields a run that extends another may set: how the new modalities are read.
EXTENSION_FIELDS = ("token_buckets", "token_nodes", "node_readers", "pooling_readers")


def fit_extension(
    data_dir: str | Path,
    base_dir: str | Path,
    run_dir: str | Path,
    train_config: TrainConfig | None = None,
    add: Sequence[str] | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    world: World | None = None,
) -> dict[str, Any]:
    """Adds modalities to the model of a finished run and trains only what they need.

    The base run's model is extended (``extend`` of IMPN or a learned baseline) with the
    modalities of ``data_dir`` it does not know (or those ``add`` names): every one of its
    parameters is frozen, so its modalities embed as before, bit for bit. Training reads only
    the rows that pair a new modality with a known one and validates the pairs that involve a
    new modality; the planner is off (it would change the frozen gating). The new run folder
    holds the whole extended model, and its ``run.json`` records under ``extend`` the base
    run, its modalities, the new ones and the trained and frozen parameter counts.

    Args:
        data_dir: Data folder holding the new modalities and at least one the run knows.
        base_dir: The finished run to extend.
        run_dir: The new run folder.
        train_config: Training settings (``planner`` is turned off).
        add: The modalities of ``data_dir`` to add; ``None`` adds every one the run lacks.
        model_overrides: ``token_buckets`` and ``token_nodes`` of the new modalities.
        progress: Show a progress bar.
        world: This process's place among the processes ``torchrun`` started.

    Raises:
        VallayzUserError: if the base run is unfinished, a modality to add already exists in
            it or is not in the data, a known modality's dimension differs from the run's, or
            no row pairs a new modality with a known one; nothing is written then.
    """
    base_dir, run_dir = Path(base_dir), Path(run_dir)
    world = world or World()
    base_run, base = finished_base(base_dir, "--extend")
    data = PairedEmbeddings(data_dir)
    new = _modalities_to_add(data, data_dir, base, base_dir, add)
    split_seed = (train_config or TrainConfig()).split_seed
    _check_extension_rows(data, data_dir, base, base_dir, new, split_seed)
    overrides = _extension_overrides(model_overrides)
    config = dataclasses.replace(train_config or TrainConfig(), planner=False)
    if world.distributed:
        start(world, config.device)
    torch.manual_seed(config.seed)
    model = _extended_model(base, base_dir, {m: data.modalities[m] for m in new}, overrides)
    trainer = Trainer(data, run_dir, model, config, progress, world, new)
    record = _extension_record(base, base_dir, model, new)
    method = str(base_run.get("method", "impn"))
    return _claim_and_fit(
        run_dir,
        world,
        trainer,
        lambda: write_run(run_dir, data_dir, method, overrides or None, config, extend=record),
    )


def _claim_and_fit(
    run_dir: Path, world: World, trainer: Trainer, write: Callable[[], None]
) -> dict[str, Any]:
    """Claims the new run folder ``run_dir`` and writes its ``run.json`` with ``write`` (rank
    0, under the folder's lock), then trains; returns the run's summary."""
    if world.is_main:
        check_out_dir(run_dir)
    # One writer per run folder, as in fit: rank 0 writes it, so rank 0 holds the lock.
    with lock_run(run_dir) if world.is_main else contextlib.nullcontext():
        if world.is_main:
            claim_run_dir(run_dir)
            write()
        barrier(world)
        return trainer.fit()


def fit_fusion_stage(
    data_dir: str | Path,
    base_dir: str | Path,
    run_dir: str | Path,
    train_config: TrainConfig | None = None,
    *,
    layers: bool = True,
    gate: bool = True,
    progress: bool = True,
    world: World | None = None,
) -> dict[str, Any]:
    """Trains a fused path for the model of a finished IMPN run, everything else frozen.

    Training reads the rows that hold three or more modalities (a fused subset and a target
    outside it), under the combinatorial term alone: its weight is the training config's when
    positive, else 1, and every other term's is 0 (they would train nothing frozen). The
    planner is off. Validation (and early stopping) reads the fused multi-source pairs. The
    new run folder holds the whole model, and its ``run.json`` records under ``fusion_stage``
    the base run, the parts trained and the trained and frozen parameter counts.

    Args:
        data_dir: Data folder with every modality of the run, at the run's dimensions.
        base_dir: The finished IMPN run.
        run_dir: The new run folder.
        train_config: Training settings (``planner`` turned off, the weights as above).
        layers, gate: The fused path's own bridge layers, its gate over the sources (as
            :meth:`vallayz.IMPN.fusion_stage`).
        progress: Show a progress bar.
        world: This process's place among the processes ``torchrun`` started.

    Returns:
        The run's summary (as :func:`~vallayz_train.trainer.fit`).

    Raises:
        VallayzUserError: if the base run is unfinished or not IMPN, the data lacks one of its
            modalities or holds one at another dimension, or the train or the val split has
            fewer than 2 rows with three modalities; nothing is written then.
    """
    base_dir, run_dir, world = Path(base_dir), Path(run_dir), world or World()
    base = fusable_base(base_dir)
    data = PairedEmbeddings(data_dir)
    config = stage_config(train_config or TrainConfig())
    check_fusion_rows(data, data_dir, base, base_dir, config.split_seed)
    if world.distributed:
        start(world, config.device)
    torch.manual_seed(config.seed)
    try:
        model = base.fusion_stage(layers=layers, gate=gate)
    except ValueError as err:
        raise VallayzUserError(f"--fuse {base_dir}: {err}") from err
    trainer = Trainer(data, run_dir, model, config, progress, world, fusion_stage=True)
    record = stage_record(base_dir, model, layers, gate)
    return _claim_and_fit(
        run_dir,
        world,
        trainer,
        lambda: write_run(run_dir, data_dir, "impn", None, config, fusion_stage=record),
    )


def _modalities_to_add(
    data: PairedEmbeddings,
    data_dir: str | Path,
    base: Any,
    base_dir: Path,
    add: Sequence[str] | None,
) -> list[str]:
    """The modalities an extension adds: those ``add`` names, or every one of ``data`` that
    the base model lacks.

    Raises:
        VallayzUserError: if one already exists in the base model or is not in the data,
            there is none, or a modality both have differs in dimension.
    """
    known = list(base.names)
    new = list(add) if add else [m for m in data.modalities if m not in known]
    for name in new:
        if name in known:
            raise VallayzUserError(
                f"modality {name!r} already exists in the run {base_dir} (it knows {known}); "
                "add a modality it does not know, or train a new run to change an old one"
            )
        if name not in data.modalities:
            raise VallayzUserError(
                f"modality {name!r} is not in {data_dir} (it has {sorted(data.modalities)}); "
                "name one of the data's modalities to add"
            )
    if not new:
        raise VallayzUserError(
            f"every modality of {data_dir} ({sorted(data.modalities)}) already exists in the run "
            f"{base_dir}; give a data folder that holds the modality to add"
        )
    for name in (m for m in known if m in data.modalities):
        if data.modalities[name] != base.config.modalities[name]:
            raise VallayzUserError(
                f"modality {name!r} has dimension {data.modalities[name]} in {data_dir} but "
                f"{base.config.modalities[name]} in the run {base_dir}; encode it with the "
                "run's encoder, or rename it to add it as a new modality"
            )
    return new


def _check_extension_rows(
    data: PairedEmbeddings,
    data_dir: str | Path,
    base: Any,
    base_dir: Path,
    new: list[str],
    split_seed: int,
) -> None:
    """Checks that the train and the val split (of ``split_seed``) each hold at least 2 rows
    that pair a new modality with one the base model knows.

    Raises:
        VallayzUserError: if no row, or fewer than 2 of a split, pair them.
    """
    known = list(base.names)
    shared = [m for m in known if m in data.modalities]
    pairing = extension_rows(data, new, shared + new)
    if not pairing.any():
        raise VallayzUserError(
            f"no row of {data_dir} pairs {new} with a modality the run {base_dir} knows "
            f"({known}); the new modality is learned from such rows, so add them"
        )
    splits = data.split_indices(split_seed)
    for split in ("train", "val"):
        count = int(pairing[splits[split]].sum())
        if count < 2:
            raise VallayzUserError(
                f"{data_dir}: {count} row(s) of the {split} split pair {new} with a modality "
                "the run knows; training needs at least 2 in the train and the val split, so "
                "add such rows"
            )


def _extension_overrides(model_overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The model config of an extension, which may set only :data:`EXTENSION_FIELDS`.

    Raises:
        VallayzUserError: if it sets any other field.
    """
    overrides = dict(model_overrides or {})
    unknown = sorted(set(overrides) - set(EXTENSION_FIELDS))
    if unknown:
        raise VallayzUserError(
            f"the model config sets {unknown}, but a run that extends another keeps its model; "
            f"it may set only {list(EXTENSION_FIELDS)} of the new modalities"
        )
    return overrides


def _extended_model(
    base: Any, base_dir: Path, dims: dict[str, int], overrides: dict[str, Any]
) -> Any:
    """``base`` extended with the modalities of ``dims`` (every old parameter frozen).

    Raises:
        VallayzUserError: if the model takes none of ``overrides`` for a new modality.
    """
    try:
        return base.extend(dims, **overrides)
    except TypeError as err:
        raise VallayzUserError(
            f"the model of {base_dir} takes none of {sorted(overrides)} for a new modality "
            f"({err}); leave them out of the model config"
        ) from err


def _extension_record(
    base: Any, base_dir: Path, model: nn.Module, new: list[str]
) -> dict[str, Any]:
    """What ``run.json`` records under ``extend``: the base run, its modalities, the new
    ones and the trained and frozen parameter counts."""
    return {
        "base": str(base_dir.resolve()),
        "base_modalities": list(base.names),
        "new_modalities": new,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen_parameters": sum(p.numel() for p in base.parameters()),
    }
