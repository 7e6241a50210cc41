"""The engine's shape: its layers (nothing imports upward), no import circle between
deploy/ modules (none hidden inside a function either), modules and functions of a
readable size, and every typed error lives in deploy/errors.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT / "deploy").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return bool(body[1:] if body and isinstance(body[0], ast.Expr) else body)


# every module of deploy/ by its dotted name under deploy (`target.facts`), and a package
# whose __init__ holds code (deploy/edge/, deploy/contract/, deploy/cli/) by its own name;
# a package that is only a folder (deploy/target/, deploy/release/, deploy/data/) is no node
MODULES = {
    _dotted(p): p
    for p in sorted((ROOT / "deploy").rglob("*.py"))
    if p.stem != "__init__" or (p.parent != ROOT / "deploy" and _has_code(p))
}
MAX_LINES = 400
MAX_FUNCTION = 60  # lines, its docstring included


def imported(node: ast.AST) -> set[str]:
    """The deploy modules (and packages) an import statement names (`from deploy import x`,
    `from deploy.x import y`, `from deploy.x.y import z`, `import deploy.x.y`)."""
    if isinstance(node, ast.Import):
        names = [a.name.removeprefix("deploy.") for a in node.names if a.name.startswith("deploy.")]
        return {
            max((m for m in MODULES if n == m or n.startswith(m + ".")), key=len) for n in names
        }
    if not (
        isinstance(node, ast.ImportFrom)
        and node.module
        and not node.level
        and node.module.split(".")[0] == "deploy"
    ):
        return set()
    base = node.module.removeprefix("deploy").removeprefix(".")
    found = set()
    for alias in node.names:
        whole = f"{base}.{alias.name}" if base else alias.name
        found |= {whole} if whole in MODULES else {base} if base in MODULES else set()
    return found


def imports(path: Path) -> tuple[set[str], list[int]]:
    """deploy modules imported at the top of `path`, and lines importing one inside a function."""
    top, nested = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        found = imported(node)
        if found and node.col_offset == 0:
            top |= found
        elif found:
            nested.append(node.lineno)
    return top, nested


def test_no_import_circle_in_the_engine():
    graph = {}
    for name, path in MODULES.items():
        found, nested = imports(path)
        graph[name] = found - {name}
        assert not nested, (
            f"{path.relative_to(ROOT)} imports deploy modules inside functions (lines {nested}): import at the top"
        )
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
    name: set(modules.split())
    for name, modules in {
        "settings and commands": "errors colors urls contract contract.model contract.fields contract.blocks "
        "contract.parse keys config profiles "
        "render swarmfile scaffold appsecrets images bases registry remote target.ssh target.runner target.connections",
        "the target's facts": "target.facts target.sockets target.dbfacts target.confinement target.swarm target.swarmstack bootstrap",
        "the edge and the record": "edge edge.state edge.modes edge.ledger edge.routes edge.probes edge.locking "
        "release.history release.plans release.canary release.traffic release.analysis release.report",
        "the stack": "release.view access stack data.content data.relaycert target.compose target.targets edge.tls edge.acme release.gates data.dbtools data.relay",
        "the data": "data.db data.verify data.offsite data.replication data.movecheck data.migrations",
        "operations": "apply starting views release.recover release.decide release.candidate release.releases "
        "data.move data.movesteps data.retire",
        "the commands": "cli cli.__main__ cli.app cli.releases cli.common cli.ops",
    }.items()
}
LAYER = {module: n for n, modules in enumerate(LAYERS.values()) for module in modules}
NAMES = list(LAYERS)
LEAVES = {m.rpartition(".")[2] for m in MODULES}  # the names modules are imported under


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYER), (
        f"give these a layer in LAYERS: {sorted(set(MODULES) ^ set(LAYER))}"
    )


def test_nothing_imports_upward():
    """Every deploy import of a module (`from deploy import x`, `from deploy.x import y`,
    `import deploy.x`, at the top of a module or inside a function) reaches its own layer or
    a lower one."""
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for used in imported(node) - {name}:
                assert LAYER[used] <= LAYER[name], (
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {used} ({NAMES[LAYER[used]]}) from "
                    f"{NAMES[LAYER[name]]}: move what it needs down, or pass it in"
                )


def test_only_the_facts_reader_asks_which_target_the_stack_runs_on():
    """`settings.swarm` is read in one place, facts.reads; everything else asks the target
    (deploy.target.targets) or the reader it is given (a module's own `swarm`, render.swarm, is no
    such question)."""
    asked = [
        f"{p.relative_to(ROOT)}:{ast.unparse(node)}"
        for p in MODULES.values()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "swarm"
        and not (isinstance(node.value, ast.Name) and node.value.id in LEAVES)
    ]
    assert asked == ["deploy/target/facts.py:settings.swarm"], asked


def test_the_engine_never_imports_the_steps():
    """The gates' steps use the engine, never the other way round: the engine runs the
    gates by their plugin's name (deploy.release.gates.GATE_PLUGIN), at the top of a module or
    inside a function alike."""
    for path in (p for p in MODULES.values()):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            assert not [n for n in names if n.split(".")[0] == "steps"], (
                f"{path.relative_to(ROOT)}:{node.lineno} imports the steps"
            )


def test_no_module_is_much_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by what they own: {long}"


def test_no_function_of_the_engine_the_steps_or_the_benchmarks_is_over_60_lines():
    paths = (
        list(MODULES.values())
        + sorted((ROOT / "steps").glob("*.py"))
        + sorted((ROOT / "benchmarks").glob("*.py"))
    )
    long = {
        f"{p.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
        for p in paths
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION
    }
    assert not long, f"split these into the steps they take: {long}"


def test_no_instance_attribute_hides_a_method_of_its_class():
    """A plan's steps are methods called by name (plans.execute): an attribute set on the
    instance under a step's name (`self.record = ...` beside `def record`) would be called
    instead."""
    hidden = []
    for p in (p for p in MODULES.values()):
        for cls in (n for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ClassDef)):
            methods = {
                f.name for f in cls.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            for node in ast.walk(cls):
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                    if isinstance(node, ast.AnnAssign)
                    else []
                )
                for t in (
                    e
                    for tgt in targets
                    for e in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])
                ):
                    if (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                        and t.attr in methods
                    ):
                        hidden.append(f"{p.relative_to(ROOT)}:{t.lineno} {cls.name}.{t.attr}")
    assert not hidden, hidden


def test_typed_errors_live_in_errors_py():
    for name, path in MODULES.items():
        if name == "errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # private retry signals may stay
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(b) for b in node.bases}
                assert not any(
                    b.endswith(("Error", "Exception")) or b in ("LockHeld", "GateFailed")
                    for b in bases
                ), f"deploy/{name}.py defines {node.name}: typed errors belong in deploy/errors.py"


@pytest.mark.parametrize(
    "source, names",
    [
        ("from deploy import apply, edge", {"apply", "edge"}),
        ("from deploy.target import facts, runner", {"target.facts", "target.runner"}),
        ("from deploy.edge import tls, Active", {"edge.tls", "edge"}),
        ("from deploy.release.history import Record", {"release.history"}),
        ("import deploy.data.move", {"data.move"}),
        ("def f():\n    from deploy.cli import app", {"cli.app"}),
        ("from steps import common", set()),
    ],
)
def test_the_layout_check_sees_every_form_of_deploy_import(source, names):
    """The checks above read each of these import forms, inside a function too."""
    assert set().union(*(imported(n) for n in ast.walk(ast.parse(source)))) == names


def test_an_upward_import_is_found():
    """A lower layer's module importing an operation is what test_nothing_imports_upward reports."""
    used = set().union(*(imported(n) for n in ast.walk(ast.parse("from deploy.data import move"))))
    assert used == {"data.move"} and LAYER["data.move"] > LAYER["target.facts"]


# what the steps may use of the engine: the stack as the gates see it, and the settings
STEPS_USE = {"release.view", "colors", "contract", "errors", "profiles", "config"}


def test_the_steps_ask_one_object_of_the_engine():
    """steps/ reads the running stack through deploy.release.view.StackView only (and the
    settings, the contract, the colors and the errors), and never asks which target it is."""
    for path in sorted((ROOT / "steps").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            assert imported(node) <= STEPS_USE, (
                f"{path.relative_to(ROOT)}:{node.lineno} imports {sorted(imported(node) - STEPS_USE)}: "
                "ask the StackView (the `stack` fixture), or give it what the step needs"
            )
            assert not (isinstance(node, ast.Attribute) and node.attr == "swarm"), (
                f"{path.relative_to(ROOT)}:{node.lineno} asks which target the stack runs on"
            )
