"""What a benchmark measures on the clean data: retrieval (and re-ranking), geometry and
stitching. Each measure is an object with the ``results`` key it fills and ``rows(bench)``."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from vallayz.eval import model_encoder, rerank_table, retrieval_table
from vallayz.eval.stitching import stitching_accuracy
from vallayz.losses import knn_jaccard
from vallayz_train.bench.runs import Bench
from vallayz_train.bench.spec import closed_form_method

# Test rows of the geometry measures, at most.
GEOMETRY_ROWS = 2000


class Measure(Protocol):
    """One table of the results: ``key`` names it in ``results.json``."""

    key: str

    def rows(self, bench: Bench) -> list[dict[str, Any]]:
        """The table's rows."""
        ...


class Retrieval:
    """R@k, MRR and median rank of every method and direction, on the split and each extra
    subset of queries; then the re-ranked rows of models with a joint match head."""

    key = "retrieval"

    def rows(self, bench: Bench) -> list[dict[str, Any]]:
        spec, data = bench.spec, bench.data
        subsets = {"all": bench.rows, **{k: np.asarray(v) for k, v in spec.subsets.items()}}
        out: list[dict[str, Any]] = []
        for method, encode in bench.encoders(data).items():
            for subset, subset_rows in subsets.items():
                for row in retrieval_table(
                    data, subset_rows, encode, bench.pairs, spec.pool, spec.pools, spec.seed
                ):
                    out.append({"method": method, "queries_from": subset, **row})
        for method, run in bench.runs.methods.items():
            model = bench.model(run)
            if getattr(model, "match_head", None) is None:
                continue
            first_stage = model_encoder(model, data, bench.train.retrieval_mode)
            for subset, subset_rows in subsets.items():
                for row in rerank_table(
                    model,
                    data,
                    subset_rows,
                    first_stage,
                    bench.pairs,
                    spec.pool,
                    spec.pools,
                    spec.seed,
                    spec.rerank_depth,
                ):
                    out.append({"method": f"{method} (re-ranked)", "queries_from": subset, **row})
        return out


class Geometry:
    """Cycle reconstruction ``A → B → A`` (MSE, cosine) and kNN preservation (Jaccard@10
    between native and shared-space neighbours) on up to :data:`GEOMETRY_ROWS` test rows."""

    key = "geometry"

    def rows(self, bench: Bench) -> list[dict[str, Any]]:
        data, rows, spec = bench.data, bench.rows, bench.spec
        out: list[dict[str, Any]] = []
        directions = {(s[0], t) for s, t in bench.pairs if len(s) == 1}
        models = {name: bench.model(run) for name, run in bench.runs.methods.items()}
        translators: dict[str, Any] = {m: v for m, v in models.items() if v.capabilities.translates}
        for name in spec.closed_form:
            closed = closed_form_method(name)
            translator = closed.encoder(
                data, bench.train_rows, spec.normalisation, bench.fitted.setdefault(name, {})
            )
            if translator is not None:  # gcpa embeds only
                translators[closed.label(spec.normalisation)] = translator
        with torch.no_grad():
            for method, model in translators.items():
                for a, b in sorted(directions):
                    used = rows[data.present[a][rows] & data.present[b][rows]][:GEOMETRY_ROWS]
                    if len(used) < 2:
                        continue
                    x = data.batch(used, [a]).pooled()[a]
                    if hasattr(model, "translator"):  # closed forms, multi-way ones too
                        there = model.translator(a, b).transform(x.double())
                        back = model.translator(b, a).transform(there).float()
                    else:
                        back = model.translate(model.translate(x, a, b), b, a)
                    mse = float((back - x).pow(2).mean())
                    cos = float(torch.nn.functional.cosine_similarity(back, x, dim=-1).mean())
                    metric = f"cycle {a}->{b}->{a}"
                    out.append({"method": method, "metric": metric, "mse": mse, "cosine": cos})
            for method, model in models.items():
                if not model.capabilities.embeds:
                    continue
                for m in data.arrays:
                    used = rows[data.present[m][rows]][:GEOMETRY_ROWS]
                    if len(used) > 11:
                        batch = data.batch(used, [m])
                        jaccard = float(knn_jaccard(batch.pooled()[m], model.embed(batch), 10))
                        out.append(
                            {"method": method, "metric": f"kNN Jaccard@10 {m}", "value": jaccard}
                        )
        return out


class Stitching:
    """Zero-shot stitching when the items table has a ``label`` column: a classifier fitted on
    native target vectors of the training rows, applied to ``source → target`` translations."""

    key = "stitching"

    def rows(self, bench: Bench) -> list[dict[str, Any]]:
        data, rows, train_rows = bench.data, bench.rows, bench.train_rows
        if not data.items or "label" not in data.items[0]:
            return []
        names = sorted({item["label"] for item in data.items})
        classes = {label: i for i, label in enumerate(names)}
        labels = torch.tensor([classes[item["label"]] for item in data.items])
        out: list[dict[str, Any]] = []
        # Only paths into the target's native space, where the classifier was fitted.
        encoders = bench.encoders(data, native_only=True)
        for sources, target in [p for p in bench.pairs if len(p[0]) == 1]:
            fit_rows = train_rows[data.present[target][train_rows]]
            native_train = data.batch(fit_rows, [target]).pooled()[target]
            used = rows[data.present[target][rows] & data.present[sources[0]][rows]]
            for method, encode in encoders.items():
                queries, natives = encode(sources, target, used)
                scores = stitching_accuracy(
                    native_train, labels[fit_rows], natives, queries, labels[used]
                )
                out.append({"method": method, "source": sources[0], "target": target, **scores})
        return out
