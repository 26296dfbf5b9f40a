"""The two processes of tests/test_distributed.py (gloo on CPUs). The test forks them with the
environment torchrun gives its workers; torchrun itself runs the same:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py MODE OUT

MODE `resume`: the tiny classification run of `plain_run` into OUT/run (rank 1 is given
OUT/run-rank1, which must stay unwritten). Rank 1 kills itself (SIGKILL) in the middle of the
third epoch unless OUT/killed-once exists; it creates that file first, so the same command
run again resumes and finishes. Every rank writes the ids of the samples it trained on, per
epoch, to OUT/probe/seen-rank{r}-epoch{e}.json, and its results to OUT/probe/rank{r}-resume.json.

MODE `checks`: the gradient of `gather_rows`, a run with BatchNorm (is every rank's evaluation
rank 0's?), the face trainer from cached features and from pixels, and `cnnlab cifar train`
through the CLI; results in OUT/probe/rank{r}-checks.json.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn as nn

from cnnlab.tasks.classification import ClassificationConfig, ClassificationTask
from cnnlab.training.engine import Engine, TrainConfig, seed_everything

TESTS = Path(__file__).resolve().parent
N_TRAIN, BATCH, CLASSES, SIDE = 96, 16, 4, 8


def tiny_data(seed: int = 0):
    """Learnable 8 x 8 images: each class its own mean colour, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N_TRAIN + 32) % CLASSES
    colours = torch.tensor([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=torch.float32)
    images = colours[labels][:, None, None, :] + 40 * torch.randn(len(labels), SIDE, SIDE, 3, generator=g)
    images = images.clamp(0, 255).to(torch.uint8).numpy()
    return images[:N_TRAIN], labels[:N_TRAIN].numpy(), images[N_TRAIN:], labels[N_TRAIN:].numpy()


def plain_model(batchnorm: bool = False) -> nn.Module:
    """No BatchNorm unless asked: per-rank batch statistics are the one thing that makes a
    2-process run differ from a 1-process one beyond rounding."""
    seed_everything(0)
    norm = [nn.BatchNorm2d(8)] if batchnorm else []
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *norm, nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, CLASSES))


def plain_config(**changes) -> TrainConfig:
    # fp32: two ranks and one process agree to 1e-6 only in fp32 (`auto` is bf16 on an AMX CPU,
    # where a half batch and a whole batch round differently).
    return TrainConfig(**{"epochs": 3, "batch_size": BATCH, "lr": 0.05, "momentum": 0.9, "warmup": 0.2,
                          "device": "cpu", "progress": False, "tensorboard": False, "precision": "fp32",
                          **changes})


class RecordingTask(ClassificationTask):
    """Classification whose training labels are sample ids (mapped to classes here), so each
    rank can say which samples it trained on; `stop` is called on every step."""

    def __init__(self, train, val, config, classes, stop=None):
        super().__init__(train, val, config)
        self.classes, self.stop, self.seen, self.epoch, self.step = classes, stop, {}, 0, 0

    def on_epoch_start(self, model, epoch):
        self.epoch, self.step = epoch, 0

    def training_step(self, model, batch):
        x, ids = batch
        self.seen.setdefault(self.epoch, []).extend(ids.tolist())
        self.step += 1
        if self.stop is not None:
            self.stop(self.epoch, self.step)
        return super().training_step(model, (x, self.classes[ids]))


def plain_task(dist=None, stop=None) -> RecordingTask:
    train_x, train_y, val_x, val_y = tiny_data()
    config = ClassificationConfig(crop_padding=1, flip=True, eval_batch_size=32)
    base = ClassificationTask.from_arrays(train_x, torch.arange(N_TRAIN).numpy(), val_x, val_y, config,
                                          batch_size=BATCH, device="cpu", seed=0, channels_last=False,
                                          mean=(0.5,) * 3, std=(0.25,) * 3, dist=dist)
    return RecordingTask(base.train, base.val, config, torch.as_tensor(train_y), stop)


