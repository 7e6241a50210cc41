"""The engine's shape: no import circle between deploy/ modules (none hidden inside a
function either), modules and functions of a readable size, and every typed error lives
in deploy/errors.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a module of deploy/, or a package (deploy/edge/, deploy/contract/): one node, its files together
MODULES = {p.stem: [p] for p in (ROOT / "deploy").glob("*.py") if p.stem != "__init__"}
MODULES.update({d.name: sorted(d.glob("*.py")) for d in (ROOT / "deploy").iterdir() if (d / "__init__.py").is_file()})
MAX_LINES = 440  # "no module over about 400 lines"
MAX_FUNCTION = 60  # lines, its docstring included


def imports(path: Path) -> tuple[set[str], list[int]]:
    """deploy modules imported at the top of `path`, and lines importing one inside a function."""
    tree = ast.parse(path.read_text())
    top, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deploy"):
            names = {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
            found = {n for n in names if n in MODULES}
            if node.col_offset == 0:
                top |= found
            elif found:
                nested.append(node.lineno)
    return top, nested


def test_no_import_circle_in_the_engine():
    graph = {}
    for name, paths in MODULES.items():
        graph[name] = set()
        for path in paths:
            found, nested = imports(path)
            graph[name] |= found - {name}  # a package's files import one another
            assert not nested, f"{path.relative_to(ROOT)} imports deploy modules inside functions (lines {nested}): import at the top"
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            assert state.get(dep) != "open", f"import circle: {' -> '.join([*trail, node, dep])}"
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_engine_never_imports_the_steps():
    """The gates' steps use the engine, never the other way round: the engine runs the
    gates by their plugin's name (deploy.gates.GATE_PLUGIN), at the top of a module or
    inside a function alike."""
    for path in (p for paths in MODULES.values() for p in paths):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not [n for n in names if n.split(".")[0] == "steps"], f"{path.relative_to(ROOT)}:{node.lineno} imports the steps"


def test_no_module_is_much_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for paths in MODULES.values() for p in paths if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by what they own: {long}"


def test_no_function_of_the_engine_or_the_steps_is_over_60_lines():
    paths = [p for ps in MODULES.values() for p in ps] + sorted((ROOT / "steps").glob("*.py"))
    long = {f"{p.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1 for p in paths for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION}
    assert not long, f"split these into the steps they take: {long}"


def test_typed_errors_live_in_errors_py():
    for name, path in ((name, p) for name, paths in MODULES.items() for p in paths):
        if name == "errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):  # private retry signals may stay
                bases = {ast.unparse(b) for b in node.bases}
                assert not any(b.endswith(("Error", "Exception")) or b in ("LockHeld", "GateFailed") for b in bases), (
                    f"deploy/{name}.py defines {node.name}: typed errors belong in deploy/errors.py")
