"""A sweep of hostile inputs across every command and the public Python writers and loaders.

Each case states what a user must see (``exit 0``, or ``exit 2`` with one line naming the
problem; for the Python API, a result or one ``VallayzUserError``) and the sweep checks it,
along with what must never happen: a traceback, a line of error spread over several lines, a
file written outside the case's own folder, a file the user had changed without being asked.
It prints a markdown table ``input | expected | got`` and the number of mismatches, and exits
with status 1 on a mismatch.

    make sweep                       # or: python scripts/hostile_sweep.py
    python scripts/hostile_sweep.py -k retrieve --show-errors

Commands run in this process through ``vallayz_train.cli.main`` (a fresh copy of the data
folder, the run and the other inputs in a temporary folder per case), so the whole sweep takes
a few minutes on a laptop's CPU. Keep it growing with every new command or option.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.errors import VallayzUserError

# A case whose fix belongs to another change under way: its mismatch is shown and counted apart.


@dataclass
class Case:
    """One hostile input.

    Attributes:
        name: What the input is, for the table.
        run: Command-line arguments (``{x}`` placeholders are the case folder's inputs, see
            :func:`_fill`) or a Python callable taking the case folder.
        code: Expected exit status (0 or 2); for a callable, 0 means it returns and 2 that it
            raises one ``VallayzUserError``.
        says: Text the error line (or, with exit 0, the standard output) must contain.
        env: Environment variables set for the case.
        may_change: Input files (relative to the case folder) the case may rewrite.
        stdout_clean: The standard output must hold no control character (ESC, BEL, ...).
    """

    name: str
    run: list[str] | Callable[[Path], Any]
    code: int
    says: str = ""
    env: dict[str, str] = field(default_factory=dict)
    may_change: tuple[str, ...] = ()
    stdout_clean: bool = False

    @property
    def expected(self) -> str:
        what = "exit 0" if self.code == 0 else "exit 2"
        if callable(self.run):
            what = "returns" if self.code == 0 else "VallayzUserError"
        return f"{what} naming '{self.says}'" if self.says else what


# ---------------------------------------------------------------- inputs


def _synthetic(directory: Path, rows: int = 60, dims: tuple[int, int, int] = (12, 6, 16)) -> Path:
    """Three modalities (pooled text, audio frames, pooled image) of one latent per row."""
    from vallayz.data import write_paired_embeddings

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(rows, 5))
    text = np.tanh(latent @ rng.normal(size=(5, dims[0])))
    frames = latent[:, None, :] @ rng.normal(size=(5, dims[1])) + 0.1 * rng.normal(
        size=(rows, 3, dims[1])
    )
    image = latent @ rng.normal(size=(5, dims[2]))
    present = rng.random(rows) > 0.15
    items = [{"id": f"item{i:04d}", "group": f"doc{i % 12}", "text": f"s {i}"} for i in range(rows)]
    return write_paired_embeddings(
        directory,
        {
            "text": text.astype(np.float32),
            "audio": frames.astype(np.float32),
            "image": image.astype(np.float32),
        },
        items,
        present={"audio": present},
    )


def prepare(root: Path) -> Path:
    """The inputs every case starts from, under ``root/inputs``: a data folder, a trained run,
    query arrays, config files, a Tibetan-like data folder."""
    from vallayz.data import write_paired_embeddings
    from vallayz_train.config import TrainConfig
    from vallayz_train.trainer import fit

    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    data = _synthetic(inputs / "data")
    _synthetic(inputs / "wide", rows=30, dims=(13, 6, 16))
    small = {"soil_dim": 16, "heads": 2, "layers": 1, "variants": 2, "top_k": 2}
    train = {"batch_size": 16, "eval_every": 50, "warmup_steps": 1, "planner": False}
    config = TrainConfig.from_dict({**train, "max_steps": 2})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fit(data, inputs / "run", dict(small), config, progress=False)
    (inputs / "small.json").write_text(json.dumps({"model": small, "train": train}))
    rng = np.random.default_rng(1)
    np.save(inputs / "q.npy", rng.normal(size=(4, 12)).astype(np.float32))
    np.save(inputs / "q3.npy", rng.normal(size=(4, 3, 12)).astype(np.float32))
    np.save(inputs / "q0.npy", np.zeros((0, 12), np.float32))
    np.save(inputs / "q_wide.npy", rng.normal(size=(4, 13)).astype(np.float32))
    np.save(inputs / "q_1d.npy", rng.normal(size=12).astype(np.float32))
    np.save(inputs / "q_nan.npy", np.array([[0.0] * 12, [np.nan] * 12], np.float32))
    np.save(inputs / "q_inf.npy", np.full((2, 12), np.inf, np.float32))
    np.save(inputs / "q_complex.npy", np.ones((2, 12), np.complex64))
    np.save(inputs / "q_int.npy", np.ones((2, 12), np.int64))
    np.save(inputs / "q_huge.npy", np.full((2, 12), 1e300))
    np.save(inputs / "q_bool.npy", np.ones((2, 12), bool))
    np.save(inputs / "q_object.npy", np.array([[None] * 12], dtype=object), allow_pickle=True)
    (inputs / "q_text.npy").write_text("not an array\n")
    (inputs / "empty.npy").write_bytes(b"")
    (inputs / "notes.txt").write_text("the user's own notes\n")
    (inputs / "foreign.json").write_text('{"mine": true}\n')
    write_paired_embeddings(
        inputs / "bo_data",
        {"bo": rng.normal(size=(24, 8)), "en": rng.normal(size=(24, 6))},
        [{"id": f"r{i}", "group": f"g{i % 6}"} for i in range(24)],
    )
    hostile = "\x1b]0;owned\x07\x1b[2J\u202e\x9b"
    write_paired_embeddings(
        inputs / "hostile_text",
        {"text": rng.normal(size=(8, 12)), "audio": rng.normal(size=(8, 6)),
         "image": rng.normal(size=(8, 16))},
        [{"id": f"r{i}{hostile}", "group": f"g{i}", "text": f"x {hostile}"} for i in range(8)],
    )  # fmt: skip
    (inputs / "outside").mkdir()
    return inputs


def _config(root: Path, name: str, content: object) -> str:
    path = root / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# ---------------------------------------------------------------- the cases


def _array_cases() -> list[Case]:
    """translate and retrieve --input with every kind of broken query array."""
    cases = []
    tr = ["translate", "{run}", "--source", "text", "--target", "image", "--output", "out.npy"]
    for file, code, says in [
        ("q.npy", 0, ""),
        ("q3.npy", 0, ""),
        ("q0.npy", 0, "translated 0 rows"),
        ("q_int.npy", 0, ""),
        ("q_bool.npy", 2, "dtype bool"),
        ("q_wide.npy", 2, "has shape (4, 13)"),
        ("q_1d.npy", 2, "has shape (12,)"),
        ("q_nan.npy", 2, "row 1 holds NaN"),
        ("q_inf.npy", 2, "row 0 holds NaN, Inf"),
        ("q_complex.npy", 2, "dtype complex64"),
        ("q_huge.npy", 2, "beyond float32"),
        ("q_object.npy", 2, "cannot read --input"),
        ("q_text.npy", 2, "cannot read --input"),
        ("empty.npy", 2, "cannot read --input"),
        ("missing.npy", 2, "cannot read --input"),
        ("data", 2, "cannot read --input"),
    ]:
        argv = [*tr, "--input", "{" + file + "}"]
        cases.append(Case(f"translate --input {file}", argv, code, says))
    rt = ["retrieve", "{run}", "--source", "text", "--target", "image", "--candidates", "{data}"]
    for file, code, says in [
        ("q.npy", 0, "query row 3"),
        ("q0.npy", 2, "holds no rows"),
        ("q_wide.npy", 2, "has shape (4, 13)"),
        ("q_nan.npy", 2, "row 1 holds NaN"),
        ("q_object.npy", 2, "cannot read --input"),
    ]:
        argv = [*rt, "--input", "{" + file + "}"]
        cases.append(Case(f"retrieve --input {file}", argv, code, says))
    return cases


def _fit_cases(root: Path) -> list[Case]:
    fit = ["fit", "{data}", "--quiet"]
    out = ["--out", "run2", "--max-steps", "1", "--config", "{small.json}"]
    cases = [
        Case("fit a tiny run", [*fit, *out], 0, '"steps"'),
        Case("fit without --out", [*fit], 2, "fit needs --out"),
        Case("fit --out onto a file", [*fit, "--out", "{notes.txt}"], 2, "notes.txt"),
        Case("fit --out onto a folder of other files", [*fit, "--out", "{inputs}"], 2, ""),
        Case("fit --out onto a finished run", [*fit, "--out", "{run}"], 2, "--resume"),
        Case("fit --out in an unwritable folder", [*fit, "--out", "/sys/vallayz-run",
             "--max-steps", "1"], 2, "/sys/vallayz-run"),
        Case("fit data folder missing", ["fit", "nowhere", "--out", "r", "--quiet"], 2,
             "nowhere"),
        Case("fit data is a file", ["fit", "{notes.txt}", "--out", "r", "--quiet"], 2, ""),
        Case("fit --resume of no run", ["fit", "--resume", "nowhere", "--quiet"], 2, ""),
        Case("fit --resume of a data folder", ["fit", "--resume", "{data}", "--quiet"], 2, ""),
        Case("fit --method bogus", [*fit, *out, "--method", "bogus"], 2, "invalid choice"),
        Case("fit --device cuda without CUDA", [*fit, *out, "--device", "cuda"], 2, "CUDA"),
        Case("fit --resume ignores --max-steps", ["fit", "--resume", "{run}", "--max-steps",
             "5", "--quiet"], 2, "--max-steps", may_change=("run",)),
    ]  # fmt: skip
    fuse = ["fit", "{data}", "--fuse", "{run}", "--max-steps", "1", "--batch-size", "16", "--quiet"]
    cases += [
        Case("fit --fuse a tiny stage", [*fuse, "--out", "stage"], 0, '"steps"'),
        Case("fit --fuse without --out", fuse, 2, "--out NEW_RUN_DIR"),
        Case("fit --fuse of no run", ["fit", "{data}", "--fuse", "nowhere", "--out", "stage",
             "--quiet"], 2, "run.json is missing"),
        Case("fit --fuse on data lacking a modality", ["fit", "{bo_data}", "--fuse", "{run}",
             "--out", "stage", "--quiet"], 2, "is not in"),
        Case("fit --fuse on data of other dimensions", ["fit", "{wide}", "--fuse", "{run}",
             "--out", "stage", "--quiet"], 2, "dimension 13"),
        Case("fit --fuse with --resume", [*fuse, "--resume", "{run}"], 2,
             "without --extend and --resume"),
        Case("fit --fuse with a model section", [*fuse, "--out", "stage", "--config",
             "{small.json}"], 2, "keeps the run's model"),
        Case("fit --fuse --fuse-parts bogus", [*fuse, "--out", "stage", "--fuse-parts",
             "bogus"], 2, "invalid choice"),
    ]  # fmt: skip
    for option, value, says in [
        ("--max-steps", "0", "max_steps"),
        ("--max-steps", "-3", "max_steps"),
        ("--max-steps", "x", "invalid int"),
        ("--max-steps", "1e99", "invalid int"),
        ("--epochs", "0", "epochs"),
        ("--batch-size", "0", "batch_size"),
        ("--batch-size", "-1", "batch_size"),
        ("--lr", "0", "lr"),
        ("--lr", "-1", "lr"),
        ("--lr", "nan", "lr"),
        ("--lr", "inf", "lr"),
        ("--front-end-lr", "-1", "front_end_lr"),
        ("--seed", "1.5", "invalid int"),
        ("--device", "tpu", "invalid choice"),
        ("--planner", "maybe", "invalid choice"),
    ]:
        cases.append(Case(f"fit {option} {value}", [*fit, *out, option, value], 2, says))
    configs: list[tuple[str, object, str]] = [
        ("missing config file", None, "cannot read"),
        ("config not JSON", "{oops", "not valid JSON"),
        ("config a list", "[1]", "JSON object"),
        ("config unknown section", {"modle": {}}, "unknown section"),
        ("config model a string", {"model": "big"}, "'model' must be a JSON object"),
        ("model unknown field", {"model": {"soil": 8}}, "no model config has this field"),
        ("model top_k 0", {"model": {"top_k": 0}}, "top_k"),
        ("model top_k a string", {"model": {"top_k": "4"}}, "top_k"),
        ("model sender_candidates -1", {"model": {"sender_candidates": -1}}, "sender_candidates"),
        ("model heads not dividing soil_dim", {"model": {"soil_dim": 16, "heads": 3}}, "divide"),
        ("model soil_dim 10^8", {"model": {"soil_dim": 10**8, "heads": 1}}, "parameters"),
        ("model layers 10^9", {"model": {"layers": 10**9}}, "parameters"),
        ("model token_buckets 10^12", {"model": {"token_buckets": {"text": 10**12}}},
         "parameters"),
        ("model token_buckets of an unknown modality", {"model": {"token_buckets": {"zz": 4}}},
         "zz"),
        ("model dropout 1", {"model": {"dropout": 1.0}}, "dropout"),
        ("model carry_dim -1", {"model": {"carry_dim": -1}}, "carry_dim must be >= 0"),
        ("model carry_detach without carry_dim", {"model": {"carry_detach": True}},
         "set carry_dim"),
        ("model temperature 0", {"model": {"temperature": 0}}, "temperature"),
        ("model sigma per modality, one missing", {"model": {"sigma": {"text": 0.1}}}, "sigma"),
        ("model modalities a list", {"model": {"modalities": ["text"]}}, "modalities"),
        ("model modalities of another dim", {"model": {"modalities": {"text": 3, "image": 16}}},
         "dimension 3"),
        ("train unknown field", {"train": {"speed": 1}}, "unknown"),
        ("train lr a string", {"train": {"lr": "fast"}}, "lr"),
        ("train translate_complement a string", {"train": {"translate_complement": "yes"}},
         "must be true or false"),
        ("train every loss weight 0", {"train": {"loss_weights": dict.fromkeys(
            ["contrastive", "translation", "cycle", "denoising", "knn", "orthogonality"], 0.0)}},
         "loss", ),
    ]  # fmt: skip
    for name, content, says in configs:
        path = (
            str(root / "missing.json")
            if content is None
            else _config(root, f"{name}.json", content)
        )
        case = Case(f"fit --config: {name}", [*fit, "--out", "r", "--max-steps", "1", "--config",
                    path], 2, says)  # fmt: skip
        cases.append(case)
    dist = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "VALLAYZ_RENDEZVOUS_TIMEOUT": "1"}
    for name, env, says in [
        ("RANK without MASTER_ADDR", dist, "MASTER_ADDR"),
        ("RANK with nobody at MASTER_ADDR", {**dist, "MASTER_ADDR": "127.0.0.1",
         "MASTER_PORT": "9"}, "nothing answered"),
        ("RANK with an unresolvable MASTER_ADDR", {**dist, "MASTER_ADDR": "no.such.host.invalid",
         "MASTER_PORT": "29500"}, "does not name a reachable host"),
        ("MASTER_PORT not a port", {**dist, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"},
         "not a port"),
        ("RANK not an integer", {**dist, "RANK": "one"}, "must be integers"),
        ("RANK beyond WORLD_SIZE", {**dist, "RANK": "5"}, "do not describe a process group"),
        ("only RANK set", {"RANK": "0"}, "but not"),
    ]:  # fmt: skip
        cases.append(Case(f"fit with {name}", [*fit, *out], 2, says, env=env))
    return cases


def _eval_cases() -> list[Case]:
    ev = ["eval", "{run}", "{data}", "--pool", "10", "--pools", "1"]
    return [
        Case("eval a run", [*ev], 0, "R@1", may_change=("run",)),
        Case("eval --mode translate", [*ev, "--mode", "translate", "--output", "e.json"], 0, ""),
        Case("eval --split all", [*ev, "--split", "all", "--output", "e.json"], 0, ""),
        Case("eval run missing", ["eval", "nowhere", "{data}"], 2, "nowhere"),
        Case("eval run is a data folder", ["eval", "{data}", "{data}"], 2, ""),
        Case("eval data missing", ["eval", "{run}", "nowhere"], 2, "nowhere"),
        Case("eval data of other dimensions", ["eval", "{run}", "{wide}", "--output", "e.json"], 2,
             "13-d"),
        Case("eval data lacking a modality", ["eval", "{run}", "{bo_data}", "--output", "e.json"],
             2, "lacks modalities"),
        Case("eval --pool 0", [*ev, "--pool", "0"], 2, "--pool"),
        Case("eval --pool 1", [*ev, "--pool", "1", "--output", "e.json"], 2, "--pool"),
        Case("eval --pools 0", [*ev, "--pools", "0"], 2, "--pools"),
        Case("eval --pool x", [*ev, "--pool", "x"], 2, "invalid int"),
        Case("eval --split bogus", [*ev, "--split", "bogus"], 2, "invalid choice"),
        Case("eval --output onto a foreign file", [*ev, "--output", "{foreign.json}"], 2,
             "--force"),
        Case("eval --output a folder", [*ev, "--output", "{inputs}"], 2, "is a folder"),
        Case("eval --output in a missing folder", [*ev, "--output", "no/such/e.json"], 2,
             "does not exist"),
        Case("eval --output in an unwritable folder", [*ev, "--output", "/sys/e.json"], 2,
             "/sys/e.json"),
        Case("eval --split-seed other than the run's", [*ev, "--split-seed", "7", "--output",
             "e.json"], 2, "split"),
        Case("eval --device cuda without CUDA", [*ev, "--device", "cuda"], 2, "CUDA"),
    ]  # fmt: skip


def _damaged_run_cases() -> list[Case]:
    """A run whose files were damaged, read by eval (each case damages its own copy)."""
    ev = ["eval", "{run}", "{data}", "--pool", "10", "--output", "e.json"]

    def damage(
        name: str, change: Callable[[Path], object], says: str
    ) -> tuple[Case, Callable[[Path], object]]:
        case = Case(f"eval with {name}", ev, 2, says, may_change=("run",))
        return case, change

    found = [
        damage("config.json removed", lambda run: (run / "config.json").unlink(), "config.json"),
        damage("config.json not JSON", lambda run: (run / "config.json").write_text("{"),
               "cannot read"),
        damage("config.json a list", lambda run: (run / "config.json").write_text("[]"), "object"),
        damage("config.json with layers 10^9", lambda run: _edit_config(run, layers=10**9),
               "parameters"),
        damage("config.json with soil_dim changed", lambda run: _edit_config(run, soil_dim=32),
               "does not match"),
        damage("model.safetensors removed", lambda run: (run / "model.safetensors").unlink(),
               "model.safetensors"),
        damage("model.safetensors truncated", lambda run: _truncate(run / "model.safetensors"),
               "safetensors"),
        damage("model.safetensors zero bytes", lambda run: (run / "model.safetensors").write_bytes(
            b""), "safetensors"),
        damage("NaN weights", lambda run: _weights(run, lambda t: t * float("nan")), "NaN"),
        damage("int32 weights", lambda run: _weights(run, lambda t: t.int()), "int32"),
    ]  # fmt: skip
    cases = []
    for case, change in found:
        case.run = ["{damage}", *ev]
        DAMAGES[case.name] = change
        cases.append(case)
    return cases


DAMAGES: dict[str, Callable[[Path], object]] = {}


def _user_plots(run: Path) -> None:
    """A user's folder holding a picture named as plot's first output."""
    (run.parent / "userplots").mkdir()
    (run.parent / "userplots" / "curves.png").write_bytes(b"the user's picture")


def _edit_config(run: Path, **fields: Any) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **fields}))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _weights(run: Path, change: Callable[[Any], Any]) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    save_file({k: change(v) for k, v in state.items()}, str(run / "model.safetensors"))


def _translate_retrieve_cases() -> list[Case]:
    tr = ["translate", "{run}", "--input", "{q.npy}", "--output", "out.npy"]
    rt = ["retrieve", "{run}", "--candidates", "{data}"]
    ids = ["--query-ids", "item0001", "item0002"]
    return [
        Case("translate --source unknown", [*tr, "--source", "zz", "--target", "image"], 2, "zz"),
        Case("translate --target unknown", [*tr, "--source", "text", "--target", "zz"], 2, "zz"),
        Case("translate --source = --target", [*tr, "--source", "text", "--target", "text"], 2,
             "same modality"),
        Case("translate --batch-size 0", [*tr, "--source", "text", "--target", "image",
             "--batch-size", "0"], 2, "--batch-size"),
        Case("translate --output onto the data's own file", [*tr[:4], "--output",
             "{data}/image.npy", "--source", "text", "--target", "image"], 2, "--force"),
        Case("translate --output in an unwritable folder", [*tr[:4], "--output", "/sys/o.npy",
             "--source", "text", "--target", "image"], 2, "/sys/o.npy"),
        Case("translate without --input", ["translate", "{run}", "--source", "text", "--target",
             "image", "--output", "o.npy"], 2, "required"),
        Case("retrieve by ids", [*rt, "--source", "text", "--target", "image", *ids], 0,
             "query item0001", may_change=("run",)),
        Case("retrieve from a sequence source", [*rt, "--source", "audio", "--target", "text",
             "--query-ids", "item0000"], 0, "query item0000", may_change=("run",)),
        Case("retrieve an unknown id", [*rt, "--source", "text", "--target", "image",
             "--query-ids", "nobody"], 2, "nobody"),
        Case("retrieve --k 0", [*rt, "--source", "text", "--target", "image", *ids, "--k", "0"],
             2, "--k"),
        Case("retrieve --k -5", [*rt, "--source", "text", "--target", "image", *ids, "--k", "-5"],
             2, "--k"),
        Case("retrieve --k above the pool", [*rt, "--source", "text", "--target", "image", *ids,
             "--k", "100000"], 2, "larger than the pool"),
        Case("retrieve --source unknown", [*rt, "--source", "zz", "--target", "image", *ids], 2,
             "zz"),
        Case("retrieve --target not in the candidates", ["retrieve", "{run}", "--candidates",
             "{bo_data}", "--source", "text", "--target", "image", *ids], 2, "not in"),
        Case("retrieve candidates of other dimensions", ["retrieve", "{run}", "--candidates",
             "{wide}", "--source", "text", "--target", "image", *ids], 2, "13-d"),
        Case("retrieve candidates missing", ["retrieve", "{run}", "--candidates", "nowhere",
             "--source", "text", "--target", "image", *ids], 2, "nowhere"),
        Case("retrieve --input and --query-ids", [*rt, "--source", "text", "--target", "image",
             *ids, "--input", "{q.npy}"], 2, "not allowed"),
        Case("retrieve ids holding ESC sequences", ["retrieve", "{run}", "--candidates",
             "{hostile_text}", "--source", "text", "--target", "image", "--query-ids",
             "r1\x1b]0;owned\x07\x1b[2J\u202e\x9b", "--k", "3"], 0, "\\x1b]0;owned",
             may_change=("run",), stdout_clean=True),
        Case("retrieve --index hnsw", [*rt, "--source", "text", "--target", "image", *ids,
             "--index", "hnsw"], 0 if _has("faiss") else 2, "", may_change=("run",)),
        Case("retrieve --index bogus", [*rt, "--source", "text", "--target", "image", *ids,
             "--index", "bogus"], 2, "invalid choice"),
        Case("retrieve two sources, fused", [*rt, "--source", "text+audio", "--target", "image",
             *ids, "--fusion", "fused"], 0, "query item0001", may_change=("run",)),
        Case("retrieve two sources, late", [*rt, "--source", "text+audio", "--target", "image",
             *ids], 0, "query item0001", may_change=("run",)),
        Case("retrieve --source naming the target", [*rt, "--source", "text+image", "--target",
             "image", *ids], 2, "not among them"),
        Case("retrieve --source naming a modality twice", [*rt, "--source", "text+text",
             "--target", "image", *ids], 2, "twice"),
        Case("retrieve --source text+zz", [*rt, "--source", "text+zz", "--target", "image",
             *ids], 2, "zz"),
        Case("retrieve two sources with --input", [*rt, "--source", "text+audio", "--target",
             "image", "--input", "{q.npy}"], 2, "drop --input"),
        Case("retrieve --fusion bogus", [*rt, "--source", "text+audio", "--target", "image",
             *ids, "--fusion", "bogus"], 2, "invalid choice"),
    ]  # fmt: skip


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_cases() -> list[Case]:
    def data_with(name: str, change: Callable[[Path], object], code: int,
                  says: str) -> Case:  # fmt: skip
        DAMAGES[f"check {name}"] = lambda case: change(case.parent / "data")
        return Case(f"check {name}", ["{damage}", "check", "{data}"], code, says,
                    may_change=("data",))  # fmt: skip

    def save(file: str, array: Any) -> Callable[[Path], object]:
        return lambda data: np.save(data / file, array, allow_pickle=True)

    DAMAGES["check refuses a modality file named with ESC"] = lambda run: np.save(
        run.parent / "data" / "te\x1bxt.npy", np.zeros((60, 2), np.float32)
    )
    return [
        Case("check a data folder", ["check", "{data}"], 0, "60 rows"),
        Case("check a missing folder", ["check", "nowhere"], 2, "nowhere"),
        Case("check a file", ["check", "{notes.txt}"], 2, "notes.txt"),
        Case("check an empty folder", ["check", "{outside}"], 2, ""),
        Case("check a run folder", ["check", "{run}"], 2, ""),
        Case("check --split-seed x", ["check", "{data}", "--split-seed", "x"], 2, "invalid int"),
        data_with("a zero-byte .npy", lambda d: (d / "text.npy").write_bytes(b""), 2, "text.npy"),
        data_with("a truncated .npy", lambda d: _truncate(d / "image.npy"), 2, "image.npy"),
        data_with("items.tsv removed", lambda d: (d / "items.tsv").unlink(), 2, "items.tsv"),
        data_with("items.tsv of other rows", lambda d: (d / "items.tsv").write_text(
            "id\tgroup\na\tb\n"), 2, "items.tsv"),
        data_with("duplicate ids", lambda d: (d / "items.tsv").write_text(
            (d / "items.tsv").read_text().replace("item0001", "item0000")), 2, "item0000"),
        data_with("NaN in a present row", save("image.npy", np.full((60, 16), np.nan, np.float32)),
                  2, "NaN"),
        data_with("an object array", save("image.npy", np.array([[None] * 16] * 60)), 2,
                  "image.npy"),
        data_with("a [N, 0] array", save("image.npy", np.zeros((60, 0), np.float32)), 2,
                  "image: embeddings have shape (60, 0)"),
        data_with("misaligned rows", save("image.npy", np.zeros((59, 16), np.float32)), 2, "59"),
        data_with("a complex array", save("image.npy", np.zeros((60, 16), np.complex64)), 2,
                  "dtype complex64"),
        data_with("an int array", save("image.npy", np.zeros((60, 16), np.int32)), 2,
                  "dtype int32"),
        data_with("float64 embeddings", save("image.npy", np.ones((60, 16))), 0, "float32"),
        data_with("huge values", save("image.npy", np.full((60, 16), 1e6, np.float32)), 0,
                  "warning"),
        data_with("a presence mask of floats", save("audio.present.npy", np.ones(60)), 2,
                  "audio.present.npy"),
        data_with("a modality file named with ESC", lambda d: np.save(
            d / "te\x1bxt.npy", np.zeros((60, 2), np.float32)), 2, "\\x1b"),
        Case("check refuses a modality file named with ESC", ["{damage}", "check", "{data}"], 2,
             "cannot name a modality", may_change=("data",), stdout_clean=True),
    ]  # fmt: skip


def _plot_report_cases(root: Path) -> list[Case]:
    plot = _has("matplotlib")
    report_folder = root / "reports"
    report_folder.mkdir()
    cases = [
        Case("plot a run", ["plot", "{run}", "--out", "plots"], 0 if plot else 2, ""),
        Case("plot a data folder", ["plot", "{data}"], 2, "not a run folder"),
        Case("plot a missing run", ["plot", "nowhere"], 2, "nowhere"),
        Case("plot --data of other dimensions", ["plot", "{run}", "--data", "{wide}", "--out",
             "plots"], 2, "13-d"),
        Case("plot --data missing", ["plot", "{run}", "--data", "nowhere", "--out", "plots"], 2,
             "nowhere"),
        Case("plot --out in an unwritable folder", ["plot", "{run}", "--out", "/sys/plots"], 2,
             "/sys/plots"),
        Case("plot --out onto a user's file", ["plot", "{run}", "--out", "{notes.txt}"], 2,
             "notes.txt"),
        Case("plot --out where a user's curves.png is", ["{damage}", "plot", "{run}", "--out",
             "{userplots}"], 2, "--force"),
        Case("report a missing folder", ["report", "nowhere"], 2, "results.json is missing"),
        Case("report a folder without results.json", ["report", "{outside}"], 2, "missing"),
    ]  # fmt: skip
    DAMAGES["plot --out where a user's curves.png is"] = _user_plots
    for name, text, says in [
        ("not JSON", "{", "not valid JSON"),
        ("binary garbage", b"\xff\xfe\x00", "not valid JSON"),
        ("a JSON list", "[]", "JSON list"),
        ("a JSON null", "null", "JSON NoneType"),
        ("an object lacking keys", "{}", "it lacks"),
        ("keys of the wrong types", json.dumps(dict.fromkeys(
            ["data", "split", "split_sizes", "spec", "train", "hardware", "retrieval"], 1)),
         "malformed"),
        ("retrieval rows without fields", json.dumps({
            "data": "d", "split": "test", "split_sizes": {}, "hardware": "cpu",
            "train_seconds": {}, "spec": {"pools": 1, "pool": 2, "seed": 0,
            "normalisation": "standard"}, "train": {"split_seed": 0, "max_steps": 1, "epochs": 1,
            "batch_size": 2, "seed": 0}, "retrieval": [{}]}), "malformed"),
    ]:  # fmt: skip
        folder = report_folder / name.replace(" ", "-")
        folder.mkdir()
        target = folder / "results.json"
        target.write_bytes(text if isinstance(text, bytes) else str(text).encode())
        cases.append(Case(f"report with results.json {name}", ["report", str(folder)], 2, says))
    return cases


def _bench_cases(root: Path) -> list[Case]:
    bench = ["bench", "data", "{data}", "--out", "bench", "--quiet", "--max-steps", "1"]
    k0 = _config(root, "bench_k0.json", {"model": {"top_k": 0}})
    huge = _config(root, "bench_huge.json", {"model": {"soil_dim": 10**7}})
    cases = [
        Case("bench data --pairs text->zz", [*bench, "--pairs", "text->zz"], 2, "zz"),
        Case("bench data --pairs text->text", [*bench, "--pairs", "text->text"], 2, "itself"),
        Case("bench data --pairs text+text->image", [*bench, "--pairs", "text+text->image"], 2,
             "twice"),
        Case("bench data --pairs text->", [*bench, "--pairs", "text->"], 2, "a target"),
        Case("bench data --pairs textimage", [*bench, "--pairs", "textimage"], 2, "source->target"),
        Case("bench data --pool 0", [*bench, "--pool", "0"], 2, "--pool"),
        Case("bench data --pool 1", [*bench, "--pool", "1"], 2, "--pool"),
        Case("bench data --pools 0", [*bench, "--pools", "0"], 2, "--pools"),
        Case("bench data --config top_k 0", [*bench, "--config", k0], 2, "top_k"),
        Case("bench data --config soil_dim 10^7", [*bench, "--config", huge], 2, "parameters"),
        Case("bench data --device cuda without CUDA", [*bench, "--device", "cuda"], 2, "CUDA"),
        Case("bench data of a missing folder", ["bench", "data", "nowhere", "--out", "b"], 2,
             "nowhere"),
        Case("bench scaling, small", ["bench", "scaling", "--max-modalities", "2", "--repeats",
             "1", "--batch-size", "2"], 0, "impn_params"),
        Case("bench scaling --max-modalities 1", ["bench", "scaling", "--max-modalities", "1"], 2,
             "--max-modalities"),
        Case("bench scaling --repeats 0", ["bench", "scaling", "--max-modalities", "2",
             "--repeats", "0"], 2, "--repeats"),
        Case("bench scaling --batch-size -1", ["bench", "scaling", "--max-modalities", "2",
             "--batch-size", "-1"], 2, "--batch-size"),
    ]  # fmt: skip
    for name in ("tibetan", "emoji", "digits", "stitch"):
        out = ["bench", name, "--out", "bench", "--quiet"]
        cases += [
            Case(f"bench {name} --config top_k 0", [*out, "--config", k0], 2, "top_k"),
            Case(f"bench {name} --config soil_dim 10^7", [*out, "--config", huge], 2,
                 "parameters"),
            Case(f"bench {name} --pool 0", [*out, "--pool", "0"], 2, "--pool"),
            Case(f"bench {name} --max-steps 0", [*out, "--max-steps", "0"], 2, "max_steps"),
        ]  # fmt: skip
    cases += [
        Case("bench tibetan --corpus missing", ["bench", "tibetan", "--out", "b", "--corpus",
             "nowhere.tsv"], 2, "nowhere.tsv"),
        Case("bench tibetan --speech -1", ["bench", "tibetan", "--out", "b", "--speech", "-1"], 2,
             "--speech"),
        Case("bench tibetan --speech-workers 0", ["bench", "tibetan", "--out", "b",
             "--speech-workers", "0"], 2, "--speech-workers"),
        Case("bench stitch --pairs 5", ["bench", "stitch", "--out", "b", "--pairs", "5"], 2,
             "--pairs"),
        Case("bench stitch --matched-dropout", ["bench", "stitch", "--out", "b",
             "--matched-dropout"], 2, "--matched-dropout"),
        Case("bench emoji --closed-form bogus", ["bench", "emoji", "--out", "b", "--closed-form",
             "bogus"], 2, "invalid choice"),
    ]  # fmt: skip
    return cases


def _ablate_cases() -> list[Case]:
    ab = ["ablate", "{bo_data}", "--out", "ab", "--only", "default", "--quiet", "--pairs", "bo->en"]
    return [
        Case("ablate --list", ["ablate", "--list"], 0, "default"),
        Case("ablate without data", ["ablate", "--out", "ab"], 2, "data directory"),
        Case("ablate --pairs bo->zz", [*ab, "--pairs", "bo->zz"], 2, "zz"),
        Case("ablate --pairs en->en", [*ab, "--pairs", "en->en"], 2, "itself"),
        Case("ablate --pool 1", [*ab, "--pool", "1"], 2, "--pool"),
        Case("ablate --batch-size 0", [*ab, "--batch-size", "0"], 2, "--batch-size"),
        Case("ablate --steps 0", [*ab, "--steps", "0"], 2, "--steps"),
        Case("ablate --rerank-depth 0", [*ab, "--rerank-depth", "0"], 2, "--rerank-depth"),
        Case("ablate --only bogus", ["ablate", "{bo_data}", "--out", "ab", "--only", "bogus"], 2,
             "bogus"),
        Case("ablate --noisy-snr nan", [*ab, "--noisy-snr", "nan"], 2, "--noisy-snr"),
        Case("ablate --missing 2", [*ab, "--missing", "2"], 2, "--missing"),
        Case("ablate of a missing folder", ["ablate", "nowhere", "--out", "ab"], 2, "nowhere"),
    ]  # fmt: skip


def _translate_text_cases() -> list[Case]:
    return [
        Case("translate-text without text or --audio", ["translate-text", "{run}"], 2, "--audio"),
        Case("translate-text --audio missing", ["translate-text", "{run}", "--audio",
             "none.wav"], 2, "none.wav"),
        Case("translate-text --audio of a run without speech", ["translate-text", "{run}",
             "--audio", "{notes.txt}"], 2, "not trained with speech"),
        Case("translate-text of a run without the Tibetan encoder", ["translate-text", "{run}",
             "ཀ"], 2, ""),
        Case("translate-text of a missing run", ["translate-text", "nowhere", "ཀ"], 2, "nowhere"),
    ]  # fmt: skip


def _api_cases() -> list[Case]:
    from vallayz import IMPN, IMPNConfig
    from vallayz.data import PairedEmbeddings, write_paired_embeddings
    from vallayz.learned import load_pretrained
    from vallayz_train.config import TrainConfig

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    items = [{"id": f"r{i}", "group": f"g{i}"} for i in range(6)]

    def write(
        arrays: dict[str, Any], rows: list[dict[str, str]] = items, **kw: Any
    ) -> Callable[[Path], object]:
        return lambda case: write_paired_embeddings(case / "new", arrays, rows, **kw)

    def checkpoint(change: Callable[[Path], object]) -> Callable[[Path], Any]:
        def run(case: Path) -> Any:
            IMPN(IMPNConfig(modalities={"a": 4, "b": 3}, soil_dim=8, heads=2)).save_pretrained(
                case / "ckpt"
            )
            change(case / "ckpt")
            return IMPN.from_pretrained(case / "ckpt")

        return run

    def config_file(text: str) -> Callable[[Path], Any]:
        def run(case: Path) -> Any:
            (case / "c.json").write_text(text)
            return IMPNConfig.from_json(case / "c.json")

        return run

    return [
        Case("write_paired_embeddings, valid", write({"a": a, "b": b}), 0),
        Case("write_paired_embeddings, name '../outside/x'", write({"a": a, "../outside/x": b}),
             2, "name"),
        Case("write_paired_embeddings, absolute name", write({"a": a, "/tmp/vallayz-x": b}), 2,
             "name"),
        Case("write_paired_embeddings, duplicate ids", write({"a": a, "b": b},
             [{"id": "same", "group": "g"}] * 6), 2, "same"),
        Case("write_paired_embeddings, misaligned rows", write({"a": a, "b": b[:5]}), 2, "rows"),
        Case("write_paired_embeddings, object array", write({"a": a, "b": np.array(
            [[None] * 3] * 6)}), 2, "dtype"),
        Case("write_paired_embeddings, items without ids", write({"a": a, "b": b},
             [{"group": "g"}] * 6), 2, "id"),
        Case("write_paired_embeddings, one modality (candidates for retrieve)", write({"a": a}),
             0, ""),
        Case("write_paired_embeddings, NaN in a present row", write({"a": a * np.nan, "b": b}), 2,
             "NaN"),
        Case("PairedEmbeddings of a missing folder", lambda c: PairedEmbeddings(c / "none"), 2,
             "none"),
        Case("PairedEmbeddings of a file", lambda c: PairedEmbeddings(c / "notes.txt"), 2,
             "notes.txt"),
        Case("PairedEmbeddings of a run folder", lambda c: PairedEmbeddings(c / "run"), 2, ""),
        Case("IMPN.from_pretrained of a missing folder", lambda c: IMPN.from_pretrained(
            c / "none"), 2, "missing"),
        Case("IMPN.from_pretrained, valid", checkpoint(lambda p: None), 0),
        Case("IMPN.from_pretrained, config not JSON", checkpoint(lambda p: (
            p / "config.json").write_text("{")), 2, "JSON"),
        Case("IMPN.from_pretrained, soil_dim 10^8", checkpoint(lambda p: _edit_config(
            p, soil_dim=10**8, heads=1)), 2, "parameters"),
        Case("IMPN.from_pretrained, 10^6 modalities", checkpoint(lambda p: _edit_config(
            p, modalities={f"m{i}": 10**6 for i in range(1000)})), 2, "parameters"),
        Case("IMPN.from_pretrained, weights truncated", checkpoint(lambda p: _truncate(
            p / "model.safetensors")), 2, "safetensors"),
        Case("IMPN.from_pretrained, weights of another model", checkpoint(lambda p: _edit_config(
            p, soil_dim=16)), 2, "does not match"),
        Case("IMPN.from_pretrained, a newer schema", checkpoint(lambda p: _edit_config(
            p, schema_version=99)), 2, "upgrade"),
        Case("load_pretrained, baseline with an unknown field", lambda c: (
            _baseline(c, extra=1), load_pretrained(c / "base")), 2, "extra"),
        Case("load_pretrained, baseline dim 10^9", lambda c: (
            _baseline(c, dim=10**9), load_pretrained(c / "base")), 2, "parameters"),
        Case("IMPNConfig.from_json, a list", config_file("[]"), 2, "JSON object"),
        Case("IMPNConfig.from_json, not UTF-8", lambda c: ((c / "c.json").write_bytes(
            b"\xff\xfe"), IMPNConfig.from_json(c / "c.json")), 2, "cannot read"),
        Case("IMPNConfig.from_json, unknown key", config_file('{"modalities": {"a": 1, "b": 2}, '
             '"x": 1}'), 2, "unknown"),
        Case("IMPNConfig.from_json, modality named '../x'", config_file(
            '{"modalities": {"../x": 1, "b": 2}}'), 2, "not usable"),
        Case("IMPNConfig.from_json, dims as strings", config_file(
            '{"modalities": {"a": "1", "b": 2}}'), 2, "modalities"),
        Case("TrainConfig.from_dict, lr a list", lambda c: TrainConfig.from_dict({"lr": [1]}), 2,
             "lr"),
        Case("TrainConfig.from_dict, batch_size 0", lambda c: TrainConfig.from_dict(
            {"batch_size": 0}), 2, "batch_size"),
        Case("TrainConfig.from_dict, a list", lambda c: TrainConfig.from_dict(
            json.loads("[1]")), 2, "object"),
    ]  # fmt: skip


def _baseline(case: Path, **fields: Any) -> Path:
    from vallayz.learned import build_model

    model = build_model("contrastive-heads", {"a": 4, "b": 3}, {"dim": 8})
    model.save_pretrained(case / "base")
    _edit_config(case / "base", **fields)
    return case / "base"


def all_cases(root: Path) -> list[Case]:
    """Every case of the sweep."""
    return [
        *_fit_cases(root),
        *_eval_cases(),
        *_damaged_run_cases(),
        *_array_cases(),
        *_translate_retrieve_cases(),
        *_check_cases(),
        *_plot_report_cases(root),
        *_bench_cases(root),
        *_ablate_cases(),
        *(_translate_text_cases() if _has("bophono") else []),
        *_api_cases(),
    ]


# ---------------------------------------------------------------- running a case


@dataclass
class Outcome:
    """What a case did."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float
    problems: list[str]

    @property
    def got(self) -> str:
        what = {0: "exit 0", 2: "exit 2", 1: "exit 1 (traceback)"}.get(
            self.code if self.code is not None else -1, f"exit {self.code}"
        )
        line = self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""
        return f"{what}: {line}" if line and self.code != 0 else what


