"""The one vocabulary for modality-keyed data.

Every public function of vallayz takes and returns dictionaries keyed by modality name:

* ``Embeddings``: modality → native embeddings, either pooled ``[B, d_m]`` or a set/sequence of
  nodes ``[B, T_m, d_m]``.
* ``Masks``: modality → boolean mask. A *presence* mask is ``[B]`` (is the modality observed
  for this row at all); a *padding* mask is ``[B, T_m]`` (``True`` marks a real node).
* ``Tokens``: modality → integer ids ``[B, L]`` of hashed discrete features of the same items
  (``-1`` = padding), read by a model's trainable embedding-bag front end for that modality
  and ignored by models without one.
* ``NodeIds``: modality → integer ids ``[B, T]`` of a sequence of discrete units of the same
  items (e.g. the syllables of a line; ``-1`` = padding), which a model with a token-node
  table for that modality turns into extra nodes of that modality, one per unit, in order.

:class:`Batch` bundles them and checks them against an :class:`~vallayz.config.IMPNConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from vallayz.config import IMPNConfig

Embeddings = Mapping[str, Tensor]
"""Modality name → native embeddings ``[B, d_m]`` (pooled) or ``[B, T_m, d_m]`` (nodes)."""

Masks = Mapping[str, Tensor]
"""Modality name → boolean mask, ``[B]`` (presence) or ``[B, T_m]`` (padding, ``True`` = real)."""

Tokens = Mapping[str, Tensor]
"""Modality name → integer feature ids ``[B, L]``, ``-1`` for padding."""

NodeIds = Mapping[str, Tensor]
"""Modality name → integer unit ids ``[B, T]`` in sequence order, ``-1`` for padding."""


@dataclass(frozen=True)
class Batch:
    """Native embeddings of several modalities, with presence and padding masks.

    Modalities of the model that are not keys of ``embeddings`` are absent for every row.

    Attributes:
        embeddings: Modality → ``[B, d_m]`` or ``[B, T_m, d_m]`` native embeddings.
        present: Modality → ``[B]`` bool; ``False`` marks a row where the modality is missing
            (its values are then ignored and may be anything, NaN included).
        padding: Modality → ``[B, T_m]`` bool; ``True`` marks a real node. Only for node inputs.
        tokens: Modality → ``[B, L]`` integer ids of hashed features (``-1`` = padding), for
            models with a token front end for that modality; others ignore them.
        node_ids: Modality → ``[B, T]`` integer ids of a sequence of units (``-1`` = padding),
            for models with a token-node table for that modality; others ignore them.
    """

    embeddings: dict[str, Tensor]
    present: dict[str, Tensor] = field(default_factory=dict)
    padding: dict[str, Tensor] = field(default_factory=dict)
    tokens: dict[str, Tensor] = field(default_factory=dict)
    node_ids: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        embeddings: Embeddings | Batch,
        present: Masks | None = None,
        padding: Masks | None = None,
        tokens: Tokens | None = None,
        node_ids: NodeIds | None = None,
    ) -> Batch:
        """Builds a batch, filling missing masks with "all present" and "no padding".

        Args:
            embeddings: Modality → native embeddings, or an existing batch (returned as is when
                no masks are given).
            present: Optional modality → ``[B]`` presence masks.
            padding: Optional modality → ``[B, T_m]`` padding masks (``True`` = real node).
            tokens: Optional modality → ``[B, L]`` hashed feature ids (``-1`` = padding).
            node_ids: Optional modality → ``[B, T]`` unit ids in order (``-1`` = padding).

        Returns:
            A batch whose ``present`` holds a mask for every modality in ``embeddings`` and whose
            ``padding`` holds a mask for every node input.
        """
        if isinstance(embeddings, Batch):
            if present is None and padding is None and tokens is None and node_ids is None:
                return embeddings
            present = {**embeddings.present, **(present or {})}
            padding = {**embeddings.padding, **(padding or {})}
            tokens = {**embeddings.tokens, **(tokens or {})}
            node_ids = {**embeddings.node_ids, **(node_ids or {})}
            embeddings = embeddings.embeddings
        present = dict(present or {})
        padding = dict(padding or {})
        tokens = dict(tokens or {})
        node_ids = dict(node_ids or {})
        for name in list(present) + list(padding) + list(tokens) + list(node_ids):
            if name not in embeddings:
                raise ValueError(
                    f"a mask is given for modality {name!r} but no embeddings are; pass "
                    f"embeddings for {name!r} or drop its mask (an absent modality needs no mask)"
                )
        out_present, out_padding = _filled_masks(embeddings, present, padding)
        for kind, given in (("tokens", tokens), ("node_ids", node_ids)):
            for name, ids in given.items():
                _check_ids(kind, name, ids, embeddings[name].shape[0])
        return cls(dict(embeddings), out_present, out_padding, tokens, node_ids)

    @property
    def batch_size(self) -> int:
        """Number of rows (items) in the batch."""
        return next(iter(self.embeddings.values())).shape[0]

    def validate(self, config: IMPNConfig) -> None:
        """Checks names, shapes, masks and values against a model configuration.

        Raises:
            ValueError: naming the modality (and row) at fault and how to fix the call, for an
                empty batch, an unknown modality, a wrong dimension, inconsistent batch sizes or
                mask shapes, NaN/Inf in a present row, a present row without any real node, or a
                row where every modality is absent.
        """
        rows = self._row_count(config)
        for name, x in self.embeddings.items():
            self._check_modality(name, x, config, rows)
        self._check_linked(rows)

    def _row_count(self, config: IMPNConfig) -> int:
        """The batch size, after checking that the batch holds a modality, that every modality
        has that many rows and that it is not 0."""
        if not self.embeddings:
            raise ValueError(
                "the batch holds no modality; pass at least one of "
                f"{sorted(config.modalities)} as {{name: tensor}}"
            )
        sizes = {name: x.shape[0] for name, x in self.embeddings.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"modalities disagree on the batch size: {sizes}; every modality needs one row "
                "per item (mark missing rows with a presence mask instead of dropping them)"
            )
        batch = next(iter(sizes.values()))
        if batch == 0:
            raise ValueError("the batch is empty (0 rows); pass at least one row")
        return batch

    def _check_modality(self, name: str, x: Tensor, config: IMPNConfig, batch: int) -> None:
        """Checks one modality's name, dimension, dtype and presence mask against ``config``,
        then its padding mask and values (:meth:`_check_values`).

        Shape:
            x ``[B, d_m]`` or ``[B, T_m, d_m]`` with ``B = batch``.
        """
        if name not in config.modalities:
            raise ValueError(
                f"unknown modality {name!r}; this model knows {sorted(config.modalities)}. "
                "Rename the key or train a model that includes this modality"
            )
        dim = config.modalities[name]
        if x.shape[-1] != dim:
            raise ValueError(
                f"modality {name!r} has dimension {x.shape[-1]} but the model expects {dim}; "
                f"pass the {dim}-d embeddings of the encoder the model was trained on"
            )
        if not (x.is_floating_point()):
            raise ValueError(
                f"embeddings for modality {name!r} have dtype {x.dtype}; pass floating-point "
                "values (e.g. x.float())"
            )
        present = self.present[name]
        if present.shape != (batch,):
            raise ValueError(
                f"presence mask of modality {name!r} has shape {tuple(present.shape)}; "
                f"expected ({batch},), one flag per row"
            )
        self._check_values(name, x, present)

    def _check_values(self, name: str, x: Tensor, present: Tensor) -> None:
        """Checks a node input's padding mask (its shape, and a real node in every present row),
        then that no present row (no real node of one) holds NaN or Inf.

        Shape:
            x ``[B, d_m]`` or ``[B, T_m, d_m]``, present ``[B]``.
        """
        if x.dim() == 3:
            pad = self.padding[name]
            if pad.shape != x.shape[:2]:
                raise ValueError(
                    f"padding mask of modality {name!r} has shape {tuple(pad.shape)}; "
                    f"expected {tuple(x.shape[:2])} ([batch, nodes], True = real node)"
                )
            empty = present & ~pad.any(dim=1)
            if bool(empty.any()):
                row = int(empty.nonzero()[0, 0])
                raise ValueError(
                    f"modality {name!r} is marked present in row {row} but all of its nodes "
                    "are padding; give the row at least one real node or mark it absent"
                )
            bad = (~torch.isfinite(x)).any(dim=-1) & pad & present[:, None]
            bad = bad.any(dim=1)
        else:
            bad = (~torch.isfinite(x)).any(dim=-1) & present
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"modality {name!r} has NaN or Inf values in row {row}; clean the input, or "
                "mark the row absent with present={name!r: mask} so that it is ignored"
            )

    def _check_linked(self, batch: int) -> None:
        """Checks that every one of the ``batch`` rows has at least one present modality."""
        any_present = torch.zeros(batch, dtype=torch.bool, device=self.present_device)
        for mask in self.present.values():
            any_present = any_present | mask.to(any_present.device)
        if not bool(any_present.all()):
            row = int((~any_present).nonzero()[0, 0])
            raise ValueError(
                f"every modality is absent in row {row}; each row needs at least one present "
                "modality to be linked (drop the row, or provide one of its embeddings)"
            )

    def pooled(self) -> dict[str, Tensor]:
        """Native embeddings pooled over real nodes: ``{m: [B, d_m]}``, zero in absent rows
        (whose values, NaN included, are ignored)."""
        from vallayz.functional import masked_mean

        out = {}
        for name, x in self.embeddings.items():
            if x.dim() == 3:
                keep = self.padding[name] & self.present[name][:, None]
                x = masked_mean(torch.where(keep[..., None], x, torch.zeros_like(x)), keep)
            else:
                x = torch.where(self.present[name][:, None], x, torch.zeros_like(x))
            out[name] = x
        return out

    def select(self, rows: Tensor) -> Batch:
        """The batch restricted to ``rows`` (an index or bool tensor over the batch)."""
        return Batch(
            {m: x[rows] for m, x in self.embeddings.items()},
            {m: x[rows] for m, x in self.present.items()},
            {m: x[rows] for m, x in self.padding.items()},
            {m: x[rows] for m, x in self.tokens.items()},
            {m: x[rows] for m, x in self.node_ids.items()},
        )

    @property
    def present_device(self) -> torch.device:
        """Device of the batch's tensors."""
        return next(iter(self.embeddings.values())).device


