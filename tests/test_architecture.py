"""The package's layering, checked from the source (Python's `ast`, nothing is imported).

Every module belongs to one part of the package (`cnnlab.core`, `cnnlab.tasks`, a loose module
such as `cnnlab.pipelines`), and `ALLOWED` says which parts each part may import: data flows one
way, from the foundations up to the front ends. The rules are functions of the sources, so the
tests below also feed them the violations they exist to catch and check that they are caught.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"
MAX_LINES = 400
MAX_LOOSE_MODULES = 5

# part -> the parts it may import (besides itself and `cnnlab`, which holds only __version__).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "blocks": {"core"},
    "data": {"core"},
    "metric_learning": {"core", "data"},
    "metrics": {"core", "metric_learning"},
    "models": {"core", "blocks", "metric_learning", "metrics"},
    "training": {"core", "models"},
    "tasks": {"core", "blocks", "data", "metric_learning", "metrics", "models", "training"},
    # Reports read the files runs wrote: never a data set, a model, a training loop or a task.
    "reports": {"core", "blocks", "metrics"},
    # The study's figures come from reports.plots; the trials train through tasks.
    "tune": {"core", "reports", "tasks"},
    "verifier": {"core", "data", "metric_learning", "metrics", "models"},
    "serve": {"core", "metrics", "verifier"},
    "pipelines": {"core", "reports", "tasks", "training"},
    "demo": {"blocks", "cli", "core", "pipelines", "reports", "tasks"},
    "cli": {"blocks", "core", "models", "pipelines", "reports", "serve", "tasks", "training", "tune", "verifier"},
    "__main__": {"cli"},
}
# The front ends parse flags and print; every other part is a library that does neither.
FRONT_ENDS = {"cli", "demo", "__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = {module_name(p): p.read_text() for p in sorted(SRC.rglob("*.py"))}
MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def part(module: str) -> str:
    """cnnlab.tasks.faces.task -> tasks; cnnlab.pipelines -> pipelines; cnnlab -> ''."""
    return module.split(".")[1] if "." in module else ""


def is_library(module: str) -> bool:
    return part(module) not in FRONT_ENDS


def imports_of(name: str, source: str, modules=SOURCES) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    tree = ast.parse(source)
    is_package = name in modules and any(m.startswith(name + ".") for m in modules)
    package = name if is_package else name.rpartition(".")[0]
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
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
    return found


def layer_violations(sources: dict[str, str]) -> list[str]:
    """Imports of a part that `ALLOWED` does not list for the importing part."""
    found = []
    for name, source in sources.items():
        for imp in imports_of(name, source, sources):
            if not imp.startswith("cnnlab.") or part(imp) == part(name):
                continue
            if part(imp) not in ALLOWED.get(part(name), set()):
                found.append(f"{name} imports {imp}")
    return found


def print_defaults(sources: dict[str, str]) -> list[str]:
    """Library functions whose `log` (or any argument) defaults to print: a library says nothing
    unless its caller passes `log` (`cnnlab.core.progress.no_log`)."""
    found = []
    for name, source in sources.items():
        if not is_library(name):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
                    if isinstance(default, ast.Name) and default.id == "print":
                        found.append(f"{name}:{node.lineno} {node.name}")
    return found


def test_every_module_belongs_to_a_part_with_rules():
    unruled = sorted(name for name in SOURCES if name != "cnnlab" and part(name) not in ALLOWED)
    assert not unruled, f"modules of no part in ALLOWED (say what they may import): {unruled}"


def test_few_loose_modules():
    loose = sorted(p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, f"{len(loose)} loose modules in src/cnnlab (put them in a package): {loose}"


def test_parts_import_only_the_parts_below_them():
    assert not layer_violations(SOURCES)


def test_library_functions_do_not_default_log_to_print():
    assert not print_defaults(SOURCES)


# The violations these rules were written for, put back into today's sources one at a time.
REINTRODUCED = {
    "a task imports the embedding analysis": (
        "cnnlab.tasks.cifar", "from cnnlab.reports.analysis import EMBEDDINGS_FILE\n", layer_violations),
    "the margins report imports a task": (
        "cnnlab.reports.margins", "from cnnlab.tasks.faces.margins import COMPARISON_JSON\n", layer_violations),
    "a workflow logs to print by default": (
        "cnnlab.pipelines", "def view1(config, log=print):\n    return log\n", print_defaults),
}


@pytest.mark.parametrize("case", sorted(REINTRODUCED))
def test_rules_catch_the_violations_they_exist_for(case):
    module, code, rule = REINTRODUCED[case]
    assert not rule(SOURCES)
    assert rule({**SOURCES, module: SOURCES[module] + "\n" + code})


def test_library_layers_do_not_import_the_cli_or_argparse():
    offenders = [f"{name} imports {imp}" for name, source in SOURCES.items() if is_library(name)
                 for imp in imports_of(name, source) if imp == "argparse" or imp.startswith("cnnlab.cli")]
    assert not offenders, offenders


def test_library_layers_do_not_print():
    offenders = []
    for name, source in SOURCES.items():
        if not is_library(name):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, f"print() in library code (return values or take a log callable): {offenders}"


def test_tasks_never_draw():
    offenders = [f"{name} imports {imp}" for name, source in SOURCES.items() if part(name) == "tasks"
                 for imp in imports_of(name, source) if imp.startswith("matplotlib")]
    assert not offenders, offenders


def test_no_import_cycle_between_parts_of_the_package():
    graph = defaultdict(set)
    for name, source in SOURCES.items():
        for imp in imports_of(name, source):
            if imp.startswith("cnnlab.") and part(imp) != part(name):
                graph[part(name)].add(part(imp))

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
    """Temporary-file-then-rename is written once, in cnnlab.core.files."""
    offenders = [name for name, path in MODULES.items() if name != "cnnlab.core.files"
                 for token in ("mkstemp", "os.replace(", ".replace(path)", "NamedTemporaryFile")
                 if token in path.read_text()]
    assert not offenders, offenders


def test_no_import_cycle_inside_a_part_of_the_package():
    """Modules of one part (cnnlab.verifier, cnnlab.tasks, ...) do not import each other in a
    circle either, type-only imports (`if TYPE_CHECKING:`) included: a module that needs an
    object of a module that needs it depends on a small contract instead (`verifier.model`)."""
    graph = defaultdict(set)
    for name, source in SOURCES.items():
        for imp in imports_of(name, source):
            if imp in MODULES and imp != name and part(imp) == part(name):
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
DRAWING = ("cnnlab.reports.plots", "cnnlab.reports.cifar")  # figures and the HTML report (tables to print are fine)


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
