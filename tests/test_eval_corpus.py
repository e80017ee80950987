"""`bench tibetan --run RUN --eval-corpus FILE`: a trained run evaluated on another corpus.

A tiny run is trained here on hashed Tibetan features (the run's own fitted encoder) and a
stand-in English encoder (deterministic vectors from a hash of the text, in place of MiniLM).
The other corpus has a duplicate pair (dropped), two Tibetan lines with one English translation
and one Tibetan line with two (duplicate gold keys). The reference encodes the corpus directly
with the run's saved encoder and model, ranks in float64 one query at a time (ties against the
query, any candidate with the gold text counts), and must equal the reported table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.eval import retrieval_metrics
from vallayz.eval.retrieval import random_pools
from vallayz.learned import load_pretrained
from vallayz.types import Batch
from vallayz_train.bench import BenchSpec
from vallayz_train.cli import main
from vallayz_train.config import TrainConfig
from vallayz_train.tibetan import bench
from vallayz_train.tibetan.bench import evaluate_corpus
from vallayz_train.tibetan.constants import ENCODER_DIR, TOKEN_LENGTH
from vallayz_train.tibetan.encoders import TibetanEncoder
from vallayz_train.trainer import fit

LETTERS = "ཀཁགངཅཆཇཉཏཐདནཔཕབམཙཚཛཝཞཟའཡརལཤསཧཨ"
BUCKETS = 2**10
EN_DIM = 12
# The other corpus: (doc, Tibetan, English). Row 2 repeats row 0 (dropped); rows 0 and 3 share
# their English; row 1's Tibetan line comes again with another English one (row 6).
OTHER = [
    ("X1", "ཀ་ཁ་ག་ང།", "the first line"),
    ("X1", "ཅ་ཆ་ཇ་ཉ།", "the second line"),
    ("X1", "ཀ་ཁ་ག་ང།", "the first line"),
    ("X1", "ཏ་ཐ་ད་ན།", "the first line"),
    ("X2", "པ་ཕ་བ་མ།", "the fourth line"),
    ("X2", "ཙ་ཚ་ཛ་ཝ།", "the fifth line"),
    ("X2", "ཅ་ཆ་ཇ་ཉ།", "the second line, again"),
]
UNIQUE = [OTHER[i] for i in (0, 1, 3, 4, 5, 6)]


def fake_english(texts: list[str]) -> np.ndarray:
    """A unit vector per text, from its hash (the English encoder's contract: normalised,
    float16)."""
    out = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=EN_DIM)
        out.append(v / np.linalg.norm(v))
    return np.asarray(out, dtype=np.float16).reshape(len(texts), EN_DIM)


@pytest.fixture
def english(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "english_encoder", lambda *args, **kwargs: fake_english)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run of IMPN trained for a few steps on 60 Tibetan/English pairs, with its data folder
    holding the fitted Tibetan encoder, as `bench tibetan` leaves it."""
    rng = np.random.default_rng(0)
    bo = ["་".join(rng.choice(list(LETTERS), size=4)) + "།" for _ in range(60)]
    en = [f"english line {i}" for i in range(60)]
    tibetan = TibetanEncoder(buckets=BUCKETS, dim=8).fit(bo)
    data = tmp_path / "data"
    tibetan.save(data / ENCODER_DIR)
    items = [
        {
            "id": f"s{i:03d}",
            "group": f"d{i % 12}",
            "split": "val" if i % 6 == 0 else "train",
            "text_en": en[i],
            "text_bo": bo[i],
        }
        for i in range(60)
    ]
    write_paired_embeddings(
        data,
        {"bo": tibetan(bo).astype(np.float32), "en": fake_english(en)},
        items,
        tokens={"bo": tibetan.token_ids(bo, TOKEN_LENGTH)},
    )
    config = TrainConfig(
        max_steps=3, batch_size=16, warmup_steps=1, eval_every=1000, planner=False, val_pool=10
    )
    model = {"soil_dim": 16, "heads": 2, "layers": 1, "token_buckets": {"bo": BUCKETS}}
    fit(data, tmp_path / "run", model, config, progress=False)
    return tmp_path / "run"


def write_corpus(path: Path) -> Path:
    path.write_text("doc\tbo\ten\n" + "".join("\t".join(r) + "\n" for r in OTHER))
    return path


def float64_ranks(q: np.ndarray, c: np.ndarray, qk: list[str], ck: list[str]) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    ranks = []
    for i in range(len(q)):
        scores = c @ q[i]
        gold = np.array([key == qk[i] for key in ck])
        best = scores[gold].max()
        ranks.append(1 + int(((scores >= best) & ~gold).sum()))
    return np.array(ranks)


