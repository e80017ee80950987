"""One speed table: every ratio measured side by side in this process, medians over repeats.

Rows:

* ``step M=..``: an IMPN training step (IMPNLoss forward, backward, AdamW) over a contrastive-
  heads step (its own objective, backward, AdamW) at equal batch, soil size and modalities,
  with the floating-point operations of each step (torch's flop counter) and their ratio.
* ``fit <method>``: ``LatentTranslator(method, "standard").fit`` over latentis's translator
  with the same aligner, standard scaling and zero padding (when latentis is installed), with
  the largest absolute difference of their translations of held-out rows.
* ``ranks``: ``retrieval_ranks`` (exact, duplicate-aware) over a bare streaming matmul + top-10
  (:func:`vallayz.index.exact_search`); the ratio is the reference's time over ours, i.e. our
  share of its throughput.
* ``index <kind>``: :class:`vallayz.index.SearchIndex` search (FAISS; the index that
  ``vallayz retrieve --index`` saves) over the exact streaming top-10, with recall@10 against
  it (when faiss is installed).

Peak memory is the rise of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` after returning freed heap with ``malloc_trim``) during one run of
each side; it counts every allocator (torch, numpy, faiss), on Linux only.

With ``--sender-candidates C`` (default 8) the step rows also time IMPN with
``IMPNConfig(sender_candidates=C)`` wherever that bounds anything (``M - 1 > C``).

With ``--impn FIELD=VALUE`` (an :class:`IMPNConfig` field) and ``--loss TERM=WEIGHT`` (a
:class:`LossWeights` term), repeatable, the step rows also time IMPN with those changes, labelled
with them, beside the default rows in the same process: what a smaller model or fewer loss
passes would cost.

``--parts compile`` adds ``compile M=..`` rows: the IMPN step with the model wrapped by
``torch.compile`` over the same eager step, side by side after the compiled step's first call
(whose seconds, the compilation, are in the detail column).

Usage: ``python benchmarks/speed.py [--quick] [--repeats N] [--parts steps] [--modalities 2,4]``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vallayz import IMPN, IMPNConfig
from vallayz.baselines import LatentTranslator
from vallayz.eval import retrieval_ranks
from vallayz.index import SearchIndex, exact_search, recall_at_k
from vallayz.learned import build_model
from vallayz.losses import IMPNLoss, LossWeights
from vallayz.types import Batch


@dataclass
class Row:
    """One line of the table."""

    measure: str
    ours_ms: float
    reference_ms: float
    # ours / reference for times; reference / ours for throughput rows.
    ratio: float
    target: str
    detail: str
    ours_peak_mib: float
    reference_peak_mib: float


def _status(field: str) -> float:
    """A ``kB`` field of /proc/self/status in MiB (NaN where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_mib(fn: Callable[[], Any]) -> float:
    """Rise of the peak resident set while ``fn`` runs, in MiB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    before = _status("VmRSS")
    fn()
    return max(_status("VmHWM") - before, 0.0)


def gflops(fn: Callable[[], Any]) -> float:
    """Floating-point operations of one call of ``fn`` (matrix products and the other ops
    torch's flop counter knows; elementwise ops are not counted), in GFLOP."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def side_by_side(
    ours: Callable[[], Any], reference: Callable[[], Any], repeats: int, warmup: int = 1
) -> tuple[float, float]:
    """Median seconds of each, alternating runs so both see the same machine load."""
    for _ in range(warmup):
        ours()
        reference()
    a, b = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        reference()
        b.append(time.perf_counter() - t)
    return statistics.median(a), statistics.median(b)


@dataclass(frozen=True)
class Variant:
    """Changes to the default IMPN step of the step rows."""

    # IMPNConfig fields to change (sender_candidates among them).
    model: tuple[tuple[str, Any], ...] = ()
    # LossWeights terms to change.
    loss: tuple[tuple[str, float], ...] = ()

    def label(self) -> str:
        """The changes as ``name=value`` words ("" for the default)."""
        return " ".join(f"{k}={v}" for k, v in self.model + self.loss)


def parse_changes(items: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """``["layers=1", "cycle=0"]`` → ``(("layers", 1), ("cycle", 0))``; values are read as
    JSON where they parse, as strings otherwise.

    Raises:
        ValueError: if an item is not ``NAME=VALUE``.
    """
    changes = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"each change is NAME=VALUE, got {item!r}")
        try:
            changes.append((name, json.loads(value)))
        except json.JSONDecodeError:
            changes.append((name, value))
    return tuple(changes)


def training_steps(
    m: int, batch: int, soil: int, variant: Variant = Variant()
) -> tuple[Callable[[], None], ...]:
    """An IMPN (with ``variant``'s changes) and a contrastive-heads training step over the
    same ``m``-modality batch."""
    torch.manual_seed(0)
    modalities = {f"m{i}": (384, 256)[i % 2] for i in range(m)}
    data = Batch.of({name: torch.randn(batch, d) for name, d in modalities.items()})
    config = IMPNConfig(modalities=modalities, soil_dim=soil, **dict(variant.model))
    impn = IMPN(config)
    heads = build_model("contrastive-heads", modalities, {"dim": soil})
    heads_loss = heads.objective()
    loss = IMPNLoss(weights=LossWeights().replace(**dict(variant.loss)))
    impn_opt = torch.optim.AdamW(impn.parameters(), lr=1e-4)
    heads_opt = torch.optim.AdamW(heads.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def impn_step() -> None:
        impn_opt.zero_grad(set_to_none=True)
        loss(impn, data, generator).total.backward()
        impn_opt.step()

    def heads_step() -> None:
        heads_opt.zero_grad(set_to_none=True)
        heads_loss(data, generator).total.backward()  # type: ignore[no-untyped-call]
        heads_opt.step()

    return impn_step, heads_step


def step_rows(
    modality_counts: Sequence[int],
    batch: int,
    soil: int,
    repeats: int,
    sender_candidates: int = 0,
    variant: Variant = Variant(),
) -> list[Row]:
    """IMPN step over contrastive-heads step for each number of modalities; with
    ``sender_candidates``, also the bounded-sender option wherever it bounds anything (more
    other modalities than candidates); with a non-empty ``variant``, also IMPN with its
    changes at every number of modalities."""
    settings: list[tuple[int, Variant]] = [(m, Variant()) for m in modality_counts]
    if sender_candidates:
        bounded = Variant(model=(("sender_candidates", sender_candidates),))
        settings += [(m, bounded) for m in modality_counts if m - 1 > sender_candidates]
    if variant.label():
        settings += [(m, variant) for m in modality_counts]
    rows = []
    for m, changes in settings:
        impn_step, heads_step = training_steps(m, batch, soil, changes)
        ours, reference = side_by_side(impn_step, heads_step, repeats)
        impn_flops, heads_flops = gflops(impn_step), gflops(heads_step)
        label = f", {changes.label()}" if changes.label() else ""
        rows.append(
            Row(
                f"step M={m}{label} (IMPN / heads)",
                ours * 1e3,
                reference * 1e3,
                ours / reference,
                "<= 3 at M=2" if m == 2 else "linear in M",
                f"batch {batch}, soil {soil}, GFLOP {impn_flops:.3g} / {heads_flops:.3g} "
                f"({impn_flops / heads_flops:.1f}x)",
                peak_mib(impn_step),
                peak_mib(heads_step),
            )
        )
    return rows


def compile_rows(modality_counts: Sequence[int], batch: int, soil: int, repeats: int) -> list[Row]:
    """The IMPN step with ``torch.compile(model)`` over the eager step, per number of
    modalities; the first compiled call (compilation) is timed on its own."""
    return [compile_row(m, batch, soil, repeats) for m in modality_counts]


def compile_row(m: int, batch: int, soil: int, repeats: int) -> Row:
    """One ``compile M=m`` row (see :func:`compile_rows`)."""
    torch.manual_seed(0)
    modalities = {f"m{i}": (384, 256)[i % 2] for i in range(m)}
    data = Batch.of({name: torch.randn(batch, d) for name, d in modalities.items()})
    impn = IMPN(IMPNConfig(modalities=modalities, soil_dim=soil))
    compiled = torch.compile(impn)
    loss = IMPNLoss()
    optimizer = torch.optim.AdamW(impn.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step(model: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(model, data, generator).total.backward()
        optimizer.step()

    def compiled_step() -> None:
        step(compiled)

    def eager_step() -> None:
        step(impn)

    start = time.perf_counter()
    compiled_step()
    compile_s = time.perf_counter() - start
    ours, reference = side_by_side(compiled_step, eager_step, repeats)
    return Row(
        f"compile M={m} (compiled / eager IMPN)",
        ours * 1e3,
        reference * 1e3,
        ours / reference,
        "< 1",
        f"batch {batch}, soil {soil}, first call {compile_s:.0f} s",
        peak_mib(compiled_step),
        peak_mib(eager_step),
    )


def _latentis_fit(method: str) -> Callable[[torch.Tensor, torch.Tensor], Any] | None:
    try:
        from latentis.transform.base import StandardScaling
        from latentis.transform.dim_matcher import ZeroPadding
        from latentis.transform.translate.aligner import MatrixAligner, Translator
        from latentis.transform.translate.functional import (
            lstsq_align_state,
            lstsq_ortho_align_state,
            svd_align_state,
        )
    except ImportError:
        return None
    state = {"linear": lstsq_align_state, "l-ortho": lstsq_ortho_align_state}.get(
        method, svd_align_state
    )

    def fit(x: torch.Tensor, y: torch.Tensor) -> Any:
        return Translator(
            aligner=MatrixAligner(name=method, align_fn_state=state),
            x_transform=StandardScaling(),
            y_transform=StandardScaling(),
            dim_matcher=ZeroPadding(),
        ).fit(x, y)

    return fit


def closed_form_fits(
    method: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[Callable[[], LatentTranslator], Callable[[], Any]] | None:
    """vallayz's and latentis's fit of ``method`` on ``(x, y)``; None without latentis."""
    theirs = _latentis_fit(method)
    if theirs is None:
        return None
    latentis_fit = theirs

    def ours_fit() -> LatentTranslator:
        return LatentTranslator(method, "standard").fit(x, y)

    def reference_fit() -> Any:
        return latentis_fit(x, y)

    return ours_fit, reference_fit


def fit_rows(n: int, source: int, target: int, repeats: int) -> list[Row]:
    """Each closed-form fit over latentis's, with the largest difference of their outputs."""
    g = torch.Generator().manual_seed(0)
    spectrum = torch.logspace(0, -1, source)
    rotation, _ = torch.linalg.qr(torch.randn(source, source, generator=g))
    x = (torch.randn(n + 1000, source, generator=g) * spectrum) @ rotation + 0.5
    y = torch.tanh(x @ torch.randn(source, target, generator=g) / source**0.5)
    y = y + 0.1 * torch.randn(n + 1000, target, generator=g)
    x, held_out, y = x[:n], x[n:], y[:n]
    rows = []
    for method in ("linear", "l-ortho", "ortho"):
        fits = closed_form_fits(method, x, y)
        if fits is None:
            continue
        ours_fit, reference_fit = fits
        ours, reference = side_by_side(ours_fit, reference_fit, repeats)
        diff = (ours_fit().transform(held_out) - reference_fit().transform(held_out)[0]).abs()
        rows.append(
            Row(
                f"fit {method} (vallayz / latentis)",
                ours * 1e3,
                reference * 1e3,
                ours / reference,
                "<= 1.0",
                f"N {n}, {source}->{target}, max abs diff {float(diff.max()):.1e}",
                peak_mib(ours_fit),
                peak_mib(reference_fit),
            )
        )
    return rows


def retrieval_data(
    candidates: int, queries: int, dim: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random candidates, 1 % of them sharing a key with another; each query is its gold
    candidate plus noise (about half the ranks are 1 at a million candidates, the rest spread
    out, as in a useful retrieval)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(candidates, dim, generator=g)
    keys = torch.arange(candidates)
    shared = torch.randint(0, candidates, (candidates // 100, 2), generator=g)
    keys[shared[:, 0]] = keys[shared[:, 1]]
    gold = torch.randint(0, candidates, (queries,), generator=g)
    q = c[gold] + 2.0 * torch.randn(queries, dim, generator=g)
    return q, c, keys[gold], keys


def retrieval_rows(
    candidates: int, queries: int, dim: int, index_candidates: int, repeats: int
) -> list[Row]:
    """Exact ranks and approximate search over the bare streaming matmul + top-10."""
    q, c, qk, ck = retrieval_data(candidates, queries, dim)

    def ranks() -> torch.Tensor:
        return retrieval_ranks(q, c, qk, ck)

    def top10() -> tuple[torch.Tensor, torch.Tensor]:
        return exact_search(q, c, 10)

    ours, reference = side_by_side(ranks, top10, repeats, warmup=0)
    r1 = float((ranks() == 1).float().mean())
    rows = [
        Row(
            "ranks (throughput vs matmul+top-10)",
            ours * 1e3,
            reference * 1e3,
            reference / ours,
            ">= 0.80",
            f"{candidates:,} x {dim}, {queries:,} queries, R@1 {r1:.2f}",
            peak_mib(ranks),
            peak_mib(top10),
        )
    ]
    try:
        import faiss  # noqa: F401
    except ImportError:
        return rows
    c = c[:index_candidates]
    exact = exact_search(q, c, 10)[1]
    for kind in ("hnsw", "ivf"):
        # The index that vallayz retrieve --index KIND builds and saves in a run folder.
        index = SearchIndex(kind)
        start = time.perf_counter()
        index.build(c)
        build = time.perf_counter() - start

        def search(index: SearchIndex = index) -> tuple[torch.Tensor, torch.Tensor]:
            return index.search(q, 10)

        def exact_top10(c: torch.Tensor = c) -> tuple[torch.Tensor, torch.Tensor]:
            return exact_search(q, c, 10)

        ours, reference = side_by_side(search, exact_top10, repeats, warmup=0)
        rows.append(
            Row(
                f"index {kind} (throughput vs exact top-10)",
                ours * 1e3,
                reference * 1e3,
                reference / ours,
                "",
                f"{index_candidates:,} x {dim}, recall@10 {recall_at_k(search()[1], exact):.3f}, "
                f"build {build:.0f} s",
                peak_mib(search),
                peak_mib(exact_top10),
            )
        )
    return rows


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one table."""

    modalities: tuple[int, ...]
    batch: int
    soil: int
    anchors: int
    source: int
    target: int
    candidates: int
    queries: int
    indexed: int
    repeats: int


FULL = Sizes((2, 4, 8, 16), 256, 256, 20_000, 384, 256, 1_000_000, 1000, 200_000, 3)
QUICK = Sizes((2, 4, 8, 16), 64, 64, 4000, 128, 96, 100_000, 200, 50_000, 3)
TINY = Sizes((2,), 8, 16, 300, 24, 16, 2000, 20, 2000, 1)


def format_rows(rows: Sequence[Row]) -> str:
    """A markdown table."""
    head = (
        "| measure | vallayz ms | reference ms | ratio | target | detail | "
        "peak MiB vallayz | peak MiB reference |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.measure} | {r.ours_ms:.1f} | {r.reference_ms:.1f} | {r.ratio:.2f} | "
            f"{r.target} | {r.detail} | {r.ours_peak_mib:.0f} | {r.reference_peak_mib:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per side (median)")
    parser.add_argument(
        "--tiny", action="store_true", help="toy sizes that only check the table is produced"
    )
    parser.add_argument(
        "--parts",
        default="steps,fits,retrieval",
        help="comma-separated parts of the table to run: steps, fits, retrieval, compile "
        "(not in the default: its compilation takes minutes)",
    )
    parser.add_argument(
        "--modalities",
        default="",
        help="comma-separated numbers of modalities of the step rows (default: 2,4,8,16)",
    )
    parser.add_argument(
        "--sender-candidates",
        type=int,
        default=8,
        help="also time IMPN with this bound on the senders each node scores (0: no such rows)",
    )
    parser.add_argument(
        "--impn",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="also time IMPN with this IMPNConfig field changed (repeatable; with --loss)",
    )
    parser.add_argument(
        "--loss",
        action="append",
        default=[],
        metavar="TERM=WEIGHT",
        help="also time IMPN with this loss term's weight changed (0 drops it; repeatable)",
    )
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    repeats = args.repeats or sizes.repeats
    parts = set(args.parts.split(","))
    known = {"steps", "fits", "retrieval", "compile"}
    if parts - known:
        parser.error(f"unknown parts {sorted(parts - known)}")
    counts = tuple(int(m) for m in args.modalities.split(",")) if args.modalities else None
    try:  # fail before minutes of timing, with the config's own message
        variant = Variant(parse_changes(args.impn), parse_changes(args.loss))
        IMPNConfig(modalities={"a": 4, "b": 4}, **dict(variant.model))
        LossWeights().replace(**dict(variant.loss))
    except (TypeError, ValueError) as error:
        parser.error(f"--impn/--loss: {error}")
    rows: list[Row] = []
    if "steps" in parts:
        modalities = counts or sizes.modalities
        rows += step_rows(
            modalities, sizes.batch, sizes.soil, repeats, args.sender_candidates, variant
        )
    if "fits" in parts:
        rows += fit_rows(sizes.anchors, sizes.source, sizes.target, repeats)
    if "retrieval" in parts:
        rows += retrieval_rows(sizes.candidates, sizes.queries, 128, sizes.indexed, repeats)
    if "compile" in parts:
        rows += compile_rows(counts or (2,), sizes.batch, sizes.soil, repeats)
    print(format_rows(rows))
    threads = torch.get_num_threads()
    print(f"\ntorch {torch.__version__}, {threads} threads, python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
