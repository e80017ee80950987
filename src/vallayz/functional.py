"""Pure tensor functions of IMPN message passing, wrapped by the modules of `vallayz.layers`."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor


def sample_variants(
    senders: Tensor,
    sigma: Tensor,
    variants: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Emits ``variants`` noisy copies ``s + sigma * eps`` of every sending node.

    Args:
        senders: Sending node states.
        sigma: Noise scale per node (broadcast against ``senders[..., 0]``), or a scalar.
        variants: Number ``K`` of copies per node.
        generator: Optional random generator for reproducible draws.

    Returns:
        The micro-variants. With ``variants == 1`` and ``sigma == 0`` they equal ``senders``
        (the noise is drawn all the same: whether ``sigma`` is zero is not read back from its
        device; callers that know it is zero skip the call and copy the senders).

    Shape:
        senders ``[B, N, d]``, sigma ``[N]`` or ``[]`` → ``[B, N, K, d]``.
    """
    if variants < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    expanded = senders.unsqueeze(2).expand(*senders.shape[:2], variants, senders.shape[-1])
    eps = torch.randn(
        expanded.shape, generator=generator, device=senders.device, dtype=senders.dtype
    )
    scale = sigma.to(senders.dtype)
    if scale.dim() == 1:
        scale = scale[None, :, None, None]
    return expanded + scale * eps


def topk_softmax(scores: Tensor, valid: Tensor, k: int, temperature: float) -> Tensor:
    """Keeps the ``k`` largest valid scores per row, renormalises them with a softmax at
    ``temperature`` and zeroes the rest.

    A row with fewer than ``k`` valid entries keeps all of them; a row with none gets all-zero
    weights (its receiver gets no message).

    Args:
        scores: Gate logits ``g_ij`` of receiver ``i`` for incoming variant ``j``.
        valid: ``True`` where variant ``j`` may reach receiver ``i``.
        k: Number of entries kept per row (``k >= 1``).
        temperature: Softmax temperature ``T > 0``.

    Returns:
        Weights ``w_ij``; each row sums to 1 over at most ``k`` non-zero entries (or is all zero).

    Shape:
        scores ``[..., N]``, valid ``[..., N]`` → ``[..., N]``.
    """
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    masked = scores.masked_fill(~valid, float("-inf"))
    kept = min(k, scores.shape[-1])
    top, index = masked.topk(kept, dim=-1)
    any_valid = torch.isfinite(top[..., :1])
    # A row without valid entries would give softmax(-inf, ...) = NaN; give it zeros instead.
    safe = torch.where(any_valid, top, torch.zeros_like(top))
    weights = torch.softmax(safe / temperature, dim=-1)
    weights = torch.where(torch.isfinite(top), weights, torch.zeros_like(weights))
    return torch.zeros_like(scores).scatter(-1, index, weights)


