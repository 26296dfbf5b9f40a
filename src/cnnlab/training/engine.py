"""The one training loop of cnnlab. Tasks plug in; the engine owns everything they share.

A `Task` (`cnnlab.training.task`) says what differs between jobs: batches, the loss of one batch, how to
evaluate. The `Engine` owns the rest: device, bf16 autocast, channels_last, `torch.compile`, the
optimizer, the per-step schedule, weight EMA (`cnnlab.training.optim`), non-finite checks, progress, an
atomic checkpoint each epoch (a loss's own parameters too: `Task.loss_module`), exact resume, which
epoch is the result (`select_metric`), callbacks
after each validation (logging, pruning), the run's seed, and data-parallel training under
`torchrun`. It writes a run directory's config.yaml, environment.json, checkpoint.pt, final.json
(`cnnlab.core.runfiles` says what each holds), metrics.jsonl (one row per epoch: train_*, val_*,
lr, epoch_time_s, images_per_s) and, with `tensorboard`, event files.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from cnnlab.core import runfiles
from cnnlab.core.config import option
from cnnlab.core.env import PRECISIONS, environment, resolve_device, resolve_precision
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import (
    atomic_write_text,
    load_entries,
    load_state_dict_checked,
    read_json,
    save_torch_atomic,
    save_yaml,
    to_plain,
    write_json,
)
from cnnlab.core.progress import progress_bar
from cnnlab.core.rng import rng_state as _rng_state
from cnnlab.core.rng import seed_everything
from cnnlab.core.rng import set_rng_state as _set_rng_state
from cnnlab.models.utils import eval_mode
from cnnlab.training import distributed
from cnnlab.training.checkpoint import CHECKPOINT, comparable_config, load_checkpoint
from cnnlab.training.checkpoint import load_weights as load_weights  # re-exported: a run's result
from cnnlab.training.optim import SCHEDULES, LRSchedule, ModelEma, build_optimizer, grad_norm_of
from cnnlab.training.task import Callback, Selection, Task
from cnnlab.training.tensorboard_log import TensorBoardLog, remove_event_files

METRICS = "metrics.jsonl"
FINAL = runfiles.FINAL


@dataclass
class TrainConfig:
    """The engine's settings; each field's help text is its CLI flag's (`cnnlab.cli.flags`)."""
    epochs: int = option(30, "training epochs")
    batch_size: int = option(512, "images per optimizer step")
    lr: float = option(0.4, "peak learning rate (the top of the schedule)")
    optimizer: str = option("sgd", "sgd (Nesterov momentum) or adamw")
    momentum: float = option(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = option(5e-4, "weight decay (not on biases and norm weights: 1-D tensors)")
    schedule: str = option("onecycle", "onecycle, cosine or constant (after the warmup)")
    warmup: float = option(0.2, "fraction of all steps spent rising linearly to the peak lr")
    ema: float = option(0.0, "EMA decay of the weights per step (0 = off)")
    grad_clip: float = option(0.0, "max global gradient norm (0 = off; the norm is still checked)")
    device: str = option("auto", "auto (default), cpu or cuda[:N]")
    precision: str = option("auto", "auto (bf16 autocast on CUDA and on CPUs with AMX-BF16, else fp32), "
                                    "auto-cuda (bf16 on CUDA only), fp32 or bf16")  # rule: env.resolve_precision
    channels_last: bool = option(True, "channels_last memory format for the model and batches")
    compile: bool = option(False, "torch.compile the model (worth it on a GPU; compiling takes minutes on a CPU)")
    sync_bn: bool = option(False, "under torchrun: BatchNorm statistics over the global batch (CUDA only)")
    tensorboard: bool = option(False, "TensorBoard event files beside metrics.jsonl (needs the tensorboard package)")
    seed: int = option(0, "seed of initialisation, augmentation and batch order")
    select_metric: str = option("", "keep the epoch with the best value of this validation metric (empty: the last)")
    select_mode: str = option("max", "max or min: which way select_metric is better")
    progress: bool | None = option(None, "progress bars (default: a bar on a terminal, else a plain line every "
                                         "30 s and per epoch)")

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.optimizer in ("sgd", "adamw"), f"optimizer must be sgd or adamw, got {self.optimizer!r}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (0 <= self.warmup < 1, f"warmup must be a fraction in [0, 1), got {self.warmup}"),
            (0 <= self.ema < 1, f"ema must be a decay in [0, 1), got {self.ema}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.select_mode in ("max", "min"), f"select_mode must be max or min, got {self.select_mode!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class FitResult:
    """What `fit` returns. The result to score and save is `eval_model`, holding the weights of
    epoch `selected_epoch` (the best by `select_metric`, else the last), the EMA weights when EMA
    is on. `model` is the module that trained: with EMA it holds the last epoch's raw weights;
    without, it is `eval_model` itself."""
    model: nn.Module
    eval_model: nn.Module
    selected_epoch: int           # 1-based
    history: list[dict]           # the rows of metrics.jsonl
    final: dict                   # the engine's part of final.json
    run_dir: Path | None = None
    resumed_from_epoch: int = 0   # epochs already done when fit started (0 = fresh)


@dataclass
class _EpochState:
    sums: dict = field(default_factory=dict)
    images: int = 0
    first_bad_step: torch.Tensor | None = None


class Engine:
    def __init__(self, config: TrainConfig, run_dir: str | Path | None = None, *,
                 run_config: dict | None = None):
        """`run_config`: extra resolved configs saved beside `train` in config.yaml and
        checked on resume (e.g. {"task": ..., "model": ..., "data": ...})."""
        self.config = config
        # Under torchrun: join the process group; on CUDA this process's GPU is LOCAL_RANK's.
        self.dist, self.device = distributed.setup(resolve_device(config.device))
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.writes = self.run_dir is not None and self.dist.is_main  # only rank 0 writes files
        self.run_config = to_plain(run_config or {})
        # What `auto` became here and why, for environment.json and final.json.
        self.precision, self.precision_reason = resolve_precision(config.precision, self.device)
        self.autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        self._seeded_rng: dict | None = None  # every generator's state right after the run's seeding

    # ------------------------------------------------------------------ public helpers
    @property
    def is_main(self) -> bool:
        """Rank 0 (or not distributed): the process that writes and reports."""
        return self.dist.is_main

    def environment(self) -> dict:  # what cnnlab.core.env records, plus the precision resolved here
        return environment(self.device, {"requested": self.config.precision, "used": self.precision,
                                         "reason": self.precision_reason})

    def autocast(self):
        return (contextlib.nullcontext() if self.autocast_dtype is None
                else torch.autocast(self.device.type, dtype=self.autocast_dtype))

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a model to the engine's device (and memory format); fit calls it too."""
        fmt = torch.channels_last if self.config.channels_last else torch.preserve_format
        return model.to(self.device, memory_format=fmt)

    def build_model(self, build: Callable[[], nn.Module]) -> nn.Module:
        """`build()` the run's model from the run's seed (its initial weights are the seed's)
        and `prepare` it. Callers never seed: the engine does (`_start_from_seed`)."""
        self._start_from_seed()
        return self.prepare(build())

    def evaluate(self, model: nn.Module, fn) -> dict[str, float]:
        """Run `fn(model)` in eval mode under no_grad and autocast; restore the mode after."""
        with eval_mode(model), self.autocast():
            return {k: float(v) for k, v in fn(model).items()}

    def config_diff(self, saved: dict) -> list[str]:
        """Sections/keys where a saved config.yaml differs from this engine's resolved config,
        ignoring the train settings that do not change the result (`RUN_ONLY_FIELDS`): they
        may differ between an interrupted run and its resume."""
        saved = to_plain(saved)
        if isinstance(saved.get("train"), dict):  # settings added since that run started: their defaults
            saved["train"] = {**to_plain(TrainConfig()), **saved["train"]}
        saved, current = comparable_config(saved), comparable_config(self._resolved_config())
        return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))

    # ------------------------------------------------------------------ the loop
    def fit(self, model: nn.Module, task: Task, *, resume: bool = False,
            callbacks: Sequence[Callback] = ()) -> FitResult:
        cfg = self.config
        self._start_from_seed()
        model = self.prepare(model)
        if cfg.sync_bn:
            model = distributed.sync_batchnorm(model, self.dist, self.device)
        steps_per_epoch = task.steps_per_epoch()
        if steps_per_epoch == 0:
            raise CnnlabError("the task yields no training batches (data smaller than one batch?)")
        loss_module = task.loss_module()
        if loss_module is not None:
            loss_module.to(self.device)
        optimizer = build_optimizer(cfg, task.param_groups(model), model, loss_module)
        trained_params = [*model.parameters(), *(loss_module.parameters() if loss_module is not None else ())]
        warmup = int(cfg.warmup * cfg.epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, LRSchedule(cfg.schedule, cfg.epochs * steps_per_epoch, warmup))
        ema = ModelEma(model, cfg.ema) if cfg.ema > 0 else None
        selection = Selection(cfg.select_metric, cfg.select_mode)  # which epoch is the result
        history: list[dict] = []
        # Rank 0 decides and reads; every rank continues from what it read.
        found = resume and self.run_dir is not None and distributed.broadcast_object(
            self.dist.is_main and (self.run_dir / CHECKPOINT).is_file(), self.dist)
        if found:
            history = self._load_checkpoint(model, optimizer, scheduler, ema, selection, loss_module)
        else:
            self._start_run_dir()
        start_epoch = len(history)
        # What training runs: the task's training module (default the model), in DDP under
        # torchrun, compiled when asked; checkpoints and EMA keep using the plain `model`.
        trained = distributed.TrainingModule(task.training_module(model), self.dist, self.device, compile=cfg.compile)
        eval_model = ema.module if ema is not None else model
        with TensorBoardLog(self.run_dir if cfg.tensorboard and self.writes else None,
                            steps_done=start_epoch * steps_per_epoch) as board:
            for epoch in range(start_epoch, cfg.epochs):
                task.on_epoch_start(model, epoch)
                distributed.seed_rank(self.dist, cfg.seed, epoch)
                record = self._train_epoch(trained.current(), task, optimizer, scheduler, ema, epoch, board,
                                           trained_params)
                distributed.broadcast_buffers(self.dist, model, eval_model)
                val = self.evaluate(eval_model, task.evaluate)
                record.update({f"val_{k}": v for k, v in val.items()})
                history.append(record)
                selection.update(epoch + 1, val, eval_model)
                # Checkpoint after the epoch's metrics are known: a crash later never loses it.
                self._save_checkpoint(model, optimizer, scheduler, ema, history, selection, loss_module)
                board.epoch(record, (epoch + 1) * steps_per_epoch)
                for callback in callbacks:  # logging, pruning: after the checkpoint, so a stop keeps it
                    callback.on_validation(epoch + 1, record, selection.epoch)
        selection.restore_into(eval_model)
        final = self._final_record(history, selection.epoch)
        self.write_final(final)
        return FitResult(model, eval_model, final["selected_epoch"], history, final, self.run_dir, start_epoch)

    def _train_epoch(self, model, task, optimizer, scheduler, ema, epoch, board: TensorBoardLog, params) -> dict:
        cfg = self.config
        model.train()
        batches = task.train_batches(epoch)
        state = _EpochState(first_bad_step=torch.tensor(-1, device=self.device))
        # On CUDA, reading a value back stalls the queue; check every few steps instead of each.
        check_every = 1 if self.device.type == "cpu" else 25
        bar = progress_bar(batches, enable=cfg.progress, total=len(batches),
                           desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        start = time.perf_counter()
        for step, batch in enumerate(bar):
            with self.autocast():
                loss, metrics = task.training_step(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = grad_norm_of(params, self.config.grad_clip, self.device)
            finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
            state.first_bad_step = torch.where(finite | (state.first_bad_step >= 0),
                                               state.first_bad_step, step)
            # The lr this step uses, against the count of steps done (TensorBoard's x axis).
            board.step(epoch * len(batches) + step + 1, optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            self._accumulate(state, task, batch, loss, metrics)
            if step % check_every == 0 or step == len(batches) - 1:
                self._check_finite(state, epoch)
                if not bar.disable:
                    elapsed = time.perf_counter() - start
                    bar.set_postfix({k: f"{v:.3f}" for k, v in self._means(state).items()}
                                    | {"img/s": f"{state.images / max(elapsed, 1e-9):.0f}"})
        # The epoch's metrics over every rank's samples, not just this one's.
        state.sums, state.images = distributed.sum_over_ranks(state.sums, state.images, self.dist, self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        bar.close()
        return {"epoch": epoch + 1, **{f"train_{k}": v for k, v in self._means(state).items()},
                "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": seconds,
                "images_per_s": state.images / max(seconds, 1e-9)}

    # ------------------------------------------------------------------ pieces of the loop
    @staticmethod
    def _accumulate(state: _EpochState, task, batch, loss, metrics) -> None:
        n = task.batch_size(batch)
        state.images += n
        # Sums stay on the device; nothing is read back until a check or the epoch's end.
        for key, value in {"loss": loss, **metrics}.items():
            value = torch.as_tensor(value).detach().float() * n
            state.sums[key] = state.sums[key] + value if key in state.sums else value

    @staticmethod
    def _means(state: _EpochState) -> dict[str, float]:
        return {k: float(v) / max(state.images, 1) for k, v in state.sums.items()}

    def _start_from_seed(self) -> None:
        """Put every generator at the run's seed. The run is seeded once, by the first call
        (`build_model`, else `fit`); `fit` returns the generators to that seeded state, so
        training draws the same numbers whatever building the model and the task drew."""
        if self._seeded_rng is None:
            seed_everything(self.config.seed)
            self._seeded_rng = _rng_state()
        else:
            _set_rng_state(self._seeded_rng)

    def _check_finite(self, state: _EpochState, epoch: int) -> None:
        bad = int(state.first_bad_step)
        if bad >= 0:
            kept = (f"the last good checkpoint (epoch {epoch}) is kept in {self.run_dir}"
                    if epoch > 0 and self.run_dir is not None else "no checkpoint was written yet")
            raise CnnlabError(f"training diverged: non-finite loss or gradient at epoch {epoch + 1}, "
                              f"step {bad + 1}; lower the learning rate or set grad_clip; {kept}")

    # ------------------------------------------------------------------ run directory
    def _resolved_config(self) -> dict:
        return {"train": to_plain(self.config), **self.run_config}

    def _start_run_dir(self) -> None:
        if not self.writes:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (METRICS, FINAL, CHECKPOINT):
            (self.run_dir / stale).unlink(missing_ok=True)
        remove_event_files(self.run_dir)  # an earlier run's curves must not mix with this one's
        save_yaml(self._resolved_config(), self.run_dir / runfiles.CONFIG)
        write_json(self.run_dir / runfiles.ENVIRONMENT, self.environment())

    def _save_checkpoint(self, model, optimizer, scheduler, ema, history, selection: Selection, loss_module) -> None:
        if not self.writes:
            return
        state = {"epoch": len(history), "history": history, "config": self._resolved_config(),
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                 "rng": _rng_state(), "precision": self.precision, "selected": selection.to_dict(),
                 "loss": loss_module.state_dict() if loss_module is not None else None}
        save_torch_atomic(state, self.run_dir / CHECKPOINT)
        atomic_write_text(self.run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history))
        # A run folder deleted mid-run was remade by the writes above (atomic_path): refill it.
        if not (self.run_dir / runfiles.CONFIG).is_file():
            save_yaml(self._resolved_config(), self.run_dir / runfiles.CONFIG)
            write_json(self.run_dir / runfiles.ENVIRONMENT, self.environment())

    def _load_checkpoint(self, model, optimizer, scheduler, ema, selection: Selection, loss_module) -> list[dict]:
        # Rank 0's checkpoint on every rank: other machines need not see rank 0's disk.
        state = distributed.broadcast_object(load_checkpoint(self.run_dir) if self.is_main else None, self.dist)
        diff = self.config_diff(state["config"])
        if diff:
            raise CnnlabError(f"cannot resume {self.run_dir}: its config differs in {', '.join(diff)}; "
                              "use the same settings or a new output directory")
        origin = f"checkpoint {self.run_dir / CHECKPOINT}"  # each entry checked: a misfit is one line naming it
        load_state_dict_checked(model, state["model"], origin)
        if loss_module is not None:
            load_state_dict_checked(loss_module, state.get("loss") or {}, f"{origin} (the loss's parameters)")
        load_entries(state, {"optimizer": optimizer.load_state_dict, "scheduler": scheduler.load_state_dict,
                             "ema": ema.load_state_dict if ema else None, "rng": _set_rng_state}, origin)
        selection.load(state.get("selected"))
        # An `auto` run resumed on another machine keeps the precision it started with: one run,
        # one arithmetic (bf16 runs everywhere, only its speed differs).
        started = state.get("precision")
        if started in ("fp32", "bf16") and started != self.precision and self.config.precision.startswith("auto"):
            self.precision, self.precision_reason = started, (
                f"kept from the checkpoint (this machine's {self.config.precision} gives {self.precision})")
            self.autocast_dtype = torch.bfloat16 if started == "bf16" else None
        return list(state["history"])

    def _final_record(self, history: list[dict], selected: int) -> dict:
        """The engine's part of final.json: the selected epoch's metrics (the last epoch's
        without selection), the totals of the whole run, and which epoch was selected, by what."""
        train_time = sum(r["epoch_time_s"] for r in history)
        images = sum(r["images_per_s"] * r["epoch_time_s"] for r in history)
        return {**history[(selected or len(history)) - 1], "epochs": len(history),
                "selected_epoch": selected or len(history), "select_metric": self.config.select_metric or None,
                "train_time_s": train_time, "images_per_s": images / max(train_time, 1e-9),
                "device": str(self.device), "precision": self.precision,
                "ema": self.config.ema > 0, "world_size": self.dist.world_size}

    def write_final(self, final: dict) -> None:
        """Write final.json (on rank 0, when the run has a folder): the one writer of that file.
        `fit` writes the engine's record; a caller adds its scores (the test set's) by passing
        that record back with them. Fields of the file that `final` lacks are kept: a finished
        run resumed again keeps the test scores it was given."""
        if self.writes:
            old = read_json(self.run_dir / FINAL) if (self.run_dir / FINAL).is_file() else {}
            write_json(self.run_dir / FINAL, {**old, **final})
