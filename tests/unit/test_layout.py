"""The engine's shape: its layers (nothing imports upward), no import circle between
deploy/ modules (none hidden inside a function either), modules and functions of a
readable size, and every typed error lives in deploy/errors.py."""

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


# The engine's layers, lowest first: a module imports modules of its own layer or of a
# lower one, never of a higher one (README.md, "Layout", says what each owns).
LAYERS = {
    "settings and commands": {"errors", "colors", "contract", "keys", "ssh", "runner", "config", "render", "scaffold",
                              "appsecrets", "images", "remote"},
    "the target's facts": {"facts", "confinement", "swarm", "bootstrap"},
    "the edge and the record": {"edge", "history", "plans", "probes", "canary", "traffic"},
    "the stack": {"access", "target", "stack", "tls", "acme", "gates", "dbtools", "relay"},
    "the data": {"db", "offsite", "replication", "movecheck", "migrations"},
    "operations": {"apply", "recover", "release", "move", "retire", "views"},
    "the commands": {"cli"},
}
LAYER = {module: n for n, modules in enumerate(LAYERS.values()) for module in modules}
NAMES = list(LAYERS)


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYER), f"give these a layer in LAYERS: {sorted(set(MODULES) ^ set(LAYER))}"


def test_nothing_imports_upward():
    """Every deploy import of a module (`from deploy import x`, `from deploy.x import y`,
    `import deploy.x`, at the top of a module or inside a function) reaches its own layer or
    a lower one."""
    for name, paths in MODULES.items():
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text())):
                for used in deploy_modules(node) - {name}:
                    assert LAYER[used] <= LAYER[name], (
                        f"{path.relative_to(ROOT)}:{node.lineno} imports {used} ({NAMES[LAYER[used]]}) from "
                        f"{NAMES[LAYER[name]]}: move what it needs down, or pass it in")


def deploy_modules(node: ast.AST) -> set[str]:
    """The deploy modules (and packages) an import statement names."""
    if isinstance(node, ast.Import):
        names = {a.name.split(".")[1] for a in node.names if a.name.startswith("deploy.")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "deploy" and not node.level:
        names = {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
    else:
        return set()
    return {n for n in names if n in MODULES}


def test_only_the_facts_reader_asks_which_target_the_stack_runs_on():
    """`settings.swarm` is read in one place, facts.reads; everything else asks the target
    (deploy.target) or the reader it is given (a module's own `swarm`, render.swarm, is no
    such question)."""
    asked = [f"{p.relative_to(ROOT)}:{ast.unparse(node)}" for ps in MODULES.values() for p in ps
             for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Attribute) and node.attr == "swarm" and not (isinstance(node.value, ast.Name) and node.value.id in MODULES)]
    assert asked == ["deploy/facts.py:settings.swarm"], asked


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


def test_no_function_of_the_engine_the_steps_or_the_benchmarks_is_over_60_lines():
    paths = [p for ps in MODULES.values() for p in ps] + sorted((ROOT / "steps").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    long = {f"{p.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1 for p in paths for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION}
    assert not long, f"split these into the steps they take: {long}"


def test_no_instance_attribute_hides_a_method_of_its_class():
    """A plan's steps are methods called by name (plans.execute): an attribute set on the
    instance under a step's name (`self.record = ...` beside `def record`) would be called
    instead."""
    hidden = []
    for p in (p for ps in MODULES.values() for p in ps):
        for cls in (n for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ClassDef)):
            methods = {f.name for f in cls.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
            for node in ast.walk(cls):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
                for t in (e for tgt in targets for e in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])):
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self" and t.attr in methods:
                        hidden.append(f"{p.relative_to(ROOT)}:{t.lineno} {cls.name}.{t.attr}")
    assert not hidden, hidden


def test_typed_errors_live_in_errors_py():
    for name, path in ((name, p) for name, paths in MODULES.items() for p in paths):
        if name == "errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):  # private retry signals may stay
                bases = {ast.unparse(b) for b in node.bases}
                assert not any(b.endswith(("Error", "Exception")) or b in ("LockHeld", "GateFailed") for b in bases), (
                    f"deploy/{name}.py defines {node.name}: typed errors belong in deploy/errors.py")
