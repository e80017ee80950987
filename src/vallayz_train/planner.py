"""Planner–actor–critic: hyper-parameter changes kept only when they beat training alone.

The actor is the ordinary training loop. Every ``every`` steps the planner asks the critic for a
score of the current model on a fixed validation batch. Decisions alternate between two kinds of
interval of ``every`` steps:

1. a *control* interval, with no change in place: the critic's gain over it is what training
   alone gives at this point of the run;
2. a *trial* interval, with one proposed change in place: the change is kept when the critic
   gained more over it than over the control interval just before, otherwise it is reverted
   (the hyper-parameter, not the weights).

Comparing with the control interval matters because training raises the critic by itself: judged
on "the score rose" alone, nearly every change is kept, useful or not. Gains shrink as training
goes on, so the comparison leans towards reverting; a kept change has beaten that.

Proposals come from the window of recent training losses, in turn:

* gating: the contrastive term dominates the cycle term → lower the gate temperature (×0.8);
  otherwise → raise top-k by one;
* noise: scale every modality's sigma by 0.7;
* weights: raise by half the weight of the term that fell least since the first window.

The planner reads and changes a method only through its :class:`~vallayz.method.Tunables`.
Every decision is returned as a JSON-able dict for ``planner.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vallayz.method import Tunables

KINDS = ("gating", "noise", "weights")
MIN_TEMPERATURE = 0.05
MAX_TOP_K = 64


class Planner:
    """Proposes, judges and reverts hyper-parameter changes.

    Args:
        every: Steps between decisions.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.window: dict[str, list[float]] = {}
        self.first: dict[str, float] = {}
        self.pending: dict[str, Any] | None = None
        # Critic score at the start of the running control interval, if one is running.
        self.control_start: float | None = None
        # Critic gain over the last finished control interval.
        self.control_gain: float | None = None
        self.turn = 0

    def observe(self, terms: dict[str, float]) -> None:
        """Adds one training step's loss terms to the window."""
        for name, value in terms.items():
            if "/" not in name:
                self.window.setdefault(name, []).append(value)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""
        return {
            "window": self.window,
            "first": self.first,
            "pending": self.pending,
            "control_start": self.control_start,
            "control_gain": self.control_gain,
            "turn": self.turn,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output."""
        self.window = {k: list(v) for k, v in state["window"].items()}
        self.first = dict(state["first"])
        self.pending = state["pending"]
        self.control_start = state.get("control_start")
        self.control_gain = state.get("control_gain")
        self.turn = int(state["turn"])

    def step(
        self, step: int, tunables: Tunables, critic: Callable[[], float]
    ) -> list[dict[str, Any]]:
        """Runs one decision if ``step`` is due; returns the decisions made (possibly none)."""
        if (step + 1) % self.every:
            return []
        means = {k: sum(v) / len(v) for k, v in self.window.items() if v}
        self.window = {}
        if not self.first:
            self.first = dict(means)
        decisions: list[dict[str, Any]] = []
        score = critic()
        if self.control_start is not None:
            # A control interval ends: measure it, then try a change.
            self.control_gain = score - self.control_start
            self.control_start = None
            proposal = self._propose(tunables, means)
            self._apply(tunables, proposal["parameter"], proposal["new"])
            self.pending = {**proposal, "score_before": score, "proposed_at": step}
            decisions.append({**self.pending, "step": step, "action": "propose", "window": means})
            return decisions
        if self.pending is not None:
            # A trial interval ends: judge its change against the control's gain.
            gain = score - self.pending["score_before"]
            expected = self.control_gain if self.control_gain is not None else 0.0
            kept = gain > expected
            decisions.append(
                {
                    **self.pending,
                    "step": step,
                    "action": "keep" if kept else "revert",
                    "score_after": score,
                    "gain": gain,
                    "control_gain": expected,
                }
            )
            if not kept:
                self._apply(tunables, self.pending["parameter"], self.pending["old"])
                score = critic()
            self.pending = None
        self.control_start = score
        decisions.append(
            {"step": step, "action": "control", "parameter": None, "score_before": score}
        )
        return decisions

    def finish(self, step: int, tunables: Tunables) -> list[dict[str, Any]]:
        """Ends the run: a change still on trial is reverted unjudged, so the final model is the
        last kept configuration. Returns the decision (none when no trial is running)."""
        if self.pending is None:
            return []
        self._apply(tunables, self.pending["parameter"], self.pending["old"])
        decision = {
            **self.pending,
            "step": step,
            "action": "revert",
            "reason": "the run ended before the trial was judged",
        }
        self.pending = None
        return [decision]

    def _propose(self, tunables: Tunables, means: dict[str, float]) -> dict[str, Any]:
        kind = KINDS[self.turn % len(KINDS)]
        self.turn += 1
        weights = tunables.loss_weights.as_dict()
        if kind == "gating":
            contrastive = weights["contrastive"] * means.get("contrastive", 0.0)
            cycle = weights["cycle"] * means.get("cycle", 0.0)
            if contrastive >= cycle and tunables.temperature > MIN_TEMPERATURE:
                old_t = tunables.temperature
                new_t = max(MIN_TEMPERATURE, old_t * 0.8)
                return {
                    "parameter": "temperature",
                    "old": old_t,
                    "new": new_t,
                    "reason": "contrastive loss dominates",
                }
            old_k = tunables.top_k
            return {
                "parameter": "top_k",
                "old": old_k,
                "new": min(MAX_TOP_K, old_k + 1),
                "reason": "cycle loss dominates",
            }
        if kind == "noise":
            old = tunables.sigma
            return {
                "parameter": "sigma",
                "old": old,
                "new": {m: v * 0.7 for m, v in old.items()},
                "reason": "smaller micro-variant noise",
            }
        progress = {
            name: means[name] / self.first[name]
            for name in ("contrastive", "translation", "cycle")
            if self.first.get(name, 0.0) > 0 and name in means
        }
        name = max(progress, key=lambda n: progress[n]) if progress else "translation"
        old_w = weights[name]
        return {
            "parameter": f"weight:{name}",
            "old": old_w,
            "new": old_w * 1.5 if old_w > 0 else 0.1,
            "reason": f"{name} fell least since the start",
        }

    @staticmethod
    def _apply(tunables: Tunables, parameter: str, value: Any) -> None:
        if parameter == "temperature":
            tunables.set_gating(temperature=float(value))
        elif parameter == "top_k":
            tunables.set_gating(top_k=int(value))
        elif parameter == "sigma":
            tunables.set_sigma({m: float(v) for m, v in value.items()})
        elif parameter.startswith("weight:"):
            term = parameter.split(":", 1)[1]
            tunables.set_loss_weights(tunables.loss_weights.replace(**{term: float(value)}))
        else:
            raise ValueError(f"unknown planner parameter {parameter!r}")