def sender_topk_weights(logits: Tensor, valid: Tensor, k: int, temperature: float) -> Tensor:
    """Top-k selection over *senders*, each sender's ``K`` micro-variants combined into its message.

    Within sender ``j``, receiver ``i`` weighs the variants by ``alpha_ijk = softmax_k(g_ijk / T)``;
    the sender's score is ``s_ij = T * log(mean_k exp(g_ijk / T))`` (``= g_ij`` when ``K = 1``);
    :func:`topk_softmax` keeps the ``k`` best senders per receiver and gives them weights
    ``w_ij``. The weight of variant ``k`` of sender ``j`` is ``w_ij * alpha_ijk``. Selection thus
    counts sender nodes, whatever ``K``, with the same semantics in training (``K > 1``) and
    evaluation (``K = 1``); when nothing is truncated it equals one softmax over every incoming
    variant.

    Args:
        logits: Gate logits ``g_ijk`` of receiver ``i`` for variant ``k`` of sender ``j``.
        valid: ``True`` where sender ``j`` may reach receiver ``i``.
        k: Number of senders kept per receiver (``k >= 1``).
        temperature: Softmax temperature ``T > 0``.

    Returns:
        Weights ``[..., S, K]``; per receiver they sum to 1 over the variants of at most ``k``
        senders (or are all zero when no sender is valid).

    Shape:
        logits ``[..., S, K]``, valid ``[..., S]`` → ``[..., S, K]``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = logits / temperature
    within = torch.softmax(scaled, dim=-1)
    score = temperature * (torch.logsumexp(scaled, dim=-1) - math.log(logits.shape[-1]))
    return topk_softmax(score, valid, k, temperature).unsqueeze(-1) * within


def masked_mean(nodes: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real (unmasked) nodes of each row.

    Args:
        nodes: Node states.
        mask: ``True`` marks a real node; every row needs at least one.

    Returns:
        The pooled states.

    Shape:
        nodes ``[B, T, d]``, mask ``[B, T]`` → ``[B, d]``.
    """
    weights = mask.to(nodes.dtype).unsqueeze(-1)
    return (nodes * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def attention_pool(states: Tensor, real: Tensor, query: Tensor) -> Tensor:
    """Multi-head attention pooling of a row's nodes by one learned query.

    The state width is cut into ``H`` equal chunks; head ``h`` scores every real node by the
    dot product of its chunk with ``query[h]`` (scaled by ``1/sqrt(d/H)``), and returns the
    softmax-weighted mean of the chunks. Values are the states themselves, so one real node
    pools to itself, and a zero query pools to the mean of the real nodes.

    Args:
        states: Node states.
        real: ``True`` marks a real node; every row needs at least one.
        query: One query per head.

    Returns:
        The pooled states, the heads' chunks side by side.

    Shape:
        states ``[B, T, d]``, real ``[B, T]``, query ``[H, d/H]`` → ``[B, d]``.
    """
    batch, nodes, width = states.shape
    heads, chunk = query.shape
    if heads * chunk != width:
        raise ValueError(
            f"query {tuple(query.shape)} does not cut states of width {width} into heads; "
            "give one query of width d/H per head"
        )
    split = states.reshape(batch, nodes, heads, chunk)
    scores = torch.einsum("bthc,hc->bth", split, query.to(states.dtype)) / math.sqrt(chunk)
    scores = scores.masked_fill(~real[..., None], float("-inf"))
    weights = torch.softmax(scores, dim=1)
    return torch.einsum("bth,bthc->bhc", weights, split).reshape(batch, width)


def latent_mixup(latents: list[Tensor], lam: Tensor | float, order: Tensor) -> list[Tensor]:
    """Mixup of paired latents: row ``i`` of every tensor becomes
    ``lam · x[i] + (1 − lam) · x[order[i]]``, with one ``lam`` and one ``order`` for all of
    them, so a row of one modality stays paired with the same row of the others.

    Args:
        latents: Row-aligned latents of the modalities of one pair (or more).
        lam: Mixing weight in ``[0, 1]``.
        order: A permutation of the rows: each row's mixing partner.

    Returns:
        The mixed latents, in the same order.

    Shape:
        ``[[n, d_m]]``, ``[]``, ``[n]`` → ``[[n, d_m]]``.
    """
    return [lam * x + (1 - lam) * x[order] for x in latents]


def mean_over_present(values: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
    """Per row, the mean of the vectors of the modalities present in that row.

    Args:
        values: Modality → vectors ``[B, d]`` (one space for all modalities).
        present: Modality → ``[B]`` bool; every row needs at least one present modality.

    Returns:
        ``[B, d]``.

    Shape:
        ``{m: [B, d]}``, ``{m: [B]}`` → ``[B, d]``.
    """
    total: Tensor | None = None
    count: Tensor | None = None
    for name, x in values.items():
        weight = present[name].to(device=x.device, dtype=x.dtype)[:, None]
        # where(), not a product: an absent row may hold NaN or Inf.
        term = torch.where(weight > 0, x, torch.zeros_like(x))
        total = term if total is None else total + term
        count = weight if count is None else count + weight
    if total is None or count is None:
        raise ValueError("mean_over_present needs at least one modality")
    return total / count


def softmax_over_present(
    values: Mapping[str, Tensor], scores: Mapping[str, Tensor], present: Mapping[str, Tensor]
) -> Tensor:
    """Per row, the mean of the present modalities' vectors weighted by the softmax of their
    scores over the present modalities; equal scores give :func:`mean_over_present`.

    Args:
        values: Modality → vectors ``[B, d]`` (one space for all modalities).
        scores: Modality → ``[B]`` score of each vector.
        present: Modality → ``[B]`` bool; every row needs at least one present modality.

    Returns:
        ``[B, d]``.

    Shape:
        ``{m: [B, d]}``, ``{m: [B]}``, ``{m: [B]}`` → ``[B, d]``.
    """
    names = list(values)
    if not names:
        raise ValueError("softmax_over_present needs at least one modality")
    stacked = torch.stack([values[m] for m in names], dim=1)
    device = stacked.device
    kept = torch.stack([present[m].to(device) for m in names], dim=1)
    logits = torch.stack([scores[m].to(stacked.dtype) for m in names], dim=1)
    weights = torch.softmax(logits.masked_fill(~kept, float("-inf")), dim=1)
    # where(), not a product: an absent row may hold NaN or Inf.
    stacked = torch.where(kept[..., None], stacked, torch.zeros_like(stacked))
    return (weights[..., None] * stacked).sum(dim=1)


def noise_at_snr(
    x: Tensor, snr_db: Tensor | float, generator: torch.Generator | None = None
) -> Tensor:
    """``x`` plus white Gaussian noise at signal-to-noise ratio ``snr_db`` per row: the noise
    power of a row is its mean squared value divided by ``10^(snr_db / 10)``.

    Args:
        x: Rows to corrupt.
        snr_db: One ratio in dB, or one per row ``[N]``.
        generator: Random generator of the noise.

    Shape:
        ``[N, ..., d]``, ``[N]`` or scalar → ``[N, ..., d]``.
    """
    dims = tuple(range(1, x.dim()))
    power = x.pow(2).mean(dim=dims, keepdim=True)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if isinstance(snr_db, Tensor):
        snr_db = snr_db.to(x).reshape(-1, *([1] * len(dims)))
    return x + noise * (power / 10 ** (snr_db / 10)).sqrt()


def mean_of_present_sources(
    values: Mapping[str, Tensor], present: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """Per row, the mean of the vectors of the modalities present in that row, and zero where
    none is (unlike :func:`mean_over_present`, which needs one in every row).

    Args:
        values: Modality → vectors ``[B, d]`` (one space for all modalities); at least one.
        present: Modality → ``[B]`` bool.

    Returns:
        The means ``[B, d]`` and ``[B]`` bool, whether the row holds any present modality.

    Shape:
        ``{m: [B, d]}``, ``{m: [B]}`` → ``[B, d]``, ``[B]``.
    """
    if not values:
        raise ValueError("mean_of_present_sources needs at least one modality")
    first = next(iter(values.values()))
    total = torch.zeros_like(first)
    count = first.new_zeros(first.shape[0], 1)
    for name, x in values.items():
        weight = present[name].to(device=x.device)[:, None]
        # where(), not a product: an absent row may hold NaN or Inf.
        total = total + torch.where(weight, x, torch.zeros_like(x))
        count = count + weight.to(x.dtype)
    return total / count.clamp_min(1.0), count[:, 0] > 0


def hashed_bag_mean(table: Tensor, ids: Tensor) -> Tensor:
    """Per row, the mean of the table rows of its hashed feature ids (``-1`` = padding).

    Ids are reduced modulo the table size, so features hashed into a larger space (e.g. 2^18
    buckets) share rows of a smaller table. A row without any id gets zeros.

    Args:
        table: One learned vector per bucket.
        ids: Integer feature ids; negative entries are padding.

    Returns:
        The mean vector of each row's features.

    Shape:
        table ``[buckets, d]``, ids ``[B, L]`` → ``[B, d]``.
    """
    real = ids >= 0
    count = real.sum(dim=1, keepdim=True).clamp_min(1)
    weights = (real / count).to(table.dtype)
    index = torch.where(real, ids % table.shape[0], torch.zeros_like(ids))
    return torch.nn.functional.embedding_bag(index, table, mode="sum", per_sample_weights=weights)
