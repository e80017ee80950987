from __future__ import annotations

import argparse
import itertools
import re
import shlex
from pathlib import Path

import pytest

from vallayz_train.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Stand-ins for the README's placeholders.
PLACEHOLDERS = {"N": "2", "PATH": "corpus.tsv"}


def test_readme_python_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should hold a Python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "runs" / "quickstart" / "model.safetensors").is_file()


def shell_lines(text: str) -> list[str]:
    """Lines of the ```bash blocks, continuations joined and comments removed."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def expand(tokens: list[str]) -> list[list[str]]:
    """Argument lists a usage line stands for: the line without its ``[optional]`` groups, then
    with each alternative of each group (``[--a N | --b]``) and each choice (``x|y``) in turn."""
    base: list[str] = []
    groups: list[list[list[str]]] = []
    current: list[str] | None = None
    for token in tokens:
        if current is None and token.startswith("["):
            current, token = [], token[1:]
        if current is None:
            base.append(token)
            continue
        closed = token.endswith("]")
        current.append(token.rstrip("]"))
        if closed:
            words = " ".join(current).split(" | ")
            groups.append([w.split() for w in words])
            current = None
    assert current is None, f"unclosed [ in {tokens}"

    def choices(words: list[str]) -> list[list[str]]:
        options = [PLACEHOLDERS.get(w, w).split("|") for w in words]
        return [list(pick) for pick in itertools.product(*options)]

    out = choices(base)
    for group in groups:
        for alternative in group:
            out += [out[0] + extra for extra in choices(alternative)]
    return out


def readme_commands() -> list[list[str]]:
    commands = []
    for line in shell_lines(README.read_text()):
        tokens = shlex.split(line)
        if tokens[0] == "vallayz":
            commands += [argv[1:] for argv in expand(tokens)]
    return commands


def test_expand_reads_usage_lines_as_documented() -> None:
    tokens = shlex.split("vallayz fit d/ [--pairs N | --full] [--device cpu|cuda]")
    assert expand(tokens) == [
        ["vallayz", "fit", "d/"],
        ["vallayz", "fit", "d/", "--pairs", "2"],
        ["vallayz", "fit", "d/", "--full"],
        ["vallayz", "fit", "d/", "--device", "cpu"],
        ["vallayz", "fit", "d/", "--device", "cuda"],
    ]


def exact_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its subparsers with abbreviations off, so a flag the README shows must
    exist as written, not only as the prefix of a longer one."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                exact_flags(sub)
    return parser


def test_readme_commands_parse_with_the_real_command_line() -> None:
    # Every subcommand, flag and choice the README shows must exist: argparse exits on any other.
    commands = readme_commands()
    assert {argv[0] for argv in commands} >= {"check", "fit", "eval", "bench", "translate-text"}
    parser = exact_flags(build_parser())
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as exit:
            pytest.fail(f"README command does not parse: vallayz {shlex.join(argv)} ({exit})")


def test_readme_make_targets_exist() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    used = {line.split()[1] for line in shell_lines(README.read_text()) if line.startswith("make ")}
    assert used >= {"test", "demo"}
    assert used <= targets, used - targets
    assert "make test" in (ROOT / ".ci" / "run").read_text()
