"""The optimizer the engine builds (`build_optimizer`, `grad_norm_of`) and the two step-wise
policies it applies to a training run, each a small object:

- `LRSchedule`: the learning-rate multiplier per optimizer step (one-cycle, Smith & Topin
  2017; cosine, Loshchilov & Hutter 2017; constant), after a linear warmup.
- `ModelEma`: an exponential moving average of the weights (Polyak & Juditsky 1992), the
  model that gets evaluated when it is on.

Both save and load their state, so a resumed run continues them exactly.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass
class LRSchedule:
    """Multiplier of the peak lr at optimizer step `step` (a callable object, so LambdaLR's
    state_dict saves it). Linear warmup to 1.0, then: linear to ~0 (one-cycle, as in
    Page's DAWNBench ResNet and airbench), half-cosine to ~0, or constant."""
    kind: str
    total_steps: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        remaining = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / remaining)
        if self.kind == "onecycle":
            # Never exactly 0: the last step still learns a little.
            return max(1.0 - progress, 1.0 / remaining)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class ModelEma:
    """Exponential moving average of parameters and float buffers (BN statistics too); integer
    buffers (BatchNorm's batch counter) are copied.

    Warm-up: update t (1, 2, ...) uses decay min(`decay`, (1 + t) / (10 + t)), the `num_updates`
    rule of TensorFlow's ExponentialMovingAverage: 0.18 at the first update, 0.5 at t = 8, 0.9 at
    t = 80, so on a short run the average is not dominated by the random initialisation.
    """

    # Not timm's ModelEmaV2 (no warm-up) or ModelEmaV3: V3's warm-up, 1 - (1 + t / gamma) ** -power,
    # is this rule at gamma = 9, power = 1 but rounds differently at some t, so EMA weights (and
    # a checkpoint's resume) would not match those of runs already made.

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.is_floating_point():
                ema_value.lerp_(value.detach(), 1.0 - decay)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])


def build_optimizer(cfg, custom_groups: list[dict] | None, model: nn.Module, loss_module: nn.Module | None
                    ) -> torch.optim.Optimizer:
    """SGD-Nesterov or AdamW (`cfg`: the engine's TrainConfig) over the task's groups
    (`Task.param_groups`, each lr = cfg.lr x its "lr_scale"), else over the model's and the loss
    module's parameters with the default weight-decay split."""
    if custom_groups is not None:
        groups = [dict(g) for g in custom_groups]
        grouped = {id(p) for g in groups for p in g["params"]}
        if loss_module is not None and any(id(p) not in grouped for p in loss_module.parameters()):
            raise ValueError("the task's param_groups leave out parameters of its loss_module")
    else:
        # No weight decay on biases and BatchNorm scales: decaying them only fights the
        # normalisation. timm's split (1-D tensors and biases), decayed group first: the
        # order the optimizer state in checkpoints follows.
        from timm.optim import param_groups_weight_decay
        trained = model if loss_module is None else nn.ModuleList([model, loss_module])
        groups = sorted(param_groups_weight_decay(trained, cfg.weight_decay), key=lambda g: g["weight_decay"] == 0)
    for group in groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
        group.setdefault("weight_decay", cfg.weight_decay)
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def grad_norm_of(params: list[torch.Tensor], clip: float, device: torch.device) -> torch.Tensor:
    """The gradients' total norm, clipped to `clip` first when it is > 0 (a tensor: no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    if clip > 0:
        return nn.utils.clip_grad_norm_(params, clip)
    return nn.utils.get_total_norm(grads)
