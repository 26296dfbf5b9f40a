"""`make demo` (`cnnlab.demo`): its real steps end to end on tiny synthetic data (CIFAR-like
images, a fake LFW folder) in seconds, and the order and error boundary of the steps."""
import dataclasses
import functools
import json
from pathlib import Path

import pytest
import yaml

from cnnlab import demo
from cnnlab.core.errors import CnnlabError
from test_faces_train import make_fake_lfw, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_steps(tmp_path):
    """demo.STEPS with the same two functions, on a tiny recipe and a fake LFW instead of the
    `quick` and `demo` presets on the real data sets."""
    from cnnlab.tasks.cifar import resolve_recipe
    recipe = resolve_recipe("quick", overrides={
        "data": {"root": "synthetic", "synthetic_train": 200, "synthetic_val": 100, "synthetic_test": 100},
        "train": {"epochs": 1, "batch_size": 50, "device": "cpu", "progress": False},
        "model": {"width_multiplier": 0.125}})
    lfw = make_fake_lfw(tmp_path / "lfw")
    faces = tiny_config(epochs=2, test_images="pairs")  # the demo preset embeds the test pairs' images only
    return [(title, functools.partial(step, **options)) for (title, step), options in zip(demo.STEPS, [
        {"recipe": recipe, "blocks": ["A", "C"]}, {"config": faces, "lfw_root": lfw}], strict=True)]


def test_the_demo_runs_its_steps_end_to_end_and_a_rerun_reuses_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "STEPS", tiny_steps(tmp_path))
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()

    # What demo_diff compares between two `make demo` runs, written by the real steps.
    results = json.loads((out / "cifar" / "results.json").read_text())
    assert results["preset"] == "quick" and [row["block"] for row in results["rows"]] == ["A", "C"]
    analysis = json.loads((out / "cifar" / "analysis.json").read_text())
    assert analysis
    metrics = json.loads((out / "faces-view1" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auc"] <= 1.0 and metrics["plots"]
    assert (out / "faces-view1" / "model.pt").is_file()
    assert len(metrics["plots"]) == 4 and all(Path(figure).is_file() for figure in metrics["plots"])

    # Each step prints what it produced; the last line is the report to open.
    assert printed[0] == "== step 1/2: CIFAR-10: compare the six blocks (quick preset)"
    assert f"results: {out / 'cifar' / 'results.md'}" in printed
    assert f"report: {out / 'cifar' / 'report.html'}" in printed
    assert "LFW View 1 DevTest (1,000 pairs)" in "\n".join(printed)
    assert f"metrics: {out / 'faces-view1' / 'metrics.json'}  model: {out / 'faces-view1' / 'model.pt'}" in printed
    assert "plots: " + "  ".join(metrics["plots"]) in printed
    assert printed[-1] == f"report: {(out / 'cifar' / 'report.html').resolve()}"

    # A second run trains nothing: the comparison keeps its finished blocks, the faces step its run.
    model_mtime = (out / "faces-view1" / "model.pt").stat().st_mtime_ns
    checkpoint_mtime = (out / "cifar" / "A" / "checkpoint.pt").stat().st_mtime_ns
    assert demo.main(["--out", str(out)]) == 0
    assert f"finished earlier, reusing {out / 'faces-view1'}" in capsys.readouterr().out.splitlines()
    assert (out / "faces-view1" / "model.pt").stat().st_mtime_ns == model_mtime
    assert (out / "cifar" / "A" / "checkpoint.pt").stat().st_mtime_ns == checkpoint_mtime
    assert json.loads((out / "faces-view1" / "metrics.json").read_text()) == metrics

    # A recipe saved before a field existed reads that field as its default: still the same run.
    recipe, demo_config = out / "faces-view1" / "faces_config.yaml", tiny_config(epochs=2, test_images="pairs")
    saved = yaml.safe_load(recipe.read_text())
    assert saved.pop("class_subcenters") == 1
    recipe.write_text(yaml.safe_dump(saved))
    assert demo.same_recipe(recipe, demo_config) and demo.main(["--out", str(out)]) == 0
    assert f"finished earlier, reusing {out / 'faces-view1'}" in capsys.readouterr().out.splitlines()
    # Another recipe, or one this version cannot read, is not.
    assert not demo.same_recipe(recipe, dataclasses.replace(demo_config, epochs=demo_config.epochs + 1))
    recipe.write_text(yaml.safe_dump({**saved, "a_future_field": 1}))
    assert not demo.same_recipe(recipe, demo_config)
    assert not demo.same_recipe(out / "faces-view1" / "missing.yaml", demo_config)


def test_demo_runs_steps_in_order_and_ends_with_the_report_path(tmp_path, monkeypatch, capsys):
    calls = []

    def first(out):
        calls.append("first")
        (out / "cifar").mkdir(parents=True)
        (out / "cifar" / "report.html").write_text("<html></html>")

    monkeypatch.setattr(demo, "STEPS", [("one", first), ("two", lambda out: calls.append("second"))])
    assert demo.main(["--out", str(tmp_path)]) == 0
    assert calls == ["first", "second"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"report: {(tmp_path / 'cifar' / 'report.html').resolve()}"


def test_demo_stops_with_one_line_error(tmp_path, monkeypatch, capsys):
    def broken(out):
        raise CnnlabError("CIFAR-10 not found")

    monkeypatch.setattr(demo, "STEPS", [("broken", broken)])
    assert demo.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "cnnlab: error: CIFAR-10 not found\n"
