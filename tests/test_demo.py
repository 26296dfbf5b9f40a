from cnnlab import demo
from cnnlab.errors import CnnlabError


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
