"""Property tests of the command line: random valid and invalid option values for ``fit``,
``eval``, ``retrieve`` and ``translate``, run in this process on a tiny data folder and run.
Each call either exits 0 with a sane result (finite scores in [0, 1], arrays of the right shape,
a run with its weights) or exits 2 with one error line; never a traceback or another status.

A few dozen cases run with the tests; ``make fuzz`` (VALLAYZ_FUZZ=1) runs many more.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from synthetic import write_synthetic

from vallayz_train.cli import main
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import fit

FUZZ = bool(os.environ.get("VALLAYZ_FUZZ"))
CASES = {"count": 0}
DIMS = {"text": 12, "audio": 6, "image": 16}
SMALL = {"soil_dim": 16, "heads": 2, "layers": 1, "variants": 2, "top_k": 2}
_serial = itertools.count()


def cases(quick: int, fuzz: int) -> settings:
    return settings(
        max_examples=fuzz if FUZZ else quick,
        deadline=None,
        derandomize=not FUZZ,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if FUZZ:
        print(f"\ncommand-line fuzz: {CASES['count']} cases")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A data folder, a run trained on it for one step, and a scratch folder."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    data = write_synthetic(root / "data", rows=40, groups=10)
    config = TrainConfig.from_dict(
        {"batch_size": 16, "eval_every": 50, "warmup_steps": 1, "planner": False, "max_steps": 1}
    )
    fit(data, root / "run", dict(SMALL), config, progress=False)
    (root / "scratch").mkdir()
    return data, root / "run", root / "scratch"


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``vallayz ARGV`` in this process: exit status, standard output, standard error."""
    CASES["count"] += 1
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse refusing an option
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _exit_0_or_a_clear_2(code: int, err: str, argv: list[str]) -> None:
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("vallayz"), (argv, err)


def _fresh(scratch: Path, suffix: str) -> Path:
    return scratch / f"out{next(_serial)}{suffix}"


# Option values: valid ones, and the mistakes a user makes (zero, negative, huge, not a number).
INTS = st.one_of(
    st.integers(-3, 40),
    st.sampled_from(["0", "-1", "1e3", "x", "", "9" * 30, "2.5", " 7", "0x10"]),
).map(str)
FLOATS = st.one_of(
    st.floats(-1.0, 1.0, allow_nan=False).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0", "-0.0", "abc", "1e-12", "1e6"]),
)
NAMES = st.sampled_from([*DIMS, "zz", "", "TEXT", "../text", "text ", "\x1b[31m"])


@cases(quick=8, fuzz=400)
@given(
    pool=INTS,
    pools=INTS,
    split=st.sampled_from(["train", "val", "test", "all", "nope"]),
    mode=st.sampled_from(["soil", "translate", "bridged"]),
    seed=INTS,
    extra=st.lists(st.sampled_from(["--force", "--device=cpu", "--device=cuda"]), max_size=2),
)
@example(pool="5", pools="2", split="all", mode="soil", seed="0", extra=[])
def test_eval_exits_0_with_sane_scores_or_2(
    world: tuple[Path, Path, Path],
    pool: str,
    pools: str,
    split: str,
    mode: str,
    seed: str,
    extra: list[str],
) -> None:
    data, run, scratch = world
    output = _fresh(scratch, ".json")
    argv = ["eval", str(run), str(data), "--pool", pool, "--pools", pools, "--split", split]
    argv += ["--mode", mode, "--seed", seed, "--output", str(output), *extra]
    code, _out, err = _run(argv)
    _exit_0_or_a_clear_2(code, err, argv)
    if code == 0:
        rows = json.loads(output.read_text())["results"]
        assert rows
        for row in rows:
            for key in ("R@1", "R@5", "MRR"):
                assert 0.0 <= float(row[key]) <= 1.0, (argv, row)
    else:
        assert not output.exists()