def run_resume(out: Path, rank: int) -> dict:
    marker = out / "killed-once"

    def stop(epoch, step):
        if rank == 1 and epoch == 2 and step == 2 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception: a lost machine

    engine = Engine(plain_config(tensorboard=True), out / ("run" if rank == 0 else "run-rank1"))
    task = plain_task(engine.dist, stop)
    original_evaluate = task.evaluate

    def evaluate(model):  # after each epoch's training: what this rank saw in it
        (out / "probe" / f"seen-rank{rank}-epoch{task.epoch}.json").write_text(json.dumps(task.seen[task.epoch]))
        return original_evaluate(model)

    task.evaluate = evaluate
    result = engine.fit(plain_model(), task, resume=True)
    return {"resumed_from_epoch": result.resumed_from_epoch, "history": result.history,
            "weights": {k: v.tolist() for k, v in result.model.state_dict().items()}}


def gather_check(rank: int) -> dict:
    """Rank r holds rows of a 5-row batch (3 + 2); the loss of the gathered batch, backward,
    gives each rank world_size x the single-process gradient of its rows (DDP's average of
    the parameter gradients then divides by world_size)."""
    from cnnlab.training.distributed import gather_rows
    dist = Engine(plain_config()).dist  # joins the process group
    full = torch.arange(15, dtype=torch.float64).reshape(5, 3) / 7
    shares, start = (3, 2), (0, 3)[rank]
    local = full[start:start + shares[rank]].clone().requires_grad_(True)
    gathered = gather_rows(local, shares, dist)
    (gathered.sin() * torch.arange(1, 6, dtype=torch.float64)[:, None]).sum().backward()
    reference = full.clone().requires_grad_(True)
    (reference.sin() * torch.arange(1, 6, dtype=torch.float64)[:, None]).sum().backward()
    return {"gathered_equal": bool(torch.equal(gathered.detach(), full)),
            "grad_ratio": (local.grad / reference.grad[start:start + shares[rank]]).flatten().tolist()}


def batchnorm_run(out: Path) -> dict:
    engine = Engine(plain_config(epochs=2), out / "bn")
    result = engine.fit(plain_model(batchnorm=True), plain_task(engine.dist))
    return {"val": [{k: v for k, v in r.items() if k.startswith("val_")} for r in result.history],
            "train_loss": [r["train_loss"] for r in result.history], "world_size": engine.dist.world_size}


def faces_runs(out: Path) -> dict:
    sys.path.insert(0, str(TESTS))
    from cnnlab.tasks.faces import train_view1
    from test_faces_train import make_fake_lfw, tiny_config
    root = out / "lfw"
    if int(os.environ["RANK"]) == 0 and not root.exists():
        make_fake_lfw(root)
    torch.distributed.barrier()  # the other rank reads the tree rank 0 wrote
    runs = {}
    for name, changes in (("cached", {}), ("pixels", {"cache_frozen_features": "off", "shift": 2})):
        metrics = train_view1(tiny_config(epochs=1, **changes), root, out / f"faces-{name}", evaluate_test=True,
                              log=lambda line: None)
        runs[name] = {"test": metrics["test"] is not None, "trained_from_stage": metrics["trained_from_stage"],
                      "val_auc": metrics["validation"]["auc"]}
    return runs


def cli_run(out: Path) -> int:
    from cnnlab.cli import main
    recipe = out / "recipe.yaml"
    if int(os.environ["RANK"]) == 0:
        recipe.write_text("train: {epochs: 1, batch_size: 32}\nmodel: {width_multiplier: 0.125}\n"
                          "data: {root: synthetic, synthetic_train: 96, synthetic_val: 32, synthetic_test: 32}\n")
    torch.distributed.barrier()
    return main(["cifar", "train", "--block", "A", "--out", str(out / "cli"), "--preset", "quick",
                 "--config", str(recipe), "--device", "cpu", "--no-progress"])


def main(mode: str, out: Path) -> None:
    rank = int(os.environ["RANK"])
    (out / "probe").mkdir(parents=True, exist_ok=True)
    if mode == "resume":
        result = run_resume(out, rank)
    else:
        result = {"gather": gather_check(rank), "batchnorm": batchnorm_run(out), "faces": faces_runs(out)}
        result["cli_rc"] = cli_run(out)  # last: the CLI silences stdout on rank 1
    (out / "probe" / f"rank{rank}-{mode}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], Path(sys.argv[2]))
