"""The contract every method honours, whatever its kind.

A *method* links the modalities of a data set: IMPN, a learned baseline, a set of closed-form
translators. Evaluation needs only its :class:`Method` half: what it can do
(:class:`Capabilities`), how it embeds a batch into a shared space and how it translates a
batch into a modality's native space. A method that is trained also gives the loss of a batch
under given :class:`~vallayz.losses.LossSettings` (:class:`TrainableMethod`), as an
:class:`Objective`; an objective whose method has knobs that a planner may turn during training
exposes them as :class:`Tunables`.

Code that trains or evaluates methods reads only these protocols, never a concrete class, so a
new method is one new class that implements them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from vallayz.losses import LossOutput, LossSettings, LossWeights
from vallayz.types import Batch

MODES = ("soil", "bridged", "fused", "translate")
"""Retrieval paths: queries embedded into the shared space (``soil``; several sources averaged),
read from the absent target's nodes after message passing (``bridged``), several sources embedded
together by message passing among them (``fused``; single-source queries as ``soil``), or
translated into the target's native space (``translate``)."""


@dataclass(frozen=True)
class Capabilities:
    """What a method can do; the calls it cannot serve raise ``ValueError``."""

    # embed(batch) returns vectors of a space shared by every modality.
    embeds: bool = False
    # embed(batch, target=m) returns the state an absent modality m reaches from the inputs by
    # message passing.
    bridges: bool = False
    # embed(batch, fusion="fused") embeds rows with several present sources in one pass in
    # which they exchange messages (a shared space, like embeds).
    fuses: bool = False
    # translate(batch, target=m) returns vectors in m's native space.
    translates: bool = False

    @property
    def modes(self) -> tuple[str, ...]:
        """The retrieval paths (of :data:`MODES`) this method serves, in that order."""
        served = {
            "soil": self.embeds,
            "bridged": self.bridges,
            "fused": self.fuses,
            "translate": self.translates,
        }
        return tuple(mode for mode in MODES if served[mode])

    def check_mode(self, mode: str, method: str) -> None:
        """Raises ``ValueError`` naming ``method`` and the modes it serves unless it serves
        ``mode``."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode not in self.modes:
            raise ValueError(
                f"{method} cannot serve the {mode!r} retrieval path; evaluate it with "
                f"mode={' or '.join(repr(m) for m in self.modes) or 'none'}"
            )


@runtime_checkable
class Method(Protocol):
    """Embedding and translation: what evaluation needs of every method, closed-form ones too."""

    @property
    def capabilities(self) -> Capabilities:
        """What this method can do."""
        ...

    def embed(self, batch: Batch, /, *, target: str | None = None) -> Tensor:
        """Shared-space vectors of the batch's present modalities (``capabilities.embeds``);
        with ``target``, the state the absent ``target`` reaches from them
        (``capabilities.bridges``).

        Shape:
            ``{m: [B, d_m] or [B, T_m, d_m]}`` → ``[B, D]``.
        """
        ...

    def translate(self, batch: Batch, /, *, target: str) -> Tensor:
        """The batch's present modalities translated into ``target``'s native space
        (``capabilities.translates``); ``target`` is not among the inputs.

        Shape:
            ``{m: [B, d_m] or [B, T_m, d_m]}`` → ``[B, d_target]``.
        """
        ...


@runtime_checkable
class Tunables(Protocol):
    """Hyper-parameters that a planner may change between training steps, through typed calls
    that check their values."""

    @property
    def temperature(self) -> float:
        """Gate temperature."""
        ...

    @property
    def top_k(self) -> int:
        """Senders kept per receiving node."""
        ...

    @property
    def sigma(self) -> dict[str, float]:
        """Micro-variant noise scale per modality."""
        ...

    @property
    def loss_weights(self) -> LossWeights:
        """Weight of each loss term."""
        ...

    def set_gating(self, *, top_k: int | None = None, temperature: float | None = None) -> None:
        """Changes top-k and/or the gate temperature."""
        ...

    def set_sigma(self, sigma: Mapping[str, float]) -> None:
        """Sets the noise scale of the named modalities."""
        ...

    def set_sigma_scale(self, scale: float) -> None:
        """Multiplies every sigma by ``scale`` in training passes (a schedule)."""
        ...

    def set_loss_weights(self, weights: LossWeights) -> None:
        """Replaces the loss term weights."""
        ...

    def critic_score(self, out: LossOutput) -> float:
        """The planner's critic: a score of the loss on a fixed validation batch, higher is
        better, comparable across changes of the knobs (so not the weighted total)."""
        ...


@runtime_checkable
class Objective(Protocol):
    """A method's training loss under fixed settings."""

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        """The weighted total to back-propagate and every named term, on ``batch``; random
        draws (dropped modalities, noise) come from ``generator``."""
        ...

    @property
    def tunables(self) -> Tunables | None:
        """The knobs a planner may turn, or ``None`` when the method has none."""
        ...


@runtime_checkable
class TrainableMethod(Method, Protocol):
    """A method with parameters, trained by gradient descent on its own :class:`Objective`.

    A trainable method is also a ``torch.nn.Module``: its parameters, ``train``/``eval``, device
    moves and state dict are torch's.
    """

    @property
    def names(self) -> list[str]:
        """The modalities the method links, in order."""
        ...

    def objective(self, settings: LossSettings) -> Objective:
        """The method's training loss under ``settings``."""
        ...

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes ``config.json`` and ``model.safetensors`` into ``directory``."""
        ...
