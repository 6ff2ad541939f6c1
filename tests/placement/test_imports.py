"""The import graph, read from the source (every import statement, module level or inside a
function, except under `if TYPE_CHECKING:`):

- no import cycle anywhere in recsearch/ and launch/;
- docs/ARCHITECTURE.md's table "Packages and who may import whom" is what the code imports: for
  each row, the recsearch units and third-party packages its files import, no more, no fewer;
- inside recsearch/placement, each module imports only modules of lower layers, as the
  ARCHITECTURE.md table "Inside placement" lists them (bottom first).

`python tests/placement/test_imports.py` prints the tables as the code has them.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("recsearch", "launch")
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
# Edges allowed for a transition only, each with the reason; remove them when the reason goes.
TRANSITION_EDGES: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. recsearch.placement.registry
    path: Path


def modules() -> dict[str, Module]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = Module(".".join(parts), path)
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def imported_names(mod: Module, known: dict[str, Module]) -> Iterator[str]:
    """Every module this one imports: recsearch/launch modules by full name (a `from pkg import
    name` that names a submodule counts as that submodule), others by their top-level package."""
    tree = ast.parse(mod.path.read_text(), str(mod.path))
    skip = _type_checking_lines(tree)
    is_pkg = mod.path.name == "__init__.py"
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in known else target


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, mod in known.items():
        edges[name] = set()
        for target in imported_names(mod, known):
            if target.split(".")[0] in PACKAGES:
                # the innermost known module (`import recsearch.x.y` names recsearch.x.y)
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != name and target in known:
                    edges[name].add(target)
    return edges


def third_party(mod: Module, known: dict[str, Module]) -> set[str]:
    out = set()
    for target in imported_names(mod, known):
        top = target.split(".")[0]
        if top and top not in PACKAGES and top not in sys.stdlib_module_names and top != "__future__":
            out.add(top)
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# ------------------------------------------------------------------------------ units


def unit_of(name: str) -> str:
    """The row of ARCHITECTURE.md's package table a module belongs to: a subpackage of recsearch
    (data, model, train, placement, search), a top-level module (types, tables, config, ...), or
    launch."""
    parts = name.split(".")
    if parts[0] == "launch":
        return "launch"
    if len(parts) == 1:
        return "recsearch"  # the package itself (its __init__: the version)
    return parts[1]


def unit_imports() -> dict[str, tuple[set[str], set[str]]]:
    """unit -> (recsearch units it imports, third-party packages it imports)."""
    known = modules()
    edges = graph()
    out: dict[str, tuple[set[str], set[str]]] = {}
    for name, mod in known.items():
        unit = unit_of(name)
        units, libs = out.setdefault(unit, (set(), set()))
        units.update(u for u in map(unit_of, edges[name]) if u not in (unit, "recsearch"))
        libs.update(third_party(mod, known))
    return out


def documented_units() -> dict[str, tuple[set[str], set[str]]]:
    """ARCHITECTURE.md's package table: unit -> (recsearch units, third-party packages), from
    the backticked names of its "imports" column (recsearch units as `types`, `data`, ...;
    third-party packages as `numpy`, `torchrec`, ...)."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Packages and who may import whom", 1)[1].split("\n## ", 1)[0]
    table = section.split("### Inside placement", 1)[0]
    units = set(unit_imports())
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        path = re.findall(r"`([^`]+)`", cells[0])[0]
        unit = "launch" if path.startswith("launch") else path.removeprefix("recsearch/").strip("/").removesuffix(".py")
        names = set(re.findall(r"`([^`]+)`", cells[2]))
        out[unit] = ({n for n in names if n in units}, {n for n in names if n not in units})
    return out


def placement_layers() -> list[list[str]]:
    """ARCHITECTURE.md's "Inside placement" table, bottom layer first: each row's backticked
    module names (without .py; `cli/` for the command modules)."""
    text = ARCHITECTURE.read_text()
    section = text.split("### Inside placement", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"\d+", cells[0]):
            continue
        layers.append([n.removesuffix(".py").removesuffix("/") for n in re.findall(r"`([^`]+)`", cells[1])])
    return layers


def _placement_key(name: str) -> str:
    rest = name.removeprefix("recsearch.placement.")
    return "cli" if rest.startswith("cli") else rest


# ------------------------------------------------------------------------------ tests


def test_no_import_cycle_anywhere():
    edges = graph()
    for a, b in TRANSITION_EDGES:
        edges[a].discard(b)
    assert cycles(edges) == []


def test_transition_edges_still_exist():
    """Each allowed transition edge is still in the code (else drop it from TRANSITION_EDGES)."""
    edges = graph()
    for a, b in TRANSITION_EDGES:
        assert b in edges[a], f"{a} -> {b} is gone: remove it from TRANSITION_EDGES"


def test_the_package_table_is_what_the_code_imports():
    documented = documented_units()
    actual = unit_imports()
    fix = "update docs/ARCHITECTURE.md's package table (`python tests/placement/test_imports.py` prints it)"
    assert set(documented) == set(actual) - {"recsearch"}, f"rows differ: {fix}"
    wrong = []
    for unit, (units, libs) in sorted(actual.items()):
        if unit == "recsearch":
            continue
        doc_units, doc_libs = documented[unit]
        for kind, code, doc in (("recsearch units", units, doc_units), ("third-party", libs, doc_libs)):
            if code != doc:
                wrong.append(
                    f"{unit}: {kind} imported but not in the table: {sorted(code - doc)}; "
                    f"in the table but not imported: {sorted(doc - code)}"
                )
    assert not wrong, f"{fix}:\n" + "\n".join(wrong)


def test_placement_modules_import_only_lower_layers():
    layers = placement_layers()
    level = {m: i for i, row in enumerate(layers) for m in row}
    edges = graph()
    placement = [n for n in edges if n.startswith("recsearch.placement.")]
    missing = sorted({_placement_key(n) for n in placement} - set(level))
    assert not missing, f"placement modules missing from ARCHITECTURE.md's layer table: {missing}"
    wrong = []
    for name in placement:
        for target in edges[name]:
            if not target.startswith("recsearch.placement.") or (name, target) in TRANSITION_EDGES:
                continue
            a, b = _placement_key(name), _placement_key(target)
            if a != b and level[b] >= level[a]:
                wrong.append(f"{a} (layer {level[a]}) imports {b} (layer {level[b]})")
    assert not wrong, wrong


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    edges = graph()
    # function-level: the registry makes the learned placer without importing torch up front
    assert "recsearch.placement.policy" in edges["recsearch.placement.registry"]
    # `from recsearch.placement import hardware` names the submodule
    assert "recsearch.placement.hardware" in edges["recsearch.placement.comm"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
    for unit, (units, libs) in sorted(unit_imports().items()):
        print(f"{unit:<10} units: {', '.join(sorted(units)) or '-'}; third-party: {', '.join(sorted(libs)) or '-'}")
    edges = graph()
    for name in sorted(n for n in edges if n.startswith("recsearch.placement.")):
        inside = sorted(_placement_key(t) for t in edges[name] if t.startswith("recsearch.placement."))
        print(f"  {_placement_key(name):<16} -> {', '.join(inside)}")
    print("cycles:", cycles(edges))
