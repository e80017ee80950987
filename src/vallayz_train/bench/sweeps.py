"""The sweeps of a benchmark: every method again on perturbed views of the test rows. A sweep
is an object with the ``results`` key it fills and ``rows(bench)``, like a measure."""

from __future__ import annotations

from typing import Any

from vallayz.eval import PerturbedView, drop_sources, retrieval_table
from vallayz_train.bench.runs import Bench


def matched_label(method: str) -> str:
    """The label of ``method`` trained with modality dropout at the sweep's missing rate."""
    return f"{method}, trained with matching dropout"


def _table(
    bench: Bench, view: PerturbedView, encoders: dict[str, Any], pair: Any, **labels: Any
) -> list[dict[str, Any]]:
    """Rows of every encoder on one pair of ``view``, each headed by its method and ``labels``."""
    spec = bench.spec
    return [
        {"method": method, **labels, **row}
        for method, encode in encoders.items()
        for row in retrieval_table(
            view,
            bench.rows,
            encode,
            [pair],
            spec.pool,
            spec.pools,
            spec.seed,  # type: ignore[arg-type]
        )
    ]


class MissingSweep:
    """Sources dropped at test for a share of the rows (the spec's ``missing_rates``), on every
    pair with several sources; with matched dropout, also every learned method trained with
    modality dropout at that rate, after the methods as trained by default."""

    key = "missing_sweep"

    def rows(self, bench: Bench) -> list[dict[str, Any]]:
        data, spec = bench.data, bench.spec
        out: list[dict[str, Any]] = []
        for sources, target in [p for p in bench.pairs if len(p[0]) > 1]:
            pair = (sources, target)
            for rate in spec.missing_rates:
                absent = drop_sources({s: data.present[s] for s in sources}, rate, spec.seed)
                view = PerturbedView(data, absent=absent)
                out += _table(bench, view, bench.encoders(view), pair, missing_rate=rate)
                matched = bench.runs.matched.get(rate, {})
                if matched:
                    runs = {matched_label(name): run for name, run in matched.items()}
                    encoders = bench.encoders(view, runs, closed_form=False)
                    out += _table(bench, view, encoders, pair, missing_rate=rate)
        return out


class NoiseSweep:
    """Gaussian noise at each of the spec's SNRs on the sources of the first pair."""

    key = "noise_sweep"

    def rows(self, bench: Bench) -> list[dict[str, Any]]:
        spec = bench.spec
        sources, target = bench.pairs[0]
        out: list[dict[str, Any]] = []
        for snr in spec.snrs:
            view = PerturbedView(bench.data, noisy=sources, snr_db=snr, seed=spec.seed)
            out += _table(bench, view, bench.encoders(view), (sources, target), snr_db=snr)
        return out


class CorruptedSourceSweep:
    """One source corrupted: on every pair with several sources, Gaussian noise at each of the
    spec's SNRs on its first source alone (its hashed features withheld), the others clean.
    Late fusion averages the junk source in; a fused query can learn to read past it."""

    key = "corrupted_sweep"

    def rows(self, bench: Bench) -> list[dict[str, Any]]:
        spec = bench.spec
        out: list[dict[str, Any]] = []
        for sources, target in [p for p in bench.pairs if len(p[0]) > 1]:
            noisy = sources[:1]
            for snr in spec.snrs:
                view = PerturbedView(bench.data, noisy=noisy, snr_db=snr, seed=spec.seed)
                out += _table(
                    bench,
                    view,
                    bench.encoders(view),
                    (sources, target),
                    corrupted=noisy[0],
                    snr_db=snr,
                )
        return out
