"""The package's layout: nothing imports the entry module, no import cycles, the entry module is wiring;
the folders import only what docs/architecture.md allows; small modules and classes; pytest's private
internals in one module; the import paths the docs show work.

Imports are read from the source (``ast``): those at module level, inside functions, and under
``if TYPE_CHECKING:`` all count, since each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import pytest_evals

PACKAGE = Path(pytest_evals.__file__).parent
ROOT = PACKAGE.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# what users import or run, and the two leaves every folder may use
TOP = {"__init__", "plugin", "cli", "data", "metrics", "judging", "sandbox", "lmeval", "tools", "errors", "specs",
       "_pytest_internals"}
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that ``module`` imports, anywhere in its source."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from .pkg import mod` imports the module pkg.mod
                submodule = f"{target}.{alias.name}"
                targets.add(submodule if submodule in known else target)
    return {t for t in targets if t in known and t != module}


def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_the_entry_module() -> None:
    graph = import_graph(PACKAGE)
    assert "pytest_evals.plugin" in graph
    importers = sorted(name for name, targets in graph.items() if "pytest_evals.plugin" in targets)
    assert importers == []


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_the_checks_see_cycles_imports_in_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    """The two checks above would fail on a package that has what they look for."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    (package / "d.py").write_text("import pkg.plugin\n")
    (package / "plugin.py").write_text("")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert "pkg.plugin" in graph["pkg.d"]


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)


def test_the_entry_module_is_wiring() -> None:
    source = (PACKAGE / "plugin.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 200
    configure = _function(ast.parse(source), "pytest_configure")
    assert configure.end_lineno is not None and configure.end_lineno - configure.lineno + 1 < 40


@pytest.mark.parametrize("module", ["scoring/gates", "calls/metering", "calls/reliability", "calls/routing",
                                    "backends/specs", "calls/pool", "calls/model"])
def test_domain_modules_raise_their_own_errors(module: str) -> None:
    """Only options.py (and the plugin modules using its helper) turn a domain error into a usage error."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert "UsageError" not in names


# --- the folders ----------------------------------------------------------------------------------------
def unit(module: str, root: str) -> str:
    """What a module belongs to for the folder rule: its top folder under the package, else itself."""
    parts = module.split(".")[1:]
    if not parts:
        return root  # the package's __init__
    return parts[0]


def folder_imports(package: Path) -> dict[str, set[str]]:
    """Folder -> the other folders and top-level modules its modules import."""
    root = package.name
    folders = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found: dict[str, set[str]] = {}
    for module, targets in import_graph(package).items():
        source = unit(module, root)
        if source not in folders:
            continue
        for target in targets:
            other = unit(target, root)
            if other != source:
                found.setdefault(source, set()).add(other)
    return found


def allowed_imports(document: Path) -> dict[str, set[str]]:
    """The table under "Which may import which": folder -> what it may import."""
    text = document.read_text(encoding="utf-8")
    section = text.split("## Which may import which", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and line.startswith("|") and cells[0] not in ("folder", "---"):
            table[cells[0]] = {c.strip() for c in cells[1].split(",") if c.strip()}
    return table


def rule_breaks(package: Path, allowed: dict[str, set[str]]) -> list[str]:
    breaks = [f"{folder} is not in the table" for folder in folder_imports(package) if folder not in allowed]
    for folder, imported in sorted(folder_imports(package).items()):
        extra = imported - allowed.get(folder, set())
        breaks += [f"{folder} imports {name}" for name in sorted(extra)]
    return breaks


def test_every_folder_imports_only_what_the_architecture_allows() -> None:
    allowed = allowed_imports(ARCHITECTURE)
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(allowed) == folders  # every folder has its row, and every row a folder
    assert rule_breaks(PACKAGE, allowed) == []


def test_no_folder_imports_a_folder_that_imports_it_back() -> None:
    graph = {folder: targets for folder, targets in folder_imports(PACKAGE).items()}
    graph.update({t: set() for targets in list(graph.values()) for t in targets if t not in graph})
    assert cycles(graph) == []


def test_the_folder_rule_sees_a_folder_that_imports_what_it_may_not(tmp_path: Path) -> None:
    """The checks above would fail on a package that breaks the rule."""
    package = tmp_path / "pkg"
    for folder in ("low", "high"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from ..high import b\n")
    (package / "high" / "b.py").write_text("from ..low.a import f\n")
    assert rule_breaks(package, {"low": set(), "high": {"low"}}) == ["low imports high"]
    assert cycles(folder_imports(package)) == [["high", "low"]]


def test_the_top_holds_what_users_import_or_run() -> None:
    assert {p.stem for p in PACKAGE.glob("*.py")} == TOP


def test_no_module_is_a_hub() -> None:
    """No module over MAX_MODULE_LINES lines, no class over MAX_CLASS_LINES."""
    big = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        name = str(path.relative_to(PACKAGE))
        if len(source.splitlines()) > MAX_MODULE_LINES:
            big.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                big.append(f"{name}: class {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert big == []


# the private attributes of pytest and xdist objects the plugin uses, and _pytest imports
PRIVATE = {"_setupstate", "cached_result", "_finalizers", "_fixture_defs", "_fixtureinfo", "_initrequest",
           "_request", "_report_sections", "_arg2scope", "_tw", "currentfspath", "torun", "item_index",
           "nextitem_index", "maxschedchunk", "numprocesses"}


def private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            found.append(node.attr)
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "_pytest":
            found.append(node.module or "")
        elif isinstance(node, ast.Constant) and node.value in PRIVATE:  # getattr(x, "_request")
            found.append(str(node.value))
    return found


def test_private_pytest_and_xdist_internals_are_used_in_one_module() -> None:
    users = {str(p.relative_to(PACKAGE)): private_uses(p) for p in PACKAGE.rglob("*.py")}
    assert {name for name, uses in users.items() if uses} == {"_pytest_internals.py"}
    # and that module lists each one it uses in its docstring
    doc = ast.get_docstring(ast.parse((PACKAGE / "_pytest_internals.py").read_text(encoding="utf-8"))) or ""
    assert [name for name in set(users["_pytest_internals.py"]) if name.lstrip("_").split(".")[-1] not in doc] == []


# --- the documented import paths ---------------------------------------------------------------------
def documented_imports() -> set[tuple[str, str]]:
    """(module, name) of every ``from pytest_evals... import ...`` in the README and docs/."""
    found = set()
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for module, names in re.findall(r"from (pytest_evals[\w.]*) import ([\w, ]+)", document.read_text()):
            found.update((module, name.strip()) for name in names.split(",") if name.strip())
    return found


def test_the_import_paths_the_docs_show_work() -> None:
    imports = documented_imports()
    assert ("pytest_evals", "load_jsonl") in imports and ("pytest_evals.backends.base", "Backend") in imports
    # and the paths earlier versions documented, which plugins and suites were written against
    imports |= {("pytest_evals.specs", "SpecError"), ("pytest_evals.specs", "ModelSpec"),
                ("pytest_evals", "metrics"), ("pytest_evals.lmeval", "load_task"),
                ("pytest_evals.judging", "rubric_prompt"), ("pytest_evals.sandbox", "run_python")}
    missing = [f"{module}.{name}" for module, name in sorted(imports)
               if not hasattr(importlib.import_module(module), name)
               and importlib.util.find_spec(f"{module}.{name}") is None]
    assert missing == []
