"""Data-parallel training under torchrun (issue 15), tested with 2 CPU processes and gloo.

Pairs of processes forked from this one run `tests/ddp_worker.py` with the environment
torchrun gives its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): the
`resume` run twice (rank 1 kills itself with SIGKILL mid-epoch, then the same launch again),
the `checks` run once; the tests below read what they left. Forking skips the seconds each
fresh process spends importing torch; `cnnlab cifar train` under torchrun itself, one rank
killed with kill -9 and the command run again, is the recorded run in BENCHMARKS.md. The
sharding is also tested in this process, where a DistContext needs no process group.

Tolerance of the 2-process vs 1-process comparison: the network has no BatchNorm, the
augmentation and the samples of each step are the same (every rank draws the whole batch's
randomness), and DDP's mean of the two ranks' mean losses is the batch mean, so only float
summation order differs: weights agree to 1e-6 (absolute; measured 7e-8, for weights up to
0.5) after 18 SGD steps. With BatchNorm each rank normalises with its own half-batch's
statistics (unless --sync-bn on CUDA): that run is checked for agreement between the ranks
and with one process scoring its checkpoint, not with a one-process training run.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import ddp_worker
from cnnlab.core.env import distributed_setup, launch_ranks
from cnnlab.core.errors import CnnlabError
from cnnlab.data.loader import AugmentConfig, DeviceLoader, shard_sizes, shard_slice
from cnnlab.training.distributed import DistContext, sync_batchnorm
from cnnlab.training.engine import Engine, load_checkpoint

EPOCHS, STEPS = 3, ddp_worker.N_TRAIN // ddp_worker.BATCH


def _worker_process(rank: int, port: int, mode: str, out: Path) -> None:
    """One rank, as torchrun would start it; stdout and errors to OUT/probe/*-rank{r}.txt."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CNNLAB_CACHE=str(out / "cache"))
    code = 1
    with open(out / "probe" / f"stdout-rank{rank}.txt", "w") as stdout, \
            open(out / "probe" / f"stderr-rank{rank}.txt", "w") as stderr:
        sys.stdout, sys.stderr = stdout, stderr
        try:
            torch.set_num_threads(1)
            ddp_worker.main(mode, out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            stdout.flush()  # the CLI may have replaced sys.stdout by then
            stderr.flush()
            # A forked copy of pytest must not run pytest's exit handlers.
            os._exit(code)


def launch(mode: str, out: Path) -> list[int]:
    """Two ranks of the worker; their exit codes (0 = finished)."""
    (out / "probe").mkdir(parents=True, exist_ok=True)
    # What the workers import, imported here once: a forked child inherits it. (The first
    # optimizer a process builds imports torch._dynamo: seconds, each time, in a fresh one.)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    import cnnlab.cli  # noqa: F401
    import cnnlab.tasks.faces  # noqa: F401
    import test_faces_train  # noqa: F401
    with socket.socket() as s:  # a free port for the rendezvous (torchrun --standalone does the same)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_worker_process, args=(rank, port, mode, out)) for rank in (0, 1)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=240)
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in processes]


def errors(out: Path) -> str:
    return "\n".join((out / "probe" / f"stderr-rank{r}.txt").read_text()[-3000:] for r in (0, 1))


def probe(out: Path, name: str):
    return json.loads((out / "probe" / name).read_text())


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The same torchrun command twice: the first loses rank 1 to SIGKILL mid-epoch 3."""
    out = tmp_path_factory.mktemp("ddp-resume")
    first = launch("resume", out)
    epoch_after_kill = load_checkpoint(out / "run")["epoch"] if (out / "run" / "checkpoint.pt").is_file() else None
    second = launch("resume", out)
    assert second == [0, 0], errors(out)
    return out, first, epoch_after_kill


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-checks")
    assert launch("checks", out) == [0, 0], errors(out)
    return out, [probe(out, f"rank{r}-checks.json") for r in (0, 1)]


# ---------------------------------------------------------------------------- 2 processes
def test_killed_rank_then_the_same_command_finishes_from_the_last_checkpoint(resumed):
    out, first, epoch_after_kill = resumed
    assert first == [1, -9] and (out / "killed-once").is_file()  # rank 0 fails on the lost peer
    assert epoch_after_kill == 2  # killed during epoch 3: epochs 1 and 2 were saved
    rank0 = probe(out, "rank0-resume.json")
    assert rank0["resumed_from_epoch"] == 2 and probe(out, "rank1-resume.json")["resumed_from_epoch"] == 2
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > 0.5  # 4 classes: chance is 0.25


def test_only_rank_0_writes_one_checkpoint_and_one_metrics_log(resumed):
    out, _, _ = resumed
    names = sorted(p.name for p in (out / "run").iterdir())
    events = [n for n in names if n.startswith("events.out.tfevents.")]
    assert [n for n in names if n not in events] == ["checkpoint.pt", "config.yaml", "environment.json",
                                                     "final.json", "metrics.jsonl"]
    assert len(events) == 2  # one per launch: the resumed one appends a file, never rewrites
    assert not (out / "run-rank1").exists()  # rank 1 was handed its own folder and wrote nothing there
    env = json.loads((out / "run" / "environment.json").read_text())
    assert (env["world_size"], env["backend"]) == (2, "gloo")
    assert json.loads((out / "run" / "final.json").read_text())["world_size"] == 2


def test_the_ranks_see_every_training_sample_once_per_epoch(resumed):
    out, _, _ = resumed
    for epoch in range(EPOCHS):
        seen = [probe(out, f"seen-rank{r}-epoch{epoch}.json") for r in (0, 1)]
        assert len(seen[0]) == len(seen[1]) == ddp_worker.N_TRAIN // 2
        assert sorted(seen[0] + seen[1]) == list(range(ddp_worker.N_TRAIN)), epoch
    # A new permutation each epoch (seeded by the epoch), the same on both ranks.
    assert probe(out, "seen-rank0-epoch0.json") != probe(out, "seen-rank0-epoch1.json")


def test_ddp_checkpoint_loads_in_one_process_and_matches_a_one_process_run(resumed):
    out, _, _ = resumed
    state = load_checkpoint(out / "run")
    assert not [k for k in state["model"] if k.startswith("module.")]
    model = ddp_worker.plain_model()
    model.load_state_dict(state["model"])  # strict: every name as a plain model has it
    rank1 = probe(out, "rank1-resume.json")["weights"]
    for name, value in state["model"].items():  # DDP kept the ranks in step
        assert torch.equal(value, torch.tensor(rank1[name], dtype=value.dtype)), name

    torch.set_num_threads(1)
    single = Engine(ddp_worker.plain_config()).fit(ddp_worker.plain_model(), ddp_worker.plain_task())
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(state["model"][name], value, atol=1e-6, rtol=0, msg=name)
    two = [json.loads(line)["train_loss"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert two == pytest.approx([r["train_loss"] for r in single.history], abs=1e-5)


def test_tensorboard_events_of_a_resumed_ddp_run(resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, _, _ = resumed
    events = EventAccumulator(str(out / "run"))
    events.Reload()
    assert [e.step for e in events.Scalars("lr")] == list(range(1, EPOCHS * STEPS + 1))
    assert [e.step for e in events.Scalars("val_acc")] == [STEPS * (e + 1) for e in range(EPOCHS)]


def test_gather_rows_returns_the_batch_and_sums_each_ranks_gradient(checks):
    _, ranks = checks
    for rank in ranks:
        assert rank["gather"]["gathered_equal"]
        assert rank["gather"]["grad_ratio"] == pytest.approx([2.0] * len(rank["gather"]["grad_ratio"]))
    assert len(ranks[0]["gather"]["grad_ratio"]) == 9 and len(ranks[1]["gather"]["grad_ratio"]) == 6


def test_with_batchnorm_every_rank_evaluates_rank_0s_model(checks):
    out, ranks = checks
    assert ranks[0]["batchnorm"]["val"] == ranks[1]["batchnorm"]["val"]
    assert ranks[0]["batchnorm"]["train_loss"] == ranks[1]["batchnorm"]["train_loss"]  # all-reduced
    # ...and that is what one process scores with the checkpoint's weights and statistics.
    model = ddp_worker.plain_model(batchnorm=True)
    model.load_state_dict(load_checkpoint(out / "bn")["model"])
    torch.set_num_threads(1)
    scored = Engine(ddp_worker.plain_config()).evaluate(model, ddp_worker.plain_task().evaluate)
    assert scored["loss"] == pytest.approx(ranks[0]["batchnorm"]["val"][-1]["val_loss"], rel=1e-6)
    assert scored["acc"] == ranks[0]["batchnorm"]["val"][-1]["val_acc"]


def test_face_trainer_runs_under_ddp_from_cached_features_and_from_pixels(checks):
    out, ranks = checks
    faces = [r["faces"] for r in ranks]
    assert faces[0]["cached"]["trained_from_stage"] > 0 and faces[0]["pixels"]["trained_from_stage"] == 0
    for name in ("cached", "pixels"):
        assert faces[0][name]["test"] and not faces[1][name]["test"]  # rank 0 scores the test pairs
        assert faces[0][name]["val_auc"] == faces[1][name]["val_auc"]
        assert {"model.pt", "metrics.json", "checkpoint.pt", "metrics.jsonl"} <= {
            p.name for p in (out / f"faces-{name}").iterdir()}


def test_cifar_train_cli_under_torchrun_reports_once(checks):
    out, ranks = checks
    assert [r["cli_rc"] for r in ranks] == [0, 0]
    final = json.loads((out / "cli" / "final.json").read_text())
    assert "test_acc" in final and final["world_size"] == 2
    assert (out / "cli" / "embeddings_test.npz").is_file()
    assert "A: val " in (out / "probe" / "stdout-rank0.txt").read_text()
    assert (out / "probe" / "stdout-rank1.txt").read_text() == ""  # the other rank prints nothing


# ---------------------------------------------------------------------------- sharding, in-process
def test_shard_slices_cover_the_rows_once_in_rank_order():
    for n in (0, 1, 7, 16):
        for world_size in (1, 2, 3):
            parts = [list(range(n))[shard_slice(n, r, world_size)] for r in range(world_size)]
            assert sum(parts, []) == list(range(n))
            assert [len(p) for p in parts] == list(shard_sizes(n, world_size))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("augment", [AugmentConfig(crop_padding=2, flip=True, cutout=3), None])
def test_sharded_loader_yields_each_ranks_part_of_the_single_process_batch(augment):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(50)

    def loader(rank, world_size):
        return DeviceLoader(images, labels, 12, shuffle=True, augment=augment, seed=3, rank=rank,
                            world_size=world_size)

    single = list(loader(0, 1))
    ranks = [list(loader(r, 2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5
    for (x, y), (x0, y0), (x1, y1) in zip(single, *ranks):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert len(ranks[0][-1][1]) == 1 and len(ranks[1][-1][1]) == 1  # the last, partial batch splits too


def test_classification_refuses_a_batch_the_processes_cannot_share_equally():
    x = np.zeros((40, 8, 8, 3), np.uint8)
    y = np.arange(40) % 4
    from cnnlab.tasks.classification import ClassificationConfig, ClassificationTask
    with pytest.raises(CnnlabError, match="not divisible by the 3 processes"):
        ClassificationTask.from_arrays(x, y, x, y, ClassificationConfig(), batch_size=16, device="cpu",
                                       dist=DistContext(rank=0, world_size=3))
    task = ClassificationTask.from_arrays(x, y, x, y, ClassificationConfig(), batch_size=16, device="cpu",
                                          dist=DistContext(rank=1, world_size=2))
    assert (task.train.rank, task.train.world_size) == (1, 2) and task.val.world_size == 1


@pytest.mark.parametrize("cached", [False, True])
def test_face_batches_shard_the_images_but_keep_the_whole_batchs_labels(cached):
    from cnnlab.tasks.faces.features import PrefixFeatures
    from cnnlab.tasks.faces.task import FaceVerificationTask
    from test_faces_rules import synthetic_dataset, tiny_config
    dataset = synthetic_dataset([3, 2, 4, 2, 3, 2, 2, 3, 2, 2])
    rows = np.arange(len(dataset))
    fit, val = rows[dataset.labels < 7], rows[dataset.labels >= 7]
    config = tiny_config(batch_size=6, k=2, val_pairs=4, shift=0 if cached else 2)
    prefix = PrefixFeatures(torch.randn(len(rows), 2, 4, 3, 3), rows, len(rows), stage=2) if cached else None

    def batches(rank, world_size):
        task = FaceVerificationTask(config, dataset, fit, val, torch.device("cpu"), prefix=prefix, start_stage=2,
                                    dist=DistContext(rank=rank, world_size=world_size))
        return list(task.train_batches(1))

    single, *ranks = batches(0, 1), batches(0, 2), batches(1, 2)
    for whole, part0, part1 in zip(single, *ranks):
        assert torch.equal(torch.cat([part0.inputs, part1.inputs]), whole.inputs)
        assert torch.equal(part0.labels, whole.labels) and torch.equal(part1.labels, whole.labels)
        assert part0.shares == part1.shares == shard_sizes(len(whole.labels), 2)


def test_sync_bn_converts_batchnorm_under_ddp_and_needs_cuda():
    model = ddp_worker.plain_model(batchnorm=True)
    assert sync_batchnorm(model, DistContext(), torch.device("cpu")) is model  # one process: nothing to sync
    with pytest.raises(CnnlabError, match="sync_bn needs CUDA"):
        sync_batchnorm(model, DistContext(rank=0, world_size=2), torch.device("cpu"))
    names = list(model.state_dict())
    converted = sync_batchnorm(model, DistContext(rank=0, world_size=2), torch.device("cuda"))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert list(converted.state_dict()) == names  # a checkpoint loads into the plain network


def test_launch_variables_and_the_recorded_setup(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_ranks() == (0, 1, 0)
    assert distributed_setup(torch.device("cpu")) == {"world_size": 1, "backend": None}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_ranks() == (1, 4, 1)
    assert distributed_setup(torch.device("cpu")) == {"world_size": 4, "backend": "gloo"}
    assert distributed_setup(torch.device("cuda")) == {"world_size": 4, "backend": "nccl"}
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(CnnlabError, match="RANK=4 and WORLD_SIZE=4"):
        launch_ranks()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(CnnlabError, match="WORLD_SIZE must be an integer"):
        launch_ranks()
