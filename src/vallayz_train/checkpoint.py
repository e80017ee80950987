"""Resumable training state: model, optimizer and scalars, written atomically.

A state lives in ``RUN_DIR/state-<step>/`` (``config.json``, ``model.safetensors``,
``optimizer.safetensors``, ``trainer_state.json``). The folder is written completely before the
pointer file ``RUN_DIR/latest`` is replaced (a rename) to name it, so a run killed at any moment
resumes from the last complete state. The state before it is kept too: when a file of the latest
state is unreadable (a disk fault, an edit), :func:`load_state` falls back to it and says so.
Random draws are derived from ``(seed, step)``, so the step is all the random state there is to
keep.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vallayz.errors import VallayzUserError
from vallayz.learned import load_pretrained

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.safetensors"
# Keys of trainer_state.json and the JSON types each must have.
_SCALARS: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "best": (int, float),
    "bad_evals": (int,),
    "loss_weights": (dict,),
    "optimizer": (dict,),
}


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
    """Writes ``state-<step>/`` and points ``latest`` at it; removes the states older than the
    one ``latest`` named before (kept as the fallback of :func:`load_state`)."""
    previous = _pointed(run_dir)
    folder = run_dir / f"state-{step}"
    if folder.exists():
        shutil.rmtree(folder)
    work = run_dir / f"state-{step}.partial"
    if work.exists():
        shutil.rmtree(work)
    model.save_pretrained(work)  # type: ignore[operator]
    tensors, optim_scalars = optimizer_to_tensors(optimizer.state_dict())
    save_file(tensors, str(work / OPTIMIZER))
    _atomic_write(
        work / TRAINER_STATE,
        json.dumps({**scalars, "step": step, "optimizer": optim_scalars}),
    )
    work.replace(folder)
    _atomic_write(run_dir / LATEST, folder.name + "\n")
    for old in run_dir.glob("state-*"):
        if old not in (folder, previous):
            shutil.rmtree(old, ignore_errors=True)
    return folder


def states(run_dir: Path) -> list[Path]:
    """The complete state folders of a run: the one ``latest`` names first, then the others,
    newest first."""
    latest = _pointed(run_dir)
    others = sorted(
        (f for f in run_dir.glob("state-*") if f.is_dir() and f != latest and _step_of(f) >= 0),
        key=_step_of,
        reverse=True,
    )
    return ([latest] if latest is not None and latest.is_dir() else []) + others


def _pointed(run_dir: Path) -> Path | None:
    """The state folder that ``latest`` names, if it names one."""
    try:
        name = (run_dir / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return run_dir / name if name.startswith("state-") and "/" not in name else None


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("state-"))
    except ValueError:
        return -1


def load_state(
    run_dir: Path, device: str, notices: list[str] | None = None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Reads the state that ``latest`` names, or the state before it when that one is
    unreadable (saying so in ``notices``).

    Returns:
        ``(model, optimizer_state_dict, scalars)``.

    Raises:
        VallayzUserError: if the run has no readable state; the message names the file at fault.
    """
    candidates = states(run_dir)
    if not candidates:
        raise VallayzUserError(
            f"{run_dir} has no resumable state ({LATEST} is missing); start it with vallayz fit "
            "--out, or check the path"
        )
    errors: list[str] = []
    for folder in candidates:
        try:
            model, optimizer_state, scalars = read_state(folder, device)
        except VallayzUserError as err:
            errors.append(str(err))
            continue
        if errors and notices is not None:
            notices.append(f"{errors[0]}; resuming from the previous state, {folder.name}")
        return model, optimizer_state, scalars
    raise VallayzUserError(
        f"{errors[0]}; {run_dir} has no earlier readable state to resume from, so start the run "
        "again with vallayz fit --out"
    )


def read_state(folder: Path, device: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Reads one ``state-<step>/`` folder, checking every file.

    Raises:
        VallayzUserError: naming the file that is missing, corrupt or of the wrong shape.
    """
    if not folder.is_dir():
        raise VallayzUserError(f"the state folder {folder} is missing")
    try:
        model = load_pretrained(folder, device=device)
    except (ValueError, TypeError, KeyError) as err:
        raise VallayzUserError(f"the model of {folder} is unreadable: {err}") from err
    path = folder / TRAINER_STATE
    try:
        scalars = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VallayzUserError(f"{path} is unreadable ({err})") from err
    check_scalars(scalars, path)
    path = folder / OPTIMIZER
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise VallayzUserError(f"{path} is unreadable ({err})") from err
    try:
        optimizer_state = optimizer_from_tensors(tensors, scalars.pop("optimizer"))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise VallayzUserError(
            f"{path} and {folder / TRAINER_STATE} do not form an optimizer state ({err!r})"
        ) from err
    return model, optimizer_state, scalars


def check_scalars(scalars: object, path: Path) -> None:
    """Raises :class:`VallayzUserError` naming ``path`` unless ``scalars`` has every key of a
    trainer state with the right JSON type."""
    if not isinstance(scalars, dict):
        raise VallayzUserError(f"{path} must hold a JSON object, not {type(scalars).__name__}")
    for key, types in _SCALARS.items():
        value = scalars.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise VallayzUserError(
                f"{path}: {key!r} must be {' or '.join(t.__name__ for t in types)}, got {value!r}"
            )
    optimizer = scalars["optimizer"]
    if not isinstance(optimizer.get("param_groups"), list) or not isinstance(
        optimizer.get("state"), dict
    ):
        raise VallayzUserError(f"{path}: 'optimizer' lacks its 'param_groups' list or 'state'")