@cases(quick=8, fuzz=400)
@given(
    source=NAMES,
    target=NAMES,
    k=INTS,
    ids=st.lists(
        st.one_of(
            st.integers(0, 39).map(lambda i: f"item{i:04d}"),
            st.sampled_from(["", "nobody", "item", "\x1b]0;x\x07"]),
        ),
        min_size=1,
        max_size=3,
    ),
)
@example(source="text", target="image", k="3", ids=["item0001", "item0002"])
def test_retrieve_exits_0_with_k_sane_answers_or_2(
    world: tuple[Path, Path, Path], source: str, target: str, k: str, ids: list[str]
) -> None:
    data, run, _ = world
    argv = ["retrieve", str(run), "--source", source, "--target", target, "--k", k]
    argv += ["--candidates", str(data), "--query-ids", *ids]
    code, out, err = _run(argv)
    _exit_0_or_a_clear_2(code, err, argv)
    if code == 0:
        answers = [line for line in out.splitlines() if line.startswith("  ")]
        assert len(answers) == len(ids) * int(k), (argv, out)
        for line in answers:
            assert math.isfinite(float(line.split("\t")[1])), line
        assert "\x1b" not in out


@cases(quick=10, fuzz=500)
@given(
    source=NAMES,
    target=NAMES,
    batch_size=INTS,
    queries=st.one_of(
        st.integers(0, 5).map(lambda n: np.ones((n, DIMS["text"]), np.float32)),
        arrays(
            st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.complex64, bool]),
            st.lists(st.integers(0, 13), min_size=1, max_size=3).map(tuple),
        ),
        arrays(np.float32, (3, DIMS["text"]), elements=st.floats(width=32)),
    ),
)
@example(source="text", target="image", batch_size="2", queries=np.ones((3, 12), np.float32))
def test_translate_exits_0_with_an_array_of_the_target_or_2(
    world: tuple[Path, Path, Path],
    source: str,
    target: str,
    batch_size: str,
    queries: np.ndarray,
) -> None:
    _, run, scratch = world
    query, output = _fresh(scratch, ".npy"), _fresh(scratch, ".npy")
    np.save(query, queries)
    argv = ["translate", str(run), "--source", source, "--target", target, "--input", str(query)]
    argv += ["--output", str(output), "--batch-size", batch_size]
    code, _out, err = _run(argv)
    _exit_0_or_a_clear_2(code, err, argv)
    if code == 0:
        result = np.load(output)
        assert result.shape == (len(queries), DIMS[target]), (argv, result.shape)
        assert np.isfinite(result).all()
    else:
        assert not output.exists()


@cases(quick=4, fuzz=120)
@given(
    max_steps=st.sampled_from(["1", "2", "0", "-1", "x", "1.5", "99999999999999999999"]),
    batch_size=st.one_of(st.sampled_from(["8", "16", "40", "1"]), INTS),
    lr=FLOATS,
    seed=INTS,
    method=st.sampled_from(["impn", "contrastive-heads", "mlp-translator", "bogus"]),
    planner=st.sampled_from([[], ["--planner", "on"], ["--planner", "off"]]),
)
@example(max_steps="1", batch_size="16", lr="0.001", seed="0", method="impn", planner=[])
def test_fit_exits_0_with_a_run_or_2(
    world: tuple[Path, Path, Path],
    max_steps: str,
    batch_size: str,
    lr: str,
    seed: str,
    method: str,
    planner: list[str],
) -> None:
    data, _, scratch = world
    out = _fresh(scratch, "")
    config = scratch / "small.json"
    config.write_text(json.dumps({"model": SMALL, "train": {"eval_every": 50}}))
    argv = ["fit", str(data), "--out", str(out), "--config", str(config), "--quiet"]
    argv += ["--max-steps", max_steps, "--batch-size", batch_size, "--lr", lr, "--seed", seed]
    argv += ["--method", method, *planner]
    code, printed, err = _run(argv)
    _exit_0_or_a_clear_2(code, err, argv)
    if code == 0:
        summary = json.loads(printed)
        assert summary["steps"] == int(max_steps), summary
        assert (out / "model.safetensors").is_file()
