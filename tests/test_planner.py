import json
from typing import Any

from conftest import tiny_config

from vallayz import IMPN
from vallayz_train.planner import Planner

EVERY = 10


class Critic:
    """Training alone adds ``drift`` per interval; a temperature below 1 adds ``effect`` once
    per interval on top of that (the planner's first proposal lowers the temperature)."""

    def __init__(self, model: IMPN, drift: float, effect: float) -> None:
        self.model, self.drift, self.effect = model, drift, effect
        self.score = 0.0

    def __call__(self) -> float:
        return self.score

    def advance(self) -> None:
        self.score += self.drift
        if self.model.config.temperature < 1.0:
            self.score += self.effect


def scripted(
    model: IMPN, critic: Critic, intervals: int, resume_at: int | None = None
) -> list[dict[str, Any]]:
    """Drives a planner for ``intervals`` decisions; at step ``resume_at`` it is replaced by a
    new one loaded from its state, as a resumed run does."""
    planner, tunables = Planner(EVERY), model.objective().tunables
    decisions: list[dict[str, Any]] = []
    for step in range(intervals * EVERY):
        if step == resume_at:
            state = json.loads(json.dumps(planner.state_dict()))  # as checkpoints store it
            planner = Planner(EVERY)
            planner.load_state_dict(state)
        planner.observe({"contrastive": 1.0, "cycle": 0.5, "translation": 0.5})
        if (step + 1) % EVERY == 0 and step + 1 > EVERY:
            critic.advance()  # the interval's training, before the decision that closes it
        decisions += planner.step(step, tunables, critic)
    return decisions


def test_a_change_that_only_rides_on_training_progress_is_reverted() -> None:
    model = IMPN(tiny_config(temperature=1.0))
    decisions = scripted(model, Critic(model, drift=1.0, effect=0.0), intervals=3)

    actions = [(d["action"], d["parameter"]) for d in decisions]
    assert actions == [
        ("control", None),
        ("propose", "temperature"),
        ("revert", "temperature"),
        ("control", None),
    ]
    # The score rose over the trial (the old rule would have kept it), but no more than alone.
    judged = decisions[2]
    assert judged["score_after"] > judged["score_before"]
    assert judged["gain"] == judged["control_gain"] == 1.0
    assert model.config.temperature == 1.0


def test_a_change_that_beats_training_alone_is_kept() -> None:
    model = IMPN(tiny_config(temperature=1.0))
    decisions = scripted(model, Critic(model, drift=1.0, effect=0.5), intervals=3)

    judged = [d for d in decisions if d["action"] in ("keep", "revert")]
    assert [(d["action"], d["gain"], d["control_gain"]) for d in judged] == [("keep", 1.5, 1.0)]
    assert model.config.temperature == 0.8


def test_the_planner_resumes_mid_trial_to_the_same_decisions() -> None:
    def decide(resume_at: int | None) -> list[dict[str, Any]]:
        model = IMPN(tiny_config(temperature=1.0))
        return scripted(model, Critic(model, drift=1.0, effect=0.25), 6, resume_at)

    whole = decide(None)
    assert [d["action"] for d in whole].count("propose") == 3
    assert decide(2 * EVERY + 3) == whole


def test_a_run_ending_mid_trial_reverts_the_unjudged_change() -> None:
    model = IMPN(tiny_config(temperature=1.0))
    critic = Critic(model, drift=1.0, effect=0.5)
    planner, tunables = Planner(EVERY), model.objective().tunables
    for step in range(2 * EVERY):  # control, then a temperature trial starts
        planner.observe({"contrastive": 1.0, "cycle": 0.5, "translation": 0.5})
        planner.step(step, tunables, critic)
    assert model.config.temperature == 0.8 and planner.pending is not None
    ended = planner.finish(2 * EVERY + 3, tunables)
    assert [(d["action"], d["parameter"], d["new"]) for d in ended] == [
        ("revert", "temperature", 0.8)
    ]
    assert "before the trial was judged" in ended[0]["reason"]
    assert model.config.temperature == 1.0
    assert all(layer.cross.temperature == 1.0 for layer in model.layers)
    assert planner.pending is None and planner.finish(2 * EVERY + 4, tunables) == []


def test_fit_saves_a_judged_final_model(tmp_path: Any) -> None:
    """A run whose last step falls inside a trial logs the revert and saves the old value."""
    from synthetic import write_synthetic

    from vallayz_train.config import TrainConfig
    from vallayz_train.run_folder import PLANNER_LOG
    from vallayz_train.trainer import fit

    data = write_synthetic(tmp_path / "data", rows=120)
    config = TrainConfig(
        max_steps=25,
        batch_size=16,
        planner_every=10,
        eval_every=25,
        warmup_steps=2,
        val_pool=20,
    )
    fit(data, tmp_path / "run", {"soil_dim": 16, "heads": 2, "layers": 1}, config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / PLANNER_LOG).read_text().splitlines()]
    assert log[-1]["action"] == "revert" and log[-1]["step"] == 24
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    parameter, old = log[-1]["parameter"], log[-1]["old"]
    assert parameter == "temperature" or parameter == "top_k"
    assert saved[parameter] == old
