"""IMPN's objective: every term of its loss computed and returned by name.

The loss reads the model only through :class:`BridgeModel`, the few members it needs, so this
module does not import :mod:`vallayz.model` (which builds its objective from here).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vallayz.config import IMPNConfig
from vallayz.losses.combinatorial import (
    combinatorial_info_nce,
    fusion_subsets,
    sample_subsets,
    subset_rows,
)
from vallayz.losses.infonce import info_nce
from vallayz.losses.knn import knn_preservation_loss
from vallayz.losses.reconstruction import KINDS, cycle_loss, translation_loss
from vallayz.losses.regularisers import denoising_loss, orthogonality_loss
from vallayz.losses.total import LossOutput, LossSettings, LossWeights
from vallayz.losses.weighting import check_pair_weighting, pair_mean
from vallayz.masking import corrupt_one_source, drop_modalities
from vallayz.types import Batch, Embeddings


class BridgePass(Protocol):
    """What the loss reads of one forward pass (:class:`~vallayz.model.IMPNOutput`)."""

    @property
    def soil(self) -> dict[str, Tensor]:
        """Pooled soil state per modality ``[B, soil_dim]``."""

    @property
    def node_mask(self) -> dict[str, Tensor]:
        """``[B, T_m]``, ``True`` for real nodes."""

    @property
    def decoded(self) -> dict[str, Tensor]:
        """Native-space reconstruction per modality ``[B, d_m]``."""

    @property
    def messages(self) -> list[tuple[Tensor, Tensor]] | None:
        """``(noisy, clean)`` aggregated messages per bridge layer, when asked for."""


class BridgeModel(Protocol):
    """The members of :class:`~vallayz.model.IMPN` its loss and objective use."""

    # One forward pass (``IMPN.forward``: isolate, generator, return_messages, validate and
    # decode are the keywords the loss passes).
    __call__: Callable[..., BridgePass]
    names: list[str]
    sigma_scale: float

    @property
    def match_head(self) -> nn.Module | None:
        """The match head, when the model has one."""

    @property
    def config(self) -> IMPNConfig:
        """The model's configuration."""

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""

    @property
    def sigma(self) -> dict[str, float]:
        """Noise scale per modality."""

    @property
    def trainable_modalities(self) -> list[str]:
        """The modalities whose parameters train."""

    def fuse(
        self,
        batch: Batch | Embeddings,
        *,
        generator: torch.Generator | None = ...,
        validate: bool = ...,
    ) -> Tensor:
        """Fused soil vectors ``[B, soil_dim]``."""

    def match(
        self,
        batch: Batch | Embeddings,
        target: str,
        *,
        generator: torch.Generator | None = ...,
    ) -> Tensor:
        """Match-head logits ``[B]``."""

    def projection_weights(self, modalities: Collection[str] | None = ...) -> list[Tensor]:
        """The adapters' projection weights."""

    def set_gating(self, top_k: int | None = ..., temperature: float | None = ...) -> None:
        """Changes top-k and/or the gate temperature."""

    def set_sigma(self, sigma: float | Mapping[str, float]) -> None:
        """Sets the noise scale."""


# The terms of the passes with dropped modalities (passes 2 and 3).
_DROPPED_TERMS = ("translation", "bridged", "denoising", "cycle")


@dataclass
class _Drop:
    """The modalities the translation pass drops, and the rows its terms and the cycle's read.

    Attributes:
        dropped: Modality → ``[B]`` rows where it is dropped.
        kept: Modality → ``[B]`` rows where it is present and kept.
        rows: ``[B]`` rows where some modality is dropped (those the cycle pass reads).
        lost_rows: Modality → how many rows drop it.
        back_rows: Modality → how many of ``rows`` keep it (the cycle's targets).
        row_count: How many ``rows`` there are.
    """

    dropped: dict[str, Tensor]
    kept: dict[str, Tensor]
    rows: Tensor
    lost_rows: dict[str, int]
    back_rows: dict[str, int]
    row_count: int


