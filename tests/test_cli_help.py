"""`cnnlab --help` and `cnnlab COMMAND --help`, for every command, answer without importing
torch, scikit-learn, matplotlib, timm or optuna: commands import their work when they run, and
the flags that come from the library's configs and registries are read from `cnnlab.cli.catalog`,
which must be current (`python -m cnnlab.cli.catalog` rewrites it)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from cnnlab.cli import build_parser, catalog

HEAVY = ("torch", "sklearn", "matplotlib", "timm", "optuna")
REGENERATE = "run `python -m cnnlab.cli.catalog` (or `make catalog`) and commit src/cnnlab/cli/catalog.json"


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(), ("blocks",), ("cifar",), ("cifar", "compare"), ...: every parser of the command tree."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name in action._name_parser_map and sub is action._name_parser_map[name]:
                    yield from command_paths(sub, (*path, name))


COMMANDS = list(command_paths(build_parser()))

# Every command's --help in one fresh interpreter, as `python -m cnnlab ARGS --help` runs them (the
# modules a test process has already imported would hide an import). Heavy modules are never
# unloaded, so the first command after which one is in sys.modules is the one that imported it.
PROBE = """
import contextlib, io, json, runpy, sys
results = []
for argv in {argvs!r}:
    sys.argv, out = ["cnnlab", *argv], io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module("cnnlab", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = done.code
    else:
        code = None
    results.append({{"code": code, "stdout": out.getvalue()[:200],
                     "imported": [m for m in {heavy!r} if m in sys.modules]}})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_runs() -> dict[tuple[str, ...], dict]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argvs=[[*p, "--help"] for p in COMMANDS], heavy=HEAVY)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(zip(COMMANDS, json.loads(done.stdout)))


def test_the_command_tree_is_walked():
    assert {(), ("blocks",), ("cifar", "compare"), ("faces", "train"), ("faces", "tune"),
            ("faces", "index", "build"), ("report",)} <= set(COMMANDS)


def test_the_catalog_is_current():
    """The catalog holds what the library says now; a stale one is not wrong (`load()` reads
    the library instead) but makes `--help` import torch."""
    assert catalog.is_current(), f"src/cnnlab/cli/catalog.json is out of date: {REGENERATE}"


def catalog_sources_changed() -> bool:
    return json.loads(catalog.CATALOG_FILE.read_text())["sources"] != catalog.source_hashes()


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(("cnnlab", *path)))
def test_help_imports_no_heavy_dependency(path, help_runs):
    if catalog_sources_changed():  # help then reads the library, torch included: one failure above says so
        pytest.skip(f"the catalog is out of date (test_the_catalog_is_current fails): {REGENERATE}")
    result = help_runs[path]
    assert result["code"] == 0 and result["stdout"].startswith(f"usage: {' '.join(('cnnlab', *path))}"), result
    assert not result["imported"], (f"`cnnlab {' '.join(path)} --help` imported {', '.join(result['imported'])}: "
                                    "import it inside the function that runs the command")


def test_a_stale_catalog_is_not_used(tmp_path, monkeypatch):
    """A source changed since the catalog was written: the flags come from the library itself."""
    stored = json.loads(catalog.CATALOG_FILE.read_text())
    stored["sources"]["training/engine.py"] = "0" * 64
    stored["configs"]["TrainConfig"][0]["help"] = "a help text the library no longer has"
    stale = tmp_path / "catalog.json"
    stale.write_text(json.dumps(stored))
    monkeypatch.setattr(catalog, "CATALOG_FILE", stale)
    monkeypatch.setattr(catalog, "_loaded", None)
    assert catalog.load() == catalog.build()
    assert "a help text the library no longer has" not in build_parser().format_help()
