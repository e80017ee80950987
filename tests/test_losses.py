from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pytest
import torch
from conftest import DIMS, tiny_config, tri_modal_inputs

import vallayz.impn_loss as total_module
from vallayz import IMPN
from vallayz.losses import (
    IMPNLoss,
    LossWeights,
    cycle_loss,
    denoising_loss,
    info_nce,
    knn_jaccard,
    knn_preservation_loss,
    orthogonality_loss,
    pair_mean,
    translation_loss,
)
from vallayz.types import Batch

f64 = torch.float64


def loop_info_nce(a: torch.Tensor, b: torch.Tensor, t: float) -> float:
    n = a.shape[0]
    an = [a[i] / a[i].norm() for i in range(n)]
    bn = [b[i] / b[i].norm() for i in range(n)]
    total = 0.0
    for i in range(n):
        row = [float(an[i] @ bn[j]) / t for j in range(n)]
        col = [float(an[j] @ bn[i]) / t for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(x) for x in row))
        total += -col[i] + math.log(sum(math.exp(x) for x in col))
    return total / (2 * n)


def test_info_nce_matches_loop_reference() -> None:
    a, b = torch.randn(7, 5, dtype=f64), torch.randn(7, 5, dtype=f64)
    assert float(info_nce(a, b, 0.3)) == pytest.approx(loop_info_nce(a, b, 0.3), abs=1e-10)


def test_info_nce_is_symmetric() -> None:
    a, b = torch.randn(6, 4, dtype=f64), torch.randn(6, 4, dtype=f64)
    torch.testing.assert_close(info_nce(a, b), info_nce(b, a))


@pytest.mark.parametrize("t", [0.1, 1.0])
def test_info_nce_perfectly_aligned_hits_closed_form(t: float) -> None:
    # Identical, mutually orthogonal pairs: positive logit 1/t, n - 1 negatives at 0.
    n = 6
    a = torch.eye(n, dtype=f64) * 3.0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + n - 1))
    assert float(info_nce(a, a.clone(), t)) == pytest.approx(expected, abs=1e-12)


def test_info_nce_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        info_nce(torch.randn(3, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(3, 4), torch.randn(3, 4), 0.0)


def test_translation_and_cycle_match_loop_reference() -> None:
    p, y = torch.randn(5, 3, dtype=f64), torch.randn(5, 3, dtype=f64)
    mask = torch.tensor([True, False, True, True, False])
    rows = [i for i in range(5) if mask[i]]
    mse = sum(float(((p[i] - y[i]) ** 2).sum()) / 3 for i in rows) / len(rows)
    cos = sum(1 - float(p[i] @ y[i] / (p[i].norm() * y[i].norm())) for i in rows) / len(rows)
    assert float(translation_loss(p, y, "mse", mask)) == pytest.approx(mse, abs=1e-12)
    assert float(translation_loss(p, y, "cosine", mask)) == pytest.approx(cos, abs=1e-12)
    assert float(cycle_loss(p, y, "mse+cosine", mask)) == pytest.approx(mse + cos, abs=1e-12)
    assert float(translation_loss(y, y, "mse+cosine")) == pytest.approx(0.0, abs=1e-12)


def loop_knn_kl(x: torch.Tensor, z: torch.Tensor, t: float) -> float:
    n = x.shape[0]

    def dist(v: torch.Tensor, i: int) -> list[float]:
        sims = {j: float(v[i] @ v[j] / (v[i].norm() * v[j].norm())) / t for j in range(n) if j != i}
        norm = sum(math.exp(s) for s in sims.values())
        return [math.exp(sims[j]) / norm if j != i else 0.0 for j in range(n)]

    total = 0.0
    for i in range(n):
        p, q = dist(x, i), dist(z, i)
        total += sum(p[j] * math.log(p[j] / q[j]) for j in range(n) if j != i)
    return total / n


def test_knn_preservation_matches_loop_reference() -> None:
    x, z = torch.randn(6, 5, dtype=f64), torch.randn(6, 3, dtype=f64)
    got = float(knn_preservation_loss(x, z, 0.5))
    assert got == pytest.approx(loop_knn_kl(x, z, 0.5), abs=1e-10)
    assert got > 0


def test_knn_preservation_is_zero_under_identity_and_rotation() -> None:
    x = torch.randn(10, 4, dtype=f64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=f64))
    assert float(knn_preservation_loss(x, x.clone())) == pytest.approx(0.0, abs=1e-12)
    assert float(knn_preservation_loss(x, x @ q)) == pytest.approx(0.0, abs=1e-10)


