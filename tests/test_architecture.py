"""The package's layering, checked from the source (Python's `ast`, nothing is imported).

Data flows one way: blocks/models/data/metrics/engine sit below the tasks, the tasks below the
tuner, and the CLI, plots and reports on top. These tests fail when a change re-creates one of
the tangles this layout removed: a library module that builds argparse commands or prints, a
task that draws, two parts of the package importing each other, a file that grows into a god
module.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"
MAX_LINES = 400
# Library layers: no argparse, no `cnnlab.cli`, no print() of results.
LIBRARY = ("tune", "tasks", "models", "data", "blocks", "metrics", "verifier", "serve")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            for alias in node.names:  # `from cnnlab.tasks import faces` imports a module
                if f"{base}.{alias.name}" in MODULES:
                    found.add(f"{base}.{alias.name}")
    return found


def component(module: str) -> str:
    """cnnlab.tasks.faces.task -> cnnlab.tasks: the unit whose dependencies must not cycle."""
    return ".".join(module.split(".")[:2])


def test_library_layers_do_not_import_the_cli_or_argparse():
    offenders = [f"{name} imports {imp}" for name, path in MODULES.items()
                 if name.split(".")[1:2] and name.split(".")[1] in LIBRARY
                 for imp in imports_of(path) if imp == "argparse" or imp.startswith("cnnlab.cli")]
    assert not offenders, offenders


def test_library_layers_do_not_print():
    offenders = []
    for name, path in MODULES.items():
        if not (name.split(".")[1:2] and name.split(".")[1] in LIBRARY):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, f"print() in library code (return values or take a log callable): {offenders}"


def test_tasks_never_draw_or_write_reports():
    offenders = [f"{name} imports {imp}" for name, path in MODULES.items() if name.startswith("cnnlab.tasks")
                 for imp in imports_of(path)
                 if imp.startswith(("cnnlab.plots", "cnnlab.report", "matplotlib"))]
    assert not offenders, offenders


def test_plots_and_analysis_only_read_files():
    """Figures and analysis are drawn from what runs saved: they never load data sets or run models."""
    offenders = [f"{name} imports {imp}" for name, path in MODULES.items()
                 if name.startswith(("cnnlab.plots", "cnnlab.analysis", "cnnlab.report", "cnnlab.document"))
                 for imp in imports_of(path)
                 if imp.startswith(("cnnlab.data", "cnnlab.engine", "cnnlab.tasks", "cnnlab.models", "cnnlab.distances"))]
    assert not offenders, offenders


def test_no_import_cycle_between_parts_of_the_package():
    graph = defaultdict(set)
    for name, path in MODULES.items():
        for imp in imports_of(path):
            if imp.startswith("cnnlab.") and component(imp) != component(name):
                graph[component(name)].add(component(imp))

    def cycle_from(start):
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in trail:
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for c in (cycle_from(n) for n in list(graph)) if c]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_god_modules(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(SRC)} has {lines} lines (> {MAX_LINES}): split it"


def test_one_atomic_write_helper():
    """Temporary-file-then-rename is written once, in cnnlab.io."""
    offenders = [name for name, path in MODULES.items() if name != "cnnlab.io"
                 for token in ("mkstemp", "os.replace(", ".replace(path)", "NamedTemporaryFile")
                 if token in path.read_text()]
    assert not offenders, offenders


def test_library_functions_do_not_default_log_to_print():
    """A library says nothing unless its caller passes `log` (`cnnlab.progress.no_log`)."""
    offenders = []
    for name, path in MODULES.items():
        if not (name.split(".")[1:2] and name.split(".")[1] in LIBRARY):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
                    if isinstance(default, ast.Name) and default.id == "print":
                        offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not offenders, f"library functions defaulting to print: {offenders}"


def test_no_import_cycle_inside_a_part_of_the_package():
    """Modules of one part (cnnlab.verifier, cnnlab.tasks, ...) do not import each other in a
    circle either, type-only imports (`if TYPE_CHECKING:`) included: a module that needs an
    object of a module that needs it depends on a small contract instead (`verifier.model`)."""
    graph = defaultdict(set)
    for name, path in MODULES.items():
        for imp in imports_of(path):
            if imp in MODULES and imp != name and component(imp) == component(name):
                graph[name].add(imp)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(MODULES):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


def test_tasks_write_no_report_files():
    """Tasks train and write data (json, csv, npz, pt); Markdown and HTML reports are the
    report layer's. A bare file name ending in .md or .html in a task module is a report file
    it would write."""
    import re
    report_file = re.compile(r"^[\w.-]+\.(md|html)$")
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("cnnlab.tasks"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and report_file.match(node.value):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert not offenders, f"tasks naming report files: {offenders}"


TRAINING = ("cnnlab.tasks", "cnnlab.tune")
DRAWING = ("cnnlab.plots", "cnnlab.report")  # figures and the HTML report (tables to print are fine)


def test_no_workflow_in_the_cli():
    """A CLI command parses flags, calls one thing and prints. Training, then drawing from the
    run is a workflow (`cnnlab.pipelines`), which the demo and tests call too: a CLI function
    that imports both a training layer and the figures or the report is one (`faces plot` and
    `report`, which draw from a finished run, import no training layer)."""
    def under(module: str, prefixes) -> bool:
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("cnnlab.cli"):
            continue
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            imported = {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module}
            imported |= {a.name for n in ast.walk(node) if isinstance(n, ast.Import) for a in n.names}
            if any(under(m, TRAINING) for m in imported) and any(under(m, DRAWING) for m in imported):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not offenders, f"workflows in the CLI (move them to cnnlab.pipelines): {offenders}"
