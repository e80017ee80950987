"""Faults a user meets: each ends in one clear message (exit 2), a traceback only for bugs
(exit 1), and nothing the user had is lost. RELIABILITY.md lists which test pins which fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from safetensors.torch import load_file
from synthetic import write_synthetic

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.errors import DivergenceError, VallayzUserError
from vallayz_train.cli import main
from vallayz_train.commands import check
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import fit

SMALL = {"soil_dim": 16, "heads": 2, "layers": 1, "variants": 2, "top_k": 2}
TRAIN = {"batch_size": 16, "eval_every": 50, "warmup_steps": 1, "planner": False}


def _fit(data: Path, run: Path, steps: int = 3, **train: object) -> dict:
    config = TrainConfig.from_dict({**TRAIN, "max_steps": steps, **train})
    return fit(data, run, dict(SMALL), config, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trained")
    data = write_synthetic(root / "data", rows=60, groups=12)
    _fit(data, root / "run")
    return data, root / "run"


# ---------------------------------------------------------------- exit status


def test_a_user_error_exits_2_and_a_bug_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["check", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in one_line_error(capsys)

    def broken(args: object) -> int:
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(check, "run", broken)
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal invariant broke" in err and "fault in vallayz" in err


def test_missing_run_files_are_user_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Folders that lack what a command reads exit 2 with one line, not a traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    assert main(["plot", str(run)]) == 2
    assert "has no metrics.csv" in one_line_error(capsys)
    assert main(["translate-text", str(tmp_path), "ཀ"]) == 2
    assert "a vallayz checkpoint?" in one_line_error(capsys)


# ---------------------------------------------------------------- data loss


def test_outputs_never_replace_a_file_vallayz_did_not_write(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    precious = tmp_path / "notes.json"
    precious.write_text('{"mine": 1}\n')
    evaluate = ["eval", str(run), str(data), "--split", "all", "--pool", "10", "--pools", "1"]
    assert main([*evaluate, "--output", str(precious)]) == 2
    assert "--force" in one_line_error(capsys) and precious.read_text() == '{"mine": 1}\n'
    # Its own output it replaces; a foreign one only with --force.
    own = tmp_path / "eval.json"
    assert main([*evaluate, "--output", str(own)]) == 0
    assert main([*evaluate, "--output", str(own)]) == 0
    assert main([*evaluate, "--output", str(precious), "--force"]) == 0
    assert json.loads(precious.read_text())["written_by"] == "vallayz eval"

    np.save(tmp_path / "q.npy", np.ones((3, 12), np.float32))
    target = data / "image.npy"  # a data folder's own file
    before = target.read_bytes()
    translate = ["translate", str(run), "--source", "text", "--target", "image"]
    translate += ["--input", str(tmp_path / "q.npy"), "--output"]
    assert main([*translate, str(target)]) == 2
    assert "not written by vallayz" in one_line_error(capsys) and target.read_bytes() == before
    assert main([*translate, str(tmp_path / "out.npy")]) == 0
    assert main([*translate, str(tmp_path / "out.npy"), "--force"]) == 0
    assert np.load(tmp_path / "out.npy").shape == (3, 16)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_rewriting_a_data_folder_keeps_the_old_one_until_the_new_one_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_synthetic(tmp_path / "data", rows=30, groups=10)
    (data / "notes.txt").write_text("keep me")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    calls = []
    save = np.save

    def failing_save(path: object, array: object, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        save(path, array, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        write_synthetic(data, rows=40, groups=10)
    monkeypatch.setattr(np, "save", save)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing half-written

    write_synthetic(data, rows=40, groups=10)
    assert PairedEmbeddings(data).size == 40
    assert (data / "notes.txt").read_text() == "keep me"  # not part of the format: kept
    # Interrupted between the two renames: the old folder is named, not lost.
    data.rename(tmp_path / ".data.old")
    with pytest.raises(VallayzUserError, match="rename it back"):
        PairedEmbeddings(data)


def test_fit_out_refuses_a_file_and_a_folder_of_something_else(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = trained
    (tmp_path / "file").write_text("x")
    with pytest.raises(VallayzUserError, match="is a file"):
        _fit(data, tmp_path / "file")
    with pytest.raises(VallayzUserError, match="holds no vallayz run but other files"):
        _fit(data, data)
    with pytest.raises(VallayzUserError, match="already holds a run"):
        _fit(data, run)


# ---------------------------------------------------------------- runs that cannot be continued


def test_a_run_without_a_checkpoint_restarts_with_out_and_with_resume(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    whole = tmp_path / "whole"
    _fit(data, whole)
    stopped = tmp_path / "stopped"
    with pytest.raises(DivergenceError):
        _fit(data, stopped, lr=1e30)  # dies before its first checkpoint
    assert (stopped / "run.json").is_file() and not (stopped / "latest").exists()

    _fit(data, stopped)
    assert "stopped before its first checkpoint; starting it again" in capsys.readouterr().err
    shutil.rmtree(stopped)
    with pytest.raises(DivergenceError):
        _fit(data, stopped, lr=1e30)
    # --resume on it starts fresh with its own settings (lr=1e30 here: it diverges again).
    assert main(["fit", "--resume", str(stopped), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume starts it fresh" in err and "diverged" in err


def test_a_corrupt_state_is_named_and_resume_falls_back_to_the_one_before(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _fit(data, whole, steps=5, checkpoint_every=1)
    _fit(data, killed, steps=5, checkpoint_every=1)
    # The latest state (the last step's) is damaged; the one before it is whole.
    assert sorted(p.name for p in killed.glob("state-*")) == ["state-3", "state-4"]
    (killed / "state-4" / "trainer_state.json").write_text('{"step": 4, "best"')
    (killed / "summary.json").unlink()  # killed after its last checkpoint, before finishing
    assert main(["fit", "--resume", str(killed), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "state-4/trainer_state.json is unreadable" in err
    assert "resuming from the previous state, state-3" in err
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    (killed / "summary.json").unlink()
    for state in killed.glob("state-*"):
        (state / "optimizer.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(VallayzUserError, match=r"optimizer\.safetensors is unreadable"):
        fit(None, killed, resume=True, progress=False)


def test_divergence_is_reported_with_the_step_the_terms_and_a_hint(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    run = tmp_path / "run"
    with pytest.raises(DivergenceError) as caught:
        _fit(data, run, steps=30, lr=1e6, checkpoint_every=1, grad_clip=0.0, warmup_steps=0)
    error = caught.value
    assert error.step > 0 and "contrastive" in error.terms  # the last computed terms
    assert "lower the learning rate" in str(error) and f"step {error.step}" in str(error)
    kept = (run / "latest").read_text().strip()
    assert kept == f"state-{error.step - 1}" and kept in str(error)

    # Inputs that overflow the loss before any update: the hint names the data instead.
    huge = tmp_path / "huge"
    shutil.copytree(data, huge)
    np.save(huge / "image.npy", np.load(huge / "image.npy") * np.float32(1e37))
    assert main(["check", str(huge)]) == 0
    assert "overflow the loss" in capsys.readouterr().out
    code = main(["fit", str(huge), "--out", str(tmp_path / "r2"), "--max-steps", "2", "--quiet"])
    assert code == 2
    assert "first step, before any update" in one_line_error(capsys)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"train": {"max_steps": "10"}}, "'max_steps' must be an integer or null, got '10'"),
        ({"train": {"loss_weights": [1]}}, "'loss_weights' must be an object"),
        ({"train": {"loss_weights": {"nope": 1.0}}}, "unknown term"),
        ({"model": {"soil_dim": 1.5}}, "'soil_dim' must be an integer"),
        ({"model": {"sigma": "big"}}, "'sigma' must be a number or an object"),
        ({"model": {"soil": 3}}, "model field soil: no model config has this field"),
        ({"model": [1]}, "'model' must be a JSON object"),
        ({"train": {"lr": -1}}, "lr must be positive"),
    ],
)
def test_config_files_of_the_wrong_type_are_named_at_load_time(
    trained: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config: dict,
    message: str,
) -> None:
    data, _ = trained
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    assert main(["fit", str(data), "--out", str(tmp_path / "r"), "--config", str(path)]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_retrieve_and_translate_options_are_checked(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    retrieve = ["retrieve", str(run), "--source", "text", "--candidates", str(data)]
    retrieve += ["--query-ids", "item0001"]
    cases = [
        ([*retrieve, "--target", "smell"], "--target 'smell' is not a modality"),
        ([*retrieve, "--target", "image", "--k", "0"], "--k must be a positive integer"),
        ([*retrieve, "--target", "image", "--k", "61"], "larger than the pool"),
    ]
    np.save(tmp_path / "q.npy", np.ones((3, 12), np.float32))
    np.save(tmp_path / "c.npy", np.ones((3, 12), np.complex64))
    np.save(tmp_path / "w.npy", np.ones((3, 5), np.float32))
    translate = ["translate", str(run), "--source", "text", "--target", "image"]
    translate += ["--output", str(tmp_path / "o.npy"), "--input"]
    cases += [
        ([*translate, str(tmp_path / "q.npy"), "--batch-size", "0"], "--batch-size must be"),
        ([*translate, str(tmp_path / "c.npy")], "dtype complex64"),
        ([*translate, str(tmp_path / "w.npy")], "expected [rows, 12]"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in one_line_error(capsys)
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("zero-byte", r"text.npy is empty \(0 bytes\)"),
        ("truncated", "text.npy is not a readable .npy array, or is truncated"),
        ("no-columns", r"shape \(60, 0\)"),
        ("no-nodes", r"shape \(60, 0, 6\)"),
        ("complex", "dtype complex64"),
        ("beyond-float32", "row 4 .*beyond float32"),
        ("zero-tokens", "zero ids per row"),
        ("no-real-frame", "row 5 \\(id 'item0005'\\) is present but all of its nodes are padding"),
        ("absent-everywhere", "row 9 \\(id 'item0009'\\) is absent in every modality"),
    ],
)
def test_check_finds_what_training_would_trip_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, message: str
) -> None:
    data = write_synthetic(tmp_path / "data", rows=60, groups=12)
    text = np.load(data / "text.npy")
    if how == "zero-byte":
        (data / "text.npy").write_bytes(b"")
    elif how == "truncated":
        (data / "text.npy").write_bytes((data / "text.npy").read_bytes()[:-100])
    elif how == "no-columns":
        np.save(data / "text.npy", text[:, :0])
    elif how == "no-nodes":
        np.save(data / "audio.npy", np.zeros((60, 0, 6), np.float32))
        (data / "audio.padding.npy").unlink()
    elif how == "complex":
        np.save(data / "text.npy", text.astype(np.complex64))
    elif how == "beyond-float32":
        wide = text.astype(np.float64)
        wide[4, 0] = 1e300
        np.save(data / "text.npy", wide)
    elif how == "zero-tokens":
        np.save(data / "text.tokens.npy", np.zeros((60, 0), np.int32))
    elif how == "no-real-frame":
        padding = np.load(data / "audio.padding.npy")
        present = np.load(data / "audio.present.npy")
        present[5] = True
        padding[5] = False
        np.save(data / "audio.padding.npy", padding)
        np.save(data / "audio.present.npy", present)
    elif how == "absent-everywhere":
        for name in ("text", "audio", "image"):
            path = data / f"{name}.present.npy"
            present = np.load(path) if path.exists() else np.ones(60, bool)
            present[9] = False
            np.save(path, present)
    with pytest.raises(VallayzUserError, match=message):
        PairedEmbeddings(data)
    assert main(["check", str(data)]) == 2
    one_line_error(capsys)


def test_float64_embeddings_are_read_as_float32_with_a_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_synthetic(tmp_path / "data", rows=30, groups=10)
    text = np.load(data / "text.npy")
    np.save(data / "text.npy", text.astype(np.float64))
    loaded = PairedEmbeddings(data)
    assert loaded.batch([0, 1]).embeddings["text"].dtype == torch.float32
    assert main(["check", str(data)]) == 0
    assert "float64 embeddings are read as float32" in capsys.readouterr().out


def test_nan_in_the_rows_of_an_absent_modality_works_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_synthetic(tmp_path / "data", rows=60, groups=12)
    # Pooled text, absent on a fifth of the rows, NaN there (audio frames already are).
    present = np.random.default_rng(1).random(60) > 0.2
    text = np.load(data / "text.npy")
    text[~present] = np.nan
    np.save(data / "text.npy", text)
    np.save(data / "text.present.npy", present)

    run = tmp_path / "run"
    summary = _fit(data, run, steps=4)
    assert summary["steps"] == 4
    metrics = (run / "metrics.csv").read_text().splitlines()[1:]
    assert all(np.isfinite(float(line.split(",")[2])) for line in metrics)
    output = tmp_path / "e.json"
    assert main(["eval", str(run), str(data), "--split", "all", "--output", str(output)]) == 0
    assert all(np.isfinite(r["R@1"]) for r in json.loads(output.read_text())["results"])

    from vallayz import IMPN
    from vallayz.types import Batch

    model = IMPN.from_pretrained(run).eval()
    batch = PairedEmbeddings(data).batch(np.arange(60))
    raw = Batch.of(
        {"text": torch.from_numpy(text), "image": batch.embeddings["image"]},
        present={"text": torch.from_numpy(present)},
    )
    with torch.no_grad():
        out = model.translate(raw.embeddings, target="audio", present=raw.present)
    assert torch.isfinite(out).all()
    # Through the loss too: NaN in absent rows leaves it finite.
    from vallayz.losses import IMPNLoss

    assert torch.isfinite(IMPNLoss()(model, raw, torch.Generator().manual_seed(0)).total)


def test_the_writer_refuses_a_folder_of_foreign_arrays_and_keeps_other_files(
    tmp_path: Path,
) -> None:
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "results.npy", np.arange(3))
    with pytest.raises(VallayzUserError, match="is not a data folder"):
        write_paired_embeddings(arrays, {"a": np.zeros((1, 2))}, [{"id": "x"}])
    assert np.load(arrays / "results.npy").tolist() == [0, 1, 2]
    # A folder of other files (an encoder saved first, notes) becomes a data folder around them.
    folder = tmp_path / "data"
    (folder / "encoders").mkdir(parents=True)
    (folder / "encoders" / "bo.json").write_text("{}")
    (folder / "thesis.tex").write_text("years of work")
    write_paired_embeddings(folder, {"a": np.zeros((1, 2))}, [{"id": "x"}])
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert (folder / "encoders" / "bo.json").read_text() == "{}"
    assert (folder / "items.tsv").is_file()
