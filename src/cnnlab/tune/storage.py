"""Where a study lives and who works on it: the RDB storage the workers share (SQLite on one
machine, PostgreSQL or MySQL across several), the lock they claim trials under, and worker ids.
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.core.errors import CnnlabError


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The optuna storage at `url`; a missing driver or an unreachable database is a CnnlabError."""
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Several processes write one SQLite file: wait for its lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
        _prepare_sqlite(url)
    last: Exception | None = None
    # Workers started together race to create the schema of a new database; the losers see
    # "table already exists" or a locked file and simply retry.
    for attempt in range(8):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as exc:
            raise CnnlabError(f"storage {redact(url)} needs a database driver: {exc}") from None
        except Exception as exc:  # sqlalchemy errors differ per backend
            last = exc
            time.sleep(0.05 + random.random() * 0.2 * (attempt + 1))
    raise CnnlabError(f"cannot open storage {redact(url)}: {str(last).splitlines()[0] if last else ''}")


def _prepare_sqlite(url: str) -> None:
    """Create the folder of a SQLite file and switch it to write-ahead logging: readers do not
    block the writer, and a commit costs one sync instead of three (what that buys: see
    docs/tuning.md). WAL needs a local disk, which is where SQLite studies belong anyway."""
    import sqlite3

    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=60)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # WAL is persistent: another worker switching it at the same moment is enough


def redact(url: str) -> str:
    """The storage URL without its password, for logs and study.yaml."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class StudyLock:
    """Mutual exclusion between workers, kept in the optuna storage itself (optuna has no lock
    of its own; its workers only ever add trials, these also recover other workers' trials).

    Creating a study is atomic (study names are unique in every RDB backend), so the worker
    that creates `<study>:lock` (`optuna.create_study`) holds the lock and deleting it
    (`optuna.delete_study`) releases it. It is held for the
    few milliseconds it takes to count the trials and create the next one. A holder that died
    inside that window would leave the lock behind; a worker that has waited `stale_after`
    seconds therefore removes it.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, stale_after: float = 60.0):
        self.storage = storage
        self.name = f"{study_name}:lock"
        self.stale_after = stale_after

    def __enter__(self) -> StudyLock:
        waited_since = time.monotonic()
        while True:
            try:
                optuna.create_study(storage=self.storage, study_name=self.name)
                return self
            except optuna.exceptions.DuplicatedStudyError:
                pass
            except optuna.exceptions.StorageInternalError:
                pass  # a busy database: try again
            if time.monotonic() - waited_since > self.stale_after:
                self._remove()
                waited_since = time.monotonic()
            time.sleep(0.005 + random.random() * 0.05)

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for _ in range(20):
            try:
                optuna.delete_study(study_name=self.name, storage=self.storage)
                return
            except KeyError:
                return
            except optuna.exceptions.StorageInternalError:
                time.sleep(0.05)


def worker_id() -> str:
    """`host:pid`, stored on each trial: the trials table shows who ran what, and a worker on
    the same host can tell that the process of a RUNNING trial has died."""
    return f"{socket.gethostname()}:{os.getpid()}"


# A running trial's heartbeat: a worker on another machine cannot look its process up, only
# see that it stopped writing the time into the trial. Ten silent minutes (ten missed beats,
# and room for clocks that disagree by minutes) mean the worker is gone.
HEARTBEAT = "heartbeat"          # user attr: time.time() of the worker's last beat
HEARTBEAT_INTERVAL = 60.0
STALE_AFTER = 600.0


class Heartbeat:
    """`with Heartbeat(trial):` around a trial: a daemon thread writes the time into the trial's
    `heartbeat` attribute (`Trial.set_user_attr`) now and every `interval` seconds until the block
    ends. Optuna's own heartbeat (`RDBStorage(heartbeat_interval=...)`) "is supposed to be used
    with optimize(); if you use ask() and tell() instead, it will not work" (its documentation),
    and these workers ask and tell, so that several can share one study."""

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_INTERVAL):
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cnnlab-heartbeat-{trial.number}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        # A database hiccup must not end the trial: the next beat tries again, and only ten
        # minutes of failures would make other workers give the trial up.
        with contextlib.suppress(Exception):
            self.trial.set_user_attr(HEARTBEAT, time.time())


def dead_trials(study: optuna.Study, stale_after: float = STALE_AFTER,
                now: float | None = None) -> list[tuple[FrozenTrial, str]]:
    """RUNNING trials that can never finish, each with what happened to its worker: a process
    on this host that no longer exists ("died"), or a worker anywhere whose last heartbeat is
    older than `stale_after` seconds (`cnnlab.tune.recovery` fails them and runs their
    parameters again). A trial without a heartbeat (an older cnnlab) is judged by its process only."""
    host = socket.gethostname()
    now = time.time() if now is None else now
    dead = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if name == host and pid.isdigit():  # this host's process table is the better witness
            if int(pid) != os.getpid() and not _pid_alive(int(pid)):
                dead.append((trial, "died during the trial"))
            continue
        beat = trial.user_attrs.get(HEARTBEAT)
        if isinstance(beat, (int, float)) and now - beat > stale_after:
            dead.append((trial, f"sent no heartbeat for {(now - beat) / 60:.0f} min"))
    return dead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process whose parent has not reaped it yet (a zombie) still answers kill(0),
    # but will never run again; Linux says so in /proc.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:stat.rfind(")") + 3] not in ("Z", "X")