def _filled_masks(
    embeddings: Embeddings, present: dict[str, Tensor], padding: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Presence masks of every modality and padding masks of every node input, the given ones
    as bool tensors on their embeddings' device and the missing ones all ``True``, after
    checking that each input is a ``[B, d]`` or ``[B, T, d]`` tensor and that no pooled input
    has a padding mask.

    Shape:
        ``{m: [B, d_m] or [B, T_m, d_m]}`` → presence ``{m: [B]}``, padding ``{m: [B, T_m]}``.
    """
    out_present: dict[str, Tensor] = {}
    out_padding: dict[str, Tensor] = {}
    for name, x in embeddings.items():
        if not isinstance(x, Tensor):
            raise ValueError(
                f"embeddings for modality {name!r} are a {type(x).__name__}, not a "
                "torch.Tensor; convert them with torch.as_tensor(...)"
            )
        if x.dim() not in (2, 3):
            raise ValueError(
                f"embeddings for modality {name!r} have shape {tuple(x.shape)}; expected "
                "[batch, dim] (pooled) or [batch, nodes, dim] (a set or sequence)"
            )
        mask = present.get(name)
        out_present[name] = (
            torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            if mask is None
            else mask.to(device=x.device, dtype=torch.bool)
        )
        if x.dim() == 3:
            pad = padding.get(name)
            out_padding[name] = (
                torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                if pad is None
                else pad.to(device=x.device, dtype=torch.bool)
            )
        elif name in padding:
            raise ValueError(
                f"a padding mask is given for modality {name!r}, whose embeddings are pooled "
                f"{tuple(x.shape)}; padding masks are only for [batch, nodes, dim] inputs"
            )
    return out_present, out_padding


def _check_ids(kind: str, name: str, ids: object, rows: int) -> None:
    """Raises ``ValueError`` unless ``ids`` is an integer ``[rows, length]`` tensor."""
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex():
        raise ValueError(
            f"{kind} for modality {name!r} must be an integer torch.Tensor of ids "
            "([batch, length], -1 = padding); convert them with .long()"
        )
    if ids.dim() != 2 or ids.shape[0] != rows:
        raise ValueError(
            f"{kind} for modality {name!r} have shape {tuple(ids.shape)}; expected "
            f"[{rows}, length] (one row of ids per item, -1 = padding)"
        )
