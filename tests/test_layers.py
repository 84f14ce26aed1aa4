"""The folders of ``flashlight/`` are layers; their imports must say so.

Every module is parsed (not imported) and its imports collected, those inside functions included:

* ``ir/`` imports no torch, no triton and nothing of flashlight outside ``ir/``;
* ``passes/`` imports only ``flashlight.ir``, ``flashlight.passes``, the standard library, islpy,
  sympy and numpy;
* ``codegen/`` imports nothing of ``flashlight.passes`` (it reads the IR the passes made);
* ``frontend/`` imports nothing of ``flashlight.passes`` or ``flashlight.codegen``;
* no import cycle among flashlight's modules. An import inside a function that closes a cycle
  is allowed only where :data:`LAZY_CYCLE_EDGES` names it and says why.

``from package import name`` is an import of the submodule ``package.name`` where there is
one, else of ``package`` itself; importing a submodule is not counted as importing its parent
packages (Python runs their ``__init__`` first, but a package that imports its own submodules
is no cycle).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "flashlight"

# Imports inside functions that close a cycle, with the reason each is needed. The IR's data
# types print themselves and view themselves through isl by delegating to modules that build on
# those types; the import happens when a program is printed, once every module is loaded.
LAZY_CYCLE_EDGES = {
    ("flashlight.ir.expr", "flashlight.ir.printer"): "Expr.__str__ uses the printer, which reads Expr",
    ("flashlight.ir.nodes", "flashlight.ir.printer"): "Program.__str__ uses the printer, which reads Program",
    ("flashlight.ir.nodes", "flashlight.ir.poly"): "Program.polyhedral builds the isl view, which reads Program",
}

PASSES_MAY_IMPORT = {"islpy", "sympy", "numpy"}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    imported: str  # module name (a flashlight submodule, a package, or a third-party module)
    line: int
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in the module ``name`` (at ``path``), with whether it runs inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            out.extend(Import(name, a.name, node.lineno, in_function) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, name, path.name == "__init__.py")
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(name, sub if sub in known else base, node.lineno, in_function))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return out


def all_imports(root: Path = ROOT) -> list[Import]:
    mods = modules(root)
    return [i for name, path in mods.items() for i in imports_of(name, path, set(mods))]


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(imports: list[Import], layer: str, forbidden: Callable[[str], bool]) -> list[str]:
    """``importer:line imports imported`` for each import of a module of ``layer`` that ``forbidden`` names."""
    return sorted(f"{i.importer}:{i.line} imports {i.imported}" for i in imports
                  if _in(i.importer, layer) and forbidden(i.imported))


def ir_forbidden(m: str) -> bool:
    top = m.split(".")[0]
    return top in ("torch", "triton") or (top == "flashlight" and not _in(m, "flashlight.ir"))


def passes_forbidden(m: str) -> bool:
    top = m.split(".")[0]
    if top == "flashlight":
        return not (_in(m, "flashlight.ir") or _in(m, "flashlight.passes"))
    return top not in sys.stdlib_module_names and top not in PASSES_MAY_IMPORT and top != "__future__"


def codegen_forbidden(m: str) -> bool:
    return _in(m, "flashlight.passes")


def frontend_forbidden(m: str) -> bool:
    return _in(m, "flashlight.passes") or _in(m, "flashlight.codegen")


def cycles(imports: list[Import], allowed: set[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """The import cycles among flashlight's modules (each a strongly connected component of more
    than one module, or a module that imports itself), without the ``allowed`` edges."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if _in(i.imported, "flashlight") and (i.importer, i.imported) not in allowed:
            graph.setdefault(i.importer, set()).add(i.imported)
            graph.setdefault(i.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 or v in graph[v]:
                found.append(sorted(scc))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                strongconnect(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


# {{{ the layers of flashlight

IMPORTS = all_imports()


def test_every_module_is_parsed():
    assert {"flashlight.api", "flashlight.ir.nodes", "flashlight.frontend.lift", "flashlight.passes.tile",
            "flashlight.codegen.triton"} <= set(modules(ROOT))


def test_ir_imports_neither_torch_nor_triton_nor_other_layers():
    assert violations(IMPORTS, "flashlight.ir", ir_forbidden) == []


def test_passes_import_only_the_ir_and_the_standard_library():
    assert violations(IMPORTS, "flashlight.passes", passes_forbidden) == []


def test_codegen_imports_no_pass():
    assert violations(IMPORTS, "flashlight.codegen", codegen_forbidden) == []


def test_frontend_imports_neither_passes_nor_codegen():
    assert violations(IMPORTS, "flashlight.frontend", frontend_forbidden) == []


def test_no_import_cycle_at_module_level():
    assert cycles([i for i in IMPORTS if not i.in_function]) == []


def test_no_import_cycle_but_the_justified_lazy_ones():
    lazy = {(i.importer, i.imported) for i in IMPORTS if i.in_function}
    module_level = {(i.importer, i.imported) for i in IMPORTS if not i.in_function}
    assert not set(LAZY_CYCLE_EDGES) & module_level, "an allowed edge is imported at module level"
    assert set(LAZY_CYCLE_EDGES) <= lazy, "an allowed edge no longer exists: remove it from the list"
    assert cycles(IMPORTS, set(LAZY_CYCLE_EDGES)) == []

# }}}


# {{{ the checks themselves catch violations

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "flashlight"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


def test_the_checks_catch_violations(tmp_path):
    root = _package(tmp_path, {
        "ir/nodes.py": "import torch\nfrom flashlight.frontend import lift\n",
        "ir/expr.py": "def f():\n    import triton\n",
        "passes/tile.py": "import torch\nfrom flashlight.codegen import triton\nimport islpy, os\n",
        "codegen/triton.py": "from ..passes import tile\n",
        "frontend/lift.py": "from flashlight.codegen.triton import generate\nfrom flashlight.ir import nodes\n",
    })
    imports = all_imports(root)
    assert violations(imports, "flashlight.ir", ir_forbidden) == [
        "flashlight.ir.expr:2 imports triton", "flashlight.ir.nodes:1 imports torch",
        "flashlight.ir.nodes:2 imports flashlight.frontend.lift"]
    assert violations(imports, "flashlight.passes", passes_forbidden) == [
        "flashlight.passes.tile:1 imports torch", "flashlight.passes.tile:2 imports flashlight.codegen.triton"]
    assert violations(imports, "flashlight.codegen", codegen_forbidden) == [
        "flashlight.codegen.triton:1 imports flashlight.passes.tile"]
    assert violations(imports, "flashlight.frontend", frontend_forbidden) == [
        "flashlight.frontend.lift:1 imports flashlight.codegen.triton"]


def test_the_cycle_check_catches_cycles(tmp_path):
    root = _package(tmp_path, {
        "a.py": "from flashlight import b\n",
        "b.py": "def f():\n    from flashlight.a import x\n",
        "c.py": "import flashlight.c\n",
        "d/__init__.py": "from flashlight.d import e\n",
        "d/e.py": "from . import f\n",
        "d/f.py": "from flashlight.d.e import g\n",
    })
    imports = all_imports(root)
    self_import, siblings = ["flashlight.c"], ["flashlight.d.e", "flashlight.d.f"]
    assert cycles([i for i in imports if not i.in_function]) == [self_import, siblings]
    assert cycles(imports) == [["flashlight.a", "flashlight.b"], self_import, siblings]
    assert cycles(imports, {("flashlight.b", "flashlight.a")}) == [self_import, siblings]

# }}}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