def test_knn_preservation_gradient_is_finite_for_both_inputs() -> None:
    # The masked diagonal once sent 0 * (-inf - -inf) = NaN back to the native rows.
    x = torch.randn(6, 5, dtype=f64, requires_grad=True)
    z = torch.randn(6, 3, dtype=f64, requires_grad=True)
    knn_preservation_loss(x, z, 0.5).backward()
    assert x.grad is not None and z.grad is not None
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(z.grad).all())
    assert float(x.grad.abs().sum()) > 0 and float(z.grad.abs().sum()) > 0


def test_knn_jaccard_matches_set_reference() -> None:
    x, z = torch.randn(12, 5, dtype=f64), torch.randn(12, 5, dtype=f64)

    def neighbours(v: torch.Tensor, i: int, k: int) -> set[int]:
        sims = [(float(v[i] @ v[j] / (v[i].norm() * v[j].norm())), j) for j in range(12) if j != i]
        return {j for _, j in sorted(sims, reverse=True)[:k]}

    expected = (
        sum(
            len(neighbours(x, i, 3) & neighbours(z, i, 3))
            / len(neighbours(x, i, 3) | neighbours(z, i, 3))
            for i in range(12)
        )
        / 12
    )
    assert float(knn_jaccard(x, z, 3)) == pytest.approx(expected, abs=1e-12)
    assert float(knn_jaccard(x, 2 * x, 3)) == 1.0
    with pytest.raises(ValueError, match="k must"):
        knn_jaccard(x, z, 12)


def test_orthogonality_is_zero_for_orthonormal_columns_or_rows() -> None:
    q, _ = torch.linalg.qr(torch.randn(7, 3, dtype=f64))  # orthonormal columns
    assert float(orthogonality_loss([q, q.T])) == pytest.approx(0.0, abs=1e-12)
    w = torch.randn(4, 6, dtype=f64)
    gram = w @ w.T  # 4 x 4 is the smaller Gram
    expected = sum((float(gram[i, j]) - (i == j)) ** 2 for i in range(4) for j in range(4))
    assert float(orthogonality_loss([w])) == pytest.approx(expected, rel=1e-12)


def test_denoising_matches_loop_reference() -> None:
    noisy, clean = torch.randn(2, 3, 4, dtype=f64), torch.randn(2, 3, 4, dtype=f64)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    cells = [(b, n) for b in range(2) for n in range(3) if mask[b, n]]
    expected = sum(float(((noisy[b, n] - clean[b, n]) ** 2).mean()) for b, n in cells) / len(cells)
    assert float(denoising_loss(noisy, clean, mask)) == pytest.approx(expected, abs=1e-12)
    assert float(denoising_loss(clean, clean)) == 0.0


def test_impn_loss_reports_finite_terms_and_active_denoising() -> None:
    model = IMPN(tiny_config()).train()
    out = IMPNLoss()(model, tri_modal_inputs(8), torch.Generator().manual_seed(0))
    for name in ["contrastive/text-audio", "contrastive/text-image", "contrastive/audio-image"]:
        assert name in out.terms
    for name in LossWeights().as_dict():
        assert torch.isfinite(out.terms[name])
    assert torch.isfinite(out.total)
    # Noisy micro-variants differ from clean senders, so the denoising term is active.
    assert float(out.terms["denoising"].detach()) > 0


def test_loss_weights_reject_negative_values() -> None:
    with pytest.raises(ValueError, match="cycle"):
        LossWeights(cycle=-1.0)


def test_pair_mean_matches_loop_reference() -> None:
    terms = [torch.tensor(v, dtype=f64) for v in (2.0, 0.5, 7.0)]
    rows = [250, 3, 3]
    expected = sum(r * float(t) for r, t in zip(rows, terms, strict=True)) / sum(rows)
    assert float(pair_mean(terms, rows, "rows")) == pytest.approx(expected, abs=1e-12)
    assert float(pair_mean(terms, rows, "equal")) == pytest.approx(9.5 / 3, abs=1e-12)
    # Equal row counts make both weightings the plain mean.
    assert float(pair_mean(terms, [4, 4, 4], "rows")) == pytest.approx(9.5 / 3, abs=1e-12)


def test_pair_mean_rejects_bad_input() -> None:
    one = [torch.tensor(1.0)]
    with pytest.raises(ValueError, match="'rows' weighs"):
        pair_mean(one, [1], "by-size")
    with pytest.raises(ValueError, match="one row count per term"):
        pair_mean(one, [1, 2])
    with pytest.raises(ValueError, match="positive"):
        pair_mean(one, [0])
    with pytest.raises(ValueError, match="pair weighting"):
        IMPNLoss(pair_weighting="rowwise")


