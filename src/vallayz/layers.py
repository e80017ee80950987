"""Building blocks of IMPN: adapters, decoders, receptor gating and the bridge layer.

The bridge works on all nodes of all modalities packed into one tensor ``[B, N, d]``; which
modality a node belongs to is given by a ``same_modality`` matrix ``[N, N]``, which nodes are
real by a mask ``[B, N]``, and which nodes may send messages by a second mask ``[B, N]`` (real
nodes of *present* modalities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vallayz.functional import (
    attention_pool,
    hashed_bag_mean,
    sample_variants,
    sender_topk_weights,
    topk_softmax,
)


class ResidualMLP(nn.Module):
    """``W2·GELU(W1·LN(x)) + shortcut(x)``: the shape shared by adapters and decoders.

    Subclasses define :meth:`shortcut`. With ``norm=False`` the branch reads ``x`` itself
    (no LayerNorm); with ``branch=False`` there is no branch (no parameters either) and the
    module is its shortcut alone.

    Shape:
        ``[..., in_dim]`` → ``[..., out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int,
        dropout: float,
        norm: bool = True,
        branch: bool = True,
    ) -> None:
        super().__init__()
        self.branch = branch
        if branch:
            self.norm: nn.Module = nn.LayerNorm(in_dim) if norm else nn.Identity()
            self.up = nn.Linear(in_dim, hidden)
            self.down = nn.Linear(hidden, out_dim)
            self.dropout = nn.Dropout(dropout)

    def shortcut(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def zero_init_branch(self) -> None:
        """Set ``W2`` (and its bias) to zero: the module starts as its shortcut alone."""
        if not self.branch:
            return
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self.branch:
            return self.shortcut(x)
        return self.down(self.dropout(F.gelu(self.up(self.norm(x))))) + self.shortcut(x)


class Adapter(ResidualMLP):
    """Root of a modality into the soil: ``F(x) = W2·GELU(W1·LN(x)) + P·x``.

    ``P`` is a learned projection (bias-free, initialised with orthonormal columns or rows, where
    the orthogonality term is zero) when ``native_dim != soil_dim``, and the identity otherwise.
    ``norm=False`` drops the LayerNorm: ``F(x) = W2·GELU(W1·x) + P·x``. ``branch=False``
    drops the MLP branch: ``F(x) = P·x``, with ``P`` learned at every dimension (initialised as
    the identity when ``native_dim == soil_dim``), a linear adapter.

    Shape:
        ``[..., native_dim]`` → ``[..., soil_dim]``.
    """

    def __init__(
        self,
        native_dim: int,
        soil_dim: int,
        hidden: int,
        dropout: float = 0.0,
        norm: bool = True,
        branch: bool = True,
    ) -> None:
        super().__init__(native_dim, soil_dim, hidden, dropout, norm, branch)
        self.projection: nn.Linear | None = None
        if native_dim != soil_dim or not branch:
            self.projection = nn.Linear(native_dim, soil_dim, bias=False)
            if native_dim == soil_dim:
                nn.init.eye_(self.projection.weight)
            else:
                nn.init.orthogonal_(self.projection.weight)

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.projection is None else self.projection(x)


class NodeReader(nn.Module):
    """A modality's own reader of its nodes: ``x + W_o·Attn(LN(x))``, self-attention over the
    modality's real nodes, with ``W_o`` starting at zero (an untrained reader is the identity).
    It lets a sequence added to a model whose shared bridge never read one combine its nodes
    before they enter the bridge.

    Shape:
        states ``[B, T, d]``, real ``[B, T]`` (at least one real node per row) → ``[B, T, d]``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, states: Tensor, real: Tensor) -> Tensor:
        h = self.norm(states)
        read, _ = self.attention(h, h, h, key_padding_mask=~real, need_weights=False)
        return states + read


class PoolingReader(nn.Module):
    """A modality's own reader that pools its nodes into one: a learned position per node,
    ``x + W_o·Attn(LN(x))`` over the real nodes (``W_o`` starting at zero), then
    :func:`~vallayz.functional.attention_pool` by one learned query per head (starting at
    zero, so an untrained reader gives the mean of the real nodes). A sequence (speech frames)
    added to a model whose modalities were all one node each then enters the bridge as one
    node, the input its frozen layers were trained on.

    Args:
        dim: Width of a node.
        heads: Attention heads (divides ``dim``).
        positions: Most nodes per row.

    Shape:
        states ``[B, T, d]``, real ``[B, T]`` (at least one real node per row) → ``[B, d]``.
    """

    def __init__(self, dim: int, heads: int, positions: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(positions, dim))
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)
        self.query = nn.Parameter(torch.zeros(heads, dim // heads))

    def forward(self, states: Tensor, real: Tensor) -> Tensor:
        nodes, positions = states.shape[1], self.position.shape[0]
        if nodes > positions:
            raise ValueError(
                f"{nodes} nodes per row, but the pooling reader has positions for {positions}; "
                "cut the sequences or raise IMPNConfig.token_node_positions"
            )
        states = states + self.position[:nodes]
        h = self.norm(states)
        read, _ = self.attention(h, h, h, key_padding_mask=~real, need_weights=False)
        return attention_pool(states + read, real, self.query)


class FusionGate(nn.Module):
    """A score per source of a fused query, ``w·LN(z) + b`` on its pooled state after message
    passing, for a softmax over the present sources. ``w`` and ``b`` start at zero, so an
    untrained gate weighs the sources equally (the mean).

    Shape:
        states ``[B, d]`` → scores ``[B]``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, states: Tensor) -> Tensor:
        return self.score(self.norm(states)).squeeze(-1)


