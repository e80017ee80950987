"""The library (``vallayz``) never imports the trainer or the command line (``vallayz_train``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Collection
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


SOURCE = LIBRARY.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(
    node: ast.Import | ast.ImportFrom, here: str, is_package: bool, modules: Collection[str]
) -> set[str]:
    """The modules of ``modules`` an import statement names: ``import a.b`` names ``a.b``;
    ``from a import b`` names ``a.b`` where ``b`` is a module, else ``a``."""
    if isinstance(node, ast.Import):
        named = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = here.split(".") if is_package else here.split(".")[:-1]
            anchor = package[: len(package) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        named = {
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        }
    return named & set(modules)


def import_graph(package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports anywhere in its source (in functions and
    under ``if TYPE_CHECKING:`` too). Importing a submodule is an arrow to that submodule
    alone, not to the packages above it."""
    paths = {_module_name(p): p for p in (SOURCE / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= _imported(node, name, is_package, paths)
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as its modules in order (the first repeated at the end), or
    ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_find_cycle_reports_the_modules_of_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_relative_function_level_and_type_checking_imports() -> None:
    graph = import_graph("vallayz")
    assert "vallayz.model" in graph["vallayz.learned"]
    assert "vallayz.index" in graph["vallayz.eval.pairs"]  # in a function and TYPE_CHECKING
    assert "vallayz.impn_loss" in graph["vallayz.losses"]  # the lazy module __getattr__


def test_neither_package_has_an_import_cycle() -> None:
    for package in ("vallayz", "vallayz_train"):
        cycle = find_cycle(import_graph(package))
        assert cycle == [], f"import cycle in {package}: {' -> '.join(cycle)}"


def data_set_packages() -> set[str]:
    """The data-set packages of the trainer: each holds the ``command.py`` of its benchmark."""
    return {path.parent.name for path in (SOURCE / "vallayz_train").glob("*/command.py")}


def cross_data_set_imports(graph: dict[str, set[str]], packages: Collection[str]) -> list[str]:
    """The arrows of ``graph`` (the trainer's import graph) from a module of one data-set
    package to a module of another, as ``"importer -> imported"``."""

    def package_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in packages else None

    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if package_of(module) and package_of(target) not in (None, package_of(module))
    )


def test_cross_data_set_imports_finds_an_import_of_another_data_set() -> None:
    graph = {
        "vallayz_train.digits.bench": {"vallayz_train.tibetan.constants", "vallayz_train.bench"},
        "vallayz_train.tibetan.bench": {"vallayz_train.tibetan.data"},
        "vallayz_train.commands.bench": {"vallayz_train.digits.command"},
    }
    packages = {"tibetan", "digits"}
    assert cross_data_set_imports(graph, packages) == [
        "vallayz_train.digits.bench -> vallayz_train.tibetan.constants"
    ]


def test_no_data_set_package_imports_another() -> None:
    """What several data sets use lives outside them (``vallayz_train.encoders``, the shared
    corpus reader and model defaults), so each data set can change on its own."""
    packages = data_set_packages()
    assert {"tibetan", "digits", "emoji", "stitch"} <= packages
    assert cross_data_set_imports(import_graph("vallayz_train"), packages) == []
