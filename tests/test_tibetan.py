from __future__ import annotations

import json
import lzma
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from vallayz.data import PairedEmbeddings
from vallayz.reranker import Reranker, RerankerConfig, SideConfig
from vallayz_train.cli import main
from vallayz_train.encoders import audio_features, mfcc, resample_frames
from vallayz_train.parallel_corpus import build_corpus, default_corpus_path, read_segments
from vallayz_train.tibetan.constants import (
    FRONT_END_LR,
    SPEECH_NODES,
    SPEECH_POOLING,
    TOKEN_ROW_DROPOUT,
)
from vallayz_train.tibetan.encoders import (
    TibetanEncoder,
    phonetics,
    speech_encoder,
    syllables,
    synthesize,
    tibetan_features,
)

LINES = [
    ("D1", "རང་བྱུང་རྟག་པའི་རྡོ་རྗེ་ཚེ་དཔག་མེད། །", "Amitāyus, Boundless Life"),
    ("D1", "འཆི་བདག་བདུད་འཇོམས་གཙུག་ཏོར་རྣམ་པར་རྒྱལ། །", "Uṣṇīṣa-Vijayā"),
    ("D2", "རང་བྱུང་རྟག་པའི་རྡོ་རྗེ་ཚེ་དཔག་མེད། །", "Amitāyus, Boundless Life"),  # a duplicate pair
    ("D2", "བྱང་ཆུབ་སེམས་དཔའ།", "the bodhisattva"),
    ("D3", "སངས་རྒྱས་ལ་ཕྱག་འཚལ་ལོ།", "Homage to the Buddha"),
]


def write_tsv(path: Path, rows: list[tuple[str, str, str]], xz: bool) -> Path:
    text = "doc\tbo\ten\n" + "".join("\t".join(r) + "\n" for r in rows)
    if xz:
        with lzma.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("xz", [True, False])
def test_tsv_reader_and_deduplication(tmp_path: Path, xz: bool) -> None:
    path = write_tsv(tmp_path / ("c.tsv.xz" if xz else "c.tsv"), LINES, xz)
    corpus = build_corpus(read_segments(path), fractions=(0.2, 0.2))
    assert len(corpus) == 4  # the repeated pair is kept once
    assert corpus.bo[0] == "རང་བྱུང་རྟག་པའི་རྡོ་རྗེ་ཚེ་དཔག་མེད། །"


def test_folder_layout_is_read_line_by_line(tmp_path: Path) -> None:
    folder = tmp_path / "text-pairs"
    folder.mkdir()
    (folder / "A1-bo.txt").write_text("ཀ་\nཁ་\n", encoding="utf-8")
    (folder / "A1-en.txt").write_text("ka\nkha\n", encoding="utf-8")
    (folder / "A2-bo.txt").write_text("ག་\n", encoding="utf-8")
    (folder / "A2-en-us.txt").write_text("ga\n", encoding="utf-8")
    (folder / "A3-bo.txt").write_text("ང་\n", encoding="utf-8")  # no English: skipped
    assert read_segments(tmp_path) == [("A1", "ཀ་", "ka"), ("A1", "ཁ་", "kha"), ("A2", "ག་", "ga")]


def test_missing_or_malformed_corpus_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OpenPecha"):
        read_segments(tmp_path / "nope.tsv.xz")
    (tmp_path / "bad.tsv").write_text("a\tb\n")
    with pytest.raises(ValueError, match="header doc<TAB>bo<TAB>en"):
        read_segments(tmp_path / "bad.tsv")


def test_split_is_by_document_and_novel_lines_are_unseen() -> None:
    rows = [(f"D{i % 40}", f"ཀ{i % 70}་ཁ", f"en {i}") for i in range(400)]
    corpus = build_corpus(rows, seed=3)
    docs = {s: {corpus.docs[i] for i in corpus.indices(s)} for s in ("train", "val", "test")}
    assert not (docs["train"] & docs["test"]) and not (docs["train"] & docs["val"])
    assert len(corpus.indices("test")) >= 40 and len(corpus.indices("val")) >= 40
    train_bo = {corpus.bo[i] for i in corpus.indices("train")}
    novel = corpus.novel()
    assert all(corpus.bo[i] not in train_bo for i in novel)
    assert set(novel) <= set(corpus.indices("test"))


def test_syllables_features_and_phonetics() -> None:
    line = "སངས་རྒྱས་ལ་ཕྱག་འཚལ་ལོ། །"
    assert syllables(line) == ["སངས", "རྒྱས", "ལ", "ཕྱག", "འཚལ", "ལོ"]
    feats = tibetan_features(line)
    assert "s:སངས" in feats and "b:སངས|རྒྱས" in feats and "c:<ས" in feats
    spoken = phonetics(line)
    assert (
        spoken and "།" not in spoken and all(w.replace("'", "").isalpha() for w in spoken.split())
    )