class HashedBag(nn.Module):
    """A trainable embedding-bag front end: the mean of learned vectors of a row's hashed
    features (n-grams, tokens), added to the modality's native embedding before its adapter.

    The table starts at zero, so an untrained front end leaves the native input unchanged and
    training learns what the fixed native vector misses.

    Args:
        buckets: Rows of the table; feature ids are taken modulo ``buckets``.
        dim: Width of each row (the modality's native dimension).

    Shape:
        ids ``[B, L]`` (``-1`` = padding) → ``[B, dim]``.
    """

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(buckets, dim))

    def forward(self, ids: Tensor) -> Tensor:
        return hashed_bag_mean(self.weight, ids.to(self.weight.device))


class TokenNodes(nn.Module):
    """Trainable token nodes: each id of a row's unit sequence (e.g. a line's syllables)
    becomes a soil-space node, the table row of the id plus a learned position embedding.

    Args:
        buckets: Rows of the table; ids are taken modulo ``buckets``.
        dim: Width of a node (the soil dimension).
        positions: Longest sequence; ids past it are an error.

    Shape:
        ids ``[B, T]`` (``-1`` = padding) → states ``[B, T, dim]`` and real ``[B, T]``.
    """

    def __init__(self, buckets: int, dim: int, positions: int) -> None:
        super().__init__()
        self.table = nn.Embedding(buckets, dim)
        self.position = nn.Parameter(torch.zeros(positions, dim))
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids.to(self.table.weight.device)
        if ids.shape[1] > self.position.shape[0]:
            raise ValueError(
                f"{ids.shape[1]} token nodes per row, but the model has positions for "
                f"{self.position.shape[0]}; cut the sequences or raise token_node_positions"
            )
        real = ids >= 0
        states = self.table(ids.clamp(min=0) % self.table.num_embeddings)
        states = states + self.position[: ids.shape[1]]
        return torch.where(real[..., None], states, torch.zeros_like(states)), real


