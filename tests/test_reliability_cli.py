"""Faults met on the command line, second pass: settings checked before anything is built or
trained, one-line errors for user mistakes that used to end in a traceback, and user text
printed without its control characters. RELIABILITY.md lists which test pins which fault."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import never, one_line_error
from synthetic import write_synthetic

from vallayz import IMPN, IMPNConfig
from vallayz.config import MAX_PARAMETERS
from vallayz.data import write_paired_embeddings
from vallayz.errors import VallayzUserError
from vallayz.learned import build_model
from vallayz_train.cli import main, visible
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import fit

SMALL = {"soil_dim": 16, "heads": 2, "layers": 1, "variants": 2, "top_k": 2}
TRAIN = {"batch_size": 16, "eval_every": 50, "warmup_steps": 1, "planner": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trained")
    data = write_synthetic(root / "data", rows=60, groups=12)
    config = TrainConfig.from_dict({**TRAIN, "max_steps": 2})
    fit(data, root / "run", dict(SMALL), config, progress=False)
    return data, root / "run"


# ---------------------------------------------------------------- late validation


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--pairs", "text->zz"], "names ['zz'], not among the data's modalities"),
        (["--pairs", "text->text"], "retrieves 'text' from itself"),
        (["--pairs", "text+text->image"], "names a source twice"),
        (["--pairs", "text->"], "needs at least one source and a target"),
        (["--pool", "0"], "--pool must be at least 2"),
        (["--pools", "0"], "--pools must be at least 1"),
    ],
)
def test_bench_data_checks_its_directions_and_pools_before_training(
    trained: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: list[str],
    message: str,
) -> None:
    import vallayz_train.bench as bench

    monkeypatch.setattr(bench, "train_runs", never)
    data, _ = trained
    out = tmp_path / "bench"
    assert main(["bench", "data", str(data), "--out", str(out), "--quiet", *option]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_a_model_setting_fails_before_any_benchmark_builds_its_data(
    trained: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import vallayz_train.bench as bench
    from vallayz_train.digits import bench as digits
    from vallayz_train.emoji import bench as emoji
    from vallayz_train.stitch import bench as stitch
    from vallayz_train.tibetan import bench as tibetan

    for module in (digits, emoji, stitch, tibetan):
        monkeypatch.setattr(module, "build_data", never)
    monkeypatch.setattr(stitch, "read_segments", never)
    monkeypatch.setattr(bench, "train_runs", never)
    data, _ = trained
    config = tmp_path / "config.json"
    out = tmp_path / "out"
    for model, message in [
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"sender_candidates": "8"}, "'sender_candidates' must be an integer or null"),
        ({"heads": 3}, "does not divide soil_dim"),
        ({"soil_dim": 10**7}, "parameters"),
    ]:
        config.write_text(json.dumps({"model": model}))
        for command in (["tibetan"], ["emoji"], ["digits"], ["stitch"], ["data", str(data)]):
            argv = ["bench", *command, "--out", str(out), "--config", str(config), "--quiet"]
            assert main(argv) == 2, (command, model)
            assert message in one_line_error(capsys), (command, model)
            assert not out.exists()
    # The pools are checked as early.
    for command in (["tibetan"], ["emoji"], ["digits"], ["stitch"]):
        assert main(["bench", *command, "--out", str(out), "--pool", "0", "--quiet"]) == 2
        assert "--pool must be at least 2" in one_line_error(capsys)


def test_ablate_checks_its_directions_and_variants_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vallayz_train.bench.ablation as ablation

    monkeypatch.setattr(ablation, "train_run", never)
    rng = np.random.default_rng(0)
    data = write_paired_embeddings(
        tmp_path / "data",
        {"bo": rng.normal(size=(20, 8)), "en": rng.normal(size=(20, 6))},
        [{"id": f"r{i}", "group": f"g{i % 5}"} for i in range(20)],
    )
    out = tmp_path / "ablation"
    for option, message in [
        (["--pairs", "bo->zz"], "names ['zz'], not among the data's modalities"),
        (["--pairs", "en->en"], "retrieves 'en' from itself"),
        (["--pool", "1"], "--pool must be at least 2"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--rerank-depth", "0"], "--rerank-depth must be at least 1"),
        (["--model", "soil_dm=8"], "did you mean 'soil_dim'?"),
        (["--model", "heads=5"], "does not divide soil_dim"),
        (["--train", "batch_sise=8"], "--train"),
    ]:
        argv = ["ablate", str(data), "--out", str(out), "--only", "default", "--quiet"]
        argv += ["--pairs", "bo->en"]  # the data has no speech; a later --pairs replaces it
        assert main([*argv, *option]) == 2, option
        assert message in one_line_error(capsys), option
        assert not out.exists()


# ---------------------------------------------------------------- absurd sizes


def test_a_model_too_large_to_allocate_is_refused_with_its_parameter_count(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(VallayzUserError, match=r"would have [\d,]+ parameters.*soil_dim=100000000"):
        IMPNConfig(modalities={"a": 4, "b": 4}, soil_dim=10**8, heads=1)
    with pytest.raises(VallayzUserError, match="token_buckets"):
        IMPNConfig(modalities={"a": 4, "b": 4}, token_buckets={"a": 10**12})
    for method in ("contrastive-heads", "mlp-translator"):
        with pytest.raises(VallayzUserError, match=f"this {method} config would have"):
            build_model(method, {"a": 4, "b": 4}, {"hidden": 10**9, "dim": 10**9})
    data, _ = trained
    config = tmp_path / "huge.json"
    config.write_text(json.dumps({"model": {"soil_dim": 10**8, "heads": 1}}))
    out = tmp_path / "run"
    assert main(["fit", str(data), "--out", str(out), "--config", str(config), "--quiet"]) == 2
    assert f"more than the limit of {MAX_PARAMETERS:,}" in one_line_error(capsys)
    # A checkpoint whose config.json asks for such a model is refused the same way.
    checkpoint = tmp_path / "checkpoint"
    IMPN(IMPNConfig(modalities={"a": 4, "b": 4}, soil_dim=8, heads=2)).save_pretrained(checkpoint)
    saved = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**saved, "layers": 10**9}))
    with pytest.raises(VallayzUserError, match="parameters"):
        IMPN.from_pretrained(checkpoint)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"update": "gru", "absent_init": "attend", "match_head": True, "hidden_dim": 7},
        {"token_buckets": {"a": 5}, "token_nodes": {"b": 9}, "token_node_positions": 3},
        {"adapter_norm": False, "bridge_attention": False, "bridge_ffn": False, "layers": 3},
        {"adapter_branch": False, "zero_init_adapters": True},
        {"linear_adapters": ["a", "c"], "adapter_norm": False},
        {"node_readers": ["a"], "pooling_readers": ["b"], "token_node_positions": 6},
        {"fusion_gate": True},
        {"carry_dim": 7, "carry_detach": True, "token_buckets": {"b": 5}},
        {"carry_dim": 3, "carry_front_end": True, "token_buckets": {"a": 6, "c": 2}},
        {"fusion_layers": True, "fusion_stage": True, "layers": 3},
        {"final_norm": False, "soil_dim": 4, "ffn_mult": 3, "gate_hidden": 5},
    ],
)
def test_the_counted_parameters_are_those_the_model_allocates(fields: dict[str, Any]) -> None:
    config = IMPNConfig(**{"modalities": {"a": 4, "b": 8, "c": 3}, "heads": 2, **fields})
    assert config.parameter_count() == sum(p.numel() for p in IMPN(config).parameters())
    for method in ("contrastive-heads", "mlp-translator"):
        model = build_model(method, {"a": 4, "b": 8, "c": 3}, {"dim": 5, "token_buckets": {"a": 3}})
        assert model.config.parameter_count() == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- tracebacks for user mistakes


def test_data_of_other_dimensions_than_the_run_is_named(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    rng = np.random.default_rng(0)
    wider = write_paired_embeddings(
        tmp_path / "wider",
        {
            "text": rng.normal(size=(20, 13)),
            "audio": rng.normal(size=(20, 6)),
            "image": rng.normal(size=(20, 16)),
        },
        [{"id": f"r{i}", "group": f"g{i % 5}"} for i in range(20)],
    )
    retrieve = ["retrieve", str(run), "--source", "text", "--target", "image"]
    for argv in (
        ["eval", str(run), str(wider), "--split", "all", "--pool", "5"],
        [*retrieve, "--candidates", str(wider), "--query-ids", "r1"],
        ["plot", str(run), "--data", str(wider), "--out", str(tmp_path / "plots")],
    ):
        assert main(argv) == 2, argv
        assert "text is 13-d where the model reads 12-d" in one_line_error(capsys)
    assert not (tmp_path / "plots").exists()


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process may not write: read-only for a user, /sys for root."""
    import os

    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if not Path("/sys").is_dir():
        pytest.skip("needs /sys (or a user other than root) for an unwritable folder")
    return Path("/sys")