def _sparse_audio_batch() -> Batch:
    inputs = tri_modal_inputs(8)
    present = {m: torch.ones(8, dtype=torch.bool) for m in inputs}
    present["audio"] = torch.tensor([True, True, True, False, False, False, False, False])
    return Batch.of(inputs, present=present)


@pytest.mark.parametrize("weighting", ["rows", "equal"])
def test_impn_loss_weighs_contrastive_pairs_by_shared_rows(weighting: str) -> None:
    model = IMPN(tiny_config()).train()
    out = IMPNLoss(pair_weighting=weighting)(
        model, _sparse_audio_batch(), torch.Generator().manual_seed(0)
    )
    pairs = {"text-audio": 3, "text-image": 8, "audio-image": 3}
    values = {p: float(out.terms[f"contrastive/{p}"].detach()) for p in pairs}
    if weighting == "rows":
        expected = sum(pairs[p] * values[p] for p in pairs) / sum(pairs.values())
    else:
        expected = sum(values.values()) / 3
    assert float(out.terms["contrastive"].detach()) == pytest.approx(expected, rel=1e-5)


_MASK = torch.tensor([True, False, True, True])
_NODE_MASK = torch.tensor([[True, False, True], [True, True, False]])
_TERMS: dict[str, tuple[Callable[..., torch.Tensor], tuple[tuple[int, ...], ...]]] = {
    "info_nce": (lambda a, b: info_nce(a, b, 0.5), ((4, 3), (4, 3))),
    "knn": (lambda x, z: knn_preservation_loss(x, z, 0.5), ((5, 4), (5, 3))),
    "translation-mse": (lambda p, y: translation_loss(p, y, "mse", _MASK), ((4, 3), (4, 3))),
    "translation-cosine": (lambda p, y: translation_loss(p, y, "cosine", _MASK), ((4, 3), (4, 3))),
    "cycle-mse+cosine": (lambda p, y: cycle_loss(p, y, "mse+cosine"), ((4, 3), (4, 3))),
    "orthogonality": (lambda w, v: orthogonality_loss([w, v]), ((4, 2), (2, 3))),
    "denoising": (lambda n, c: denoising_loss(n, c, _NODE_MASK), ((2, 3, 4), (2, 3, 4))),
    "pair_mean-rows": (lambda a, b: pair_mean([a, b], [5, 2], "rows"), ((), ())),
    "pair_mean-equal": (lambda a, b: pair_mean([a, b], [5, 2], "equal"), ((), ())),
}


@pytest.mark.parametrize("name", list(_TERMS))
def test_loss_term_passes_gradcheck(name: str) -> None:
    # Finite differences in float64 on tiny inputs, against every input (knn: native and soil).
    fn, shapes = _TERMS[name]
    inputs = tuple(torch.randn(shape, dtype=f64, requires_grad=True) for shape in shapes)
    assert torch.autograd.gradcheck(fn, inputs)


# A hand-built batch of 6 rows. Presence (1 = present) and the modalities the translation pass
# drops (d), chosen so that every row keeps at least one:
#
#   row     0  1  2  3  4  5
#   text    1  d  1  d  1  1    present 6, dropped 2 (rows 1, 3)
#   audio   d  1  1  .  .  .    present 3, dropped 1 (row 0)
#   image   1  1  .  1  d  .    present 4, dropped 1 (row 4)
#
# Contrastive pairs share rows {0,1,2} (text-audio, 3), {0,1,3,4} (text-image, 4), {0,1}
# (audio-image, 2). kNN runs on each modality's present rows (6, 3, 4). Translation decodes
# the dropped entries (2, 1, 1). The cycle feeds rows with a dropped modality, {0,1,3,4},
# back from their decoded dropped modalities and scores the kept ones: text in rows {0,4} (2),
# audio in {1} (1), image in {0,1,3} (3).
_ROWS = 6
_PRESENT = {
    "text": [1, 1, 1, 1, 1, 1],
    "audio": [1, 1, 1, 0, 0, 0],
    "image": [1, 1, 0, 1, 1, 0],
}
_DROPPED = {
    "text": [0, 1, 0, 1, 0, 0],
    "audio": [1, 0, 0, 0, 0, 0],
    "image": [0, 0, 0, 0, 1, 0],
}
_CYCLED = [0, 1, 3, 4]
# Stub values of each term, per pair or modality (native widths tell the modalities apart).
_CONTRASTIVE = {3: ("text", "audio", 1.0), 4: ("text", "image", 2.0), 2: ("audio", "image", 5.0)}
_KNN = {"text": 1.0, "audio": 2.0, "image": 4.0}
_TRANSLATION = {"text": 0.5, "audio": 1.5, "image": 3.0}
_CYCLE = {"text": 0.25, "audio": 0.75, "image": 2.0}
_ORTHOGONALITY = 0.125
# Hand-worked means of the stub values: "rows" weighs each by its row count above.
_EXPECTED = {
    "rows": {
        "contrastive": (3 * 1.0 + 4 * 2.0 + 2 * 5.0) / 9,
        "knn": (6 * 1.0 + 3 * 2.0 + 4 * 4.0) / 13,
        "translation": (2 * 0.5 + 1 * 1.5 + 1 * 3.0) / 4,
        "cycle": (2 * 0.25 + 1 * 0.75 + 3 * 2.0) / 6,
    },
    "equal": {
        "contrastive": 8.0 / 3,
        "knn": 7.0 / 3,
        "translation": 5.0 / 3,
        "cycle": 3.0 / 3,
    },
}


