"""A tuning trial whose worker died (kill -9, the out-of-memory killer) or that was interrupted:
its parameters run again as a new trial, it does not count towards --trials, and no weights stay
in its folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cnnlab.tune import SearchSpace, run_study, worker_id
from cnnlab.tune.recovery import MAX_RUNS, recover_dead_trials
from cnnlab.tune.results import outcome_attrs
from cnnlab.tune.storage import HEARTBEAT, Heartbeat, _pid_alive

# Two workers of one study, both running the real FaceTrainer objective (run folders, weight
# cleanup) around a stand-in for the face trainer that writes what the real one writes.
WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path

    import cnnlab.tasks.faces
    from cnnlab.tune import FaceTrainer, SearchSpace, run_study

    storage, out, role, signals = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

    def wait_for(name):
        deadline = time.monotonic() + 120
        while not (signals / name).exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def fake_train_view1(config, data_root, run_dir, *, evaluate_test, report_epoch, log, features):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text("{}\\n")
        (run_dir / "checkpoint.pt").write_bytes(b"weights" * 1000)
        if role == "dies":
            (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # killed mid-write
            (signals / "a-started").touch()
            time.sleep(600)  # SIGKILL arrives here
        elif not (signals / "b-started").exists():
            (signals / "b-started").touch()
            wait_for("killed")  # the first trial of B ends only after A was killed
        (run_dir / "model.pt").write_bytes(b"model")
        auc = config.lr * 10 + config.margin / 10 + config.embedding_dim / 1000
        return {"validation": {"auc": auc}, "selection_auc": auc}

    cnnlab.tasks.faces.train_view1 = fake_train_view1
    trainer = FaceTrainer({}, out / "no-data", out, device="cpu", progress=False)
    result = run_study(trainer.objective, SearchSpace.default(), trials=3, storage=storage, study_name="kill",
                       out_dir=out, write_files=False, progress=False,
                       log=lambda message: print("LOG", message, file=sys.stderr, flush=True))
    print(json.dumps(result.ran_here))
""")


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"worker exited ({process.returncode}) before {path.name}: {process.communicate()[1]}")
        assert time.monotonic() < deadline, f"timed out waiting for {path.name}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_parameters_rerun_and_its_weights_deleted(tmp_path):
    script, signals, out = tmp_path / "worker.py", tmp_path / "signals", tmp_path / "tune"
    script.write_text(WORKER)
    signals.mkdir()
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def start(role):
        return subprocess.Popen([sys.executable, str(script), storage, str(out), role, str(signals)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a, b = start("dies"), None
    try:
        wait_for(signals / "a-started", a)  # A is inside trial 0
        b = start("survives")
        wait_for(signals / "b-started", b)  # B is inside trial 1
        a.kill()  # SIGKILL: no finally, no cleanup, the trial stays RUNNING in the storage
        a.communicate()
        assert a.returncode == -signal.SIGKILL
        assert (out / "trials" / "trial-0000" / "checkpoint.pt").is_file()  # what the dead worker left
        (signals / "killed").touch()
        stdout, stderr = b.communicate(timeout=120)
        assert b.returncode == 0, stderr
    finally:
        for worker in (a, b):
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.communicate()

    # B finished its trial, found trial 0's worker dead, ran trial 0's parameters as trial 2,
    # then one new trial: 3 trials count, the abandoned one does not.
    assert json.loads(stdout.strip().splitlines()[-1]) == [1, 2, 3]
    assert f"trial 0: worker {worker_id().rsplit(':', 1)[0]}:{a.pid} died during the trial; " \
           f"its parameters run again" in stderr
    trials = sorted(optuna.load_study(study_name="kill", storage=storage).get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    dead, rerun = trials[0], trials[2]
    recorded = outcome_attrs(optuna.load_study(study_name="kill", storage=storage), dead)  # on the study
    assert recorded["abandoned"] is True and "died during the trial" in recorded["error"]
    assert rerun.params == dead.params and rerun.params != trials[1].params != trials[3].params
    assert rerun.system_attrs["retry_history"] == [0] and rerun.system_attrs["failed_trial"] == 0
    assert rerun.value == pytest.approx(rerun.params["lr"] * 10 + rerun.params["margin"] / 10
                                        + rerun.params["embedding_dim"] / 1000)

    # No weights in any trial folder, the dead one included; its metrics and log stay.
    left = sorted(p.relative_to(out).as_posix() for p in (out / "trials").rglob("*") if p.is_file())
    assert not [p for p in left if p.endswith(".pt") or "/.checkpoint.pt." in p], left
    assert "trials/trial-0000/metrics.jsonl" in left and "trials/trial-0002/log.txt" in left

    # The study is complete: the same command again runs nothing.
    result = run_study(lambda params, report_epoch: 0.0, SearchSpace.default(), trials=3, storage=storage,
                       study_name="kill", out_dir=tmp_path / "summary", plots=False)
    assert result.ran_here == [] and result.complete
    assert result.counts["complete"] == 3 and result.counts["fail"] == 1 and result.counts["waiting"] == 0


@pytest.fixture
def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_configuration_whose_worker_keeps_dying_is_failed_for_good(tmp_path, dead_pid):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="faces", storage=storage, direction="maximize")
    space = SearchSpace.default()
    dead_worker = f"{worker_id().rsplit(':', 1)[0]}:{dead_pid}"
    trial = study.ask(space.distributions())
    params = dict(trial.params)
    for run in range(1, MAX_RUNS + 1):
        trial.set_user_attr("worker", dead_worker)
        messages = recover_dead_trials(study)
        assert len(messages) == 1 and messages[0].startswith(f"trial {trial.number}: worker {dead_worker} died")
        if run < MAX_RUNS:
            assert messages[0].endswith("its parameters run again")
            trial = study.ask(space.distributions())  # takes the queued re-run
            assert trial.params == params
    assert f"as in all {MAX_RUNS} runs of these parameters; not run again" in messages[0]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * MAX_RUNS
    assert [outcome_attrs(study, t).get("abandoned", False) for t in trials] == [True] * (MAX_RUNS - 1) + [False]
    assert recover_dead_trials(study) == []  # nothing left to recover, nothing queued

    # The last failure counts towards the total like any failed trial: one more trial makes 2.
    result = run_study(lambda p, r: 1.0, space, trials=2, storage=storage, out_dir=tmp_path, plots=False)
    assert result.ran_here == [MAX_RUNS] and result.counts == {"complete": 1, "pruned": 0, "fail": MAX_RUNS,
                                                               "running": 0, "waiting": 0}


def test_an_unreaped_killed_worker_counts_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _pid_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(child.pid) and time.monotonic() < deadline:  # a zombie until waited for
            time.sleep(0.02)
        assert not _pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_worker_on_another_machine_is_dead_when_its_heartbeat_stops(tmp_path):
    """No process to look up on another host: a trial whose heartbeat is older than the stale
    limit is failed and its parameters queued again; a recent or absent heartbeat is left alone."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="faces", storage=storage, direction="maximize")
    space = SearchSpace.default()
    silent, beating, old_style = (study.ask(space.distributions()) for _ in range(3))
    for trial in (silent, beating, old_style):
        trial.set_user_attr("worker", "gpu-box-7:4242")
    silent.set_user_attr(HEARTBEAT, time.time() - 1200)
    beating.set_user_attr(HEARTBEAT, time.time() - 30)
    messages = recover_dead_trials(study, stale_after=600)
    assert messages == [f"trial {silent.number}: worker gpu-box-7:4242 sent no heartbeat for 20 min; "
                        "its parameters run again"]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[silent.number] == TrialState.FAIL
    assert states[beating.number] == states[old_style.number] == TrialState.RUNNING
    assert study.ask(space.distributions()).params == silent.params  # the queued re-run


def test_the_heartbeat_thread_beats_until_the_trial_ends(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="faces", storage=storage, direction="maximize")
    trial = study.ask(SearchSpace.default().distributions())
    def beat():  # read back through the public API, as another worker would
        return study.get_trials(deepcopy=False)[trial.number].user_attrs[HEARTBEAT]

    with Heartbeat(trial, interval=0.05):
        first = beat()
        deadline = time.monotonic() + 10
        while beat() == first:
            assert time.monotonic() < deadline, "no second beat"
            time.sleep(0.02)
    last = beat()
    time.sleep(0.2)
    assert beat() == last  # stopped


def test_a_trial_given_up_by_another_worker_is_dropped_and_the_study_goes_on(tmp_path):
    """This worker's machine was unreachable for too long: another worker failed its trial and
    queued the parameters. Its late result is dropped with a message, not a crash."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space, messages, calls = SearchSpace.default(), [], []

    def objective(params, report_epoch):
        calls.append(report_epoch.number)
        if len(calls) == 1:  # meanwhile, elsewhere: the trial is declared dead
            other = optuna.load_study(study_name="faces", storage=storage)
            trial_id = other.trials[0]._trial_id
            # As a worker on another host sees it: a foreign worker whose heartbeat stopped.
            other._storage.set_trial_user_attr(trial_id, "worker", "elsewhere:1")
            other._storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time() - 3600)
            assert recover_dead_trials(other, stale_after=600)
        return 0.5

    result = run_study(objective, space, trials=2, storage=storage, out_dir=tmp_path, plots=False,
                       log=messages.append)
    assert any("ended after another worker had given it up" in m for m in messages)
    assert result.counts["complete"] == 2 and len(calls) == 3

