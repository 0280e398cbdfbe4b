"""The package's layering, read from the source (the AST of every module, nothing imported).

- ``data_prep`` (importers and generators) sits above the library: only the command that
  runs it (``flexispeech prepare``) may import it;
- no import cycle between the package's modules, counting imports at module level, inside
  functions and under ``TYPE_CHECKING`` alike: an import moved into a function hides a
  cycle from Python, not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flexispeech"

# The only library module that may import data_prep: the command line's `prepare`.
DATA_PREP_IMPORTERS = {"flexispeech.commands.prepare"}

# Cycles known and being fixed on another branch, as sorted module lists. Delete an entry
# once its fix is merged: the test then keeps the cycle from coming back.
KNOWN_CYCLES: list[list[str]] = []  # none: a new cycle is fixed, not listed


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name that module ``name`` imports anywhere in its file: ``import a.b``
    gives ``a.b``; ``from a import b`` gives ``a.b`` (b may be a submodule) and ``a``;
    relative imports are resolved against the module's package."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name that is not a module counts as
    the longest module prefix of it: ``from flexispeech.x import f`` -> ``flexispeech.x``)."""
    modules = module_files()

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph = {}
    for name, path in modules.items():
        targets = {owner(n) for n in imported_names(name, path)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted:
    every module of one is on an import cycle with the others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_graph_sees_every_kind_of_import() -> None:
    """The graph reads module-level, function-level, relative and TYPE_CHECKING imports."""
    graph = import_graph()
    assert "flexispeech.models.whisper" in graph["flexispeech.models.family"]  # inside load_model
    assert "flexispeech.lora.io" in graph["flexispeech.lora"]  # a package's __init__
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_only_the_prepare_command_imports_data_prep() -> None:
    modules = module_files()
    offenders = sorted(
        name
        for name, path in modules.items()
        if name not in DATA_PREP_IMPORTERS
        and any(n == "data_prep" or n.startswith("data_prep.") for n in imported_names(name, path))
    )
    assert offenders == [], (
        f"library modules importing data_prep (move what they need into flexispeech/): {offenders}"
    )
    assert all(name in modules for name in DATA_PREP_IMPORTERS)


def test_data_prep_imports_no_private_name_of_the_library() -> None:
    """data_prep uses the library's public API: no ``from flexispeech.x import _private``."""
    private = []
    for path in sorted((ROOT / "data_prep").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flexispeech"):
                private += [
                    f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                ]
    assert private == []


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    unknown = [c for c in found if c not in KNOWN_CYCLES]
    assert unknown == [], f"import cycles (move the shared piece down a layer): {unknown}"