def _mask(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def _hand_built_batch() -> Batch:
    inputs = tri_modal_inputs(_ROWS)
    return Batch.of(inputs, present={m: _mask(v) for m, v in _PRESENT.items()})


def _stub_terms(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """Replaces the terms inside IMPNLoss with stubs that record their inputs and return the
    hand-chosen values above; the translation pass drops exactly ``_DROPPED``."""
    calls: dict[str, list[tuple[torch.Tensor, ...]]] = {
        "contrastive": [],
        "knn": [],
        "translation": [],
        "cycle": [],
        "drop": [],
    }
    width = {v: m for m, v in DIMS.items()}

    def contrastive(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
        calls["contrastive"].append((a.detach(), b.detach()))
        return torch.tensor(_CONTRASTIVE[a.shape[0]][2])

    def knn(native: torch.Tensor, soil: torch.Tensor, temperature: float) -> torch.Tensor:
        calls["knn"].append((native.detach(), soil.detach()))
        return torch.tensor(_KNN[width[native.shape[1]]])

    def translation(
        p: torch.Tensor, y: torch.Tensor, kind: str, mask: torch.Tensor
    ) -> torch.Tensor:
        calls["translation"].append((p.detach(), y.detach(), mask))
        return torch.tensor(_TRANSLATION[width[y.shape[1]]])

    def cycle(p: torch.Tensor, y: torch.Tensor, kind: str, mask: torch.Tensor) -> torch.Tensor:
        calls["cycle"].append((p.detach(), y.detach(), mask))
        return torch.tensor(_CYCLE[width[y.shape[1]]])

    def drop(present: Mapping[str, torch.Tensor], rate: object, generator: object) -> dict:
        calls["drop"].append(tuple(present[m] for m in DIMS))
        return {m: _mask(v) for m, v in _DROPPED.items()}

    monkeypatch.setattr(total_module, "info_nce", contrastive)
    monkeypatch.setattr(total_module, "knn_preservation_loss", knn)
    monkeypatch.setattr(total_module, "translation_loss", translation)
    monkeypatch.setattr(total_module, "cycle_loss", cycle)
    monkeypatch.setattr(total_module, "orthogonality_loss", lambda w: torch.tensor(_ORTHOGONALITY))
    monkeypatch.setattr(total_module, "drop_modalities", drop)
    return calls


@pytest.mark.parametrize("weighting", ["rows", "equal"])
def test_impn_loss_weighs_terms_by_hand_worked_rows(
    weighting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_terms(monkeypatch)
    model = IMPN(tiny_config()).eval()
    weights = LossWeights(
        contrastive=1.0, translation=2.0, cycle=0.5, knn=0.3, orthogonality=0.1, denoising=0.7
    )
    out = IMPNLoss(weights, pair_weighting=weighting)(model, _hand_built_batch())
    expected = _EXPECTED[weighting]
    for name, value in expected.items():
        assert float(out.terms[name].detach()) == pytest.approx(value, abs=1e-6), name
    for a, b, value in _CONTRASTIVE.values():
        assert float(out.terms[f"contrastive/{a}-{b}"]) == value
    assert float(out.terms["orthogonality"]) == _ORTHOGONALITY
    # The total by hand: 1 * contrastive + 2 * translation + 0.5 * cycle + 0.3 * knn
    # + 0.1 * orthogonality + 0.7 * denoising (the one term not stubbed).
    hand = (
        expected["contrastive"]
        + 2.0 * expected["translation"]
        + 0.5 * expected["cycle"]
        + 0.3 * expected["knn"]
        + 0.1 * _ORTHOGONALITY
        + 0.7 * float(out.terms["denoising"].detach())
    )
    assert float(out.total.detach()) == pytest.approx(hand, abs=1e-5)


def test_impn_loss_uses_the_documented_rows_for_each_term(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stub_terms(monkeypatch)
    model = IMPN(tiny_config()).eval()  # deterministic passes, so they can be repeated here
    batch = _hand_built_batch()
    IMPNLoss()(model, batch)
    native = batch.pooled()
    present = {m: _mask(v) for m, v in _PRESENT.items()}
    dropped = {m: _mask(v) for m, v in _DROPPED.items()}
    kept = {m: present[m] & ~dropped[m] for m in DIMS}
    with torch.no_grad():
        iso = model(batch, isolate=True).soil
        hidden = model(Batch.of(batch, present=kept)).decoded
        cycled = torch.tensor(_CYCLED)
        back = model(
            Batch.of(
                {m: hidden[m][cycled] for m in DIMS},
                present={m: dropped[m][cycled] for m in DIMS},
            )
        ).decoded

    # Contrastive: the isolated soil vectors of the rows both modalities share.
    assert len(calls["contrastive"]) == 3
    for a_soil, b_soil in calls["contrastive"]:
        a, b, _ = _CONTRASTIVE[a_soil.shape[0]]
        both = present[a] & present[b]
        torch.testing.assert_close(a_soil, iso[a][both])
        torch.testing.assert_close(b_soil, iso[b][both])
    # kNN: each modality's present rows, native against isolated soil.
    assert len(calls["knn"]) == 3
    for x, z in calls["knn"]:
        m = next(m for m, d in DIMS.items() if d == x.shape[1])
        torch.testing.assert_close(x, native[m][present[m]])
        torch.testing.assert_close(z, iso[m][present[m]])
    # The dropout is drawn over the presence masks.
    assert len(calls["drop"]) == 1
    for got, m in zip(calls["drop"][0], DIMS, strict=True):
        assert torch.equal(got, present[m])
    # Translation: a pass with the dropped entries hidden, scored on the dropped rows only.
    assert len(calls["translation"]) == 3
    for p, y, mask in calls["translation"]:
        m = next(m for m, d in DIMS.items() if d == y.shape[1])
        torch.testing.assert_close(p, hidden[m])
        torch.testing.assert_close(y, native[m])
        assert torch.equal(mask, dropped[m])
    # Cycle: rows with a dropped modality, fed back from the decoded dropped modalities alone,
    # scored on the modalities those rows kept.
    assert len(calls["cycle"]) == 3
    for p, y, mask in calls["cycle"]:
        m = next(m for m, d in DIMS.items() if d == y.shape[1])
        torch.testing.assert_close(p, back[m])
        torch.testing.assert_close(y, native[m][cycled])
        assert torch.equal(mask, kept[m][cycled])


def test_passes_whose_terms_are_off_are_skipped_without_changing_the_loss() -> None:
    """InfoNCE alone (translation, cycle and denoising at 0) runs one pass, the isolated one,
    and gives the loss and gradients of the full computation, whose extra terms weigh 0."""
    torch.manual_seed(0)
    model = IMPN(tiny_config(dropout=0.0)).train()
    weights = LossWeights(translation=0.0, cycle=0.0, denoising=0.0)
    batch = tri_modal_inputs(8)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    results = []
    for all_terms in (True, False):
        calls.clear()
        model.zero_grad()
        out = IMPNLoss(weights, all_terms=all_terms)(model, batch, torch.Generator().manual_seed(3))
        out.total.backward()
        # A part only the skipped passes use (the decoders, the gates) gets no gradient
        # rather than a zero one.
        grads = [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()
        ]
        results.append((len(calls), out, grads))
    (full_calls, full, full_grads), (calls_skipped, skipped, skipped_grads) = results
    assert (full_calls, calls_skipped) == (3, 1)
    assert full.terms["translation"] > 0 and full.terms["cycle"] > 0
    for name in ("translation", "bridged", "denoising", "cycle"):
        assert skipped.terms[name] == 0
    torch.testing.assert_close(skipped.total, full.total)
    for a, b in zip(skipped_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b)