def test_tibetan_encoder_fits_on_training_lines_and_round_trips(tmp_path: Path) -> None:
    train = [f"ཀ{i % 13}་ཁ{i % 7}་ག{i % 5}" for i in range(60)]
    encoder = TibetanEncoder(buckets=2**12, dim=8).fit(train)
    x = encoder(train[:5])
    assert x.shape == (5, 8) and np.isfinite(x).all()
    encoder.save(tmp_path)
    np.testing.assert_allclose(TibetanEncoder.load(tmp_path)(train[:5]), x, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="fit the Tibetan encoder"):
        TibetanEncoder()(["ཀ"])


def test_token_ids_are_the_distinct_hashed_features_in_order() -> None:
    import zlib

    encoder = TibetanEncoder(buckets=2**10)
    lines = ["སངས་རྒྱས་ལ་ཕྱག་འཚལ་ལོ། །", "ཀ་ཀ་ཀ", ""]
    ids = encoder.token_ids(lines, length=40)
    assert ids.shape == (3, 40) and ids.dtype == np.int32
    for row, line in enumerate(lines):
        distinct = list(dict.fromkeys(tibetan_features(line)))[:40]
        want = [zlib.crc32(f.encode()) % 2**10 for f in distinct]
        assert ids[row, : len(want)].tolist() == want
        assert (ids[row, len(want) :] == -1).all()
    assert len(tibetan_features(lines[0])) > 40  # the first line is truncated
    assert (ids[2] == -1).all()


def test_mfcc_of_a_tone_and_frame_resampling() -> None:
    t = np.arange(16000) / 16000
    frames = mfcc(np.sin(2 * np.pi * 440 * t).astype(np.float32))
    assert frames.shape == (98, 20) and np.isfinite(frames).all()
    for pooling in ("mean", "pick"):
        assert resample_frames(frames, 8, pooling).shape == (8, 20)
        # Short utterances repeat frames.
        assert resample_frames(frames[:3], 8, pooling).shape == (8, 20)