class Decoder(ResidualMLP):
    """Maps pooled soil states back to a native space: ``D(z) = W2·GELU(W1·LN(z)) + Q·z``.

    Shape:
        ``[..., soil_dim]`` → ``[..., native_dim]``.
    """

    def __init__(self, soil_dim: int, native_dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(soil_dim, native_dim, hidden, dropout)
        self.skip = nn.Linear(soil_dim, native_dim)

    def shortcut(self, z: Tensor) -> Tensor:
        return self.skip(z)


class Carry(nn.Module):
    """A modality's carried source code and its decoder's read of one.

    ``encode(x) = GELU(W1·LN(x))`` maps the modality's pooled native input into the carry
    space shared by every modality (the first half of a pairwise MLP translator); ``read(c) =
    W2·c`` maps a code into this modality's native space (the second half), with ``W2`` and
    its bias starting at zero, so that an untrained carry adds nothing to a decoded vector.

    Shape:
        ``encode``: ``[B, native_dim]`` → ``[B, width]``; ``read``: ``[B, width]`` →
        ``[B, native_dim]``.
    """

    def __init__(self, native_dim: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(native_dim)
        self.up = nn.Linear(native_dim, width)
        self.down = nn.Linear(width, native_dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def encode(self, x: Tensor) -> Tensor:
        return F.gelu(self.up(self.norm(x)))

    def read(self, code: Tensor) -> Tensor:
        return self.down(code)


class ReceptorGate(nn.Module):
    """Scores incoming variants: ``g_ij = MLP([a_i; v_j; <a_i, v_j>/sqrt(d)])``.

    The first linear layer of the MLP acts on a concatenation, so it splits exactly into a
    receiver part, a sender part and a weight on the scaled dot product; this avoids building
    the ``[B, N_r, N_s, 2d + 1]`` input.

    Shape:
        receivers ``[B, N_r, d]``, senders ``[B, N_s, d]`` → logits ``[B, N_r, N_s]``.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.receiver = nn.Linear(dim, hidden)
        self.sender = nn.Linear(dim, hidden, bias=False)
        self.dot = nn.Parameter(torch.empty(hidden))
        self.out = nn.Linear(hidden, 1)
        self.scale = 1.0 / math.sqrt(dim)
        nn.init.normal_(self.dot, std=1.0 / math.sqrt(2 * dim + 1))

    def forward(self, receivers: Tensor, senders: Tensor) -> Tensor:
        dot = torch.einsum("bid,bjd->bij", receivers, senders) * self.scale
        return self.score(
            self.receiver(receivers).unsqueeze(2), self.sender(senders).unsqueeze(1), dot
        )

    def score(self, receiver: Tensor, sender: Tensor, dot: Tensor) -> Tensor:
        """The MLP from the parts of its first layer: the receiver part ``W_a a + b``, the sender
        part ``W_v v`` and the scaled dot product, broadcast against each other.

        Shape:
            receiver ``[..., hidden]``, sender ``[..., hidden]``, dot ``[...]`` → ``[...]``.
        """
        hidden = receiver + sender + dot.unsqueeze(-1) * self.dot
        return self.out(F.gelu(hidden)).squeeze(-1)

    def first_layer(self) -> tuple[Tensor, Tensor]:
        """The first layer as one matrix ``[hidden, 2d + 1]`` on ``[a; v; <a, v>/sqrt(d)]``, and
        its bias."""
        weight = torch.cat([self.receiver.weight, self.sender.weight, self.dot[:, None]], dim=1)
        return weight, self.receiver.bias


SELECTIONS = ("senders", "variants")
"""What receptor gating's top-k counts: sender nodes (each with its ``K`` variants combined),
or single variants (the earlier reading, kept as an ablation)."""


@dataclass
class CrossModalResult:
    """What one gated cross-modal step produced.

    Attributes:
        states: Updated node states ``[B, N, d]``.
        weights: Gate weights ``[B, N, N*K]``: receiver node × incoming variant, variant ``j``
            coming from sender node ``j // K``. At most ``top_k`` senders per receiver carry
            weight.
        message: Aggregated message ``m_i`` per node ``[B, N, d]``.
        clean_message: The message recomputed from clean senders (``K = 1``, ``sigma = 0``),
            when asked for (denoising loss); else ``None``.
    """

    states: Tensor
    weights: Tensor
    message: Tensor
    clean_message: Tensor | None


class CrossModalPassing(nn.Module):
    """Gated cross-modal message passing (receptor gating, TopK-softmax, aggregation, update).

    Each receiving node ``a_i`` scores every micro-variant ``v_jk`` of every real node ``j`` of
    every *other*, *present* modality with the receptor gate. Selection is over sender nodes:
    the ``top_k`` best senders are kept (softmax at ``temperature`` over their pooled scores),
    and each kept sender's ``K`` variants are combined by their gate weights within the sender
    (see :func:`~vallayz.functional.sender_topk_weights`). With ``candidates``, each receiver
    scores only that many senders (those whose clean states have the largest dot product with
    its own), so the gate's cost grows linearly, not quadratically, with the nodes. The message
    ``m_i = sum_jk w_ij alpha_ijk W_v v_jk`` updates ``a_i <- a_i + W_o m_i`` (residual) or
    ``a_i <- GRU(m_i, a_i)``. With ``K = 1`` and ``sigma = 0`` this is a deterministic gated
    layer.

    Shape:
        states ``[B, N, d]``, senders ``[B, N]``, same_modality ``[N, N]``, sigma ``[N]``
        → states ``[B, N, d]``, weights ``[B, N, N*K]``.
    """

    def __init__(
        self,
        dim: int,
        gate_hidden: int,
        top_k: int,
        temperature: float,
        update: str,
        selection: str = "senders",
        candidates: int | None = None,
    ) -> None:
        super().__init__()
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if candidates is not None and candidates < 1:
            raise ValueError(f"candidates must be None or >= 1, got {candidates}")
        self.top_k = top_k
        self.candidates = candidates
        self.temperature = temperature
        self.selection = selection
        self.norm = nn.LayerNorm(dim)
        self.gate = ReceptorGate(dim, gate_hidden)
        self.value = nn.Linear(dim, dim, bias=False)
        self.update = update
        self.out: nn.Linear | None = None
        self.gru: nn.GRUCell | None = None
        if update == "residual":
            self.out = nn.Linear(dim, dim, bias=False)
        elif update == "gru":
            self.gru = nn.GRUCell(dim, dim)
        else:
            raise ValueError(f"update must be 'residual' or 'gru', got {update!r}")

    def aggregate(
        self, receivers: Tensor, variants: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Scores, selects and aggregates incoming variants.

        Shape:
            receivers ``[B, N, d]``, variants ``[B, S, K, d]``, valid ``[B, N, S]``
            → message ``[B, N, d]``, weights ``[B, N, S*K]``.
        """
        (message,), (weights,) = self._aggregate_groups(receivers, [variants], valid)
        return message, weights

    def _aggregate_groups(
        self, receivers: Tensor, groups: list[Tensor], valid: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """:meth:`aggregate` of several groups of variants of the same senders (e.g. the noisy
        ones and the clean ones), with one gate evaluation and one value projection for all.

        ``W_v`` is linear and bias-free, so it is applied once to each aggregated message
        (``sum_j w_j W_v v_j = W_v sum_j w_j v_j``) rather than to every variant. With
        ``candidates`` below the number of senders, the gate scores only the ``candidates``
        senders per receiver whose clean states have the largest dot product with it.

        Shape:
            receivers ``[B, N, d]``, groups ``[B, S, K_g, d]`` each, valid ``[B, N, S]``
            → messages ``[B, N, d]`` and weights ``[B, N, S*K_g]`` per group.
        """
        senders = groups[0].shape[1]
        if self.candidates is not None and self.candidates < senders:
            chosen = self._candidates(receivers, valid, self.candidates)
            weights = [self._bounded_weights(receivers, group, valid, chosen) for group in groups]
        else:
            flats = [group.flatten(1, 2) for group in groups]
            logits = self.gate(receivers, torch.cat(flats, dim=1) if len(flats) > 1 else flats[0])
            parts = logits.split([flat.shape[1] for flat in flats], dim=-1)
            weights = [
                self._select(scores, senders, group.shape[2], valid)
                for group, scores in zip(groups, parts, strict=True)
            ]
        messages = torch.stack([w @ g.flatten(1, 2) for w, g in zip(weights, groups, strict=True)])
        return list(self.value(messages).unbind(0)), weights

    @staticmethod
    def _candidates(receivers: Tensor, valid: Tensor, count: int) -> Tensor:
        """Indices ``[B, N, count]`` of each receiver's candidate senders: the valid ones whose
        (clean, normalised) states have the largest dot product with the receiver's.

        Shape:
            receivers ``[B, N, d]``, valid ``[B, N, S]`` → ``[B, N, count]``.
        """
        with torch.no_grad():
            affinity = receivers @ receivers.transpose(1, 2)
            affinity = affinity.masked_fill(~valid, float("-inf"))
            return affinity.topk(count, dim=-1).indices

    def _bounded_weights(
        self, receivers: Tensor, group: Tensor, valid: Tensor, chosen: Tensor
    ) -> Tensor:
        """Gate weights when each receiver scores only its candidate senders ``chosen``; zero
        for every other sender.

        Shape:
            receivers ``[B, N, d]``, group ``[B, S, K, d]``, valid ``[B, N, S]``,
            chosen ``[B, N, C]`` → ``[B, N, S*K]``.
        """
        batch, senders, variants, _ = group.shape
        nodes, count = chosen.shape[1:]
        # Sender part of the gate for every variant, then the candidates' rows for each receiver.
        sender = self.gate.sender(group).flatten(0, 1)
        offset = torch.arange(batch, device=chosen.device)[:, None, None] * senders
        sender = sender.index_select(0, (chosen + offset).flatten())
        sender = sender.view(batch, nodes, count, variants, -1)
        dot = torch.einsum("bnd,bskd->bnsk", receivers, group) * self.gate.scale
        by_variant = chosen[..., None].expand(-1, -1, -1, variants)
        dot = dot.gather(2, by_variant)
        receiver = self.gate.receiver(receivers)[:, :, None, None]
        logits = self.gate.score(receiver, sender, dot).flatten(-2)
        kept = self._select(logits, count, variants, valid.gather(2, chosen))
        weights = torch.zeros(batch, nodes, senders, variants, dtype=kept.dtype, device=kept.device)
        return weights.scatter(2, by_variant, kept.view_as(dot)).flatten(-2)

    def _select(self, logits: Tensor, senders: int, variants: int, valid: Tensor) -> Tensor:
        """Gate weights ``[B, N, S*K]`` from gate logits ``[B, N, S*K]`` (see ``selection``)."""
        if self.selection == "variants":
            every = valid.repeat_interleave(variants, dim=-1)
            return topk_softmax(logits, every, self.top_k, self.temperature)
        per_sender = logits.reshape(*logits.shape[:-1], senders, variants)
        return sender_topk_weights(per_sender, valid, self.top_k, self.temperature).flatten(-2)

    def apply_update(self, states: Tensor, message: Tensor) -> Tensor:
        """Residual or GRU state update of every node with its message."""
        if self.out is not None:
            return states + self.out(message)
        assert self.gru is not None
        flat = self.gru(
            message.reshape(-1, message.shape[-1]), states.reshape(-1, states.shape[-1])
        )
        return flat.reshape(states.shape)

    def forward(
        self,
        states: Tensor,
        senders: Tensor | None,
        same_modality: Tensor,
        sigma: Tensor | None,
        variants: int = 1,
        generator: torch.Generator | None = None,
        clean: bool = False,
    ) -> CrossModalResult:
        """One gated cross-modal step; ``sigma=None`` sends the clean states (no noise), and
        ``senders=None`` sends nothing (every message is zero; no gate is evaluated)."""
        if senders is None:
            silent = torch.zeros_like(states)
            nodes = states.shape[1]
            weights = states.new_zeros(states.shape[0], nodes, nodes * variants)
            # A residual update of a zero message is the identity (W_o has no bias).
            updated = states if self.out is not None else self.apply_update(states, silent)
            return CrossModalResult(updated, weights, silent, silent if clean else None)
        normed = self.norm(states)
        valid = senders[:, None, :] & ~same_modality[None]
        if sigma is None:
            noisy = normed.unsqueeze(2).expand(-1, -1, variants, -1)
        else:
            noisy = sample_variants(normed, sigma, variants, generator)
        groups = [noisy, normed.unsqueeze(2)] if clean else [noisy]
        messages, group_weights = self._aggregate_groups(normed, groups, valid)
        clean_message = messages[1] if clean else None
        return CrossModalResult(
            self.apply_update(states, messages[0]), group_weights[0], messages[0], clean_message
        )


class AbsentInit(nn.Module):
    """Initial states of an absent modality's nodes, read from the present ones.

    Every node (its seed state as the query) attends over the sending nodes of the row (the
    real nodes of the present modalities) and over itself, so a row with no sender keeps its
    seed; the result is added to the seed through a projection that starts at zero, so an
    untrained model starts from the plain seeds. The caller applies it to absent nodes only.

    Shape:
        states ``[B, N, d]``, senders ``[B, N]`` → ``[B, N, d]`` (the increment).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, states: Tensor, senders: Tensor) -> Tensor:
        batch, nodes, dim = states.shape
        normed = self.norm(states)
        q = self.query(normed).reshape(batch, nodes, self.heads, -1).transpose(1, 2)
        k, v = (
            self.key_value(normed).reshape(batch, nodes, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        )
        eye = torch.eye(nodes, dtype=torch.bool, device=states.device)
        mask = senders[:, None, :] | eye[None]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self.proj(attended.transpose(1, 2).reshape(batch, nodes, dim))


class SelfAttention(nn.Module):
    """Pre-LN multi-head self-attention among the real nodes of each modality, with a residual.

    A node attends to the real nodes of its own modality (and always to itself, so that
    padding nodes stay finite).

    Shape:
        states ``[B, N, d]``, real ``[B, N]``, same_modality ``[N, N]`` → ``[B, N, d]``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(
        self, states: Tensor, real: Tensor, same_modality: Tensor, single_nodes: bool = False
    ) -> Tensor:
        """``single_nodes=True`` promises that every modality holds one node: each node then
        attends to itself alone, the attention output is its own value, and queries and keys
        are not computed (the same result; with attention dropout in training the general
        path runs)."""
        batch, nodes, dim = states.shape
        if single_nodes and not (self.training and self.dropout > 0):
            values = F.linear(
                self.norm(states), self.qkv.weight[2 * dim :], self.qkv.bias[2 * dim :]
            )
            return states + self.proj(values)
        qkv = self.qkv(self.norm(states)).reshape(batch, nodes, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        eye = torch.eye(nodes, dtype=torch.bool, device=states.device)
        mask = (same_modality[None] & real[:, None, :]) | eye[None]
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return states + self.proj(attended.transpose(1, 2).reshape(batch, nodes, dim))


class FeedForward(nn.Module):
    """Pre-LN feed-forward block with a residual.

    Shape:
        ``[B, N, d]`` → ``[B, N, d]``.
    """

    def __init__(self, dim: int, mult: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, mult * dim)
        self.down = nn.Linear(mult * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, states: Tensor) -> Tensor:
        return states + self.down(self.dropout(F.gelu(self.up(self.norm(states)))))


class BridgeLayer(nn.Module):
    """Self-attention within each modality → gated cross-modal passing → feed-forward.

    ``attention=False`` or ``ffn=False`` leaves that block out (for ablations): the states pass
    it unchanged and it has no parameters.

    Shape:
        states ``[B, N, d]`` → ``[B, N, d]`` (see :class:`CrossModalPassing` for the masks).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        gate_hidden: int,
        top_k: int,
        temperature: float,
        update: str,
        ffn_mult: int,
        dropout: float = 0.0,
        selection: str = "senders",
        candidates: int | None = None,
        attention: bool = True,
        ffn: bool = True,
    ) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, heads, dropout) if attention else None
        self.cross = CrossModalPassing(
            dim, gate_hidden, top_k, temperature, update, selection, candidates
        )
        self.ffn = FeedForward(dim, ffn_mult, dropout) if ffn else None

    def zero_init_residual(self) -> None:
        """Set the last projection of every residual branch (attention, residual message
        update, feed-forward) to zero, making the layer the identity until it is trained. A
        GRU update has no residual branch and is left as it is."""
        branches = [
            branch
            for branch in (
                self.attention.proj if self.attention is not None else None,
                self.ffn.down if self.ffn is not None else None,
                self.cross.out,
            )
            if branch is not None
        ]
        for linear in branches:
            nn.init.zeros_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(
        self,
        states: Tensor,
        real: Tensor,
        senders: Tensor | None,
        same_modality: Tensor,
        sigma: Tensor | None,
        variants: int = 1,
        generator: torch.Generator | None = None,
        clean: bool = False,
        single_nodes: bool = False,
    ) -> CrossModalResult:
        """One layer; ``single_nodes=True`` promises that every modality holds one node (see
        :meth:`SelfAttention.forward`)."""
        if self.attention is not None:
            states = self.attention(states, real, same_modality, single_nodes)
        result = self.cross(states, senders, same_modality, sigma, variants, generator, clean)
        if self.ffn is not None:
            result.states = self.ffn(result.states)
        return result


class MatchHead(nn.Module):
    """Scores how well two pooled soil states of one joint pass belong together.

    ``score(u, v) = w · GELU(W [u * v; |u - v|; u + v] + b) + c``: symmetric in ``u`` and ``v``,
    so a joint pass of query and candidate scores both retrieval directions alike.

    Shape:
        u ``[B, d]``, v ``[B, d]`` → ``[B]``.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(3 * dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        u, v = self.norm(u), self.norm(v)
        features = torch.cat([u * v, (u - v).abs(), u + v], dim=-1)
        return self.out(F.gelu(self.up(features))).squeeze(-1)
