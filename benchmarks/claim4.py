"""Claim 4 of the method, checked numerically on a bridge layer (seconds on a CPU).

(a) **Deterministic limit.** With ``K = 1`` micro-variant and ``σ = 0`` a bridge layer must be a
    plain feed-forward computation. A plain module of the same shape is built from ordinary
    layers (an ``nn.Sequential`` gate MLP on ``[a; v; ⟨a, v⟩/√d]``, a top-k softmax, the value
    map, the residual update, the feed-forward block), its weights copied from the bridge, and
    both are run on the same states; the table gives the largest absolute difference. ``K = 8``
    clean copies must give the same output as ``K = 1``.

(b) **Kernel smoothing.** For the message ``φ(s)`` a receiver node gets from one sender whose
    (normalised) state is ``s``, the noise-averaged message ``E[φ(s + σε)]``, ``ε ~ N(0, I)``,
    is compared with ``φ(s) + ½σ²·Tr(∇²φ(s))``, the Hessian trace estimated by central finite
    differences (and checked against autograd). The expectation is computed by a fully
    symmetric degree-5 cubature rule for the standard normal (``2d² + 1`` points, exact for
    polynomials up to degree 5), so its own error is ``O(σ⁶)`` and the remainder of the
    expansion shows through. The layer's own noisy path is measured too: ``K`` micro-variants of
    the sender, combined by the layer's gate weights, averaged over repeated draws.

Norms ``‖·‖∞`` are the largest absolute difference over the message's components. The "order"
columns are the measured exponent ``p`` of ``error ∝ σ^p`` between successive ``σ``
(``log(e₁/e₂) / log(σ₁/σ₂)``): 4 means the error shrinks as ``σ⁴``, 2 as ``σ²``.

Usage::

    python benchmarks/claim4.py                     # a tiny IMPN trained here for a few seconds
    python benchmarks/claim4.py --run RUN_DIR       # the first bridge layer of a trained IMPN run
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vallayz import IMPN, IMPNConfig
from vallayz.functional import sample_variants
from vallayz.layers import BridgeLayer
from vallayz.losses import IMPNLoss
from vallayz.types import Batch

SIGMAS = (0.4, 0.2, 0.1, 0.05, 0.025)
# Senders of the receiver node; at most the layer's top_k, so selection keeps every sender
# and φ is smooth (a sender entering or leaving the top-k is a kink of φ).
SENDERS = 3
EXPANSION = "‖E[φ] − (φ(s) + ½σ²Tr∇²φ)‖∞"
LAYER = "‖layer, K → ∞ − (φ(s) + ½σ²Tr∇²φ)‖∞"


def train_tiny_bridge(steps: int = 60, seed: int = 0) -> BridgeLayer:
    """The first bridge layer of a small IMPN trained for ``steps`` AdamW steps on two
    synthetic modalities related by a fixed non-linear map (a few seconds on a CPU)."""
    torch.manual_seed(seed)
    config = IMPNConfig(
        modalities={"a": 16, "b": 12},
        soil_dim=16,
        hidden_dim=32,
        layers=1,
        heads=2,
        variants=2,
        sigma=0.05,
        top_k=4,
        gate_hidden=8,
    )
    model = IMPN(config)
    mixing = torch.randn(16, 12) / 4
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    objective = IMPNLoss()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        a = torch.randn(128, 16)
        batch = Batch.of({"a": a, "b": torch.tanh(a @ mixing) + 0.05 * torch.randn(128, 12)})
        optimizer.zero_grad(set_to_none=True)
        objective(model, batch, generator).total.backward()
        optimizer.step()
    layer = model.layers[0]
    assert isinstance(layer, BridgeLayer)
    return layer


def run_bridge(path: str | Path, index: int = 0) -> BridgeLayer:
    """Bridge layer ``index`` of a trained IMPN run (safetensors + JSON)."""
    from vallayz_train.run_folder import load_model

    model = load_model(path)
    if not isinstance(model, IMPN):
        raise ValueError(f"{path} holds a {type(model).__name__}, not an IMPN; name an IMPN run")
    if not 0 <= index < len(model.layers):
        raise ValueError(f"--layer must be in 0..{len(model.layers) - 1}, got {index}")
    layer = model.layers[index]
    assert isinstance(layer, BridgeLayer)
    return layer


def layout(dim: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Node 0 of one modality receives from ``SENDERS`` nodes of another.

    Returns:
        states ``[1, N, dim]`` (random), real ``[1, N]``, senders ``[1, N]``, same_modality
        ``[N, N]``, all float64 or bool.
    """
    nodes = 1 + SENDERS
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(1, nodes, dim, generator=generator, dtype=torch.float64)
    modality = torch.tensor([0] + [1] * SENDERS)
    same = modality[:, None] == modality[None, :]
    every = torch.ones(1, nodes, dtype=torch.bool)
    return states, every, every.clone(), same


