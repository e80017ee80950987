"""Every command printed in BENCHMARKS.md parses with today's command line and scripts.

Nothing is run: ``vallayz`` lines go through the real argument parser, ``python scripts/…`` and
``python benchmarks/…`` lines run their script up to its argument parser and stop there,
``python -c`` lines import what they name and bind every call to the real signature, and
``make`` lines must name a Makefile target. Ablation variants named with ``--only`` must exist
in the registry, and config files a command reads must be in the repository and load.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import runpy
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_readme import exact_flags, shell_lines

from vallayz import IMPNConfig
from vallayz_train.cli import build_parser
from vallayz_train.options import train_args
from vallayz_train.tibetan.ablations import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
# Config files a section names that are not in the repository; the section must say so.
MISSING_CONFIGS = {"no-planner.json"}


class ArgumentsParsedError(Exception):
    """Raised in place of running a script once its arguments are parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def parse_script(
    path: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> argparse.Namespace:
    """The namespace the script's own parser makes of ``argv`` (abbreviations off); the script
    stops there."""
    original = argparse.ArgumentParser.parse_args

    def parse(self: Any, args: Any = None, namespace: Any = None) -> Any:
        raise ArgumentsParsedError(original(exact_flags(self), args, namespace))

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse)
        patch.setattr(sys, "argv", [str(path), *argv])
        try:
            runpy.run_path(str(path), run_name="__main__")
        except ArgumentsParsedError as parsed:
            return parsed.namespace
    raise AssertionError(f"{path.name} finished without parsing its arguments")


def dry_run_python(code: str) -> list[str]:
    """Runs ``code`` with each project function it imports replaced by a stand-in that only
    binds the call's arguments to the real signature; returns the functions called."""
    tree = ast.parse(code)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    namespace: dict[str, Any] = {}
    exec(compile(ast.Module(body=imports, type_ignores=[]), "<doc>", "exec"), namespace)
    called: list[str] = []

    def stand_in(name: str, function: Callable[..., Any]) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            inspect.signature(function).bind(*args, **kwargs)
            called.append(name)

        return call

    for name, value in list(namespace.items()):
        if inspect.isfunction(value) and value.__module__.startswith("vallayz"):
            namespace[name] = stand_in(name, value)
    rest = [node for node in tree.body if node not in imports]
    exec(compile(ast.Module(body=rest, type_ignores=[]), "<doc>", "exec"), namespace)
    return called


def check_command(line: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Checks one command line of BENCHMARKS.md; returns what kind of command it is. Raises
    ``AssertionError`` or ``SystemExit`` (argparse) when it would not run as written."""
    tokens = shlex.split(line)
    while tokens and (re.fullmatch(r"[A-Z_]+=\S*", tokens[0]) or tokens[0] == "time"):
        tokens = tokens[1:]
    program, argv = tokens[0], tokens[1:]
    if program == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
        assert set(argv) <= targets, f"no Makefile target {set(argv) - targets}"
        return "make"
    if program == "python" and argv[0] == "-c":
        assert dry_run_python(argv[1]), f"the code calls no project function: {argv[1]}"
        return "python -c"
    if program == "vallayz":
        args, kind = exact_flags(build_parser()).parse_args(argv), "vallayz"
    elif program == "python" and argv[0].split("/")[0] in ("scripts", "benchmarks"):
        script = ROOT / argv[0]
        assert script.is_file(), f"{argv[0]} is not in the repository"
        args, kind = parse_script(script, argv[1:], monkeypatch), argv[0]
    else:
        raise AssertionError(f"not a command this test knows how to check: {line}")
    if getattr(args, "command", None) == "ablate" and args.only:
        unknown = [name for name in args.only if name not in VARIANTS]
        assert not unknown, f"no ablation variant named {unknown} (see vallayz ablate --list)"
    if getattr(args, "config", None):
        if args.config in MISSING_CONFIGS:
            said = f"`{args.config}` is not in the repository" in BENCHMARKS.read_text()
            assert said, f"BENCHMARKS.md must say that {args.config} is not in the repository"
        else:
            assert (ROOT / args.config).is_file(), f"{args.config} is not in the repository"
            model, _ = train_args(args)  # the train section loads as a TrainConfig
            IMPNConfig(modalities={"a": 4, "b": 4}, **(model or {}))
    return kind


def benchmark_commands() -> list[str]:
    """The command lines of BENCHMARKS.md's bash blocks, whole-line comments left out."""
    return [line for line in shell_lines(BENCHMARKS.read_text()) if not line.startswith("#")]


def test_benchmarks_doc_commands_run_as_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds: dict[str, int] = {}
    for line in benchmark_commands():
        try:
            kind = check_command(line, monkeypatch)
        except (AssertionError, SystemExit, TypeError) as error:
            pytest.fail(f"BENCHMARKS.md command does not parse: {line}\n({error!r})")
        kinds[kind] = kinds.get(kind, 0) + 1
    # The document's command kinds are all reached, so the checks above are not vacuous.
    assert {"vallayz", "python -c", "scripts/ablate_encoder.py"} <= set(kinds), kinds
    ablations = [line for line in benchmark_commands() if line.startswith("vallayz ablate")]
    assert len(ablations) >= 10


def test_benchmarks_doc_uses_vallayz_ablate_not_its_wrapper() -> None:
    lines = [line for line in benchmark_commands() if "scripts/ablate_impn.py" in line]
    assert not lines, "write `vallayz ablate ...`; scripts/ablate_impn.py only passes it on"


@pytest.mark.parametrize(
    "line",
    [
        "vallayz ablate d --out o --only default 'no such variant'",
        "vallayz ablate d --out o --step 100",  # an abbreviation of --steps
        "vallayz bench tibetan --out o --no-such-flag",
        "python scripts/ablate_encoder.py d --source bo --target en --kinds linear nothing",
        "python scripts/no_such_script.py",
        'python -c "from vallayz_train.tibetan.data import build_data; build_data(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)"',  # noqa: E501
        "vallayz fit d --out o --config benchmarks/configs/no-such-file.json",
        "make no-such-target",
        "for s in 1 2; do",
    ],
)
def test_the_check_rejects_what_would_not_run(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises((AssertionError, SystemExit, TypeError)):
        check_command(line, monkeypatch)