def _snapshot(folder: Path) -> dict[str, str]:
    """Path → SHA-256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _fill(argv: list[str], case: Path) -> list[str]:
    """Replaces ``{name}`` by the case folder's copy of that input and ``{inputs}`` by the
    folder."""
    names = {p.name: str(case / p.name) for p in case.iterdir()}
    names["inputs"] = str(case)
    out = []
    for arg in argv:
        for name, path in names.items():
            arg = arg.replace("{" + name + "}", path)
        out.append(arg)
    return out


def run_case(case: Case, inputs: Path, scratch: Path, outside: Path) -> Outcome:
    """Runs ``case`` on a fresh copy of ``inputs`` in ``scratch``; checks what it left."""
    from vallayz_train.cli import main

    folder = scratch / "case"
    shutil.copytree(inputs, folder, symlinks=True)
    work = folder / "work"
    work.mkdir()
    argv = case.run
    if isinstance(argv, list) and argv[:1] == ["{damage}"]:
        DAMAGES[case.name](folder / "run")
        argv = argv[1:]
    before = _snapshot(folder)
    outside_before = sorted(p.name for p in outside.iterdir())
    saved_env = {name: os.environ.get(name) for name in case.env}
    os.environ.update(case.env)
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = Path.cwd()
    started = time.perf_counter()
    code: int | None
    try:
        os.chdir(work)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            if callable(argv):
                try:
                    argv(work.parent)
                    code = 0
                except VallayzUserError as refused:
                    code = 2
                    print(f"VallayzUserError: {refused}", file=sys.stderr)
                except Exception:
                    code = 1
                    traceback.print_exc()
            else:
                try:
                    code = main(_fill(argv, folder))
                except SystemExit as exit_:  # argparse
                    code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(cwd)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    seconds = time.perf_counter() - started
    out, err = stdout.getvalue(), stderr.getvalue()
    problems = []
    if code != case.code:
        problems.append(f"exit {code}, expected {case.code}")
    if "Traceback" in err:
        problems.append("a traceback")
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    if case.code == 2 and code == 2 and not callable(case.run) and len(lines) != 1:
        problems.append(f"{len(lines)} error lines")
    text = err if case.code != 0 else out
    if case.says and case.says not in text:
        problems.append(f"does not say {case.says!r}")
    if case.stdout_clean and any(c in out for c in "\x1b\x07\x9b\u202e"):
        problems.append("control characters printed raw")
    after = _snapshot(folder)
    changed = [
        name
        for name, digest in before.items()
        if after.get(name) != digest and not name.startswith("work/")
        if not any(name == m or name.startswith(f"{m}/") for m in case.may_change)
    ]
    if changed:
        problems.append(f"changed or removed the user's {changed[:3]}")
    if sorted(p.name for p in outside.iterdir()) != outside_before:
        problems.append("wrote outside its folder")
    escaped = [n for n in after if n not in before and n.startswith("outside/")]
    if escaped:
        problems.append(f"wrote outside its folder: {escaped[:3]}")
    shutil.rmtree(folder, ignore_errors=True)
    return Outcome(code, out, err, seconds, problems)


def _cell(text: str, width: int = 150) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Runs the sweep and prints its table; returns 1 on a mismatch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="only", help="only cases whose name contains this text")
    parser.add_argument("--show-errors", action="store_true", help="print each case's stderr")
    parser.add_argument("--output", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vallayz-sweep-") as tmp:
        root = Path(tmp)
        inputs = prepare(root)
        # A folder beside the cases' folders that no case may write into.
        outside = root / "outside"
        outside.mkdir()
        (inputs / "outside").rmdir()
        (inputs / "outside").symlink_to(outside)
        cases = [c for c in all_cases(root) if not args.only or args.only in c.name]
        rows = ["| # | input | expected | got | |", "|---|---|---|---|---|"]
        mismatches = 0
        for number, case in enumerate(cases, start=1):
            scratch = root / f"scratch{number}"
            scratch.mkdir()
            outcome = run_case(case, inputs, scratch, outside)
            shutil.rmtree(scratch, ignore_errors=True)
            verdict = "ok"
            if outcome.problems:
                verdict = "**MISMATCH**"
                mismatches += 1
                verdict += ": " + "; ".join(outcome.problems)
            rows.append(
                f"| {number} | {_cell(case.name, 70)} | {_cell(case.expected, 60)} | "
                f"{_cell(outcome.got.replace(tmp, 'TMP'))} | {_cell(verdict, 120)} |"
            )
            print(f"[{number}/{len(cases)}] {verdict[:70]:<70} {case.name[:60]}",
                  file=sys.stderr, flush=True)  # fmt: skip
            if args.show_errors:
                print(f"--- {number} {case.name} ({outcome.seconds:.1f} s)\n{outcome.stderr}",
                      file=sys.stderr)  # fmt: skip
    summary = (
        f"{len(cases)} inputs, {mismatches} mismatches ({time.perf_counter() - started:.0f} s)"
    )
    table = "\n".join(rows)
    print(table)
    print(f"\n{summary}")
    if args.output:
        Path(args.output).write_text(f"{table}\n\n{summary}\n", encoding="utf-8")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