class PlainBridge(nn.Module):
    """The deterministic limit of a residual-update bridge layer, written as a plain network.

    Self-attention (which has no micro-variants) is the bridge's own module; the rest is made of
    ``nn.LayerNorm``, ``nn.Linear`` and ``nn.GELU`` layers whose weights are copied from the
    bridge, with an explicit loop over receivers and their senders.
    """

    def __init__(self, bridge: BridgeLayer) -> None:
        super().__init__()
        cross = bridge.cross
        if cross.out is None:
            raise ValueError("PlainBridge reproduces the residual update, not the GRU update")
        if bridge.attention is None or bridge.ffn is None:
            raise ValueError(
                "PlainBridge reproduces a bridge layer with attention and feed-forward"
            )
        dim = cross.value.in_features
        self.attention: nn.Module = bridge.attention
        ffn = bridge.ffn
        self.top_k, self.temperature = cross.top_k, cross.temperature
        self.norm = nn.LayerNorm(dim, eps=cross.norm.eps)
        weight, bias = cross.gate.first_layer()
        first, last = nn.Linear(2 * dim + 1, weight.shape[0]), nn.Linear(weight.shape[0], 1)
        self.gate = nn.Sequential(first, nn.GELU(), last)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        hidden = ffn.up.out_features
        norm, up, down = (
            nn.LayerNorm(dim, eps=ffn.norm.eps),
            nn.Linear(dim, hidden),
            nn.Linear(hidden, dim),
        )
        self.ffn = nn.Sequential(norm, up, nn.GELU(), down)
        with torch.no_grad():
            self.norm.weight.copy_(cross.norm.weight)
            self.norm.bias.copy_(cross.norm.bias)
            first.weight.copy_(weight)
            first.bias.copy_(bias)
            last.weight.copy_(cross.gate.out.weight)
            last.bias.copy_(cross.gate.out.bias)
            self.value.weight.copy_(cross.value.weight)
            self.out.weight.copy_(cross.out.weight)
            for mine, theirs in (
                (norm, ffn.norm),
                (up, ffn.up),
                (down, ffn.down),
            ):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        self.scale = 1.0 / math.sqrt(dim)
        self.to(cross.value.weight.dtype)

    def forward(self, states: Tensor, real: Tensor, senders: Tensor, same: Tensor) -> Tensor:
        """Shape: states ``[B, N, d]`` → ``[B, N, d]``."""
        x = self.attention(states, real, same)
        a = self.norm(x)
        rows = []
        for b in range(x.shape[0]):
            messages = []
            for i in range(x.shape[1]):
                others = [j for j in range(x.shape[1]) if senders[b, j] and not same[i, j]]
                if not others:
                    messages.append(torch.zeros_like(a[b, i]))
                    continue
                scores = torch.stack(
                    [
                        self.gate(
                            torch.cat([a[b, i], a[b, j], (a[b, i] @ a[b, j])[None] * self.scale])
                        )[0]
                        for j in others
                    ]
                )
                top, index = scores.topk(min(self.top_k, len(others)))
                weights = torch.softmax(top / self.temperature, dim=0)
                values = torch.stack([self.value(a[b, others[int(k)]]) for k in index])
                messages.append(weights @ values)
            rows.append(torch.stack(messages))
        y = x + self.out(torch.stack(rows))
        return y + self.ffn(y)


def deterministic_rows(bridge: BridgeLayer, dim: int) -> list[dict[str, Any]]:
    """Part (a): the bridge at ``K = 1, σ = 0`` against :class:`PlainBridge`, in float64 and
    float32, and ``K = 8`` clean copies against ``K = 1``."""
    rows = []
    for dtype in (torch.float64, torch.float32):
        layer = bridge.to(dtype)
        plain = PlainBridge(layer).to(dtype)
        states, real, senders, same = layout(dim)
        states = states.to(dtype)
        zero = torch.zeros(states.shape[1], dtype=dtype)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            k1 = layer(states, real, senders, same, zero, 1, generator).states
            k8 = layer(states, real, senders, same, zero, 8, generator).states
            reference = plain(states, real, senders, same)
        name = str(dtype).replace("torch.", "")
        rows.append(
            {
                "check": f"bridge K=1, σ=0 vs plain network ({name})",
                "max_abs_diff": float((k1 - reference).abs().max()),
                "output_scale": float(reference.abs().max()),
            }
        )
        rows.append(
            {
                "check": f"bridge K=8, σ=0 vs K=1 ({name})",
                "max_abs_diff": float((k8 - k1).abs().max()),
                "output_scale": float(k1.abs().max()),
            }
        )
    bridge.to(torch.float64)
    return rows


