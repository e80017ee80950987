"""`vallayz fit` killed (SIGKILL) again and again, at seeded points, then resumed each time,
ends with the same bits as a run that was never interrupted.

The kill points, in one run folder:

1. before the first checkpoint (``fit --resume`` then starts the run afresh);
2. a few steps after a checkpoint, so that un-checkpointed steps are replayed and their log
   lines dropped;
3. while a checkpoint folder is being written (its ``state-<step>.partial`` folder is on disk),
   on a run resumed from a checkpoint, so that the steps since that one are replayed too.

The weights must be bit-identical, not merely close: every random draw is derived from
``(seed, step)``, the optimizer state is stored losslessly (float32 safetensors), the planner's
floats survive JSON exactly (shortest round-trip repr), and both runs execute the same CPU
kernels with the same thread count (set here), so any difference is state that the checkpoint
did not carry.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from synthetic import write_synthetic

# Checkpoints after steps 2, 5, 8 and 11 (the last); evaluations (after 3, 7, 11) and planner
# decisions (after 1, 3, 5, ...) fall between them, so the replayed steps include both.
EVERY = 3
TRAIN = {
    "max_steps": 12,
    "batch_size": 32,
    "checkpoint_every": EVERY,
    "eval_every": 4,
    "planner_every": 2,
    "warmup_steps": 3,
}
MODEL = {"soil_dim": 16, "heads": 2, "layers": 1, "dropout": 0.1}
TIMEOUT = 120.0


def _env() -> dict[str, str]:
    # One thread, so the interrupted and the uninterrupted runs reduce in the same order.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "vallayz", "fit", *args, "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            env=_env(),
        )


def _last_logged_step(run: Path) -> int:
    """The step of the last complete line of metrics.csv (-1 before the first)."""
    try:
        text = (run / "metrics.csv").read_text()
    except FileNotFoundError:
        return -1
    lines = text.split("\n")[1:-1]  # the header, then complete lines only
    return int(lines[-1].split(",", 1)[0]) if lines else -1


def _checkpoint_step(run: Path) -> int:
    """The step of the state that ``latest`` names (-1 when there is none)."""
    try:
        return int((run / "latest").read_text().strip().removeprefix("state-"))
    except (FileNotFoundError, ValueError):
        return -1


def _writing(run: Path) -> bool:
    try:
        return any(entry.name.endswith(".partial") for entry in os.scandir(run))
    except FileNotFoundError:
        return False


def _kill_when(
    process: subprocess.Popen[bytes],
    due: Callable[[], bool],
    log: Path,
    spin: Callable[[], bool] = lambda: False,
) -> None:
    """SIGKILLs ``process`` as soon as ``due()`` holds: checked every millisecond, and in a
    tight loop while ``spin()`` holds (so that a checkpoint write of a few milliseconds is
    caught without a busy loop the whole run long)."""
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        if due():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return
        if not spin():
            time.sleep(0.001)
    process.kill()
    process.wait()
    raise AssertionError(
        f"the run ended (status {process.returncode}) before its kill point: "
        f"{log.read_text(errors='replace')}"
    )


def test_fit_killed_at_several_points_resumes_to_the_same_bits(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data", rows=160, groups=20)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": MODEL, "train": TRAIN}))
    whole, run = tmp_path / "whole", tmp_path / "killed"
    fresh = ["--config", str(config)]
    # The uninterrupted run, alongside the interrupted one.
    reference = _start([str(data), "--out", str(whole), *fresh], tmp_path / "whole.log")
    rng = random.Random(20)
    resume = ["--resume", str(run)]

    # 1. Before the first checkpoint (after step 2).
    log = tmp_path / "kill1.log"
    process = _start([str(data), "--out", str(run), *fresh], log)
    first = rng.randint(0, 1)
    _kill_when(process, lambda: _last_logged_step(run) >= first, log)
    assert _checkpoint_step(run) == -1 and _last_logged_step(run) >= 0

    # 2. Un-checkpointed steps: killed after step 3 or 4, with the checkpoint of step 2.
    log = tmp_path / "kill2.log"
    process = _start(resume, log)
    second = rng.randint(3, 4)
    _kill_when(process, lambda: _last_logged_step(run) >= second, log)
    assert "before its first checkpoint" in log.read_text()  # it started afresh
    assert _last_logged_step(run) > _checkpoint_step(run) >= 2

    # 3. During a checkpoint write (state-5.partial on the first try). A kill that lands just
    # after the write is a valid kill point too, but then the next checkpoint is tried.
    caught = False
    for attempt in range(3):
        log = tmp_path / f"kill3-{attempt}.log"
        process = _start(resume, log)
        # Watched closely from the step before a checkpoint step to the end of its write.
        _kill_when(process, lambda: _writing(run), log, lambda: _last_logged_step(run) % EVERY >= 1)
        if _writing(run):
            caught = True
            break
    assert caught, "no kill landed inside a checkpoint write in three tries"

    # To the end.
    done = subprocess.run(
        [sys.executable, "-m", "vallayz", "fit", *resume, "--quiet"],
        capture_output=True,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert reference.wait(timeout=TIMEOUT) == 0, (tmp_path / "whole.log").read_text()

    assert not _writing(run)
    for name in ("model.safetensors", "best/model.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(run / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for name in ("metrics.csv", "planner.jsonl", "config.json"):
        assert (run / name).read_text() == (whole / name).read_text(), name
    assert _checkpoint_step(run) == 11