def test_an_unwritable_output_is_a_one_line_error(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    folder = _unwritable(tmp_path)
    np.save(tmp_path / "q.npy", np.ones((2, 12), np.float32))
    translate = ["translate", str(run), "--source", "text", "--target", "image"]
    for argv, named in [
        (
            ["eval", str(run), str(data), "--pool", "5", "--output", str(folder / "e.json")],
            "e.json",
        ),
        (
            [*translate, "--input", str(tmp_path / "q.npy"), "--output", str(folder / "o.npy")],
            "o.npy",
        ),
        (["plot", str(run), "--out", str(folder / "plots")], "plots"),
        (["fit", str(data), "--out", str(folder / "run"), "--max-steps", "1", "--quiet"], "run"),
    ]:
        assert main(argv) == 2, argv
        err = one_line_error(capsys)
        assert str(folder / named) in err and "permissions" in err, err


def test_translate_takes_an_empty_input_and_retrieve_asks_for_a_query(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    np.save(tmp_path / "none.npy", np.zeros((0, 12), np.float32))
    out = tmp_path / "out.npy"
    argv = ["translate", str(run), "--source", "text", "--target", "image"]
    assert main([*argv, "--input", str(tmp_path / "none.npy"), "--output", str(out)]) == 0
    result = np.load(out)
    assert result.shape == (0, 16) and result.dtype == np.float32
    argv = ["retrieve", str(run), "--source", "text", "--target", "image"]
    assert main([*argv, "--candidates", str(data), "--input", str(tmp_path / "none.npy")]) == 2
    assert "holds no rows" in one_line_error(capsys)


def test_translate_text_names_a_missing_recording_and_a_run_without_speech(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    assert main(["translate-text", str(run), "--audio", str(tmp_path / "none.wav")]) == 2
    assert "--audio" in one_line_error(capsys)
    wav = tmp_path / "line.wav"
    wav.write_bytes(b"RIFF")
    assert main(["translate-text", str(run), "--audio", str(wav)]) == 2
    assert "not trained with speech" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        ('{"retrieval": []}', "it lacks ['data'"),
        (
            json.dumps(dict.fromkeys(["data", "split", "split_sizes", "spec", "train"], 1))[:-1]
            + ', "hardware": 1, "retrieval": 1}',
            "is malformed",
        ),
    ],
)
def test_report_names_a_malformed_results_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    (tmp_path / "results.json").write_text(text)
    assert main(["report", str(tmp_path)]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "report.md").exists()


def test_distributed_variables_without_a_meeting_point_fail_fast(
    trained: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket
    import time

    data, _ = trained
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    argv = ["fit", str(data), "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet"]
    assert main(argv) == 2
    assert "MASTER_ADDR or MASTER_PORT" in one_line_error(capsys)
    # A free port where nobody listens: the process gives up after the rendezvous timeout.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("VALLAYZ_RENDEZVOUS_TIMEOUT", "1")
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert "waiting up to 1 s" in err and "nothing answered at MASTER_ADDR=127.0.0.1" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- terminal output


def test_control_characters_of_user_text_are_printed_as_escapes(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    rng = np.random.default_rng(0)
    # (A line break or carriage return would end the row of items.tsv itself.)
    hostile = "\x1b]0;owned\x07\x1b[2J\u202e\x9b"
    data = write_paired_embeddings(
        tmp_path / "data",
        {"text": rng.normal(size=(6, 12)), "image": rng.normal(size=(6, 16))},
        [{"id": f"r{i}{hostile}", "group": f"g{i}", "text": f"line {hostile}"} for i in range(6)],
    )
    argv = ["retrieve", str(run), "--source", "text", "--target", "image", "--k", "3"]
    assert main([*argv, "--candidates", str(data), "--query-ids", f"r1{hostile}"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;owned\\x07" in out and "\\u202e" in out and "\\x9b" in out
    # Error lines too: a path with an ESC sequence stays one visible line.
    assert main(["check", str(tmp_path / f"missing{hostile}\nsecond line")]) == 2
    err = one_line_error(capsys)
    assert "\x1b" not in err and "\\x1b]0;owned" in err and "\\nsecond line" in err
    assert visible("a\rb\tc\x00\x7f\u2066") == "a\\rb\\tc\\x00\\x7f\\u2066"


def test_non_finite_training_numbers_and_bench_scaling_counts_are_refused(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    for option, value in [("--lr", "inf"), ("--front-end-lr", "inf")]:
        argv = ["fit", str(data), "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet"]
        assert main([*argv, option, value]) == 2, option
        assert "must be a finite number" in one_line_error(capsys)
        assert not (tmp_path / "run").exists()
    with pytest.raises(VallayzUserError, match="weight_decay must be a finite number"):
        TrainConfig.from_dict({"weight_decay": float("inf")})
    for option, value in [("--max-modalities", "1"), ("--repeats", "0"), ("--batch-size", "-1")]:
        assert main(["bench", "scaling", option, value]) == 2, option
        assert option in one_line_error(capsys)


def test_a_damaged_checkpoint_is_a_user_error_from_python(tmp_path: Path) -> None:
    with pytest.raises(VallayzUserError, match="is missing"):
        IMPN.from_pretrained(tmp_path / "none")
    IMPN(IMPNConfig(modalities={"a": 4, "b": 4}, soil_dim=8, heads=2)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(VallayzUserError, match="not a readable safetensors file"):
        IMPN.from_pretrained(tmp_path)


def test_eval_leaves_out_modalities_the_run_does_not_know(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    wider = tmp_path / "wider"
    wider.mkdir()
    for path in data.iterdir():
        (wider / path.name).symlink_to(path.resolve())
    rows = len(np.load(data / "text.npy"))
    np.save(wider / "words.npy", np.random.default_rng(0).normal(size=(rows, 3)).astype("f4"))
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), str(wider), "--output", str(out)]) == 0
    assert "also holds ['words'], which the run does not know" in capsys.readouterr().err
    pairs = {(r["source"], r["target"]) for r in json.loads(out.read_text())["results"]}
    assert pairs and all("words" not in pair for pair in pairs)


def test_eval_refuses_a_mode_the_method_does_not_serve(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    run = tmp_path / "mlp"
    config = TrainConfig.from_dict({**TRAIN, "max_steps": 1})
    fit(data, run, {"dim": 8}, config, progress=False, method="mlp-translator")
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), str(data), "--output", str(out)]) == 2
    assert "cannot serve --mode soil; use --mode translate" in one_line_error(capsys)
    assert not out.exists()


def test_a_closed_output_pipe_ends_the_command_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    # `vallayz ablate --list | head -1`, with the reader gone before the list is printed.
    assert main(["ablate", "--list"]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_a_data_set_benchmark_folder_has_one_writer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess
    import sys

    out = tmp_path / "bench"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from vallayz_train.run_folder import lock_run\n"
            f"with lock_run(Path({str(out)!r})):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for name in ("tibetan", "emoji", "digits", "stitch"):
            assert main(["bench", name, "--out", str(out), "--quiet"]) == 2, name
            assert "is being written by process" in one_line_error(capsys), name
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_config_file_may_list_the_modalities_to_train_and_their_dimensions_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trainer's advice for a modality without training rows is to list the others under
    'modalities' in the model config; the config file must accept that field."""
    data = write_synthetic(tmp_path / "data")
    steps = ["--max-steps", "1", "--batch-size", "16", "--quiet"]
    small = {"soil_dim": 16, "heads": 2, "layers": 1}
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps({"model": {**small, "modalities": {"text": 12, "image": 16}}}))
    out = tmp_path / "run"
    assert main(["fit", str(data), "--out", str(out), "--config", str(subset), *steps]) == 0
    assert sorted(json.loads((out / "config.json").read_text())["modalities"]) == ["image", "text"]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"model": {**small, "modalities": {"text": 3}}}))
    capsys.readouterr()
    out = tmp_path / "refused"
    assert main(["fit", str(data), "--out", str(out), "--config", str(wrong), *steps]) == 2
    assert "dimension 3" in one_line_error(capsys)
    assert not out.exists()