@pytest.mark.parametrize("total,count", [(98, 8), (17, 16), (16, 16), (400, 32), (5, 1)])
def test_segment_means_match_a_loop_and_cover_every_frame(total: int, count: int) -> None:
    frames = np.random.default_rng(total).normal(size=(total, 3))
    pooled = resample_frames(frames, count, "mean")
    # Reference: frame t belongs to segment floor(t * count / total).
    owner = [t * count // total for t in range(total)]
    for segment in range(count):
        members = [frames[t] for t in range(total) if owner[t] == segment]
        assert members, "a segment is empty"
        np.testing.assert_allclose(pooled[segment], np.mean(members, axis=0), atol=1e-12)
    # Equal-length segments: the mean of the nodes is the mean of the utterance.
    if total % count == 0:
        np.testing.assert_allclose(pooled.mean(axis=0), frames.mean(axis=0), atol=1e-12)


def test_frame_pooling_rejects_unknown_modes_and_empty_input() -> None:
    frames = np.ones((10, 4))
    with pytest.raises(ValueError, match="pooling must be one of"):
        resample_frames(frames, 4, "max")
    with pytest.raises(ValueError, match="at least one frame"):
        resample_frames(frames[:0], 4)


CORPUS = default_corpus_path()


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng (make test installs it)"
)
@pytest.mark.skipif(not CORPUS.exists(), reason="needs the shared Tibetan corpus")
def test_bench_tibetan_end_to_end_on_a_small_subset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    args = [
        "bench",
        "tibetan",
        "--out",
        str(out),
        "--pairs",
        "400",
        "--speech",
        "40",
        "--max-steps",
        "6",
    ]
    assert main([*args, "--batch-size", "64", "--pool", "30", "--pools", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("retrieved:") == 3
    report = (out / "report.md").read_text()
    for source, target in [("bo", "en"), ("en", "bo"), ("speech", "en"), ("speech", "bo")]:
        assert re.search(rf"\| {source} +\| {target} ", report), (source, target)
    assert re.search(r"\| bo\+speech +\| en ", report)
    assert "queries: novel" in report
    # Every learned method read Tibetan through the same trainable n-gram bag.
    assert (out / "data" / "bo.tokens.npy").exists()
    for method in ("impn", "contrastive-heads", "mlp-translator", "seq-heads", "fusemix"):
        config = json.loads((out / method / "best" / "config.json").read_text())
        assert config["token_buckets"] == {"bo": 2**16}
        train = json.loads((out / method / "run.json").read_text())["train"]
        assert train["front_end_lr"] == FRONT_END_LR
        assert train["token_row_dropout"] == TOKEN_ROW_DROPOUT
    line = "སངས་རྒྱས་ལ་ཕྱག་འཚལ་ལོ།"
    assert main(["translate-text", str(out / "impn"), line, "--k", "5"]) == 0
    first = capsys.readouterr().out
    assert len(first.strip().splitlines()) == 5
    # The English candidates were embedded once and saved with the run; the next call reads
    # them back and answers the same.
    index = out / "impn" / "index-en-exact"
    assert (index / "candidates.safetensors").is_file()
    saved = (index / "candidates.safetensors").stat().st_mtime_ns
    assert main(["translate-text", str(out / "impn"), line, "--k", "5"]) == 0
    assert capsys.readouterr().out == first
    assert (index / "candidates.safetensors").stat().st_mtime_ns == saved
    # --rerank adds the re-ranker's saved weight of the first stage's cosine to its score: a
    # weight that dwarfs the re-ranker's own scores keeps the first stage's order.
    dims = PairedEmbeddings(out / "data", check_values=False).modalities
    reranker = Reranker(
        RerankerConfig(
            SideConfig("bo", dims["bo"], 64, 0, 8),
            SideConfig("en", dims["en"]),
            width=16,
            layers=1,
            heads=2,
            first_stage_weight=1e6,
        )
    )
    reranker.save(out / "impn" / "reranker")
    assert main(["translate-text", str(out / "impn"), line, "--k", "5", "--rerank", "5"]) == 0
    reranked = capsys.readouterr().out.strip().splitlines()
    assert [row.split("  ", 1)[1] for row in reranked] == [
        row.split("  ", 1)[1] for row in first.strip().splitlines()
    ]
    for row, plain in zip(reranked, first.strip().splitlines(), strict=True):
        score, cosine = (float(r.split(". ")[1].split()[0]) for r in (row, plain))
        # The cosine is printed to 4 decimals (1e6 x 0.5e-4); the re-ranker's score is O(1).
        assert abs(score - 1e6 * cosine) < 60

    # A recording goes through the same features as the benchmark's synthesized speech.
    meta = json.loads((out / "data" / "speech.json").read_text())
    assert meta == {"kind": "mfcc", "nodes": SPEECH_NODES, "pooling": SPEECH_POOLING}
    audio = synthesize(phonetics(line))
    wav = tmp_path / "line.wav"
    wavfile.write(wav, 16000, (audio * 32767).astype(np.int16))
    stored = speech_encoder("mfcc", SPEECH_NODES, SPEECH_POOLING)([line])
    recorded = audio_features(wav, "mfcc", SPEECH_NODES, SPEECH_POOLING)
    np.testing.assert_allclose(recorded, stored.astype(np.float32), atol=0.05)
    assert main(["translate-text", str(out / "impn"), "--audio", str(wav), "--k", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5


def test_a_data_folder_without_speech_rows_has_no_speech_modality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``build_data(..., speech_items=0)`` synthesizes nothing (espeak-ng is not needed) and
    writes bo and en only; the encoders are stubbed."""
    from vallayz.data import PairedEmbeddings
    from vallayz_train.tibetan import data as tibetan_data

    segments = [(f"d{i % 9}", f"བོད{i}", f"line {i}") for i in range(60)]
    monkeypatch.setattr(tibetan_data, "read_segments", lambda path: segments)

    class Stub:
        def fit(self, lines: list[str], seed: int = 0) -> Stub:
            return self

        def save(self, folder: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)

    def tibetan(lines: list[str], *args: object) -> tuple[np.ndarray, ...]:
        count = len(lines)
        return np.ones((count, 4)), np.zeros((count, 3), int), np.zeros((count, 2), int)

    def no_speech(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing to synthesize")

    monkeypatch.setattr(tibetan_data, "TibetanEncoder", Stub)
    monkeypatch.setattr(tibetan_data, "encode_tibetan", tibetan)
    monkeypatch.setattr(tibetan_data, "english_encoder", lambda device: None)
    monkeypatch.setattr(
        tibetan_data, "cached_encode", lambda name, texts, *a, **k: np.ones((len(texts), 3))
    )
    monkeypatch.setattr(tibetan_data, "encode_speech", no_speech)
    folder, _ = tibetan_data.build_data(tmp_path, None, None, 0, progress=False, log=print)
    assert PairedEmbeddings(folder).modalities == {"bo": 4, "en": 3}
