"""The run folder: everything a run writes and reads back, in one place.

A run folder holds ``run.json`` (the data path, the method, the model overrides and the training
settings), ``train_config.json``, the final model (``config.json`` + ``model.safetensors``), the
best validated model (``best/``), the logs (``metrics.csv``, ``planner.jsonl``), the summary
(``summary.json``), resumable states, and saved search indexes (``index-<modality>/``).

A resumable state lives in ``RUN_DIR/state-<step>/`` (``config.json``, ``model.safetensors``,
``optimizer.safetensors``, ``trainer_state.json``). The folder is written completely before the
pointer file ``RUN_DIR/latest`` is replaced (a rename) to name it, so a run killed at any moment
resumes from the last complete state. The state before it is kept too: when a file of the latest
state is unreadable (a disk fault, an edit), :func:`load_state` falls back to it and says so.
Random draws are derived from ``(seed, step)``, so the step is all the random state there is to
keep.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vallayz import IMPN
from vallayz.data import PairedEmbeddings, check_modality_name
from vallayz.errors import VallayzUserError
from vallayz.eval import keys_to_ids
from vallayz.index import SEARCH_KINDS, SearchIndex
from vallayz.learned import load_pretrained
from vallayz.types import Batch

if TYPE_CHECKING:
    from vallayz_train.config import TrainConfig

# The files and folders of a run folder.
RUN_FILE = "run.json"
TRAIN_CONFIG = "train_config.json"
METRICS = "metrics.csv"
PLANNER_LOG = "planner.jsonl"
SUMMARY = "summary.json"
BEST = "best"
TENSORBOARD = "tensorboard"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.safetensors"
INDEX_PREFIX = "index-"
LOCK = ".lock"
# Keys of trainer_state.json and the JSON types each must have.
_SCALARS: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "best": (int, float),
    "bad_evals": (int,),
    "loss_weights": (dict,),
    "optimizer": (dict,),
}


# Run folders this process holds the lock of (resolved path -> open lock file, depth), so that a
# nested claim (a run restarted from inside fit) does not lock itself out.
_HELD: dict[Path, tuple[Any, int]] = {}


@contextlib.contextmanager
def lock_run(run_dir: Path) -> Iterator[None]:
    """Holds the run folder's lock (``RUN_DIR/.lock``, created with the folder) while the
    block runs: one writer per run folder.

    The lock is an ``flock`` on the file, which the system releases when the holder exits,
    however it exits, so a killed run never leaves its folder locked. The holder writes its
    process id into the file for the message another writer gets.

    Raises:
        VallayzUserError: when another process holds the lock, naming it; or when the folder
            cannot be created.
    """
    key = run_dir.resolve()
    if key in _HELD:
        handle, depth = _HELD[key]
        _HELD[key] = (handle, depth + 1)
        try:
            yield
        finally:
            _HELD[key] = (handle, depth)
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise VallayzUserError(f"{run_dir} is a file; choose a folder for the run")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = (run_dir / LOCK).open("a+")
    except OSError as err:
        raise VallayzUserError(
            f"cannot create the run folder {run_dir} ({err.strerror}); choose a folder you can "
            "write to, or change its permissions"
        ) from err
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise VallayzUserError(
            f"run folder {run_dir} is being written by process {holder}; wait for it to finish "
            "(or stop it) or choose another --out"
        ) from err
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key] = (handle, 1)
    try:
        yield
    finally:
        del _HELD[key]
        if created and [p.name for p in run_dir.iterdir()] == [LOCK]:
            # Refused before writing anything (a bad model config): leave no folder behind.
            (run_dir / LOCK).unlink()
            run_dir.rmdir()
        handle.close()  # releases the lock; the file stays, empty of meaning


def atomic_write(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path``, flushed to disk, then renames it onto
    ``path``: a reader sees the old file or the whole new one."""
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
    atomic_write(
        work / TRAINER_STATE,
        json.dumps({**scalars, "step": step, "optimizer": optim_scalars}),
    )
    work.replace(folder)
    atomic_write(run_dir / LATEST, folder.name + "\n")
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


# ---------------------------------------------------------------------- the run's own files
# What a run writes in its folder; a run without a checkpoint is cleared of these to restart.
_RUN_NAMES = (
    RUN_FILE,
    TRAIN_CONFIG,
    METRICS,
    PLANNER_LOG,
    SUMMARY,
    "config.json",
    "model.safetensors",
    BEST,
    TENSORBOARD,
)


