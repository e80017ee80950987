"""The library (``vallayz``) never imports the trainer or the command line (``vallayz_train``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "src" / "vallayz"


def test_importing_every_library_module_loads_no_trainer_module() -> None:
    script = """
import importlib, pkgutil, sys
import vallayz
names = [m.name for m in pkgutil.walk_packages(vallayz.__path__, "vallayz.")]
for name in names:
    if name != "vallayz.__main__":  # a program, not a module: it runs the command line
        importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "vallayz_train")
print(len(names), loaded)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) > 10 and loaded.strip() == "[]", done.stdout


def test_no_library_source_names_the_trainer_in_an_import() -> None:
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "vallayz_train"]
    assert offenders == []


def test_python_dash_m_vallayz_hands_over_to_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vallayz", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "usage: vallayz" in done.stdout