def reference(run: Path, pool: int, pools: int, seed: int) -> dict[tuple[str, str, str], Any]:
    """R@1, R@5 and MRR of bo->en and en->bo, encoded directly with the run's encoder and
    model, for the whole set and for the random pools of ``seed``."""
    data = Path(json.loads((run / "run.json").read_text())["data"])
    tibetan = TibetanEncoder.load(data / ENCODER_DIR)
    bo_lines, en_lines = [r[1] for r in UNIQUE], [r[2] for r in UNIQUE]
    model: Any = load_pretrained(run).eval()
    with torch.no_grad():
        bo = model.embed(
            Batch.of(
                {"bo": torch.from_numpy(tibetan(bo_lines).astype(np.float32))},
                tokens={"bo": torch.from_numpy(tibetan.token_ids(bo_lines, TOKEN_LENGTH)).long()},
            )
        )
        en = model.embed(
            Batch.of({"en": torch.from_numpy(fake_english(en_lines).astype(np.float32))})
        )
    vectors = {"bo": bo.double().numpy(), "en": en.double().numpy()}
    keys = {"bo": bo_lines, "en": en_lines}
    out: dict[tuple[str, str, str], Any] = {}
    n = len(UNIQUE)
    sets = {"all": [np.arange(n)]}
    if pool < n:
        sets[str(pool)] = [s.numpy() for s in random_pools(n, pool, pools, seed)]
    for source, target in (("bo", "en"), ("en", "bo")):
        for label, index_sets in sets.items():
            metrics = []
            for rows in index_sets:
                ranks = float64_ranks(
                    vectors[source][rows],
                    vectors[target][rows],
                    [keys[target][i] for i in rows],
                    [keys[target][i] for i in rows],
                )
                metrics.append(retrieval_metrics(torch.from_numpy(ranks)))
            out[(source, target, label)] = {
                name: float(np.mean([m[name] for m in metrics])) for name in ("R@1", "R@5", "MRR")
            } | {"queries": len(index_sets[0])}
    return out


def check_table(table: list[dict[str, Any]], expected: dict[tuple[str, str, str], Any]) -> None:
    got = {(r["source"], r["target"], r["pool"]): r for r in table}
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        for name, value in values.items():
            assert got[key][name] == pytest.approx(value, abs=1e-9), (key, name)


def test_evaluate_corpus_against_a_float64_reference(
    run: Path, english: None, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "other.tsv")
    out = tmp_path / "eval"
    table = evaluate_corpus(run, str(corpus), out, pool=4, pools=3, progress=False)

    # Every deduplicated pair is a query, encoded by the run's own Tibetan encoder.
    data = Path(json.loads((run / "run.json").read_text())["data"])
    written = PairedEmbeddings(out / "data")
    assert [(i["text_bo"], i["text_en"]) for i in written.items] == [(r[1], r[2]) for r in UNIQUE]
    np.testing.assert_allclose(
        written.arrays["bo"][:],
        TibetanEncoder.load(data / ENCODER_DIR)([r[1] for r in UNIQUE]),
        rtol=1e-5,
        atol=1e-6,
    )

    expected = reference(run, pool=4, pools=3, seed=0)
    assert expected[("bo", "en", "all")]["queries"] == 6
    check_table(table, expected)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["corpus"] == str(corpus) and saved["results"] == table


def test_the_eval_corpus_option_runs_it_from_the_command_line(
    run: Path, english: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_corpus(tmp_path / "other.tsv")
    out = tmp_path / "eval"
    args = ["bench", "tibetan", "--eval-corpus", str(corpus), "--out", str(out), "--quiet"]
    assert main([*args, "--run", str(run), "--pool", "4", "--pools", "3"]) == 0
    check_table(json.loads((out / "eval.json").read_text())["results"], reference(run, 4, 3, 0))
    assert "bo " in capsys.readouterr().out
    assert main(args) == 2  # no --run
    assert "--eval-corpus needs --run" in capsys.readouterr().err


def test_seed_eval_chooses_the_pools_of_eval_corpus(
    run: Path, english: None, tmp_path: Path
) -> None:
    # The pools of seed 7 give other metrics than those of seed 0 here, so the seed shows.
    assert reference(run, 4, 3, 7) != reference(run, 4, 3, 0)
    corpus = write_corpus(tmp_path / "other.tsv")
    out = tmp_path / "eval"
    args = ["bench", "tibetan", "--eval-corpus", str(corpus), "--out", str(out), "--quiet"]
    assert main([*args, "--run", str(run), "--pool", "4", "--pools", "3", "--seed-eval", "7"]) == 0
    check_table(json.loads((out / "eval.json").read_text())["results"], reference(run, 4, 3, 7))


def test_seed_eval_reaches_the_tibetan_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs: list[Any] = []

    def fake_build_data(*args: object, **kwargs: object) -> tuple[Path, dict[str, list[int]]]:
        out = kwargs.get("out", args[0] if args else None)
        return Path(str(out)) / "data", {"novel": []}

    def fake_run_benchmark(*args: object, **kwargs: object) -> Any:
        specs.extend(a for a in (*args, *kwargs.values()) if isinstance(a, BenchSpec))
        raise RuntimeError("stopped once the benchmark's settings were made")

    monkeypatch.setattr(bench, "build_data", fake_build_data)
    monkeypatch.setattr(bench, "run_benchmark", fake_run_benchmark)
    argv = ["bench", "tibetan", "--out", str(tmp_path / "b"), "--seed-eval", "7", "--quiet"]
    main([*argv, "--methods", "impn", "mlp-translator"])
    assert len(specs) == 1
    assert specs[0].seed == 7
    # --methods reaches the spec too: the benchmark trains and evaluates those alone.
    assert specs[0].methods == ("impn", "mlp-translator")
