"""The results tables carry the reference report's figures beside cnnlab's own."""
from cnnlab.blocks import REPORT_PARAMS, REPORT_VAL_ACC
from cnnlab.blocks.reference import REPORT_TRAIN_ACC, REPORT_TRAIN_TIME_S
from cnnlab.reports.text import minutes, reference_note


def _results(blocks):
    rows = [{"block": b, "params": 1000 + i, "macs": 2e6, "val_acc": 0.5, "test_acc": 0.4, "train_acc": 0.3,
             "train_time_s": 1.0, "images_per_s": 10.0, "device": "cpu", "run_dir": b} for i, b in enumerate(blocks)]
    return {"preset": "quick", "rows": rows,
            "recipe": {"train": {"epochs": 1, "batch_size": 8, "optimizer": "sgd", "lr": 0.1, "schedule": "onecycle"},
                       "task": {"label_smoothing": 0.1}, "model": {"width_multiplier": 0.25}},
            "data": {"train": 100, "train_subset": 100, "val": 20, "test": 30, "source": "synthetic"}}


def _table(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_results_markdown_puts_the_reports_figures_beside_ours():
    from cnnlab.reports.results_table import results_markdown

    text = results_markdown(_results(["A", "E", "D2"]))
    rows = {r["block"]: r for r in _table(text)}
    assert rows["A"]["report params"] == f"{REPORT_PARAMS['A']:,}" and rows["A"]["params"] == "1,000"
    assert rows["E"]["report params"] == "1,422,378"
    assert rows["D2"]["report params"] == "-"  # not one of the report's blocks
    for row in rows.values():
        expected = REPORT_VAL_ACC.get(row["block"])
        assert row["report val acc"] == ("-" if expected is None else f"{expected:.2%}")
    assert reference_note() in text
    # The report's whole row, as its table prints it.
    assert (rows["A"]["report val acc"], rows["A"]["report train acc"], rows["A"]["report train time"]) == \
        ("88.56%", "94.16%", "24m 44s")
    assert (rows["E"]["report val acc"], rows["E"]["report train acc"], rows["E"]["report train time"]) == \
        ("85.13%", "87.07%", "25m 49s")
    assert rows["D2"]["report train acc"] == rows["D2"]["report train time"] == "-"


def test_the_report_table_is_complete_for_the_six_blocks():
    assert set(REPORT_VAL_ACC) == set(REPORT_TRAIN_ACC) == set(REPORT_TRAIN_TIME_S) == set(REPORT_PARAMS)
    assert REPORT_VAL_ACC["B"] == max(REPORT_VAL_ACC.values())  # the report's best block
    assert minutes(REPORT_TRAIN_TIME_S["C"]) == "26m 10s" and minutes(3725) == "1h 2m 05s" and minutes(None) == "-"


def test_results_line_names_the_precision():
    from cnnlab.reports.results_table import results_markdown

    results = _results(["A", "B"])
    for row in results["rows"]:
        row["precision"] = "bf16"
    results["recipe"]["train"]["precision"] = "auto"
    assert "precision bf16 (auto);" in results_markdown(results)
    results["recipe"]["train"]["precision"] = "bf16"
    assert "precision bf16;" in results_markdown(results)


def test_one_table_renders_results_md_and_the_report(tmp_path):
    from cnnlab.reports.cifar import _build_document
    from cnnlab.reports.document import render_markdown
    from cnnlab.reports.results_table import results_markdown, results_table

    results = _results(["C", "D2"])
    results["rows"][1]["precision"] = "bf16"
    del results["rows"][1]["macs"]  # a row missing a value shows "-", never a KeyError
    headers, body = results_table(results["rows"])
    rows = {r[0]: dict(zip(headers, r)) for r in body}
    for ours in ("params", "val acc", "train acc", "train time (s)"):  # the report's figure right after ours
        assert headers[headers.index(ours) + 1] in (f"report {ours}", "report train time"), ours
    assert rows["C"]["report train time"] == "26m 10s" and rows["C"]["precision"] == "-"
    assert rows["C"]["report params"] == "7,901,130" and rows["D2"]["report params"] == "-"
    assert rows["C"]["MACs/image"] == "2.0M" and rows["D2"]["MACs/image"] == "-"
    assert (rows["D2"]["val acc"], rows["D2"]["precision"]) == ("50.00%", "bf16")
    # results.md and the report show this very table.
    assert results_markdown(results).startswith(render_markdown([("table", headers, body)]).rstrip("\n") + "\n\n")
    document = _build_document(tmp_path, results, {}, [], {}, {}, [], [])
    assert ("table", headers, body) == next(el for el in document if el[0] == "table")


def test_note_names_the_blocks_without_a_report_accuracy():
    note = reference_note()
    assert "width multiplier 1.0" in note
    for block in REPORT_PARAMS:
        assert (block in note.split("not on record for")[-1]) == (block not in REPORT_VAL_ACC)


def test_a_reduced_budget_table_says_it_does_not_rank_the_blocks():
    from cnnlab.reports.results_table import results_markdown
    from cnnlab.reports.text import budget_caption

    text = results_markdown(_results(["A", "B"]))  # 1 epoch, width 0.25, a 100-image subset
    assert "**Reduced budget (1 epoch instead of 30, width x0.25, 100 training images): these numbers do not " \
           "rank the blocks." in text and "full-budget table in the README" in text
    full = {"train": {"epochs": 30}, "model": {"width_multiplier": 1.0}}
    assert budget_caption(full, {"train": 45000, "train_subset": None}) is None
    assert "epochs instead" not in budget_caption({**full, "model": {"width_multiplier": 0.5}}, {})
