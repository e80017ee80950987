"""Resumable training state: model, optimizer and scalars, written atomically.

A state lives in ``RUN_DIR/state-<step>/`` (``config.json``, ``model.safetensors``,
``optimizer.safetensors``, ``trainer_state.json``). The folder is written completely before the
pointer file ``RUN_DIR/latest`` is replaced (a rename) to name it, so a run killed at any moment
resumes from the last complete state. Random draws are derived from ``(seed, step)``, so the step
is all the random state there is to keep.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vallayz.learned import load_pretrained

LATEST = "latest"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def optimizer_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Splits an optimizer ``state_dict`` into flat tensors and JSON-able scalars."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars["state"].setdefault(str(index), {})[key] = value
    return tensors, scalars


def optimizer_from_tensors(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in scalars["state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_state(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scalars: dict[str, Any],
) -> Path:
    """Writes ``state-<step>/`` and points ``latest`` at it; removes older states."""
    folder = run_dir / f"state-{step}"
    if folder.exists():
        shutil.rmtree(folder)
    work = run_dir / f"state-{step}.partial"
    if work.exists():
        shutil.rmtree(work)
    model.save_pretrained(work)  # type: ignore[operator]
    tensors, optim_scalars = optimizer_to_tensors(optimizer.state_dict())
    save_file(tensors, str(work / "optimizer.safetensors"))
    _atomic_write(
        work / "trainer_state.json",
        json.dumps({**scalars, "step": step, "optimizer": optim_scalars}),
    )
    work.replace(folder)
    _atomic_write(run_dir / LATEST, folder.name + "\n")
    for old in run_dir.glob("state-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_state(run_dir: Path, device: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Reads the state that ``latest`` names.

    Returns:
        ``(model, optimizer_state_dict, scalars)``.

    Raises:
        ValueError: if the run has no complete state.
    """
    pointer = run_dir / LATEST
    if not pointer.is_file():
        raise ValueError(
            f"{run_dir} has no resumable state ({LATEST} is missing); start it with vallayz fit "
            "--out, or check the path"
        )
    folder = run_dir / pointer.read_text().strip()
    try:
        model = load_pretrained(folder, device=device)
        scalars = json.loads((folder / "trainer_state.json").read_text())
        tensors = load_file(str(folder / "optimizer.safetensors"), device=device)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"the state in {folder} is unreadable ({err}); it cannot be resumed"
        ) from err
    return model, optimizer_from_tensors(tensors, scalars.pop("optimizer")), scalars
