"""The missing-modality sweep: `drop_sources` hides sources in a `PerturbedView`, the same
queries take part as without it, and each query is embedded from the sources it kept.

The reference embeds each source of each row on its own and averages the kept ones in a
float64 loop; the sweep's path goes through the view, `model_encoder` and `retrieval_table`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_config
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz.eval import PerturbedView, drop_sources, model_encoder, retrieval_table
from vallayz.types import Batch

SOURCES = ("text", "audio")
TARGET = "image"


def test_the_view_hides_the_dropped_sources_and_keeps_the_queries(tmp_path: Path) -> None:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=200))
    rows = np.arange(data.size)
    absent = drop_sources({s: data.present[s] for s in SOURCES}, 0.5, seed=3)
    view = PerturbedView(data, absent=absent)

    batch = view.batch(rows)
    for name in SOURCES:
        expected = data.present[name] & ~absent[name]
        assert torch.equal(batch.present[name], torch.from_numpy(expected)), name
    assert torch.equal(batch.present[TARGET], torch.from_numpy(data.present[TARGET]))
    kept = sum(batch.present[s].long() for s in SOURCES)
    had = sum(torch.from_numpy(data.present[s]).long() for s in SOURCES)
    assert bool(((kept >= 1) | (had == 0)).all())
    # Some rows lost a source, and some of those had both.
    both = data.present["text"] & data.present["audio"]
    assert 0 < int((both & (absent["text"] | absent["audio"])).sum()) < int(both.sum())

    model = IMPN(tiny_config()).eval()
    pair = [(SOURCES, TARGET)]
    perturbed = retrieval_table(view, rows, model_encoder(model, view), pair, pool=1000)
    clean = retrieval_table(data, rows, model_encoder(model, data), pair, pool=1000)
    # The queries are the rows with every source and the target in the data, dropped or not.
    queries = int((both & data.present[TARGET]).sum())
    assert perturbed[0]["queries"] == clean[0]["queries"] == queries


def _padding(batch: Batch, name: str) -> dict[str, torch.Tensor] | None:
    return {name: batch.padding[name]} if name in batch.padding else None


def test_queries_are_embedded_from_the_sources_each_row_kept(tmp_path: Path) -> None:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=120))
    absent = drop_sources({s: data.present[s] for s in SOURCES}, 0.6, seed=4)
    view = PerturbedView(data, absent=absent)
    model = IMPN(tiny_config()).eval()
    both = data.present["text"] & data.present["audio"] & data.present[TARGET]
    used = np.flatnonzero(both)

    queries, _ = model_encoder(model, view)(SOURCES, TARGET, used)

    full = data.batch(used, list(SOURCES))
    with torch.no_grad():
        alone = {
            s: model.embed(Batch.of({s: full.embeddings[s]}, padding=_padding(full, s)))
            .double()
            .numpy()
            for s in SOURCES
        }
    for i, row in enumerate(used):
        kept = [s for s in SOURCES if not absent[s][row]]
        assert kept, row
        expected = np.mean([alone[s][i] for s in kept], axis=0)
        np.testing.assert_allclose(queries[i].double().numpy(), expected, rtol=1e-4, atol=1e-5)
    # Both kinds of row occur: one source kept, and both kept.
    counts = {sum(not absent[s][r] for s in SOURCES) for r in used}
    assert counts == {1, 2}