def notice(message: str) -> None:
    """One line on stderr about something the run did on the user's behalf."""
    print(f"vallayz: notice: {message}", file=sys.stderr)


def write_run(
    run_dir: Path,
    data_dir: str | Path,
    method: str,
    model_overrides: dict[str, Any] | None,
    config: TrainConfig,
    extend: dict[str, Any] | None = None,
    fusion_stage: dict[str, Any] | None = None,
) -> None:
    """Writes ``run.json`` (what :func:`read_run` gives back to resume the run) and
    ``train_config.json``. A run that extends another records what it froze under
    ``extend`` (the base run, its modalities, the added ones, the trained and frozen parameter
    counts); a fusion stage records under ``fusion_stage`` its base run, the parts it trains
    and the same counts."""
    run: dict[str, Any] = {
        "data": str(Path(data_dir).resolve()),
        "method": method,
        "model": model_overrides,
        "train": asdict(config),
    }
    if extend is not None:
        run["extend"] = extend
    if fusion_stage is not None:
        run["fusion_stage"] = fusion_stage
    (run_dir / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    config.to_json(run_dir / TRAIN_CONFIG)


def finished_base(base_dir: Path, option: str) -> tuple[dict[str, Any], Any]:
    """The ``run.json`` and the final model of the finished run that ``option`` (``--extend``,
    ``--fuse``) starts a new run from.

    Raises:
        VallayzUserError: if it is not a run, or has not finished.
    """
    base_run = read_run(base_dir)
    if not is_finished(base_dir):
        raise VallayzUserError(
            f"{option} {base_dir}: that run has not finished (it has no final model); finish "
            f"it first with vallayz fit --resume {base_dir}"
        )
    return base_run, load_model(base_dir)


def read_run(run_dir: Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder, checked.

    Raises:
        VallayzUserError: if it is missing, unreadable or lacks its data path or settings.
    """
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise VallayzUserError(
            f"{run_dir} is not a vallayz run ({RUN_FILE} is missing); check the path"
        )
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VallayzUserError(f"{run_file} is unreadable ({err})") from err
    if not isinstance(run, dict) or not isinstance(run.get("train"), dict) or "data" not in run:
        raise VallayzUserError(f"{run_file} lacks its 'data' path or 'train' settings")
    return run


def is_finished(run_dir: Path) -> bool:
    """Whether the run trained to its end (it wrote ``summary.json``)."""
    return (run_dir / SUMMARY).exists()


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Writes ``summary.json``, the mark of a finished run."""
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")


def clear_run(run_dir: Path) -> None:
    """Removes what a run that never reached a checkpoint wrote, so it can start again."""
    for name in _RUN_NAMES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for partial in run_dir.glob("state-*.partial"):
        shutil.rmtree(partial)


def check_out_dir(run_dir: Path) -> None:
    """Checks, without writing anything, that ``fit --out`` may put a run in ``run_dir``: a
    new folder, an empty one, or a run folder (see :func:`claim_run_dir`)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise VallayzUserError(f"--out {run_dir} is a file; choose a folder for the run")
    if not run_dir.is_dir() or not any(p.name != LOCK for p in run_dir.iterdir()):
        return
    if not (run_dir / RUN_FILE).is_file():
        raise VallayzUserError(
            f"--out {run_dir} is a folder that holds no vallayz run but other files; choose a "
            "new or empty folder so that runs are not mixed"
        )


def claim_run_dir(run_dir: Path) -> None:
    """Checks that ``fit --out`` may write a new run into ``run_dir``: a new or empty folder,
    or a run that stopped before its first checkpoint (cleared, with a notice)."""
    check_out_dir(run_dir)
    if not run_dir.is_dir() or not any(p.name != LOCK for p in run_dir.iterdir()):
        return
    if states(run_dir):
        raise VallayzUserError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} "
            "or choose a new --out"
        )
    notice(f"{run_dir} holds a run that stopped before its first checkpoint; starting it again")
    clear_run(run_dir)


def truncate_logs(run_dir: Path, step: int) -> None:
    """Drops log lines written after the state being resumed (a killed run wrote them)."""
    metrics = run_dir / METRICS
    if metrics.exists():
        lines = metrics.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
        metrics.write_text("".join(kept))
    planner = run_dir / PLANNER_LOG
    if planner.exists():
        kept = [
            line
            for line in planner.read_text().splitlines(keepends=True)
            if json.loads(line)["step"] <= step
        ]
        planner.write_text("".join(kept))


# ---------------------------------------------------------------------- reading a run back
def load_model(run_dir: str | Path, device: str = "cpu") -> Any:
    """The final model of a run folder (IMPN or a learned baseline), in eval mode.

    Raises:
        VallayzUserError: if the folder is missing, CUDA is asked for but absent, or the model
            files are unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VallayzUserError(
            f"{run_dir} is not a folder; name a run folder written by vallayz fit"
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VallayzUserError("--device cuda was asked for but CUDA is not available; use cpu")
    try:
        return load_pretrained(run_dir, device=device).eval()
    except (ValueError, TypeError, KeyError) as err:
        # The folder is the only input: a fault here is a fault in the user's files.
        raise VallayzUserError(f"cannot load the model in {run_dir}: {err}") from err


def run_data(run_dir: Path, check_values: bool = False) -> PairedEmbeddings:
    """The data folder a run was trained on (the path its ``run.json`` records)."""
    if not (run_dir / RUN_FILE).is_file():
        raise VallayzUserError(f"{run_dir} is not a vallayz run ({RUN_FILE} is missing)")
    return PairedEmbeddings(read_run(run_dir)["data"], check_values=check_values)


def recorded_data(run_dir: Path) -> str | None:
    """The data folder that a run's ``run.json`` records, or None when the folder holds no
    ``run.json`` (a model folder) or the file names no data folder. Unlike :func:`read_run`,
    asks nothing else of the file.

    Raises:
        VallayzUserError: if ``run.json`` cannot be read, is not JSON or not a JSON object.
    """
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise VallayzUserError(f"cannot read {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise VallayzUserError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno})"
        ) from err
    if not isinstance(run, dict):
        raise VallayzUserError(
            f"{path} must hold a JSON object with optional 'model' and 'train' objects"
        )
    data = run.get("data")
    return None if data is None else str(data)


def read_metrics(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """The run's ``metrics.csv`` as metric name → (steps, values), in the order logged."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    with (run_dir / METRICS).open(newline="") as handle:
        for row in csv.DictReader(handle):
            steps, values = series.setdefault(row["name"], ([], []))
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
    return series


def read_planner_log(run_dir: Path) -> list[dict[str, Any]]:
    """The planner's decisions in the run's ``planner.jsonl``, in the order taken."""
    text = (run_dir / PLANNER_LOG).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_impn(run_dir: Path) -> IMPN:
    """The final model of a run folder that trained IMPN, for what only IMPN has (its gate
    weights, its soil space); not switched to eval mode.

    Raises:
        VallayzUserError: if a file of the model is missing or corrupt, or the folder holds
            another method (its config is not an IMPN config).
    """
    return IMPN.from_pretrained(run_dir)


def index_dir(run_dir: Path, name: str) -> Path:
    """The folder of the run's saved search index ``name`` (e.g. a target modality).

    Raises:
        VallayzUserError: if ``name`` is not a plain name (a path would leave the run folder).
    """
    check_modality_name(name, "index")
    return run_dir / f"{INDEX_PREFIX}{name}"


def save_index(run_dir: Path, name: str, index: SearchIndex) -> Path:
    """Saves ``index`` into the run folder as ``index-<name>/``; returns that folder."""
    folder = index_dir(run_dir, name)
    index.save(folder)
    return folder


def load_index(run_dir: Path, name: str, kind: str | None = None) -> SearchIndex | None:
    """The run's saved index ``name`` if there is one (of ``kind``, when given), else None.

    An index saved by another version or of another kind is not an error: the caller builds
    a new one.
    """
    folder = index_dir(run_dir, name)
    if not folder.is_dir():
        return None
    try:
        index = SearchIndex.load(folder)
    except (ValueError, ImportError):
        return None
    return index if kind is None or index.kind == kind else None


def model_fingerprint(run_dir: Path) -> str:
    """A hash of the run's final model files: an index saved with another model was embedded
    by another model, and is built again (whatever the files' times and sizes). The JSON
    header of ``model.safetensors`` is hashed with its keys sorted (the writer may order them
    differently for the same tensors), the config and the tensor data byte for byte; ``""``
    when a file cannot be read."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        try:
            with (run_dir / name).open("rb") as handle:
                if name.endswith(".safetensors"):
                    _hash_safetensors_header(handle, digest)
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except (OSError, ValueError):
            return ""
        digest.update(b"\x00" + name.encode() + b"\x00")
    return digest.hexdigest()


def _hash_safetensors_header(handle: Any, digest: Any) -> None:
    """Reads a safetensors file's header (8 bytes of length, then JSON) from ``handle`` and
    adds it to ``digest`` with its keys sorted, leaving ``handle`` at the tensor data.

    Raises:
        ValueError: if the header is not a safetensors header.
    """
    size = int.from_bytes(handle.read(8), "little")
    header = handle.read(size)
    if len(header) != size:
        raise ValueError("truncated safetensors header")
    digest.update(json.dumps(json.loads(header), sort_keys=True).encode())


def candidates_fingerprint(data: PairedEmbeddings, target: str, rows: np.ndarray) -> str:
    """A hash of everything an index of the ``target`` candidates ``rows`` is built from: the
    rows, their embeddings, padding, token and node ids, and their gold keys. A folder rewritten
    with other values (even with as many rows, at the same path) gives another hash."""
    digest = hashlib.sha256()
    rows = np.asarray(rows, dtype=np.int64)
    digest.update(rows.tobytes())
    sources = [data.arrays[target]]
    for found in (data.padding, data.tokens, data.node_ids):
        if target in found:
            sources.append(found[target])
    for source in sources:
        digest.update(f"{source.dtype.str}{source.shape[1:]}".encode())
        for start in range(0, len(rows), 4096):
            digest.update(np.ascontiguousarray(source[rows[start : start + 4096]]).tobytes())
    keys = data.keys(target)
    digest.update("\x1f".join(keys[int(r)] for r in rows).encode())
    return digest.hexdigest()


def candidate_index(
    model: Any,
    run_dir: Path,
    data: PairedEmbeddings,
    target: str,
    rows: np.ndarray,
    kind: str = "exact",
    embed: Callable[[Batch], Tensor] | None = None,
) -> SearchIndex:
    """The search index of ``model``'s shared-space embeddings of the ``target`` candidates
    ``rows`` of ``data``: read from the run folder when it was saved there for the same model,
    candidates (by content) and kind, else built (by embedding the candidates once) and saved there.

    Args:
        model: The run's model.
        run_dir: The run folder (where the index is saved).
        data: The data folder of the candidates.
        target: The candidates' modality.
        rows: The candidate rows of ``data``.
        kind: One of :data:`~vallayz.index.SEARCH_KINDS`.
        embed: How a batch of candidates becomes vectors (default ``model.embed``).

    Raises:
        VallayzUserError: for an unknown kind, or an approximate one without faiss.
    """
    _check_index_kind(kind)
    # Keyed on content, not on paths or counts: a candidates folder rewritten in place, or a
    # model trained again into the run folder, gets a new index.
    meta = {
        "model": model_fingerprint(run_dir),
        "candidates": candidates_fingerprint(data, target, rows),
        "target": target,
        "rows": len(rows),
        "embed": getattr(embed, "__qualname__", "model.embed"),
    }
    name = f"{target}-{kind}"
    index = load_index(run_dir, name, kind)
    if index is not None and index.meta == meta:
        return index
    keys = data.keys(target)
    c = _embed_candidates(embed or model.embed, data, target, rows)
    _, key_ids = keys_to_ids([], [keys[int(r)] for r in rows])
    index = SearchIndex(kind, meta=meta).build(c, key_ids)
    try:
        # Under the run's lock: a run being trained or extended into is not written beside.
        with lock_run(run_dir):
            save_index(run_dir, name, index)
    except (OSError, VallayzUserError) as err:
        notice(f"the index was not saved in {index_dir(run_dir, name)} ({err})")
    return index


def _check_index_kind(kind: str) -> None:
    """Checks that ``kind`` is a search index this installation can build.

    Raises:
        VallayzUserError: for an unknown kind, or an approximate one without faiss.
    """
    if kind not in SEARCH_KINDS:
        raise VallayzUserError(f"--index must be one of {SEARCH_KINDS}, got {kind!r}")
    if kind != "exact":
        try:
            import faiss  # noqa: F401
        except ImportError as err:
            raise VallayzUserError(
                f"--index {kind} is an approximate index, which needs faiss: install it with "
                "pip install 'vallayz[index]' (or use --index exact)"
            ) from err


def _embed_candidates(
    embed: Callable[[Batch], Tensor], data: PairedEmbeddings, target: str, rows: np.ndarray
) -> Tensor:
    """``[len(rows), d]`` vectors of the ``target`` candidates ``rows``, embedded in chunks of
    4096 rows without gradients, on the CPU."""
    with torch.no_grad():
        return torch.cat(
            [
                embed(data.batch(rows[i : i + 4096], [target])).cpu()
                for i in range(0, len(rows), 4096)
            ]
        )
