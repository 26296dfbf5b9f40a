"""Tuning layer: search space parsing, a study shared by worker processes, seeded sampling,
failed and pruned trials, and the summary files."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_yaml
from cnnlab.tune import (
    Categorical,
    IntRange,
    LogUniform,
    SearchSpace,
    Uniform,
    final_test,
    redact,
    run_study,
    trial_config,
    worker_id,
)
from cnnlab.tune.samplers import _SeededStartupTPE


def synthetic_score(params: dict) -> float:
    """A known smooth function of the parameters with its optimum inside the default space."""
    return (1.0 - (math.log10(params["lr"]) + 3.0) ** 2 - (params["margin"] - 1.0) ** 2
            + params["embedding_dim"] / 1000.0 - 0.01 * params["freeze_epochs"])


def cheap_objective(params, report_epoch):
    return synthetic_score(params)


def load_study(out_dir: Path, name: str = "faces") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out_dir / 'study.db'}")


# ----------------------------------------------------------------------------- search space

def test_default_space_has_the_face_config_fields():
    space = SearchSpace.default()
    assert space.names == ["lr", "batch_size", "embedding_dim", "margin", "weight_decay", "freeze_epochs"]
    assert space.params["lr"] == LogUniform(1e-4, 1e-2)
    assert space.params["batch_size"] == Categorical((32, 64, 128))
    assert space.params["embedding_dim"] == Categorical((64, 128, 256))
    assert space.params["margin"] == Uniform(0.5, 2.0)
    assert space.params["freeze_epochs"] == IntRange(0, 2, 1)
    # Round trip through the YAML form.
    assert SearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize("spec, message", [
    ({"type": "gaussian", "low": 0, "high": 1}, "unknown distribution type 'gaussian'"),
    ({"low": 0, "high": 1}, "expected a mapping with a 'type'"),
    ({"type": "loguniform", "low": 0.0, "high": 1.0}, "0 < low <= high"),
    ({"type": "loguniform", "low": 1e-2, "high": 1e-4}, "0 < low <= high"),
    ({"type": "uniform", "low": 2.0, "high": 0.5}, "low <= high"),
    ({"type": "uniform", "low": "abc", "high": 1}, "low must be a number"),
    ({"type": "uniform", "low": 0}, "missing 'high'"),
    ({"type": "int", "low": 0, "high": 5, "step": 2}, "multiple of step"),
    ({"type": "int", "low": 0.5, "high": 5}, "must be an integer"),
    ({"type": "int", "low": 0, "high": 2, "step": 0}, "step must be >= 1"),
    ({"type": "categorical", "choices": []}, "non-empty list"),
    ({"type": "categorical", "choices": [32, 32]}, "duplicate"),
    ({"type": "categorical", "choices": [[1, 2]]}, "not a number, string or boolean"),
    ({"type": "uniform", "low": 0, "high": 1, "log": True}, "unknown key(s) log"),
])
def test_bad_distribution_is_an_error_naming_the_parameter(spec, message):
    with pytest.raises(CnnlabError) as err:
        SearchSpace.from_dict({"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}, "margin": spec})
    assert "'margin'" in str(err.value) and message in str(err.value)


def test_yaml_exponent_without_decimal_point_is_a_number(tmp_path):
    # PyYAML reads 1e-4 as the string "1e-4"; a search space file written that way still works.
    path = tmp_path / "space.yaml"
    path.write_text("lr: {type: loguniform, low: 1e-4, high: 1e-2}\n")
    assert SearchSpace.from_yaml(path).params["lr"] == LogUniform(1e-4, 1e-2)


def test_missing_space_file_is_a_cnnlab_error(tmp_path):
    with pytest.raises(CnnlabError, match="not found"):
        SearchSpace.from_yaml(tmp_path / "nope.yaml")


def test_storage_password_is_not_written():
    assert "secret" not in redact("postgresql://tuner:secret@db.example:5432/optuna")
    assert redact("sqlite:///a/b.db") == "sqlite:///a/b.db"


# ----------------------------------------------------------------------------- sharing a study

WORKER = textwrap.dedent("""
    import json, math, os, sys, time
    from pathlib import Path
    from cnnlab.tune import SearchSpace, run_study

    storage, barrier, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    first = [True]

    def objective(params, report_epoch):
        if first[0]:
            # Each worker's first trial waits until both workers are inside a trial, so the
            # test really runs them concurrently on the one study.
            first[0] = False
            (barrier / str(os.getpid())).touch()
            deadline = time.monotonic() + 60
            while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(0.1)
        return (1.0 - (math.log10(params["lr"]) + 3.0) ** 2 - (params["margin"] - 1.0) ** 2
                + params["embedding_dim"] / 1000.0 - 0.01 * params["freeze_epochs"])

    result = run_study(objective, SearchSpace.default(), trials=6, storage=storage, study_name="shared",
                       out_dir=out, seed=0, write_files=False)
    print(json.dumps(result.ran_here))