def gaussian_cubature(dim: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """A fully symmetric cubature rule of degree 5 for ``E[f(ε)]``, ``ε ~ N(0, I_dim)``.

    Points: the origin (weight ``2/(d+2)``), ``±√(d+2)·e_i`` (weight ``(4−d)/(2(d+2)²)``) and
    ``√((d+2)/2)·(±e_i ± e_j)`` for ``i < j`` (weight ``1/(d+2)²``): ``2d² + 1`` points whose
    weighted sums equal the Gaussian moments of every monomial of degree at most 5.

    Shape:
        → points ``[2d² + 1, d]``, weights ``[2d² + 1]``.
    """
    d = dim
    eye = torch.eye(d, dtype=dtype)
    axis = math.sqrt(d + 2) * torch.cat([eye, -eye])
    i, j = torch.triu_indices(d, d, offset=1)
    pairs = []
    for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        pairs.append(si * eye[i] + sj * eye[j])
    diagonal = math.sqrt((d + 2) / 2) * torch.cat(pairs)
    points = torch.cat([torch.zeros(1, d, dtype=dtype), axis, diagonal])
    weights = torch.cat(
        [
            torch.tensor([2 / (d + 2)], dtype=dtype),
            torch.full((2 * d,), (4 - d) / (2 * (d + 2) ** 2), dtype=dtype),
            torch.full((len(diagonal),), 1 / (d + 2) ** 2, dtype=dtype),
        ]
    )
    return points, weights


class MessageProbe:
    """The message node 0 receives from sender node 1 of :func:`layout`, three ways.

    * :meth:`phi` ``φ(x)``: node 1's normalised state replaced by ``x``, the other senders clean
      (one variant each): the deterministic layer as a function of one sender;
    * :meth:`sampled`: node 1 emits ``K`` micro-variants at noise ``σ`` (the others ``K`` clean
      copies) and the layer combines them as in training, averaged over repeated draws;
    * :meth:`limit`: the same as ``K → ∞``. The layer weighs variant ``k`` of a sender by
      ``exp(g_k / T)`` (its sender score is ``T log mean_k exp(g_k / T)``), so with every sender
      kept the message tends to the ratio of expectations
      ``(Σ_clean e^{g_j/T} W_v v_j + E[e^{g(x)/T} W_v x]) / (Σ_clean e^{g_j/T} + E[e^{g(x)/T}])``,
      ``x = s + σε``, computed with the cubature rule.

    Attributes:
        s: Node 1's normalised state ``[d]``, the point of the expansion.
    """

    def __init__(self, bridge: BridgeLayer, dim: int) -> None:
        self.cross, self.dim = bridge.cross, dim
        assert bridge.attention is not None
        states, real, senders, same = layout(dim)
        with torch.no_grad():
            self.normed = self.cross.norm(bridge.attention(states, real, same))
        self.valid = senders[:, None, :] & ~same[None]
        self.s = self.normed[0, 1].clone()

    def phi(self, x: Tensor) -> Tensor:
        """Shape: ``[..., d]`` → ``[..., d]``."""
        rows = x.reshape(-1, self.dim)
        n = len(rows)
        variants = self.normed.expand(n, -1, -1).clone()
        variants[:, 1] = rows
        message, _ = self.cross.aggregate(
            self.normed.expand(n, -1, -1), variants.unsqueeze(2), self.valid.expand(n, -1, -1)
        )
        return message[:, 0].reshape(*x.shape[:-1], self.dim)

    def sampled(self, sigma: float, variants: int, repeats: int, seed: int = 0) -> Tensor:
        """Shape: → ``[d]``."""
        generator = torch.Generator().manual_seed(seed)
        scale = torch.zeros(self.normed.shape[1], dtype=self.normed.dtype)
        scale[1] = sigma
        total = torch.zeros(self.dim, dtype=self.normed.dtype)
        with torch.no_grad():
            for _ in range(repeats):
                draws = sample_variants(self.normed, scale, variants, generator)
                message, _ = self.cross.aggregate(self.normed, draws, self.valid)
                total += message[0, 0]
        return total / repeats

    def limit(self, sigma: float, points: Tensor, weights: Tensor) -> Tensor:
        """Shape: points ``[P, d]``, weights ``[P]`` → ``[d]``."""
        t = self.cross.temperature
        receiver = self.normed[:, :1]
        with torch.no_grad():
            x = self.s + sigma * points
            g = self.cross.gate(receiver.expand(len(x), -1, -1), x[:, None])[:, 0, 0]
            clean = self.normed[:, 2:]
            g_clean = self.cross.gate(receiver, clean)[0, 0]
            shift = torch.cat([g, g_clean]).max()  # exp of shifted logits: no overflow
            e, e_clean = torch.exp((g - shift) / t), torch.exp((g_clean - shift) / t)
            numerator = (weights * e) @ self.cross.value(x) + e_clean @ self.cross.value(clean[0])
            return numerator / ((weights * e).sum() + e_clean.sum())


def hessian_trace_fd(phi: Callable[[Tensor], Tensor], s: Tensor, h: float) -> Tensor:
    """``Tr(∇²φ_c(s))`` for every output ``c`` by central second differences along each axis.

    Shape:
        s ``[d]`` → ``[d_out]``.
    """
    eye = torch.eye(s.shape[0], dtype=s.dtype)
    with torch.no_grad():
        centre = phi(s[None])[0]
        plus, minus = phi(s + h * eye), phi(s - h * eye)
    return ((plus + minus).sum(0) - 2 * s.shape[0] * centre) / h**2


def smoothing_rows(
    bridge: BridgeLayer,
    dim: int,
    sigmas: Sequence[float] = SIGMAS,
    variants: int = 1024,
    repeats: int = 16,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Part (b), one row per ``σ``; and the finite-difference trace's agreement with autograd."""
    probe = MessageProbe(bridge, dim)
    phi, s = probe.phi, probe.s
    trace = hessian_trace_fd(phi, s, 1e-3)
    exact = torch.func.hessian(phi)(s).diagonal(dim1=-2, dim2=-1).sum(-1).detach()
    points, weights = gaussian_cubature(dim)
    with torch.no_grad():
        centre = phi(s[None])[0]
    rows: list[dict[str, Any]] = []
    for sigma in sigmas:
        with torch.no_grad():
            smoothed = weights @ phi(s + sigma * points)
        expansion = centre + 0.5 * sigma**2 * trace
        limit = probe.limit(sigma, points, weights)
        sampled = probe.sampled(sigma, variants, repeats)
        rows.append(
            {
                "sigma": sigma,
                "‖E[φ] − φ(s)‖∞": float((smoothed - centre).abs().max()),
                EXPANSION: float((smoothed - expansion).abs().max()),
                LAYER: float((limit - expansion).abs().max()),
                f"‖layer, K = {variants} sampled − K → ∞‖∞": float((sampled - limit).abs().max()),
            }
        )
    for key, name in (
        (EXPANSION, "order of E[φ] − expansion"),
        (LAYER, "order of layer − expansion"),
    ):
        for before, row in itertools.pairwise(rows):
            ratio = before[key] / max(row[key], 1e-300)
            row[name] = math.log(ratio) / math.log(before["sigma"] / row["sigma"])
    checks = {
        "trace_fd_vs_autograd_max_abs": float((trace - exact).abs().max()),
        "trace_scale": float(exact.abs().max()),
    }
    return rows, checks


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (union of their keys, in order of appearance)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return (
                f"{value:.2e}"
                if value and (abs(value) < 1e-2 or abs(value) >= 1e3)
                else f"{value:.3f}"
            )
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a trained IMPN run folder (default: train a tiny one here)")
    parser.add_argument("--layer", type=int, default=0, help="which bridge layer of --run")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the tiny IMPN")
    parser.add_argument("--variants", type=int, default=1024, help="K of the layer's noisy path")
    parser.add_argument("--repeats", type=int, default=16, help="draws averaged per σ")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.run:
        bridge = run_bridge(args.run, args.layer)
        source = f"bridge layer {args.layer} of the trained IMPN in {args.run}"
    else:
        bridge = train_tiny_bridge(args.steps)
        source = f"bridge layer of a tiny IMPN (soil 16) trained here for {args.steps} steps"
    bridge = bridge.double().eval()
    dim = bridge.cross.value.in_features
    print(f"{source}; soil dimension {dim}, top_k {bridge.cross.top_k}, {SENDERS} senders")
    deterministic = deterministic_rows(bridge, dim)
    print("\n(a) deterministic limit\n")
    print(format_rows(deterministic))
    rows, checks = smoothing_rows(bridge, dim, variants=args.variants, repeats=args.repeats)
    print(
        f"\n(b) E[φ(s+σε)] against φ(s) + ½σ²·Tr(∇²φ(s)); E by a degree-5 cubature "
        f"({2 * dim * dim + 1} points); Tr by central differences (h = 1e-3; max abs difference "
        f"from autograd {checks['trace_fd_vs_autograd_max_abs']:.1e}, trace scale "
        f"{checks['trace_scale']:.2f}); 'layer, K → ∞': the layer's own combination of the "
        f"sender's micro-variants (gate-weighted) in the limit of many variants, by the same "
        f"cubature; 'sampled': K = {args.variants} variants, mean of {args.repeats} draws\n"
    )
    print(format_rows(rows))
    print(f"\n{time.perf_counter() - started:.1f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"source": source, "deterministic": deterministic, "smoothing": rows, **checks},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
