"""The options and argument types the commands share, and the helpers that read and write the
files they name. Imports nothing heavy: the commands import this module when the parser is
built."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vallayz.errors import VallayzUserError
from vallayz_train.names import CLOSED_FORM_METHODS, LEARNED_METHODS


class UsageError(VallayzUserError):
    """A mistake in the command line or the files it names."""


# Characters that would steer a terminal rather than show: C0 and C1 controls (ESC sequences,
# carriage returns, bells, line breaks), DEL, and the bidirectional overrides and marks.
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: object) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``,
    ``\\u202e``), for printing user text (item ids, keys, paths) on a terminal."""
    return _INVISIBLE.sub(lambda found: _escape(found.group()), str(text))


def _escape(char: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def speech_amount_option(text: str) -> int | float:
    """``--speech``: a count of rows or a fraction of them (argparse type)."""
    from vallayz_train.tibetan.encoders.speech import speech_amount

    try:
        return speech_amount(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(text: str) -> int:
    """A whole number >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def load_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise UsageError(
            f"{path} must hold a JSON object with optional 'model' and 'train' objects"
        )
    return data


# The key that marks a JSON file written by vallayz, which it may replace without --force.
WRITTEN_BY = "written_by"


def check_output(path: Path, force: bool, ours: bool) -> None:
    """Refuses to replace an existing file that vallayz did not write (``ours`` says whether
    it did), unless ``force``."""
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; name a file")
    if path.exists() and not ours and not force:
        raise UsageError(
            f"--output {path} exists and was not written by vallayz; choose another file or "
            "pass --force to replace it"
        )
    if not path.parent.is_dir():
        raise UsageError(f"the folder of --output {path} does not exist; create it first")


def written_by_vallayz(path: Path) -> bool:
    """Whether ``path`` is a JSON file that vallayz wrote (it carries :data:`WRITTEN_BY`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and str(data.get(WRITTEN_BY, "")).startswith("vallayz")


def replace_atomically(path: Path, write: Any) -> None:
    """Calls ``write(handle)`` on a temporary file beside ``path``, then renames it onto
    ``path``: a failure leaves the old file as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as err:
        # Named after the output the user chose, not the temporary file beside it.
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def check_positive(value: int, option: str) -> None:
    if value < 1:
        raise UsageError(f"{option} must be a positive integer, got {value}")


def check_pool(value: int, option: str = "--pool") -> None:
    if value < 2:
        raise UsageError(
            f"{option} must be at least 2, got {value}: a pool of one candidate holds only the "
            "true partner, so every query would score R@1 1.0"
        )


def read_array(path: str, dim: int, option: str = "--input") -> np.ndarray:
    """The float32 ``[N, dim]`` or ``[N, T, dim]`` array of a query file, checked row by row."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UsageError(
            f"cannot read {option} {path} as a .npy array ({err}); write it with numpy.save"
        ) from err
    if array.dtype.kind not in "fiu":
        raise UsageError(f"{option} {path} has dtype {array.dtype}; save real float32 values")
    if array.ndim not in (2, 3) or array.shape[-1] != dim or 0 in array.shape[1:]:
        raise UsageError(
            f"{option} {path} has shape {array.shape}; expected [rows, {dim}] or "
            f"[rows, nodes, {dim}] for this modality"
        )
    with np.errstate(over="ignore"):
        values = array.astype(np.float32)
    if len(values) == 0:
        return values
    bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if bad.any():
        raise UsageError(
            f"{option} {path}: row {int(np.flatnonzero(bad)[0])} holds NaN, Inf or a value "
            "beyond float32's range; repair or drop it"
        )
    return values


def parse_pair(text: str) -> tuple[tuple[str, ...], str]:
    """``"a+b->c"`` → ``(("a", "b"), "c")``."""
    if "->" not in text:
        raise UsageError(f"pair {text!r} must look like source->target or a+b->target")
    sources, target = text.split("->", 1)
    return tuple(s for s in sources.split("+") if s), target


def key_value(text: str) -> tuple[str, Any]:
    """``--model``/``--train``: one ``key=value`` override (argparse type). The value is read
    as JSON when it parses (``3``, ``1e-3``, ``true``, ``[1, 2]``, ``{"bo": 65536}``), else
    taken as a string (``update=gru``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"expected key=value (e.g. soil_dim=256 or lr=3e-4), got {text!r}"
        )
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def override_options(p: argparse.ArgumentParser) -> None:
    """``--model key=value`` and ``--train key=value``: fields of the model and training
    configs set on the command line, over the ``--config`` file."""
    p.add_argument(
        "--model",
        dest="model_overrides",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="a model config field, e.g. --model soil_dim=256 --model update=gru (repeatable; "
        "over the --config file; JSON values)",
    )
    p.add_argument(
        "--train",
        dest="train_overrides",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="a training config field, e.g. --train warmup_steps=50 (repeatable; over the "
        "--config file, under the named options such as --lr; JSON values)",
    )


def check_model_keys(model: Mapping[str, Any], option: str = "--model") -> None:
    """Refuses a model field that no method's config has, naming the closest field; the
    values are checked where the method's config is built (before any data is).

    Raises:
        UsageError: naming the unknown field.
    """
    import difflib
    from dataclasses import fields

    from vallayz.config import IMPNConfig
    from vallayz.learned import BaselineConfig

    known = {f.name for c in (IMPNConfig, BaselineConfig) for f in fields(c)}
    for key in model:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"fields: {sorted(known)}"
            raise UsageError(f"{option} {key}: no model config has this field; {hint}")


def train_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The model overrides and the training config of a command: its own ``defaults``, then
    the ``--config`` file, then ``--model``/``--train key=value``, then the named options
    (``--max-steps``, ``--epochs``, ...), each taking precedence over the ones before.

    Raises:
        UsageError: for a malformed file, an unknown field or a value of the wrong type,
            naming where it came from.
    """
    from vallayz_train.config import TrainConfig

    file = load_json(args.config) if args.config else {}
    unknown = set(file) - {"model", "train"}
    if unknown:
        raise UsageError(
            f"{args.config}: unknown section(s) {sorted(unknown)}; use 'model' and 'train'"
        )
    for section in ("model", "train"):
        if not isinstance(file.get(section, {}), dict):
            raise UsageError(
                f"{args.config}: {section!r} must be a JSON object of fields, not "
                f"{type(file[section]).__name__}"
            )
    if file.get("model"):
        check_model_keys(file["model"], f"{args.config}: model field")
    given_model = dict(getattr(args, "model_overrides", None) or [])
    given_train = dict(getattr(args, "train_overrides", None) or [])
    check_model_keys(given_model)
    model = {**file.get("model", {}), **given_model} if file.get("model") or given_model else None
    train = {**(defaults or {}), **file.get("train", {}), **given_train}
    for key in ("max_steps", "epochs", "batch_size", "lr", "front_end_lr", "device", "seed"):
        if getattr(args, key, None) is not None:
            train[key] = getattr(args, key)
    if getattr(args, "planner", None) is not None:
        train["planner"] = args.planner == "on"
    try:
        return model, TrainConfig.from_dict(train)
    except VallayzUserError as err:
        where = [w for w, given in ((args.config, args.config), ("--train", given_train)) if given]
        raise UsageError(f"{' / '.join(map(str, where))}: {err}" if where else str(err)) from err


def rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rerank",
        type=int,
        default=0,
        metavar="N",
        help="re-score the N best first-stage candidates with a second-stage re-ranker (one "
        "joint pass each) and keep the k best of them; 0: no re-ranking",
    )
    p.add_argument(
        "--reranker",
        metavar="DIR",
        help="folder of the re-ranker (reranker.json + reranker.safetensors; default RUN/reranker)",
    )


def training_options(p: argparse.ArgumentParser, front_end_default: str) -> None:
    """The options that override the training config file: budget, learning rates, seed,
    device."""
    p.add_argument("--config", help="JSON file with optional 'model' and 'train' objects")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument(
        "--front-end-lr",
        dest="front_end_lr",
        type=float,
        help=f"peak learning rate of the hashed n-gram tables {front_end_default}",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"])
    override_options(p)


def closed_form_option(b: argparse.ArgumentParser, default: Sequence[str], note: str) -> None:
    """``--closed-form``: the closed-form maps a benchmark fits (``note`` says its default)."""
    b.add_argument(
        "--closed-form",
        dest="closed_form",
        nargs="+",
        choices=list(CLOSED_FORM_METHODS),
        default=list(default),
        help=f"closed-form maps to fit ({note})",
    )


def methods_option(b: argparse.ArgumentParser, default: Sequence[str]) -> None:
    """``--methods``: the learned methods a benchmark trains and evaluates."""
    b.add_argument(
        "--methods",
        nargs="+",
        choices=list(LEARNED_METHODS),
        default=list(default),
        help="learned methods to train and evaluate (default: every one); runs already in "
        "--out are reused, so a benchmark can be completed method by method",
    )


# The fields of a data set's benchmark settings that the shared benchmark options
# (bench_options) set, each the dest of its option.
SHARED_SETTINGS = ("pool", "pools", "seed_eval", "matched_dropout")


def bench_defaults(settings: Any) -> dict[str, Any]:
    """The defaults a data set's benchmark settings give the shared benchmark options.

    Args:
        settings: The data set's settings (a dataclass instance).

    Returns:
        Its fields among :data:`SHARED_SETTINGS`, by name, for ``set_defaults``.
    """
    names = {f.name for f in dataclasses.fields(settings)} & set(SHARED_SETTINGS)
    return {name: getattr(settings, name) for name in sorted(names)}


def bench_options(b: argparse.ArgumentParser) -> None:
    training_options(
        b, "(default: --lr; bench tibetan: its own measured default, see BENCHMARKS.md)"
    )
    # Their defaults are each benchmark's own (set_defaults from its settings, or BenchSpec's
    # for bench data): one spelling per default.
    b.add_argument("--pool", type=int)
    b.add_argument("--pools", type=int)
    b.add_argument("--seed-eval", dest="seed_eval", type=int, help="seed of the pools")
    b.add_argument(
        "--matched-dropout",
        dest="matched_dropout",
        action="store_true",
        help="also train every learned method (baselines included) once per missing rate of "
        "the sweep, with that modality dropout, and report those runs in the sweep",
    )
    b.add_argument("--quiet", action="store_true")
