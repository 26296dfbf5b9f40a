from cnnlab import demo
from cnnlab.core.errors import CnnlabError


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


def test_cifar_step_draws_the_report_after_the_comparison_and_prints_its_path(tmp_path, monkeypatch, capsys):
    import cnnlab.reports.results_table
    import cnnlab.reports.cifar
    import cnnlab.tasks.cifar as cifar

    calls = []

    def compare(blocks, recipe, out, **options):
        calls.append(("compare", out, recipe.preset, options))
        return {"rows": []}

    def write_report(out, **options):
        calls.append(("report", out))
        return out / "report.html"

    monkeypatch.setattr(cifar, "compare", compare)
    monkeypatch.setattr(cnnlab.reports.results_table, "results_markdown", lambda results: "TABLE\n")
    monkeypatch.setattr(cnnlab.reports.cifar, "write_report", write_report)
    demo.cifar_comparison(tmp_path)
    assert [c[:3] for c in calls] == [("compare", tmp_path / "cifar", "quick"), ("report", tmp_path / "cifar")]
    assert calls[0][3]["log"] is print and callable(calls[0][3]["on_results"])  # results.md after each block
    assert capsys.readouterr().out.splitlines() == [
        "", "TABLE", f"results: {tmp_path / 'cifar' / 'results.md'}", f"report: {tmp_path / 'cifar' / 'report.html'}"]