class IMPNLoss(nn.Module):
    """Computes the IMPN objective for a model on one batch.

    Passes, one method each: (1) isolated unimodal pass → contrastive and kNN terms
    (:meth:`_isolated_pass`); (1b) one fused pass per chosen subset of at least two modalities
    → the combinatorial term against the isolated vectors of pass 1 (:meth:`_fused_passes`);
    (1c) joint passes of anchors with their partners and hard negatives → the re-ranking term
    (:meth:`_match_passes`); (2) a pass with random modalities dropped per row → translation,
    denoising and bridged-contrastive terms (the dropped modalities' soil states, reached by
    message passing, against their isolated soil vectors from pass 1;
    :meth:`_translation_pass`); (3) the decoded dropped modalities alone → cycle term on the
    kept ones (:meth:`_cycle_pass`); plus orthogonality of the adapters. Under
    ``translate_complement``, passes 2 and 3 run again on the complement of the draw and their
    terms are averaged (:meth:`_dropped_terms`).

    A model with frozen modalities (``IMPN.extend``) skips the terms that read frozen
    parameters alone, which cannot train anything: the contrastive, kNN and re-ranking terms of
    frozen modalities among themselves, and the orthogonality of frozen adapters. The
    translation and cycle terms stay whole: a frozen modality's decoded state depends on the
    new modalities' messages wherever they are kept.

    Args:
        weights: Weight per term.
        contrastive_temperature: InfoNCE temperature.
        knn_temperature: Temperature of the soft neighbour distributions.
        reconstruction: ``"mse"``, ``"cosine"`` or ``"mse+cosine"`` for translation and cycle.
        drop_rate: Probability of dropping each present modality in the translation pass
            (at least one stays per row).
        pair_weighting: How the per-pair contrastive terms and the per-modality kNN,
            translation and cycle terms are averaged: ``"rows"`` weighs each by the rows it was
            computed on, ``"equal"`` gives each the same weight (see :func:`pair_mean`).
        rerank_negatives: Hard negatives per anchor row of the re-ranking term.
        rerank_rows: Anchor rows per pair of modalities of the re-ranking term.
        fused_subsets: Most subsets of modalities the combinatorial term embeds per batch (drawn at
            random from those with rows to train on when there are more).
        all_terms: Run the passes with dropped modalities even when every term they train has
            weight 0 (a planner reads the unweighted terms); otherwise they are skipped.
        fused_corruption: Probability that a row of a fused subset of the combinatorial term
            has one of its sources corrupted (:func:`~vallayz.masking.corrupt_one_source`).
        translate_complement: Also run passes 2 and 3 on the complement of each draw (in
            every row with a drop, the kept modalities dropped and the dropped ones kept), so
            that a row of two modalities is translated in both directions, as a pair of MLP
            translators is; the terms of the two draws are averaged.
    """

    def __init__(
        self,
        weights: LossWeights | None = None,
        contrastive_temperature: float = 0.07,
        knn_temperature: float = 0.1,
        reconstruction: str = "mse+cosine",
        drop_rate: float = 0.5,
        pair_weighting: str = "rows",
        rerank_negatives: int = 3,
        rerank_rows: int = 64,
        fused_subsets: int = 4,
        all_terms: bool = False,
        fused_corruption: float = 0.0,
        translate_complement: bool = False,
    ) -> None:
        super().__init__()
        self.all_terms = all_terms
        self.translate_complement = translate_complement
        if not 0.0 <= fused_corruption <= 1.0:
            raise ValueError(f"fused_corruption must lie in [0, 1], got {fused_corruption}")
        self.fused_corruption = fused_corruption
        if fused_subsets < 1:
            raise ValueError(f"fused_subsets must be >= 1, got {fused_subsets}; try 4")
        self.fused_subsets = fused_subsets
        if not contrastive_temperature > 0 or not knn_temperature > 0:
            raise ValueError("loss temperatures must be positive; try 0.07 and 0.1")
        if reconstruction not in KINDS:
            raise ValueError(f"reconstruction must be one of {KINDS}, got {reconstruction!r}")
        if not 0.0 < drop_rate <= 1.0:
            raise ValueError(f"drop_rate must lie in (0, 1], got {drop_rate}")
        check_pair_weighting(pair_weighting)
        if rerank_negatives < 1 or rerank_rows < 1:
            raise ValueError("rerank_negatives and rerank_rows must be >= 1; try 3 and 64")
        self.rerank_negatives = rerank_negatives
        self.rerank_rows = rerank_rows
        self.weights = weights or LossWeights()
        self.contrastive_temperature = contrastive_temperature
        self.knn_temperature = knn_temperature
        self.reconstruction = reconstruction
        self.drop_rate = drop_rate
        self.pair_weighting = pair_weighting

    def forward(
        self,
        model: BridgeModel,
        batch: Batch | Embeddings,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """The weighted total and every term of ``model``'s loss on ``batch``.

        Runs the passes of the class description in order (which fixes the order of the draws
        from ``generator``); a pass whose terms all have weight 0 (unless ``all_terms``), or
        nothing to train, is skipped and its terms read 0.

        Args:
            model: The model to train.
            batch: The batch (validated here, once for every pass).
            generator: Random generator of the noise, the dropped modalities and the subsets.

        Returns:
            The weighted total and the unweighted terms by name.
        """
        batch = Batch.of(batch)
        batch.validate(model.config)
        w = self.weights
        native = {m: x.to(model.device) for m, x in batch.pooled().items()}
        present = {m: p.to(model.device) for m, p in batch.present.items()}
        zero = torch.zeros((), device=model.device)
        frozen = set(model.config.frozen_modalities)

        isolated, terms = self._isolated_pass(
            model, batch, native, present, generator, frozen, zero
        )
        terms["combinatorial"] = zero
        if w.combinatorial > 0:
            terms["combinatorial"] = self._fused_passes(
                model, batch, isolated, present, generator, zero
            )
        terms["rerank"] = zero
        if w.rerank > 0 and model.match_head is not None:
            terms["rerank"] = self._match_passes(model, batch, isolated, generator, zero, frozen)

        # The passes with dropped modalities train only the terms below; with all of them at
        # weight 0 (InfoNCE alone, or an extension trained on its isolated embeddings) they
        # are skipped, and their terms read 0.
        terms.update(dict.fromkeys(_DROPPED_TERMS, zero))
        if self.all_terms or max(w.translation, w.bridged, w.denoising, w.cycle) > 0:
            terms.update(
                self._dropped_terms(model, batch, native, isolated, present, generator, zero)
            )

        projections = model.projection_weights(model.trainable_modalities)
        terms["orthogonality"] = orthogonality_loss(projections).to(zero) if projections else zero

        total = sum((weight * terms[name] for name, weight in w.as_dict().items()), zero)
        return LossOutput(total=total, terms=terms)

    def _isolated_pass(
        self,
        model: BridgeModel,
        batch: Batch,
        native: dict[str, Tensor],
        present: dict[str, Tensor],
        generator: torch.Generator | None,
        frozen: set[str],
        zero: Tensor,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Pass 1, every modality alone: the contrastive term of each pair of modalities with
        two shared rows (``contrastive/a-b``) and their mean (``contrastive``), and the kNN
        term; pairs and modalities that are frozen alone are left out.

        Returns:
            The isolated soil vectors and the terms by name.

        Shape:
            native ``{m: [B, d_m]}``, present ``{m: [B]}`` → ``{m: [B, soil_dim]}``, scalars.
        """
        iso = model(batch, isolate=True, generator=generator, validate=False, decode=False)
        names = list(batch.embeddings)
        together = _shared_rows(present, names)
        terms: dict[str, Tensor] = {}
        pairs, pair_rows = [], []
        for a, b in itertools.combinations(names, 2):
            both = present[a] & present[b]
            count = together[a, b]
            if count >= 2 and not {a, b} <= frozen:
                pair = info_nce(iso.soil[a][both], iso.soil[b][both], self.contrastive_temperature)
                terms[f"contrastive/{a}-{b}"] = pair
                pairs.append(pair)
                pair_rows.append(count)
        terms["contrastive"] = self._mean(pairs, pair_rows, zero)
        knn_rows = {m: together[m, m] for m in names}
        knn = {
            m: knn_preservation_loss(
                native[m][present[m]], iso.soil[m][present[m]], self.knn_temperature
            )
            for m in batch.embeddings
            if knn_rows[m] >= 2 and m not in frozen
        }
        terms["knn"] = self._mean(list(knn.values()), [knn_rows[m] for m in knn], zero)
        return iso.soil, terms

    def _dropped_terms(
        self,
        model: BridgeModel,
        batch: Batch,
        native: dict[str, Tensor],
        isolated: dict[str, Tensor],
        present: dict[str, Tensor],
        generator: torch.Generator | None,
        zero: Tensor,
    ) -> dict[str, Tensor]:
        """Passes 2 and 3 on a random draw of dropped modalities, and under
        ``translate_complement`` on its complement too, their terms averaged over the draws."""
        names = list(batch.embeddings)
        drop = _draw_drop(present, names, self.drop_rate, generator)
        draws = [drop]
        if self.translate_complement:
            draws.append(_complement(present, names, drop))
        terms = dict.fromkeys(_DROPPED_TERMS, zero)
        for draw in draws:
            decoded, passes = self._translation_pass(
                model, batch, native, isolated, draw, generator, zero
            )
            if self.all_terms or self.weights.cycle > 0:
                passes["cycle"] = self._cycle_pass(model, decoded, native, draw, generator, zero)
            for name, value in passes.items():
                terms[name] = terms[name] + value / len(draws)
        return terms

    def _translation_pass(
        self,
        model: BridgeModel,
        batch: Batch,
        native: dict[str, Tensor],
        isolated: dict[str, Tensor],
        drop: _Drop,
        generator: torch.Generator | None,
        zero: Tensor,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Pass 2, the batch without its dropped modalities, which its kept ones reach by
        message passing: the translation term (their decoded native vectors), the bridged term
        (their soil states against their ``isolated`` ones, when its weight is positive) and
        the denoising term of every bridge layer's messages.

        Returns:
            The decoded native vectors and the terms by name.

        Shape:
            native ``{m: [B, d_m]}``, isolated ``{m: [B, soil_dim]}`` → ``{m: [B, d_m]}``,
            scalars.
        """
        out = model(
            Batch.of(batch, present=drop.kept),
            generator=generator,
            return_messages=True,
            validate=False,
        )
        lost = [m for m in batch.embeddings if drop.lost_rows[m] > 0]
        translations = [
            translation_loss(out.decoded[m], native[m], self.reconstruction, drop.dropped[m])
            for m in lost
        ]
        terms = {"translation": self._mean(translations, [drop.lost_rows[m] for m in lost], zero)}
        bridged, bridged_rows = [], []
        if self.weights.bridged > 0:
            for m in lost:
                rows_m = drop.dropped[m]
                if drop.lost_rows[m] >= 2:
                    bridged.append(
                        info_nce(
                            out.soil[m][rows_m], isolated[m][rows_m], self.contrastive_temperature
                        )
                    )
                    bridged_rows.append(drop.lost_rows[m])
        terms["bridged"] = self._mean(bridged, bridged_rows, zero)
        assert out.messages is not None
        real = torch.cat([out.node_mask[m] for m in model.names], dim=1)
        terms["denoising"] = torch.stack(
            [denoising_loss(noisy, clean, real) for noisy, clean in out.messages]
        ).mean()
        return out.decoded, terms

    def _cycle_pass(
        self,
        model: BridgeModel,
        decoded: dict[str, Tensor],
        native: dict[str, Tensor],
        drop: _Drop,
        generator: torch.Generator | None,
        zero: Tensor,
    ) -> Tensor:
        """Pass 3, the ``decoded`` dropped modalities of the rows with a drop, alone: the cycle
        term, their decoded kept modalities against the true ones (``zero`` when no row has a
        drop).

        Shape:
            decoded ``{m: [B, d_m]}``, native ``{m: [B, d_m]}`` → scalar.
        """
        if drop.row_count == 0:
            return zero
        rows, dropped = drop.rows, drop.dropped
        sources = {m: decoded[m][rows] for m in dropped}
        back = model(
            Batch.of(sources, present={m: dropped[m][rows] for m in dropped}),
            generator=generator,
            validate=False,
        )
        back_to = [m for m in drop.back_rows if drop.back_rows[m] > 0]
        cycles = [
            cycle_loss(back.decoded[m], native[m][rows], self.reconstruction, drop.kept[m][rows])
            for m in back_to
        ]
        return self._mean(cycles, [drop.back_rows[m] for m in back_to], zero)

    def _match_passes(
        self,
        model: BridgeModel,
        batch: Batch,
        soil: dict[str, Tensor],
        generator: torch.Generator | None,
        zero: Tensor,
        frozen: set[str],
    ) -> Tensor:
        """Per pair of modalities ``(a, b)`` not both ``frozen``: each anchor row's ``a`` is
        passed jointly with its own ``b`` and with the ``b`` of its ``rerank_negatives`` nearest
        other rows (isolated soil space); cross-entropy of the match logits against the true
        partner."""
        losses, counts = [], []
        for a, b in itertools.combinations(batch.embeddings, 2):
            if {a, b} <= frozen:
                continue
            both = torch.nonzero(batch.present[a] & batch.present[b]).squeeze(1)
            if len(both) < 2:
                continue
            anchors = both[: self.rerank_rows]
            count, negatives = len(anchors), min(self.rerank_negatives, len(both) - 1)
            on = soil[a].device
            with torch.no_grad():
                query = F.normalize(soil[a][anchors.to(on)].float(), dim=-1)
                keys = F.normalize(soil[b][both.to(on)].float(), dim=-1)
                similarity = query @ keys.T
                own = torch.arange(count, device=on)
                similarity[own, own] = float("-inf")
                hard = similarity.topk(negatives, dim=1).indices.cpu()
            partners = torch.cat([torch.arange(count)[:, None], hard], dim=1)
            joint = joint_batch(
                batch, a, anchors.repeat_interleave(negatives + 1), b, both[partners.flatten()]
            )
            logits = model.match(joint, b, generator=generator).view(count, negatives + 1)
            target = torch.zeros(count, dtype=torch.long, device=logits.device)
            losses.append(F.cross_entropy(logits, target))
            counts.append(count)
        return self._mean(losses, counts, zero)

    def _fused_passes(
        self,
        model: BridgeModel,
        batch: Batch,
        single: dict[str, Tensor],
        present: dict[str, Tensor],
        generator: torch.Generator | None,
        zero: Tensor,
    ) -> Tensor:
        """The combinatorial term: up to ``fused_subsets`` subsets ``S`` (of those with two rows
        holding ``S`` and a modality outside it) are each embedded by one fused pass over those
        rows, then :func:`combinatorial_info_nce` against the isolated soil vectors."""
        names = list(batch.embeddings)
        subsets = fusion_subsets(names)
        if not subsets:
            return zero
        holds = [subset_rows(s, present) for s in subsets]
        outside = [
            torch.stack([present[t] for t in names if t not in s]).any(dim=0) for s in subsets
        ]
        wanted = [h & o for h, o in zip(holds, outside, strict=True)]
        counts = torch.stack(wanted).sum(dim=1).tolist()
        usable = [i for i, count in enumerate(counts) if count >= 2]
        if not usable:
            return zero
        chosen = sample_subsets([subsets[i] for i in usable], self.fused_subsets, generator)
        fused: dict[tuple[str, ...], Tensor] = {}
        for subset in chosen:
            rows = torch.nonzero(wanted[subsets.index(subset)]).squeeze(1)
            picked = batch.select(rows.to(batch.present_device))
            sources = Batch(
                {m: picked.embeddings[m] for m in subset},
                {m: picked.present[m] for m in subset},
                {m: x for m, x in picked.padding.items() if m in subset},
                {m: x for m, x in picked.tokens.items() if m in subset},
                {m: x for m, x in picked.node_ids.items() if m in subset},
            )
            if self.fused_corruption > 0:
                sources = corrupt_one_source(sources, self.fused_corruption, generator=generator)
            vectors = model.fuse(sources, generator=generator, validate=False)
            full = vectors.new_zeros(len(present[names[0]]), vectors.shape[1])
            fused[subset] = full.index_copy(0, rows, vectors)
        term, _ = combinatorial_info_nce(
            fused,
            {m: single[m] for m in names},
            present,
            self.contrastive_temperature,
            self.pair_weighting,
        )
        return zero if term is None else term

    def _mean(self, values: list[Tensor], rows: list[int], zero: Tensor) -> Tensor:
        """:func:`pair_mean` of ``values`` under this loss's weighting; ``zero`` when empty."""
        return pair_mean(values, rows, self.pair_weighting) if values else zero


def joint_batch(batch: Batch, a: str, rows_a: Tensor, b: str, rows_b: Tensor) -> Batch:
    """Joint rows of two modalities drawn from different rows of ``batch``: row ``i`` holds
    ``a`` of row ``rows_a[i]`` and ``b`` of row ``rows_b[i]`` (both present).

    Shape:
        rows_a ``[R]``, rows_b ``[R]`` → a batch of ``R`` rows with modalities ``a`` and ``b``.
    """
    picks = {a: rows_a, b: rows_b}
    return Batch(
        embeddings={m: batch.embeddings[m][r] for m, r in picks.items()},
        present={m: torch.ones(len(r), dtype=torch.bool) for m, r in picks.items()},
        padding={m: batch.padding[m][r] for m, r in picks.items() if m in batch.padding},
        tokens={m: batch.tokens[m][r] for m, r in picks.items() if m in batch.tokens},
        node_ids={m: batch.node_ids[m][r] for m, r in picks.items() if m in batch.node_ids},
    )


def _shared_rows(present: dict[str, Tensor], names: list[str]) -> dict[tuple[str, str], int]:
    """How many rows hold both modalities of every ordered pair (a modality's own present rows
    on the diagonal), read at once.

    Shape:
        ``{m: [B]}`` → ``{(a, b): int}``.
    """
    stacked = torch.stack([present[m] for m in names], dim=1)
    shared = (stacked[:, :, None] & stacked[:, None, :]).sum(dim=0).tolist()
    return {(a, b): shared[i][j] for i, a in enumerate(names) for j, b in enumerate(names)}


def _draw_drop(
    present: dict[str, Tensor],
    names: list[str],
    rate: float,
    generator: torch.Generator | None,
) -> _Drop:
    """Draws the modalities the translation pass drops (:func:`drop_modalities`) and counts,
    per modality, its dropped rows and its kept rows among those with a drop, then the rows
    with a drop: one read for all of them.

    Shape:
        ``{m: [B]}`` → masks ``{m: [B]}`` and ``[B]``.
    """
    return _drop_of(present, names, drop_modalities(present, rate, generator))


def _complement(present: dict[str, Tensor], names: list[str], drop: _Drop) -> _Drop:
    """The complement of ``drop``: in each row with a drop, the kept modalities dropped and
    the dropped ones kept (rows without a drop keep every modality).

    Shape:
        ``{m: [B]}`` → masks ``{m: [B]}`` and ``[B]``.
    """
    return _drop_of(present, names, {m: drop.kept[m] & drop.rows for m in names})


def _drop_of(present: dict[str, Tensor], names: list[str], dropped: dict[str, Tensor]) -> _Drop:
    """The :class:`_Drop` of the ``dropped`` masks, with its counts read in one transfer."""
    kept = {m: present[m] & ~dropped[m] for m in present}
    stacked = torch.stack([present[m] for m in names], dim=1)
    lost_stack = torch.stack([dropped[m] for m in names], dim=1)
    rows = lost_stack.any(dim=1)
    counts = torch.cat(
        [
            lost_stack.sum(dim=0),
            (stacked & ~lost_stack & rows[:, None]).sum(dim=0),
            rows.sum()[None],
        ]
    ).tolist()
    return _Drop(
        dropped=dropped,
        kept=kept,
        rows=rows,
        lost_rows=dict(zip(names, counts[: len(names)], strict=True)),
        back_rows=dict(zip(names, counts[len(names) : 2 * len(names)], strict=True)),
        row_count=counts[-1],
    )


class IMPNObjective:
    """:class:`IMPNLoss` bound to one model: IMPN's :class:`~vallayz.method.Objective`, and the
    :class:`~vallayz.method.Tunables` a planner may turn (gating, noise, term weights).

    Args:
        model: The model whose loss this is.
        settings: The loss settings.
    """

    def __init__(self, model: BridgeModel, settings: LossSettings) -> None:
        self.model = model
        self.loss = IMPNLoss(
            settings.weights,
            contrastive_temperature=settings.contrastive_temperature,
            reconstruction=settings.reconstruction,
            drop_rate=settings.drop_rate,
            pair_weighting=settings.pair_weighting,
            fused_subsets=settings.fused_subsets,
            all_terms=settings.all_terms,
            fused_corruption=settings.fused_corruption,
            translate_complement=settings.translate_complement,
        )

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        """The weighted total and every term of the model's loss on ``batch``."""
        out: LossOutput = self.loss(self.model, batch, generator)
        return out

    @property
    def tunables(self) -> IMPNObjective:
        """This objective: it exposes the model's gating and noise and its own weights."""
        return self

    @property
    def temperature(self) -> float:
        """Gate temperature of every bridge layer."""
        return self.model.config.temperature

    @property
    def top_k(self) -> int:
        """Senders each node keeps in every bridge layer."""
        return self.model.config.top_k

    @property
    def sigma(self) -> dict[str, float]:
        """Micro-variant noise scale per modality."""
        return self.model.sigma

    @property
    def loss_weights(self) -> LossWeights:
        """Weight of each term."""
        return self.loss.weights

    def set_gating(self, *, top_k: int | None = None, temperature: float | None = None) -> None:
        """Changes top-k and/or the gate temperature (see :meth:`IMPN.set_gating`)."""
        self.model.set_gating(top_k=top_k, temperature=temperature)

    def set_sigma(self, sigma: Mapping[str, float]) -> None:
        """Sets the noise scale of the named modalities (see :meth:`IMPN.set_sigma`)."""
        self.model.set_sigma(sigma)

    def set_sigma_scale(self, scale: float) -> None:
        """Multiplies every sigma by ``scale`` in training passes (a schedule; not saved)."""
        if not scale >= 0:
            raise ValueError(f"the sigma scale must be >= 0, got {scale}")
        self.model.sigma_scale = scale

    def set_loss_weights(self, weights: LossWeights) -> None:
        """Replaces the term weights (build them with :meth:`LossWeights.replace`)."""
        self.loss.weights = weights

    def critic_score(self, out: LossOutput) -> float:
        """``-(contrastive + 0.5 * cycle)``: unweighted terms, so that a change of the weights
        does not move the score by itself."""
        return -float(out.terms["contrastive"] + 0.5 * out.terms["cycle"])
