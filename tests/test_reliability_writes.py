"""Faults that could write outside a folder, lose a user's data, or answer from stale or broken
inputs: each is refused with one clear message (exit 2) and nothing is replaced.
RELIABILITY.md lists which test pins which fault."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from safetensors.torch import load_file, save_file
from synthetic import write_synthetic

from vallayz.data import PairedEmbeddings, write_paired_embeddings
from vallayz.errors import VallayzUserError
from vallayz_train.cli import main
from vallayz_train.config import TrainConfig
from vallayz_train.run_folder import index_dir, load_index


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- the Python writer


@pytest.mark.parametrize(
    "name",
    ["../escape", "/tmp/absolute", "a/b", "a\\b", "..", ".hidden", "", "x.present", "a b"],
)
def test_the_writer_refuses_a_modality_name_that_is_not_a_plain_file_name(
    tmp_path: Path, name: str
) -> None:
    victim = tmp_path / "escape.npy"
    np.save(victim, np.arange(3))
    data = tmp_path / "data"
    arrays = {"a": np.zeros((2, 3), np.float32), name: np.ones((2, 3), np.float32)}
    items = [{"id": "x"}, {"id": "y"}]
    with pytest.raises(VallayzUserError, match="cannot name a modality"):
        write_paired_embeddings(data, arrays, items)
    for masks in ("present", "padding", "tokens", "node_ids"):
        with pytest.raises(VallayzUserError, match="cannot name a modality"):
            write_paired_embeddings(
                data, {"a": arrays["a"]}, items, **{masks: {name: np.ones((2, 3), bool)}}
            )
    assert np.load(victim).tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escape.npy"]


def _bad_inputs() -> dict[str, tuple[dict, list, dict]]:
    two = np.zeros((2, 3), np.float32)
    ok = [{"id": "x"}, {"id": "y"}]
    return {
        "duplicate ids": ({"a": two}, [{"id": "x"}, {"id": "x"}], {}),
        "rows disagree": ({"a": two, "b": np.zeros((3, 3), np.float32)}, ok, {}),
        "items and rows disagree": ({"a": two}, [{"id": "x"}], {}),
        "object array": ({"a": np.array([[1.0], [2.0]], dtype=object)}, ok, {}),
        "integer embeddings": ({"a": np.zeros((2, 3), np.int64)}, ok, {}),
        "a key missing": ({"a": two}, [{"id": "x", "text": "t"}, {"id": "y"}], {}),
        "an extra key": ({"a": two}, [{"id": "x"}, {"id": "y", "text": "t"}], {}),
        "no id": ({"a": two}, [{"name": "x"}, {"name": "y"}], {}),
        "bad split": ({"a": two}, [{"id": "x", "split": "tr"}, {"id": "y", "split": "val"}], {}),
        "carriage return": ({"a": two}, [{"id": "x\r"}, {"id": "y"}], {}),
        "mask of the wrong shape": ({"a": two}, ok, {"present": {"a": np.ones(3, bool)}}),
        "float mask": ({"a": two}, ok, {"present": {"a": np.array([0.5, 1.0])}}),
        "mask of an unknown modality": ({"a": two}, ok, {"present": {"b": np.ones(2, bool)}}),
        "a row absent everywhere": ({"a": two}, ok, {"present": {"a": np.array([True, False])}}),
        "NaN in a present row": ({"a": np.full((2, 3), np.nan, np.float32)}, ok, {}),
        "float token ids": ({"a": two}, ok, {"tokens": {"a": np.zeros((2, 2))}}),
        "token ids of other rows": ({"a": two}, ok, {"tokens": {"a": np.zeros((3, 2), int)}}),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_the_writer_refuses_what_check_refuses_and_keeps_the_old_folder(
    tmp_path: Path, case: str
) -> None:
    """Rows are checked as strictly as the loader (and so vallayz check) checks them; a
    valid folder is never replaced by one it would refuse, and nothing is left beside it."""
    data = write_synthetic(tmp_path / "data", rows=20, groups=5)
    before = _snapshot(data)
    embeddings, items, extra = _bad_inputs()[case]
    with pytest.raises(VallayzUserError):
        write_paired_embeddings(data, embeddings, items, **extra)
    assert _snapshot(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    PairedEmbeddings(data)


# ---------------------------------------------------------------- one writer per run

SMALL = {"soil_dim": 16, "heads": 2, "layers": 1, "variants": 2, "top_k": 2}
TRAIN = {"batch_size": 16, "eval_every": 50, "warmup_steps": 1, "planner": False, "max_steps": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "data", rows=60, groups=12)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps({"model": SMALL, "train": TRAIN}))
    return path


@pytest.fixture(scope="module")
def trained(data: Path, config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert _fit(data, run, config) == 0
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _fit(data: Path, out: Path, config: Path, *more: str) -> int:
    return main(["fit", str(data), "--out", str(out), "--config", str(config), "--quiet", *more])


HOLD = """
import sys, time
from pathlib import Path
from vallayz_train.run_folder import lock_run
with lock_run(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_of_a_run_folder_is_refused_and_a_killed_one_does_not_lock_it(
    data: Path, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert _fit(data, run, config) == 2
        err = one_line_error(capsys)
        assert f"run folder {run} is being written by process {holder.pid}" in err
        assert "choose another --out" in err
        assert not (run / "run.json").exists()  # the second writer wrote nothing
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
    assert _fit(data, run, config) == 0  # the killed holder left no lock behind
    capsys.readouterr()
    # --resume takes the same lock.
    (run / "summary.json").unlink()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert main(["fit", "--resume", str(run), "--quiet"]) == 2
        assert f"being written by process {holder.pid}" in one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait()

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    assert _fit(data, folder, config) == 2
    assert "holds no vallayz run" in one_line_error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert main(["fit", "--resume", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "not a vallayz run" in one_line_error(capsys)
    assert not (tmp_path / "nowhere").exists()


def test_a_benchmark_folder_has_one_writer_and_index_names_stay_inside_the_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert main(["bench", "data", str(data), "--out", str(out), "--quiet"]) == 2
        assert f"being written by process {holder.pid}" in one_line_error(capsys)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no method run started
    finally:
        holder.kill()
        holder.wait()
    for name in ("../x-exact", "/tmp/x", ".x"):
        with pytest.raises(VallayzUserError, match="cannot name"):
            index_dir(tmp_path, name)


# ---------------------------------------------------------------- stale caches


def test_a_saved_index_is_keyed_on_the_content_of_the_candidates_and_the_model(
    trained: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, candidates = _copy(trained, tmp_path / "run"), tmp_path / "candidates"
    write_synthetic(candidates, rows=60, groups=12, seed=1)
    retrieve = ["retrieve", str(run), "--source", "text", "--target", "image", "--k", "3"]
    retrieve += ["--candidates", str(candidates), "--query-ids", "item0003", "item0010"]
    capsys.readouterr()
    assert main(retrieve) == 0
    first = capsys.readouterr().out
    # The candidates' folder rewritten in place with other values, as many rows, same ids.
    write_synthetic(candidates, rows=60, groups=12, seed=2)
    assert main(retrieve) == 0
    second = capsys.readouterr().out
    shutil.rmtree(run / "index-image-exact")
    assert main(retrieve) == 0
    assert capsys.readouterr().out == second != first
    # The run's model trained again in place (same file sizes): the index is built again.
    index = load_index(run, "image-exact")
    assert index is not None
    weights = load_file(str(run / "model.safetensors"))
    save_file(
        {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()},
        str(run / "model.safetensors"),
    )
    assert main(retrieve) == 0
    rebuilt = load_index(run, "image-exact")
    assert rebuilt is not None and rebuilt.meta["model"] != index.meta["model"]
    assert not torch.equal(rebuilt.candidates, index.candidates)


def test_the_model_fingerprint_ignores_the_order_of_the_safetensors_header(
    trained: Path, tmp_path: Path
) -> None:
    from vallayz_train.run_folder import model_fingerprint

    run = _copy(trained, tmp_path / "run")
    before = model_fingerprint(run)
    path = run / "model.safetensors"
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    # The same tensors, the header's keys written in the reverse order (padded to its length).
    reordered = json.dumps(dict(reversed(list(header.items()))), separators=(",", ":")).encode()
    assert reordered != raw[8 : 8 + size].rstrip()
    reordered = reordered.ljust(size)
    path.write_bytes(raw[:8] + reordered + raw[8 + size :])
    assert load_file(str(path)).keys() == header.keys() - {"__metadata__"}
    assert model_fingerprint(run) == before
    # Other tensor values give another fingerprint; an unreadable file gives none.
    last = bytearray(raw)
    last[-1] ^= 0xFF
    path.write_bytes(bytes(last))
    assert model_fingerprint(run) not in (before, "")
    path.write_bytes(raw[:4])
    assert model_fingerprint(run) == ""


# ---------------------------------------------------------------- options silently ignored


def test_resume_refuses_options_it_would_ignore_and_leaves_a_finished_run_alone(
    trained: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(trained, tmp_path / "run")
    capsys.readouterr()
    for option in (
        ["--max-steps", "50"],
        ["--lr", "0.5"],
        ["--epochs", "3"],
        ["--batch-size", "8"],
        ["--seed", "4"],
        ["--method", "mlp-translator"],
        ["--planner", "on"],
        ["--config", str(tmp_path / "other.json")],
        ["--out", str(tmp_path / "elsewhere")],
    ):
        assert main(["fit", "--resume", str(run), "--quiet", *option]) == 2, option
        err = one_line_error(capsys)
        assert f"{option[0]} " in err and ("cannot change a run" in err or "--out" in err), err
    assert not (tmp_path / "elsewhere").exists()
    # A finished run is not trained again: its final model stays, bit for bit.
    before = _snapshot(run)
    assert main(["fit", "--resume", str(run), "--quiet", "--max-steps", "3"]) == 0
    assert "has finished" in capsys.readouterr().err
    after = _snapshot(run)
    after.pop(".lock", None), before.pop(".lock", None)
    assert after == before


def test_eval_refuses_a_split_seed_other_than_the_runs(
    trained: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(trained, tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", str(run), str(data), "--split-seed", "7", "--pool", "5"]) == 2
    err = one_line_error(capsys)
    assert "--split-seed 7 is not the seed the run was trained with (0)" in err
    assert not (run / "eval-test-soil.json").exists()
    assert main(["eval", str(run), str(data), "--split-seed", "0", "--pool", "5"]) == 0
    assert main(["eval", str(run), str(data), "--pool", "5", "--split", "all"]) == 0


# ---------------------------------------------------------------- user files replaced


def test_plot_out_does_not_replace_a_file_vallayz_did_not_write(
    trained: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    run, figures = _copy(trained, tmp_path / "run"), tmp_path / "figures"
    figures.mkdir()
    (figures / "curves.png").write_bytes(b"the user's own figure")
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(figures)]) == 2
    assert "curves.png exists and was not written by vallayz" in one_line_error(capsys)
    assert (figures / "curves.png").read_bytes() == b"the user's own figure"
    assert sorted(p.name for p in figures.iterdir()) == ["curves.png"]
    assert main(["plot", str(run), "--out", str(figures), "--force"]) == 0
    assert (figures / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert main(["plot", str(run), "--out", str(figures)]) == 0  # its own figures: replaced


# ---------------------------------------------------------------- numbers from broken inputs


@pytest.mark.parametrize("damage", ["nan", "int32"])
def test_damaged_weights_are_named_not_evaluated(
    trained: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    run = _copy(trained, tmp_path / "run")
    weights = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    if damage == "nan":
        weights[name] = weights[name].clone()
        weights[name].view(-1)[0] = float("nan")
        expected = f"tensor {name!r} holds NaN or Inf"
    else:
        weights[name] = weights[name].to(torch.int32)
        expected = f"tensor {name!r} has dtype torch.int32"
    save_file(weights, str(run / "model.safetensors"))
    capsys.readouterr()
    assert (
        main(["eval", str(run), str(data), "--pool", "5", "--output", str(tmp_path / "e.json")])
        == 2
    )
    err = one_line_error(capsys)
    assert "model.safetensors" in err and expected in err
    assert not (tmp_path / "e.json").exists()


def test_a_modality_present_in_no_row_is_refused_at_fit(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    rows = 40
    folder = write_paired_embeddings(
        tmp_path / "data",
        {
            "text": rng.normal(size=(rows, 4)).astype(np.float32),
            "image": rng.normal(size=(rows, 4)).astype(np.float32),
        },
        [{"id": f"r{i}"} for i in range(rows)],
        present={"image": np.zeros(rows, bool)},
    )
    assert _fit(folder, tmp_path / "run", config) == 2
    assert "modality 'image' is present in no row" in one_line_error(capsys)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_degenerate_settings_are_refused_before_anything_trains(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zero = tmp_path / "zero.json"
    weights = {name: 0.0 for name in TrainConfig().loss_weights}
    zero.write_text(json.dumps({"model": SMALL, "train": {**TRAIN, "loss_weights": weights}}))
    assert _fit(data, tmp_path / "zero", zero) == 2
    assert "every loss weight is 0" in one_line_error(capsys)
    assert not (tmp_path / "zero").exists()

    run = tmp_path / "run"  # not a run: the pool is checked before the run is read
    assert main(["eval", str(run), str(data), "--pool", "1"]) == 2
    assert "--pool must be at least 2" in one_line_error(capsys)

    out = tmp_path / "ablation"
    for option, message in (
        (["--missing", "2"], "--missing must be a share of rows in [0, 1)"),
        (["--missing", "-0.1"], "--missing must be a share of rows in [0, 1)"),
        (["--pairs", "text->zz"], "names ['zz'], not among the data's modalities"),
        (["--pairs", "text->text"], "retrieves 'text' from itself"),
        (["--pool", "1"], "--pool must be at least 2"),
    ):
        assert main(["ablate", str(data), "--out", str(out), "--quiet", *option]) == 2, option
        assert message in one_line_error(capsys)
        assert not out.exists()


def test_the_loader_refuses_a_modality_file_whose_name_the_writer_would_refuse(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    folder = write_paired_embeddings(
        tmp_path / "data",
        {"a": rng.normal(size=(6, 3)), "b": rng.normal(size=(6, 2))},
        [{"id": f"r{i}", "group": f"g{i}"} for i in range(6)],
    )
    PairedEmbeddings(folder)  # the folder as written loads
    np.save(folder / "te\x1bxt.npy", np.zeros((6, 2), np.float32))
    with pytest.raises(VallayzUserError, match="cannot name a modality"):
        PairedEmbeddings(folder)
