"""Random dropout and corruption of inputs: which present modalities to hide in each row,
which hashed feature ids to withhold, which source of a query to corrupt."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from vallayz.functional import noise_at_snr
from vallayz.types import Batch


def drop_modalities(
    present: Mapping[str, Tensor],
    rate: float | Mapping[str, float],
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Draws which present modalities to drop, keeping at least one present per row.

    Each present modality of a row is dropped with probability ``rate`` (one value, or one per
    modality). Where that would drop every present modality of a row, one of them, chosen
    uniformly, is kept.

    Args:
        present: Modality → ``[B]`` presence mask.
        rate: Drop probability in ``[0, 1]``.
        generator: Optional random generator.

    Returns:
        Modality → ``[B]`` bool mask of the dropped entries (a subset of ``present``).

    Shape:
        ``{m: [B]}`` → ``{m: [B]}``.
    """
    names = list(present)
    rates = rate if isinstance(rate, Mapping) else dict.fromkeys(names, rate)
    for name in names:
        if not 0.0 <= rates.get(name, 0.0) <= 1.0:
            raise ValueError(f"drop rate of {name!r} must lie in [0, 1], got {rates[name]}")
    stacked = torch.stack([present[m].bool() for m in names], dim=1)
    device = stacked.device
    probs = torch.tensor([rates.get(m, 0.0) for m in names], device=device)
    draw = torch.rand(stacked.shape, generator=generator, device=device) < probs
    drop = draw & stacked
    emptied = ~(stacked & ~drop).any(dim=1) & stacked.any(dim=1)
    if bool(emptied.any()):
        # Keep one present modality, chosen uniformly, in rows that would lose them all.
        scores = torch.rand(stacked.shape, generator=generator, device=device)
        scores = scores.masked_fill(~stacked, -1.0)
        keep = torch.zeros_like(stacked).scatter(1, scores.argmax(dim=1, keepdim=True), True)
        drop = torch.where(emptied[:, None], stacked & ~keep, drop)
    return {m: drop[:, i] for i, m in enumerate(names)}


def drop_tokens(
    ids: Tensor,
    rate: float,
    generator: torch.Generator | None = None,
    row_rate: float = 0.0,
) -> Tensor:
    """Withholds each real hashed feature id with probability ``rate`` (marks it as padding),
    and every id of a row with probability ``row_rate``.

    A regulariser for embedding-bag front ends: a row cannot be recognised by one rare n-gram
    alone when that n-gram is missing from some of its passes. Apart from the rows drawn by
    ``row_rate``, a row keeps at least one of its ids (its first real id when every id was
    drawn). Rows drawn by ``row_rate`` are read from their native vector alone, as at test time
    when the ids are withheld from a noisy modality.

    Args:
        ids: Integer feature ids, ``-1`` = padding.
        rate: Drop probability of each id in ``[0, 1)``.
        generator: Optional random generator.
        row_rate: Drop probability of a whole row's ids in ``[0, 1)``.

    Returns:
        The ids with the dropped entries set to ``-1``.

    Shape:
        ``[B, L]`` → ``[B, L]``.
    """
    if not 0.0 <= rate < 1.0 or not 0.0 <= row_rate < 1.0:
        raise ValueError(f"token drop rates must lie in [0, 1), got {rate} and {row_rate}")
    if rate == 0.0 and row_rate == 0.0:
        return ids
    real = ids >= 0
    keep = real & (torch.rand(ids.shape, generator=generator, device=ids.device) >= rate)
    emptied = real.any(dim=1) & ~keep.any(dim=1)
    first = torch.zeros_like(real).scatter(1, real.int().argmax(dim=1, keepdim=True), True)
    keep = keep | (emptied[:, None] & first)
    rows = torch.rand(ids.shape[0], generator=generator, device=ids.device) < row_rate
    keep = keep & ~rows[:, None]
    return torch.where(keep, ids, torch.full_like(ids, -1))


def corrupt_one_source(
    batch: Batch,
    rate: float,
    snr_db: tuple[float, float] = (0.0, 20.0),
    generator: torch.Generator | None = None,
) -> Batch:
    """Corrupts one present source in a fraction of the rows, as the robustness sweeps corrupt
    a query: in each row, with probability ``rate``, one of its present modalities (chosen
    uniformly) gets white Gaussian noise at an SNR drawn uniformly from ``snr_db`` (see
    :func:`~vallayz.functional.noise_at_snr`), and loses its hashed-feature tokens and unit
    ids, which would carry the clean item past the noise.

    Args:
        batch: The sources.
        rate: Probability in ``[0, 1]`` that a row has a corrupted source.
        snr_db: Lowest and highest SNR in dB.
        generator: Random generator of the rows, sources, ratios and noise.

    Returns:
        A new batch; ``batch`` is not changed.

    Shape:
        ``{m: [B, d_m] or [B, T_m, d_m]}`` → the same.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    low, high = snr_db
    if not low <= high:
        raise ValueError(f"snr_db must be (lowest, highest), got {snr_db}")
    names = list(batch.embeddings)
    stacked = torch.stack([batch.present[m].bool() for m in names], dim=1)
    device = stacked.device
    hit = torch.rand(stacked.shape[0], generator=generator, device=device) < rate
    scores = torch.rand(stacked.shape, generator=generator, device=device)
    picked = scores.masked_fill(~stacked, -1.0).argmax(dim=1)
    snr = low + (high - low) * torch.rand(stacked.shape[0], generator=generator, device=device)
    embeddings, tokens, node_ids = dict(batch.embeddings), dict(batch.tokens), dict(batch.node_ids)
    for i, name in enumerate(names):
        rows = hit & (picked == i) & stacked[:, i]
        if not bool(rows.any()):
            continue
        x = embeddings[name]
        noisy = noise_at_snr(x, snr.to(x.device), generator)
        mask = rows.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
        embeddings[name] = torch.where(mask, noisy, x)
        for table in (tokens, node_ids):
            if name in table:
                ids = table[name]
                table[name] = torch.where(rows.to(ids.device)[:, None], -1, ids)
    return Batch(embeddings, dict(batch.present), dict(batch.padding), tokens, node_ids)
