"""Data-parallel training under torchrun: two gloo processes on the CPU against one process.

Each process computes the loss of its slice of the global batch and the gradients are averaged
across processes, so a two-process run must reach the weights of a one-process run that cuts
the same global batch into the same two slices (``batch_shards=2``) and averages their
gradients itself. The slices' random draws are seeded by slice, not by process, and the
averaging is exact in floating point for two slices (halving is exact, and ``a + b`` is
commutative), so the weights agree to the last bits on one machine; the test allows 1e-6 for
reductions that a different build might order differently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic import write_synthetic

from vallayz.data import PairedEmbeddings
from vallayz.errors import VallayzUserError
from vallayz_train import trainer as trainer_module
from vallayz_train.config import TrainConfig
from vallayz_train.distributed import World, combine_terms, world_from_env
from vallayz_train.trainer import Trainer, fit

# Checkpoints after steps 1, 3 and 5; validations after 2 and 5; planner decisions every 2.
TRAIN = {
    "max_steps": 6,
    "batch_size": 16,
    "checkpoint_every": 2,
    "eval_every": 3,
    "planner_every": 2,
    "warmup_steps": 2,
}
MODEL = {"soil_dim": 16, "heads": 2, "layers": 1, "dropout": 0.1}
TOLERANCE = 1e-6
TIMEOUT = 120.0


class _StopError(Exception):
    """Ends a run right after a checkpoint, as a kill would."""


def _torchrun(args: list[str], tmp_path: Path) -> str:
    """Runs ``vallayz fit ARGS`` in two processes; returns what they printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "vallayz",
            "fit",
            *args,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = _weights(a), _weights(b)
    assert left.keys() == right.keys()
    worst = max(float((left[k] - right[k]).abs().max()) for k in left)
    assert worst <= TOLERANCE, f"weights differ by up to {worst:g}"


