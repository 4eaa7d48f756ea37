"""storage/ imports no torch, diffusers, Gradio, pipelines/ or webui/, and its modules form no import cycle.

Read from the source with `ast`, imports inside functions included, so an
import moved into a function to dodge a cycle still counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"torch", "diffusers", "gradio", "pipelines", "webui"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "storage").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module `name` imports: a storage module where the import names one, else the top-level package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from storage import queue` imports the module storage.queue, not only the package.
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known.keys()
            imported.update(submodules or {base})
    return {module if module in known else module.split(".")[0] for module in imported}


def test_storage_imports_no_model_or_ui_code() -> None:
    known = _modules()
    offending = {
        name: sorted(_imports(name, path, known) & FORBIDDEN)
        for name, path in known.items()
        if _imports(name, path, known) & FORBIDDEN
    }

    assert offending == {}


def test_storage_has_no_import_cycle() -> None:
    known = _modules()
    graph = {name: sorted(_imports(name, path, known) & known.keys() - {name}) for name, path in known.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = trail[trail.index(name) :] + [name]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, [*trail, name])
        done.add(name)

    for name in graph:
        visit(name, [])
    assert "storage.gallery.service" in graph["storage.gallery"]  # the walk saw the package's own modules