""")


def test_two_worker_processes_complete_the_total_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [subprocess.Popen([sys.executable, str(script), storage, str(barrier), str(tmp_path / f"w{i}")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err
    ran = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(ran), f"both workers must run trials: {ran}"
    assert sorted(ran[0] + ran[1]) == list(range(6)), ran  # each trial run by exactly one worker

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 6 and {t.number for t in trials} == set(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    for t in trials:
        assert t.value == pytest.approx(synthetic_score(t.params))

    # The same command again runs nothing and writes the summary of the whole study.
    final = run_study(cheap_objective, SearchSpace.default(), trials=6, storage=storage, study_name="shared",
                      out_dir=tmp_path / "summary", plots=False)
    assert final.ran_here == [] and final.counts["complete"] == 6
    assert [r["trial"] for r in final.rows] == sorted(range(6), key=lambda n: -trials[n].value)
    best = max(trials, key=lambda t: t.value)
    assert load_yaml(tmp_path / "summary" / "best.yaml") == best.params
    csv_lines = (tmp_path / "summary" / "trials.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("trial,state,score,lr,batch_size")


# ----------------------------------------------------------------------------- sampling

def first_configs(out_dir: Path, seed: int, sampler: str = "random", trials: int = 4) -> list[dict]:
    run_study(cheap_objective, SearchSpace.default(), trials=trials, out_dir=out_dir, seed=seed,
              sampler=sampler, plots=False)
    return [t.params for t in sorted(load_study(out_dir).get_trials(), key=lambda t: t.number)]


def test_seeded_random_sampler_proposes_the_same_first_configurations(tmp_path):
    a = first_configs(tmp_path / "a", seed=7)
    b = first_configs(tmp_path / "b", seed=7)
    other = first_configs(tmp_path / "c", seed=8)
    assert a == b
    assert a != other
    assert len({json.dumps(p, sort_keys=True) for p in a}) == len(a)
    space = SearchSpace.default()
    for params in a:
        assert 1e-4 <= params["lr"] <= 1e-2 and 0.5 <= params["margin"] <= 2.0
        assert params["batch_size"] in (32, 64, 128) and params["freeze_epochs"] in (0, 1, 2)
        assert set(params) == set(space.names)


def test_tpe_starts_with_the_seeded_random_configurations_then_models(tmp_path):
    """TPE's 10 start-up trials are the seeded random ones; after them it proposes from its
    model, not the random sequence (so "tpe" is not the random sampler under another name)."""
    startup = _SeededStartupTPE().n_startup_trials
    tpe = first_configs(tmp_path / "tpe", seed=3, sampler="tpe", trials=startup + 2)
    rnd = first_configs(tmp_path / "rnd", seed=3, sampler="random", trials=startup + 2)
    assert tpe[:startup] == rnd[:startup]
    assert tpe[startup:] != rnd[startup:]


def test_unknown_sampler_and_pruner_are_errors(tmp_path):
    with pytest.raises(CnnlabError, match="unknown sampler 'grid'"):
        run_study(cheap_objective, SearchSpace.default(), trials=1, out_dir=tmp_path, sampler="grid")
    with pytest.raises(CnnlabError, match="unknown pruner 'hyperband'"):
        run_study(cheap_objective, SearchSpace.default(), trials=1, out_dir=tmp_path, pruner="hyperband")


# ----------------------------------------------------------------------------- failures, pruning

def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    calls = []

    def objective(params, report_epoch):
        calls.append(params)
        if len(calls) == 2:
            raise RuntimeError("out of memory at batch 128")
        return synthetic_score(params)

    result = run_study(objective, SearchSpace.default(), trials=4, out_dir=tmp_path, plots=False)
    assert len(calls) == 4
    assert result.counts["complete"] == 3 and result.counts["fail"] == 1
    failed = [r for r in result.rows if r["state"] == "fail"]
    assert failed[0]["trial"] == 1 and failed[0]["error"] == "RuntimeError: out of memory at batch 128"
    assert result.rows[-1]["state"] == "fail"  # failed trials sort after scored ones
    assert "out of memory at batch 128" in (tmp_path / "trials.md").read_text()
    assert load_study(tmp_path).trials[1].state == TrialState.FAIL


def test_a_worker_stops_after_repeated_failures_and_keeps_the_summary(tmp_path):
    def objective(params, report_epoch):
        raise FileNotFoundError("no such data folder")

    with pytest.raises(CnnlabError, match="2 trials in a row failed.*no such data folder"):
        run_study(objective, SearchSpace.default(), trials=10, out_dir=tmp_path, plots=False,
                  max_consecutive_failures=2)
    assert len(load_study(tmp_path).trials) == 2
    assert "no such data folder" in (tmp_path / "trials.md").read_text()
    assert not (tmp_path / "best.yaml").exists()


def test_non_finite_score_fails_the_trial(tmp_path):
    result = run_study(lambda p, r: float("nan"), SearchSpace.default(), trials=1, out_dir=tmp_path, plots=False)
    assert result.counts["fail"] == 1 and "non-finite" in result.rows[0]["error"]
    assert result.best_params is None


def reporting_objective(bad_call: int, calls: list):
    """Good trials climb to 0.9; call number `bad_call` stays at 0.1 from the first step."""
    def objective(params, report_epoch):
        calls.append(params)
        good = len(calls) != bad_call
        for step in range(4):
            report_epoch(step, 0.6 + 0.1 * step if good else 0.1)
        return 0.9 if good else 0.1
    return objective


def test_median_pruner_stops_a_clearly_bad_trial(tmp_path):
    calls = []
    result = run_study(reporting_objective(5, calls), SearchSpace.default(), trials=6, out_dir=tmp_path / "pruned",
                       pruner="median", plots=False)
    states = {r["trial"]: r["state"] for r in result.rows}
    assert states[4] == "pruned" and sum(s == "complete" for s in states.values()) == 5
    pruned = next(r for r in result.rows if r["trial"] == 4)
    assert pruned["steps"] == 2  # stopped at step 1, the first after the warm-up step
    assert pruned["score"] == pytest.approx(0.1)  # its last reported value

    # Without the pruner the same bad trial runs to the end.
    result = run_study(reporting_objective(5, []), SearchSpace.default(), trials=6, out_dir=tmp_path / "plain",
                       plots=False)
    assert result.counts["complete"] == 6


# ----------------------------------------------------------------------------- resume, safety

def test_interrupted_trial_is_replaced_on_rerun(tmp_path):
    calls = []

    def objective(params, report_epoch):
        calls.append(params)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return synthetic_score(params)

    with pytest.raises(KeyboardInterrupt):
        run_study(objective, SearchSpace.default(), trials=3, out_dir=tmp_path, plots=False)
    assert "interrupted" in (tmp_path / "trials.md").read_text()  # the summary is still written
    result = run_study(objective, SearchSpace.default(), trials=3, out_dir=tmp_path, plots=False)
    assert result.ran_here == [2, 3]
    assert result.counts["complete"] == 3 and result.counts["fail"] == 1
    # The interrupted configuration is not lost: the resumed study runs it first.
    trials = load_study(tmp_path).trials
    assert calls[2] == calls[1] and trials[2].params == trials[1].params
    assert trials[1].user_attrs["abandoned"] and trials[2].system_attrs["retry_history"] == [1]


def test_trial_of_a_dead_local_worker_is_failed_and_replaced(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    study = optuna.create_study(study_name="faces", storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    orphan = study.ask()
    orphan.set_user_attr("worker", worker_id().rsplit(":", 1)[0] + f":{dead_pid}")

    messages = []
    result = run_study(cheap_objective, SearchSpace.default(), trials=2, out_dir=tmp_path, plots=False,
                       log=messages.append)
    assert result.counts["complete"] == 2 and result.counts["fail"] == 1 and result.counts["running"] == 0
    assert "died during the trial" in next(r for r in result.rows if r["trial"] == 0)["error"]
    assert len(messages) == 1 and messages[0].startswith("trial 0: worker ") and "run again" in messages[0]
    assert load_study(tmp_path).trials[1].system_attrs["retry_history"] == [0]  # its re-run


def test_workers_of_one_study_must_share_the_space(tmp_path):
    run_study(cheap_objective, SearchSpace.default(), trials=1, out_dir=tmp_path, plots=False)
    other = SearchSpace.from_dict({**SearchSpace.default().to_dict(),
                                   "margin": {"type": "uniform", "low": 0.1, "high": 3.0}})
    with pytest.raises(CnnlabError, match="different search space"):
        run_study(cheap_objective, other, trials=2, out_dir=tmp_path, plots=False)


def test_base_config_may_not_fix_a_tuned_parameter(tmp_path):
    with pytest.raises(CnnlabError, match="fixes lr"):
        run_study(cheap_objective, SearchSpace.default(), trials=1, out_dir=tmp_path, base_config={"lr": 0.1})


def test_summary_files(tmp_path):
    result = run_study(cheap_objective, SearchSpace.default(), trials=3, out_dir=tmp_path, seed=1,
                       base_config={"epochs": 2, "protocol": "view1"})
    for name in ("trials.csv", "trials.md", "best.yaml", "study.yaml", "environment.json", "importances.json",
                 "score_vs_params.png", "history.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    best = load_yaml(tmp_path / "best.yaml")
    assert best == {"epochs": 2, "protocol": "view1", **result.best_params}
    assert result.best_value == max(r["score"] for r in result.rows)
    study_yaml = load_yaml(tmp_path / "study.yaml")
    assert study_yaml["study"]["trials"] == 3 and study_yaml["study"]["sampler"] == "random"
    assert study_yaml["search_space"]["lr"] == {"type": "loguniform", "low": 1e-4, "high": 1e-2}
    assert "optuna" in json.loads((tmp_path / "environment.json").read_text())
    md = (tmp_path / "trials.md").read_text()
    assert "| trial | state | validation score | lr |" in md


def test_parameter_importances_name_what_the_score_depends_on(tmp_path):
    # synthetic_score is quadratic in log10(lr) and margin, nearly flat in embedding_dim and
    # freeze_epochs, and ignores batch_size and weight_decay.
    run_study(cheap_objective, SearchSpace.default(), trials=24, out_dir=tmp_path, seed=0, plots=False)
    record = json.loads((tmp_path / "importances.json").read_text())
    shares = record["importances"]
    assert record["completed_trials"] == 24 and set(shares) == set(SearchSpace.default().names)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert set(list(shares)[:2]) == {"lr", "margin"}  # largest first
    assert shares["batch_size"] < 0.1 and shares["weight_decay"] < 0.1
    assert "Parameter importances (optuna's fANOVA over the 24 completed trials" in (tmp_path / "trials.md").read_text()


def test_parameter_importances_wait_for_enough_completed_trials(tmp_path):
    run_study(cheap_objective, SearchSpace.default(), trials=3, out_dir=tmp_path, plots=False)
    assert json.loads((tmp_path / "importances.json").read_text())["importances"] is None
    assert "not estimated (3 completed trials, fANOVA needs 8)" in (tmp_path / "trials.md").read_text()


def test_trial_config_sets_dotted_names_inside_sections():
    base = {"train": {"epochs": 2, "lr": 0.1}, "protocol": "view1"}
    config = trial_config(base, {"train.lr": 0.003, "model.embedding_dim": 64, "margin": 1.5})
    assert config == {"train": {"epochs": 2, "lr": 0.003}, "protocol": "view1",
                      "model": {"embedding_dim": 64}, "margin": 1.5}
    assert base["train"]["lr"] == 0.1  # the base config is not modified
    with pytest.raises(CnnlabError, match="'protocol' is not a section"):
        trial_config(base, {"protocol.x": 1})


# ----------------------------------------------------------------------------- the final test score

def test_final_test_runs_once_per_study_with_the_best_config(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tested = []

    def test_best(config, run_dir):
        tested.append((config, run_dir))
        return {"auc": 0.93, "accuracy": 0.87}

    result = run_study(cheap_objective, SearchSpace.default(), trials=3, out_dir=tmp_path, plots=False,
                       base_config={"epochs": 2})
    assert result.complete
    record = final_test(result, storage, test_best)
    assert tested == [({"epochs": 2, **result.best_params}, tmp_path / f"test-trial-{result.best_trial}")]
    assert record == {"trial": result.best_trial, "validation": {"validation score": result.best_value},
                      "test": {"auc": 0.93, "accuracy": 0.87}}
    assert json.loads((tmp_path / "test.json").read_text()) == record

    # A rerun (or another worker) reports the stored numbers instead of testing again.
    again = run_study(cheap_objective, SearchSpace.default(), trials=3, out_dir=tmp_path / "again",
                      storage=storage, plots=False, base_config={"epochs": 2})
    assert final_test(again, storage, test_best) == record and len(tested) == 1
    assert final_test(again, storage, test_best, retest=True) == record and len(tested) == 2


def test_final_test_waits_for_a_complete_study_and_a_single_claim(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    calls = []
    result = run_study(cheap_objective, SearchSpace.default(), trials=2, out_dir=tmp_path, plots=False)
    result.complete = False  # e.g. other workers still running trials
    assert final_test(result, storage, lambda c, d: calls.append(c) or {}) is None
    result.complete = True
    marker = f"faces:test_of_trial_{result.best_trial}"
    optuna.create_study(study_name=marker, storage=storage)  # another worker claimed the test run
    assert final_test(result, storage, lambda c, d: calls.append(c) or {}) is None and calls == []
    optuna.delete_study(study_name=marker, storage=storage)  # ...and died

    def broken(config, run_dir):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        final_test(result, storage, broken)
    # The failed attempt released its claim, so the next run computes the score.
    assert final_test(result, storage, lambda c, d: {"auc": 0.5})["test"] == {"auc": 0.5}


# ----------------------------------------------------------------------------- the real face trainer

# Every trial trains the real Siamese network through the shared engine, on tiny synthetic
# identities (tests/test_faces_train.py's fake LFW tree): one epoch with the backbone frozen, so
# the trainer caches the random backbone's features once and each trial trains only the head.
TINY_RECIPE = ("weights: none\ninput_size: 32\ncrop: 48\nk: 2\nbatch_size: 16\nepochs: 1\nfreeze_epochs: 1\n"
               "val_fraction: 0.25\nval_pairs: 20\neval_batch_size: 64\nprogress: false\n"
               "align: false\nminer: random\nflip_tta: false\n")
TINY_SPACE = ("lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}\n"
              "margin: {type: uniform, low: 0.5, high: 2.0}\n"
              "embedding_dim: {type: categorical, choices: [8, 16]}\n"
              "weight_decay: {type: loguniform, low: 1.0e-5, high: 1.0e-2}\n")
TEST_FILES = ("pairsDevTest.txt", "peopleDevTest.txt", "pairs.txt", "people.txt")


def tune_args(tmp_path: Path, lfw: Path, out: Path, *more: str) -> list[str]:
    (tmp_path / "recipe.yaml").write_text(TINY_RECIPE)
    (tmp_path / "space.yaml").write_text(TINY_SPACE)
    return ["faces", "tune", "--data", str(lfw), "--out", str(out), "--config", str(tmp_path / "recipe.yaml"),
            "--space", str(tmp_path / "space.yaml"), "--device", "cpu", "--preset", "lfw", *more]


@pytest.mark.slow
def test_two_workers_tune_the_real_trainer_without_reading_the_test_pairs(tmp_path, capsys):
    import shutil

    from cnnlab.cli import main
    from test_faces_train import make_fake_lfw

    source = make_fake_lfw(tmp_path / "source")
    lfw = tmp_path / "lfw"
    shutil.copytree(source, lfw)
    for name in TEST_FILES:  # unreadable as files: any attempt to parse one fails
        (lfw / name).unlink()
        (lfw / name).mkdir()
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    common = ["--trials", "6", "--storage", storage, "--study", "tiny"]
    workers = [subprocess.Popen([sys.executable, "-m", "cnnlab", *tune_args(tmp_path, lfw, tmp_path / f"w{i}", *common,
                                                                            "--no-test")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == TrialState.COMPLETE and 0.0 <= t.value <= 1.0 for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    for t in trials:
        run = tmp_path / f"w{0 if (tmp_path / 'w0' / 'trials' / f'trial-{t.number:04d}').is_dir() else 1}"
        metrics = json.loads((run / "trials" / f"trial-{t.number:04d}" / "metrics.json").read_text())
        assert metrics["test"] is None and metrics["validation"]["auc"] == pytest.approx(t.value)

    # The summary of the whole study; scoring the winner on DevTest is the first (and only)
    # thing that reads the test pairs, so it fails while they are unreadable...
    out = tmp_path / "summary"
    assert main(tune_args(tmp_path, lfw, out, *common)) == 2
    assert "DevTest.txt" in capsys.readouterr().err
    best = max(trials, key=lambda t: t.value)
    config = load_yaml(out / "best.yaml")
    assert {k: config[k] for k in best.params} == best.params and config["epochs"] == 1
    assert "device" not in config
    assert len((out / "trials.csv").read_text().splitlines()) == 7

    # ...and once they are back it trains the best configuration once and scores it.
    for name in TEST_FILES:
        (lfw / name).rmdir()
        shutil.copy(source / name, lfw / name)
    assert main(tune_args(tmp_path, lfw, out, *common)) == 0
    record = json.loads((out / "test.json").read_text())
    assert record["trial"] == best.number and record["test"]["n_pairs"] == 16
    assert record["validation"]["validation AUC"] == pytest.approx(best.value)
    assert "View 1 DevTest, scored once after tuning" in capsys.readouterr().out


def test_tune_command_rejects_a_tuned_field_set_by_a_flag_or_unknown_names(tmp_path, capsys):
    from cnnlab.cli import main

    assert main(tune_args(tmp_path, tmp_path / "lfw", tmp_path / "out", "--lr", "0.01")) == 2
    assert "lr set by a flag or --config but tuned by the search space" in capsys.readouterr().err
    (tmp_path / "bad_space.yaml").write_text("learning_rate: {type: uniform, low: 0.1, high: 0.2}\n")
    args = tune_args(tmp_path, tmp_path / "lfw", tmp_path / "out")
    args[args.index("--space") + 1] = str(tmp_path / "bad_space.yaml")
    assert main(args) == 2
    assert "'learning_rate' is not a face train config field" in capsys.readouterr().err


def test_workers_of_one_study_must_share_the_base_recipe(tmp_path):
    run_study(cheap_objective, SearchSpace.default(), trials=1, out_dir=tmp_path, plots=False,
              base_config={"epochs": 2, "input_size": 112})
    with pytest.raises(CnnlabError, match="different base train config .*differs in epochs"):
        run_study(cheap_objective, SearchSpace.default(), trials=2, out_dir=tmp_path, plots=False,
                  base_config={"epochs": 3, "input_size": 112})


# ----------------------------------------------------------------------------- library and command

def test_library_messages_go_to_the_log_callable_not_to_print(tmp_path, capsys):
    def objective(params, report_epoch):
        raise RuntimeError("no such device")

    messages = []
    result = run_study(objective, SearchSpace.default(), trials=1, out_dir=tmp_path, plots=False,
                       log=messages.append, progress=False)
    assert result.counts["fail"] == 1
    assert messages == ["trial 0 failed: RuntimeError: no such device"]
    assert capsys.readouterr() == ("", "")


def test_final_test_tells_the_log_when_another_worker_holds_the_claim(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = run_study(cheap_objective, SearchSpace.default(), trials=1, out_dir=tmp_path, plots=False)
    optuna.create_study(study_name=f"faces:test_of_trial_{result.best_trial}", storage=storage)
    messages = []
    assert final_test(result, storage, lambda c, d: {}, log=messages.append) is None
    assert len(messages) == 1 and f"test score of trial {result.best_trial}" in messages[0]


def test_face_base_config_drops_tuned_and_where_to_run_fields():
    from cnnlab.core.config import RUN_ONLY_FIELDS
    from cnnlab.tune import face_base_config

    space = SearchSpace.default()
    resolved = {"epochs": 2, "device": "cpu", "progress": False, **{name: 1 for name in space.names}}
    base = face_base_config(space, {"epochs"}, lambda: resolved)
    assert base == {"epochs": 2}
    assert not set(base) & set(RUN_ONLY_FIELDS)
    with pytest.raises(CnnlabError, match="lr set by a flag or --config"):
        face_base_config(space, {"lr"}, lambda: resolved)


def test_faces_tune_help_lists_the_study_and_recipe_flags(capsys):
    from cnnlab.cli import main

    with pytest.raises(SystemExit) as done:
        main(["faces", "tune", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--trials", "--storage", "--study", "--sampler", "--pruner", "--space", "--out", "--data",
                 "--no-test", "--retest", "--config", "--preset", "--lr", "--device"):
        assert flag in text, flag


def test_a_broken_tuner_is_an_error_not_a_missing_command(monkeypatch):
    import cnnlab.cli.tune
    from cnnlab.cli import build_parser

    def broken(faces_commands):
        raise ImportError("the tuner is broken")

    monkeypatch.setattr(cnnlab.cli.tune, "register", broken)
    with pytest.raises(ImportError, match="the tuner is broken"):
        build_parser()


def test_the_tuner_library_has_no_cli_argparse_or_print():
    import ast

    import cnnlab.tune

    for path in Path(cnnlab.tune.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n == "argparse" or n.startswith("cnnlab.cli") for n in names), (path.name, names)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"{path.name}:{node.lineno}"


def test_the_recipe_space_types_and_ranges():
    """`--space recipe`: the current face recipe's knobs, each a face train config field, each
    sampled value a config the recipe accepts (batch shape from batch_size x k)."""
    import dataclasses

    from cnnlab.core.config import build_config
    from cnnlab.tasks.faces import FaceTrainConfig
    space = SearchSpace.resolve("recipe")
    assert space.names == ["lr", "batch_size", "k", "embedding_dim", "margin", "miner_negatives", "weight_decay",
                           "trainable_stages"]
    assert space.params["lr"] == LogUniform(3e-4, 3e-3)
    assert space.params["batch_size"] == Categorical((64, 128)) and space.params["k"] == Categorical((4, 8))
    assert space.params["embedding_dim"] == Categorical((64, 128, 256, 512))
    assert space.params["margin"] == Uniform(0.5, 2.0)
    assert space.params["miner_negatives"] == IntRange(1, 4, 1)
    assert space.params["weight_decay"] == LogUniform(1e-3, 1e-1)
    assert space.params["trainable_stages"] == Categorical((3, 4, 5))
    fields = {f.name for f in dataclasses.fields(FaceTrainConfig)}
    assert set(space.names) <= fields
    defaults = FaceTrainConfig()
    assert defaults.lr >= 3e-4 and defaults.weight_decay <= 1e-1 and defaults.trainable_stages in (3, 4, 5)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(20):
        trial = study.ask(space.distributions())
        config = build_config(FaceTrainConfig, dict(trial.params))  # every sample is a valid recipe
        assert config.people_per_batch * config.k == config.batch_size and config.people_per_batch >= 8
        study.tell(trial, 0.0)
    assert SearchSpace.resolve(None).names == SearchSpace.default().names
    with pytest.raises(CnnlabError, match="unknown search space 'fast'; packaged: default, recipe"):
        SearchSpace.resolve("fast")


def test_the_demo_preset_takes_the_recipe_study_best_trial():
    """`make demo`'s face preset uses the committed study's winner (docs/tune/best.yaml) to the
    digits that matter: each value admissible in the recipe space it was picked from, and the
    rest of the preset (people, size, epochs) what BENCHMARKS times."""
    from cnnlab.tasks.faces import FaceTrainConfig, preset_config
    from cnnlab.tasks.faces.config import DEMO_TUNED
    space = SearchSpace.resolve("recipe")
    assert set(DEMO_TUNED) == set(space.names)
    for name, value in DEMO_TUNED.items():
        dist = space.params[name]
        if isinstance(dist, Categorical):
            assert value in dist.choices, name
        elif isinstance(dist, IntRange):
            assert dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0, name
        else:
            assert dist.low <= value <= dist.high, name
    best = load_yaml(Path(__file__).parents[1] / "docs" / "tune" / "best.yaml")
    for name, value in DEMO_TUNED.items():
        assert value == pytest.approx(best[name], rel=0.03), name  # rounded, not changed
    demo = preset_config("demo")
    assert (demo.epochs, demo.input_size, demo.train_people, demo.test_images) == (12, 128, 400, "pairs")
    assert all(getattr(demo, name) == value for name, value in DEMO_TUNED.items())
    default = FaceTrainConfig()  # the full recipe keeps its own knobs: the winner lost at 15 epochs
    assert (default.lr, default.embedding_dim, default.trainable_stages) == (1e-3, 128, 4)
