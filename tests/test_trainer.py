import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import Trainer, learning_rate


def test_the_validation_score_weighs_each_pair_by_its_queries(tmp_path: Path) -> None:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=120, groups=24))
    # Audio is present on few rows, so its pairs have far fewer queries than text <-> image.
    audio = data.present["audio"]  # the loaded mask, edited in memory only
    audio[np.flatnonzero(audio)[10:]] = False
    config = TrainConfig(max_steps=1, batch_size=16, warmup_steps=0, planner=False)
    trainer = Trainer(data, tmp_path / "run", IMPN(tiny_config()), config, progress=False)

    scores = trainer.validate()

    numerator = denominator = 0.0
    for name, value in scores.items():
        if name == "val/R@1":
            continue
        sources, target = name.removeprefix("val/R@1/").split("->")
        present = data.present[target][trainer.val_pool].copy()
        for source in sources.split("+"):
            present &= data.present[source][trainer.val_pool]
        numerator += value * present.sum()
        denominator += present.sum()
    per_pair = [v for k, v in scores.items() if k != "val/R@1"]
    assert len(per_pair) >= 6
    assert scores["val/R@1"] == pytest.approx(numerator / denominator)
    # The weighting matters here: the plain mean of the pairs differs.
    assert scores["val/R@1"] != pytest.approx(float(np.mean(per_pair)))


def test_the_hashed_feature_tables_get_their_own_learning_rate() -> None:
    from vallayz.learned import BaselineConfig, ContrastiveHeads
    from vallayz_train.trainer import parameter_groups

    impn = IMPN(tiny_config(token_buckets={"text": 32}))
    heads = ContrastiveHeads(
        BaselineConfig("contrastive-heads", {"text": 12, "image": 16}, token_buckets={"text": 32})
    )
    for model in (impn, heads):
        config = TrainConfig(lr=1e-3, front_end_lr=5e-3)
        groups = parameter_groups(model, config)
        tables = {id(p) for p in model.front_ends.parameters()}
        assert [{id(p) for p in g["params"]} == tables for g in groups] == [False, True]
        assert [g["lr_scale"] for g in groups] == [1.0, pytest.approx(5.0)]
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert sum(len(g["params"]) for g in groups) == len(trainable)
    # Without tables there is one group; without front_end_lr the tables follow lr.
    assert len(parameter_groups(IMPN(tiny_config()), config)) == 1
    assert parameter_groups(impn, TrainConfig())[1]["lr_scale"] == 1.0
    with pytest.raises(ValueError, match="front_end_lr must be positive"):
        TrainConfig(front_end_lr=0.0)


def _trainer(tmp_path: Path, name: str, **settings: object) -> Trainer:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=80, groups=16))
    fields: dict[str, object] = {"batch_size": 16, "planner": False, "eval_every": 1000}
    fields.update(settings)
    config = TrainConfig(**fields)  # type: ignore[arg-type]
    (tmp_path / name).mkdir()
    torch.manual_seed(0)
    return Trainer(data, tmp_path / name, IMPN(tiny_config()), config, progress=False)


def _record_steps(trainer: Trainer) -> list[dict[str, object]]:
    """Records, at every optimizer step, the learning rate of each group and the gradients."""
    seen: list[dict[str, object]] = []
    step = trainer.optimizer.step

    def recording_step(*args: object, **kwargs: object) -> object:
        seen.append(
            {
                "lr": [group["lr"] for group in trainer.optimizer.param_groups],
                "grads": [
                    p.grad.detach().clone()
                    for p in trainer.model.parameters()
                    if p.grad is not None
                ],
            }
        )
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    return seen


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero() -> None:
    config = TrainConfig(lr=2.0, warmup_steps=4)
    # Warm-up: lr (step + 1) / 4; then 0.5 lr (1 + cos(pi (step - 4) / (12 - 4))).
    expected = {0: 0.5, 1: 1.0, 3: 2.0, 4: 2.0, 6: 1.0 + math.sqrt(0.5), 8: 1.0, 10: 1 - 0.5**0.5}
    expected |= {12: 0.0, 20: 0.0}
    for step, lr in expected.items():
        assert learning_rate(step, 12, config) == pytest.approx(lr, abs=1e-12), step
    assert learning_rate(0, 12, TrainConfig(lr=2.0, warmup_steps=0)) == 2.0


def test_the_trainer_applies_the_schedule_at_every_step(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "run", max_steps=10, warmup_steps=3, lr=1e-3, front_end_lr=None)
    seen = _record_steps(trainer)
    trainer.fit()
    assert len(seen) == 10
    for step, record in enumerate(seen):
        if step < 3:
            lr = 1e-3 * (step + 1) / 3
        else:
            lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 3) / 7))
        assert record["lr"] == [pytest.approx(lr, rel=1e-12)], step


def test_early_stopping_after_patience_evaluations_without_improvement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(tmp_path, "run", max_steps=20, eval_every=2, patience=2, warmup_steps=0)
    # Evaluations at steps 1, 3, 5, 7, ...: better, better, worse, equal (not better): stop.
    scores = iter([0.1, 0.3, 0.2, 0.3, 0.9, 0.9])
    monkeypatch.setattr(trainer, "validate", lambda: {"val/R@1": next(scores)})
    saved: list[tuple[str, int]] = []
    monkeypatch.setattr(trainer, "save", lambda d: saved.append((d.name, trainer.step)))
    summary = trainer.fit()
    assert summary["early_stopped"] is True
    assert summary["steps"] == 8
    assert summary["best_val_R@1"] == 0.3
    # "best" is written at each improvement, the final model at the end.
    assert saved == [("best", 1), ("best", 3), ("run", 8)]


def test_patience_zero_never_stops_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer(tmp_path, "run", max_steps=6, eval_every=1, patience=0, warmup_steps=0)
    monkeypatch.setattr(trainer, "validate", lambda: {"val/R@1": 0.0})
    summary = trainer.fit()
    assert summary["steps"] == 6 and summary["early_stopped"] is False


def test_gradients_are_clipped_to_the_global_norm(tmp_path: Path) -> None:
    # The same first step with and without clipping: clipping scales every gradient by
    # clip / ||g|| (the norm over all parameters together) when ||g|| exceeds clip.
    free = _trainer(tmp_path, "free", max_steps=1, grad_clip=0.0, warmup_steps=0)
    raw = _record_steps(free)
    free.fit()
    grads = raw[0]["grads"]
    assert isinstance(grads, list)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    clip = norm / 10
    for name, limit, scale in [("clipped", clip, 0.1), ("loose", 10 * norm, 1.0)]:
        trainer = _trainer(tmp_path, name, max_steps=1, grad_clip=limit, warmup_steps=0)
        seen = _record_steps(trainer)
        trainer.fit()
        got = seen[0]["grads"]
        assert isinstance(got, list) and len(got) == len(grads)
        for g, original in zip(got, grads, strict=True):
            torch.testing.assert_close(g, original * scale, rtol=1e-4, atol=1e-8)
        # The global norm after clipping, in float64: the limit, or the original norm.
        after = math.sqrt(sum(float(g.double().pow(2).sum()) for g in got))
        assert after == pytest.approx(min(limit, norm), rel=1e-5)
