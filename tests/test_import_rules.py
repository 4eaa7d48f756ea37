"""The rooms' rules, read from the source: which room may import what, and no cycles.

Every import counts, the ones inside functions too: an import moved into a
function to dodge a cycle is still a cycle (../shared/STYLE.md). The rules
are DESIGN.md's: pipelines/ knows torch and diffusers, nothing of the
gallery or the page; storage/ knows SQLAlchemy and files, nothing of torch
or the page; webui/ is the only room that sees both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("pipelines", "storage", "webui")
FORBIDDEN = {
    "pipelines": ("storage", "webui", "gradio", "sqlalchemy", "alembic"),
    "storage": ("torch", "torchvision", "diffusers", "transformers", "gradio", "pipelines", "webui"),
}
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path
        for room in ROOMS
        for path in sorted((ROOT / room).rglob("*.py"))
        if "migrations" not in path.parts
    }


def _imports(name: str, path: Path) -> set[str]:
    """Every module name this file imports, anywhere in it, relative imports made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # `from pipelines import engine` imports the module pipelines.engine.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    graph = {}
    for name, path in sources.items():
        edges = set()
        for imported in _imports(name, path):
            # The longest project module the name points into: `pipelines.engine.Engine` -> pipelines.engine.
            parts = imported.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in sources:
                    if candidate != name and not name.startswith(candidate + "."):
                        edges.add(candidate)  # a package's __init__ is not a cycle with its own modules' import
                    break
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
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
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_project_has_no_import_cycle():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_only_what_it_may(room):
    sources = _sources()
    broken = []
    for name, path in sources.items():
        if name.split(".")[0] != room:
            continue
        for imported in sorted(_imports(name, path)):
            if imported.split(".")[0] in FORBIDDEN[room]:
                broken.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert broken == []


def test_no_module_is_a_house_of_many_rooms():
    long = {
        str(path.relative_to(ROOT)): count
        for path in _sources().values()
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checker_sees_a_cycle_and_a_forbidden_import(tmp_path):
    """The rules above would pass on a checker that finds nothing; this one finds what it must."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from storage import gallery\n    import torch.nn\n")
    assert {"storage", "storage.gallery", "torch.nn"} <= _imports("pipelines.x", source)