def _train_log(run: Path) -> list[tuple[int, str, float]]:
    lines = (run / "metrics.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in lines]
    return [(int(s), n, float(v)) for s, n, v in rows if n.startswith("train/")]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The torchrun processes run one thread each; so does the in-process run they are
    compared with, since a multi-threaded reduction sums in another order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_two_processes_reach_the_weights_of_one_process_with_the_same_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_synthetic(tmp_path / "data", rows=80, groups=16)
    config = {**TRAIN, "batch_shards": 2}
    (tmp_path / "config.json").write_text(json.dumps({"model": MODEL, "train": config}))

    # One process, both slices, all the way.
    fit(data, tmp_path / "one", MODEL, TrainConfig(**config), progress=False)  # type: ignore[arg-type]
    # One process stopped after its checkpoint at step 1, to be resumed by two.
    real_save = trainer_module.save_state

    def save_then_stop(run_dir: Path, step: int, *args: object) -> Path:
        folder = real_save(run_dir, step, *args)  # type: ignore[arg-type]
        if step == 1:
            raise _StopError
        return folder

    monkeypatch.setattr(trainer_module, "save_state", save_then_stop)
    with pytest.raises(_StopError):
        fit(data, tmp_path / "stopped", MODEL, TrainConfig(**config), progress=False)  # type: ignore[arg-type]
    monkeypatch.undo()

    # Two processes from the start, with the default of one slice per process.
    printed = _torchrun(
        [str(data), "--out", "two", "--config", str(tmp_path / "config.json")], tmp_path
    )
    _torchrun(["--resume", "stopped"], tmp_path)

    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "stopped"
    _assert_same_weights(one, two)
    _assert_same_weights(one, resumed)
    # The logged losses are the means over both slices, as one process logs them.
    for run in (two, resumed):
        logged = _train_log(run)
        assert [(s, n) for s, n, _ in logged] == [(s, n) for s, n, _ in _train_log(one)]
        np.testing.assert_allclose(
            [v for *_, v in logged], [v for *_, v in _train_log(one)], rtol=1e-5
        )
    # Rank 0 alone wrote the run: one summary, the planner's decisions once, as one process.
    planner = (one / "planner.jsonl").read_text()
    assert planner and (two / "planner.jsonl").read_text() == planner
    summary = json.loads((one / "summary.json").read_text())
    assert printed.count('"best_val_R@1"') == 1  # the summary, from rank 0 alone
    assert json.loads((two / "summary.json").read_text()) == pytest.approx(summary, abs=1e-6)
    assert sorted(p.name for p in two.glob("state-*")) == ["state-3", "state-5"]


def test_slicing_changes_the_objective_so_the_slices_are_part_of_the_run(
    tmp_path: Path,
) -> None:
    """In-batch negatives come from the slice: with one slice the same steps give other
    weights, which is why a run records its ``batch_shards``."""
    data = write_synthetic(tmp_path / "data", rows=80, groups=16)
    settings = {**TRAIN, "max_steps": 2, "planner": False}
    fit(data, tmp_path / "a", MODEL, TrainConfig(**settings), progress=False)  # type: ignore[arg-type]
    fit(data, tmp_path / "b", MODEL, TrainConfig(**settings, batch_shards=2), progress=False)  # type: ignore[arg-type]
    left, right = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert max(float((left[k] - right[k]).abs().max()) for k in left) > 1e-4


def test_the_environment_of_torchrun_names_the_world() -> None:
    assert world_from_env({}) is None
    world = world_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert world == World(rank=1, size=4, local_rank=1)
    assert world is not None and world.distributed and not world.is_main
    with pytest.raises(VallayzUserError, match="but not WORLD_SIZE, LOCAL_RANK"):
        world_from_env({"RANK": "0"})
    with pytest.raises(VallayzUserError, match="0 <= RANK < WORLD_SIZE"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(VallayzUserError, match="must be integers"):
        world_from_env({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_slices_must_divide_the_batch_and_be_shared_by_the_processes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_shards must be null or a positive divisor"):
        TrainConfig(batch_size=16, batch_shards=3)
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=80, groups=16))
    from conftest import tiny_config

    from vallayz import IMPN

    config = TrainConfig(batch_size=16, batch_shards=2, planner=False)
    with pytest.raises(VallayzUserError, match="multiple of the number of processes"):
        Trainer(data, tmp_path, IMPN(tiny_config()), config, False, World(0, 4, 0))
    # Two slices in one process: each step's batch is cut in the two halves.
    trainer = Trainer(data, tmp_path, IMPN(tiny_config()), config, False)
    assert trainer.own_shards == [0, 1] and trainer.batch_size == 16


def test_the_logged_terms_are_means_over_the_slices_that_have_them() -> None:
    failure, terms = combine_terms(World(), 1, [{"total": 1.0, "a-b": 2.0}, {"total": 3.0}])
    assert failure == 1 and list(terms) == ["total", "a-b"]
    assert terms == {"total": 2.0, "a-b": 2.0}


def _exchange(rank: int, folder: str) -> None:
    """One of two gloo processes: exchanges values through each helper and writes what it got."""
    import torch.distributed as dist

    from vallayz_train.distributed import average_gradients, broadcast, gather

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    world = World(rank=rank, size=2, local_rank=rank)
    # Rank 1's slice lacks the pair term; rank 0's has two slices.
    shards = [{"total": 1.0, "a-b": 4.0}, {"total": 2.0}] if rank == 0 else [{"total": 6.0}]
    failure, terms = combine_terms(world, rank, shards)
    # Parameter 0 has a gradient on both ranks, 1 on rank 0 only, 2 on neither.
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    params[0].grad = torch.full((3,), float(rank + 1))
    if rank == 0:
        params[1].grad = torch.ones(3)
    average_gradients(world, params)
    got = {
        "broadcast": broadcast(world, {"rank": rank, "text": "བོད"}),
        "gather": gather(world, [rank] * (rank + 1)),
        "failure": failure,
        "terms": terms,
        "grads": [None if p.grad is None else p.grad.tolist() for p in params],
    }
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(got))
    dist.destroy_process_group()


def test_two_processes_exchange_terms_gradients_and_values(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_exchange, args=(str(tmp_path),), nprocs=2)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] == seen[1], "every process must hold the same values"
    got = seen[0]
    assert got["broadcast"] == {"rank": 0, "text": "བོད"}
    assert got["gather"] == [[0], [1, 1]]
    assert got["failure"] == 1
    # Means over the slices that have each term: three slices have the total, one the pair.
    assert got["terms"] == {"total": 3.0, "a-b": 4.0}
    # Gradients are averaged over processes; one no process gave stays None.
    assert got["grads"] == [[1.5] * 3, [0.5] * 3, None]
