"""The planner's proposals (top-k, temperature, sigma, loss weights) and its reverts, judged by
the trainer's real critic on a real validation batch.

Between decisions no training happens, so every control interval gains exactly 0 (the critic
is deterministic) and a trial is kept exactly when its change alone raises the critic. The
expected decision is worked out here from the public model API (``set_gating``, ``set_sigma``)
and the critic, not from the planner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz_train.config import TrainConfig
from vallayz_train.planner import MAX_TOP_K, MIN_TEMPERATURE, Planner
from vallayz_train.trainer import Trainer

WEIGHTS = {
    "contrastive": 1.0,
    "translation": 1.0,
    "cycle": 0.5,
    "knn": 0.1,
    "orthogonality": 0.01,
    "denoising": 0.1,
}


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=120, groups=24))
    config = TrainConfig(
        max_steps=1, batch_size=16, warmup_steps=0, planner=True, loss_weights=dict(WEIGHTS)
    )
    model = IMPN(tiny_config(temperature=1.0, top_k=2, sigma=0.1))
    return Trainer(data, tmp_path / "run", model, config, progress=False)


def _terms(contrastive: float, translation: float, cycle: float) -> dict[str, float]:
    return {"contrastive": contrastive, "translation": translation, "cycle": cycle, "total": 9.0}


def _score_with(trainer: Trainer, parameter: str, value: Any) -> float:
    """The critic with one change made through the model's and the loss's own API, then
    undone the same way."""
    model, tunables = trainer.model, trainer.tunables
    assert tunables is not None
    assert isinstance(model, IMPN)
    if parameter == "temperature":
        old: Any = model.config.temperature
        model.set_gating(temperature=value)
    elif parameter == "top_k":
        old = model.config.top_k
        model.set_gating(top_k=value)
    elif parameter == "sigma":
        old = model.sigma
        model.set_sigma(value)
    else:
        name = parameter.removeprefix("weight:")
        old = getattr(tunables.loss_weights, name)
        tunables.set_loss_weights(tunables.loss_weights.replace(**{name: value}))
    score = trainer.critic()
    if parameter == "temperature":
        model.set_gating(temperature=old)
    elif parameter == "top_k":
        model.set_gating(top_k=old)
    elif parameter == "sigma":
        model.set_sigma(old)
    else:
        name = parameter.removeprefix("weight:")
        tunables.set_loss_weights(tunables.loss_weights.replace(**{name: old}))
    return score


def _state(trainer: Trainer) -> tuple[float, int, dict[str, float], dict[str, float]]:
    model, tunables = trainer.model, trainer.tunables
    assert isinstance(model, IMPN) and tunables is not None
    return (
        model.config.temperature,
        model.config.top_k,
        model.sigma,
        tunables.loss_weights.as_dict(),
    )


def test_each_proposal_is_judged_by_the_real_critic_and_reverts_restore_it(
    trainer: Trainer,
) -> None:
    model, loss = trainer.model, trainer.tunables
    assert loss is not None
    assert isinstance(model, IMPN)
    planner = Planner(1)  # a decision at every step: each step below is one interval
    start = _state(trainer)
    base = trainer.critic()
    assert trainer.critic() == base  # deterministic, so control intervals gain exactly 0

    def decide(step: int, terms: dict[str, float]) -> list[dict[str, Any]]:
        planner.observe(terms)
        return planner.step(step, loss, trainer.critic)

    # The first window is the reference of the weight rule: contrastive 2, translation 1,
    # cycle 1.
    assert [d["action"] for d in decide(0, _terms(2.0, 1.0, 1.0))] == ["control"]

    # Gating, cycle dominating: 1.0 * 0.2 (contrastive) < 0.5 * 1.0 (cycle) -> top_k 2 -> 3.
    (proposal,) = decide(1, _terms(0.2, 1.0, 1.0))
    assert (proposal["action"], proposal["parameter"]) == ("propose", "top_k")
    assert (proposal["old"], proposal["new"]) == (2, 3)
    assert model.config.top_k == 3
    assert proposal["score_before"] == base
    model.set_gating(top_k=2)
    expected_gain = _score_with(trainer, "top_k", 3) - base
    model.set_gating(top_k=3)
    judged, control = decide(2, _terms(1.0, 1.0, 1.0))
    assert judged["gain"] == expected_gain and judged["control_gain"] == 0.0
    assert judged["action"] == ("keep" if expected_gain > 0 else "revert")
    assert model.config.top_k == (3 if expected_gain > 0 else 2)
    assert all(layer.cross.top_k == model.config.top_k for layer in model.layers)
    # The control interval starts from the critic of the configuration now in place.
    assert control["action"] == "control"
    assert control["score_before"] == trainer.critic()
    if judged["action"] == "revert":
        assert control["score_before"] == base
    model.set_gating(top_k=2)  # the same starting point whichever way it went
    base = trainer.critic()

    # Noise: every modality's sigma x 0.7. The critic evaluates without noise (sigma = 0), so
    # the trial gains exactly what the control did (0) and the change is reverted.
    (proposal,) = decide(3, _terms(1.0, 1.0, 1.0))
    assert (proposal["parameter"], proposal["old"]) == ("sigma", start[2])
    assert proposal["new"] == {m: v * 0.7 for m, v in start[2].items()}
    assert model.sigma == pytest.approx({m: 0.07 for m in start[2]})
    assert _score_with(trainer, "sigma", start[2]) == base
    judged, control = decide(4, _terms(1.0, 1.0, 1.0))
    assert (judged["action"], judged["gain"]) == ("revert", 0.0)
    assert model.sigma == start[2]
    assert control["score_before"] == base

    # Weights: progress since the first window is contrastive 1.6 / 2 = 0.8, translation
    # 0.9 / 1 = 0.9, cycle 0.3 / 1 = 0.3; translation fell least, its weight 1.0 -> 1.5. The
    # critic does not read the weights, so this trial gains 0 too and is reverted.
    (proposal,) = decide(5, _terms(1.6, 0.9, 0.3))
    assert (proposal["parameter"], proposal["old"], proposal["new"]) == (
        "weight:translation",
        1.0,
        1.5,
    )
    assert loss.loss_weights.translation == 1.5
    assert _score_with(trainer, "weight:translation", 1.0) == base
    judged, control = decide(6, _terms(1.0, 1.0, 1.0))
    assert (judged["action"], judged["gain"]) == ("revert", 0.0)
    assert loss.loss_weights.as_dict() == start[3]
    assert control["score_before"] == base

    # Gating again, contrastive dominating: 1.0 * 2.0 >= 0.5 * 1.0 -> temperature x 0.8.
    (proposal,) = decide(7, _terms(2.0, 1.0, 1.0))
    assert (proposal["parameter"], proposal["old"], proposal["new"]) == ("temperature", 1.0, 0.8)
    assert model.config.temperature == 0.8
    assert all(layer.cross.temperature == 0.8 for layer in model.layers)
    expected_gain = _score_with(trainer, "temperature", 0.8) - base
    judged, _ = decide(8, _terms(1.0, 1.0, 1.0))
    assert judged["gain"] == expected_gain
    assert judged["action"] == ("keep" if expected_gain > 0 else "revert")
    assert model.config.temperature == (0.8 if expected_gain > 0 else 1.0)
    assert all(layer.cross.temperature == model.config.temperature for layer in model.layers)


def test_a_change_is_kept_when_it_beats_a_control_interval_that_lost_ground(
    trainer: Trainer,
) -> None:
    # A control interval whose critic fell (here: the model was made worse during it) sets
    # the bar below 0; a change that does nothing to the critic (a loss weight) then beats it.
    model, loss = trainer.model, trainer.tunables
    assert loss is not None
    assert isinstance(model, IMPN)
    planner = Planner(1)
    planner.turn = 2  # the next proposal is a loss weight
    planner.observe(_terms(1.0, 1.0, 1.0))
    planner.step(0, loss, trainer.critic)
    before = trainer.critic()
    with torch.no_grad():
        for parameter in model.adapters.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    worse = trainer.critic()
    assert worse < before
    planner.observe(_terms(1.0, 1.0, 1.0))
    (proposal,) = planner.step(1, loss, trainer.critic)
    assert proposal["parameter"].startswith("weight:")
    planner.observe(_terms(1.0, 1.0, 1.0))
    judged, _ = planner.step(2, loss, trainer.critic)
    assert (judged["gain"], judged["control_gain"]) == (0.0, worse - before)
    assert judged["action"] == "keep"


@pytest.mark.parametrize(
    ("top_k", "temperature", "terms", "expected"),
    [
        # Contrastive dominates and the temperature may fall: x 0.8, floored at 0.05.
        (2, 1.0, (1.0, 1.0, 1.0), ("temperature", 1.0, 0.8)),
        (2, 0.06, (1.0, 1.0, 1.0), ("temperature", 0.06, MIN_TEMPERATURE)),
        # At the floor the gating proposal raises top-k instead, capped at 64.
        (2, MIN_TEMPERATURE, (1.0, 1.0, 1.0), ("top_k", 2, 3)),
        (MAX_TOP_K, 1.0, (0.1, 1.0, 1.0), ("top_k", MAX_TOP_K, MAX_TOP_K)),
        # Equal weighted terms count as contrastive dominating: 1.0 * 0.5 >= 0.5 * 1.0.
        (2, 1.0, (0.5, 1.0, 1.0), ("temperature", 1.0, 0.8)),
        (2, 1.0, (0.49, 1.0, 1.0), ("top_k", 2, 3)),
    ],
)
def test_the_gating_proposal_by_hand(
    trainer: Trainer,
    top_k: int,
    temperature: float,
    terms: tuple[float, float, float],
    expected: tuple[str, float, float],
) -> None:
    model = trainer.model
    assert isinstance(model, IMPN)
    model.set_gating(top_k=top_k, temperature=temperature)
    planner = Planner(1)
    planner.observe(_terms(*terms))
    assert trainer.tunables is not None
    planner.step(0, trainer.tunables, trainer.critic)
    planner.observe(_terms(*terms))
    (proposal,) = planner.step(1, trainer.tunables, trainer.critic)
    assert (proposal["parameter"], proposal["old"], proposal["new"]) == pytest.approx(expected)


def test_a_weight_that_is_off_is_proposed_at_0_1(trainer: Trainer) -> None:
    tunables = trainer.tunables
    assert tunables is not None
    tunables.set_loss_weights(tunables.loss_weights.replace(cycle=0.0))
    planner = Planner(1)
    planner.turn = 2
    planner.observe(_terms(2.0, 2.0, 2.0))
    planner.step(0, tunables, trainer.critic)
    planner.observe(_terms(1.0, 1.0, 1.8))  # cycle fell least (0.9 of its first window)
    (proposal,) = planner.step(1, tunables, trainer.critic)
    assert (proposal["parameter"], proposal["old"], proposal["new"]) == ("weight:cycle", 0.0, 0.1)
    assert tunables.loss_weights.cycle == 0.1
