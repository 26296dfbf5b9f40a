"""Training throughput of the device-resident CIFAR-10 pipeline vs a standard DataLoader.

(a) `DeviceLoader`: the split lives on the device as one uint8 tensor; shuffling, random
    crop, flip and normalisation run batched there; model and batches in channels_last.
(b) `torch.utils.data.DataLoader` over PIL images with torchvision transforms
    (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), num_workers =
    CPU count, the model in the default memory format: the usual CIFAR training script.

Both train the same network (the quick preset's, block A by default) from the same initial
weights with the same recipe and the same training step (`ClassificationTask.training_step`
under the engine's autocast). The two paths alternate in segments of `--steps` steps for
`--rounds` rounds, so a busy neighbour or CPU clock changes hit both alike; round 1 is
warm-up and not counted. At the end each model is scored on the same held-out images.

    python benchmarks/bench_cifar.py                 # real CIFAR-10 via $CNNLAB_DATA
    python benchmarks/bench_cifar.py --block D --rounds 5 --steps 40
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


class PILImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: array -> PIL image -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def forever(loader):
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def train_segment(engine, model, optimizer, scheduler, task, batches, steps: int) -> float:
    """Train `steps` steps pulling batches from `batches`; return images per second."""
    model.train()
    images = 0
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        x, y = x.to(engine.device, non_blocking=True), y.to(engine.device, non_blocking=True)
        with engine.autocast():
            loss, _ = task.training_step(model, (x, y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        images += len(y)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return images / (time.perf_counter() - start)


def main(argv=None) -> int:
    from torchvision import transforms

    from cnnlab.data.loader import CIFAR10_MEAN, CIFAR10_STD
    from cnnlab.models import BlockNet
    from cnnlab.tasks.cifar import load_data, resolve_recipe
    from cnnlab.tasks.classification import ClassificationTask, eval_loader, score
    from cnnlab.training.engine import Engine, seed_everything
    from cnnlab.training.optim import LRSchedule

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", default="A")
    parser.add_argument("--preset", default="quick", choices=["quick", "full"])
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds; the first is warm-up")
    parser.add_argument("--steps", type=int, default=30, help="training steps per path per round")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: CPU count)")
    parser.add_argument("--data", help="CIFAR-10 folder (default $CNNLAB_DATA), or 'synthetic'")
    parser.add_argument("--device", default=None)
    parser.add_argument("--eval-images", type=int, default=5000, help="held-out images scored at the end")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.steps < 1:
        parser.error("need --rounds >= 2 (round 1 is warm-up) and --steps >= 1")

    overrides = {"data": {"root": args.data}, "train": {"device": args.device, "progress": False}}
    recipe = resolve_recipe(args.preset, None, overrides)
    cfg, task_cfg = recipe.train, recipe.task
    splits = load_data(recipe.data)
    engine = Engine(cfg)
    total_steps = args.rounds * args.steps

    def fresh(memory_format):
        seed_everything(cfg.seed)
        model = BlockNet(recipe.model_config(args.block)).to(engine.device, memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                    weight_decay=cfg.weight_decay)
        schedule = LRSchedule(cfg.schedule, total_steps, int(cfg.warmup * total_steps))
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    task = ClassificationTask.from_arrays(
        splits.train_images, splits.train_labels, splits.val_images, splits.val_labels, task_cfg,
        batch_size=cfg.batch_size, device=engine.device, seed=cfg.seed, channels_last=True)
    standard = torch.utils.data.DataLoader(
        PILImages(splits.train_images, splits.train_labels, transforms.Compose([
            transforms.RandomCrop(32, padding=task_cfg.crop_padding), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])),
        batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
        persistent_workers=args.workers > 0, pin_memory=engine.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed))
    paths = {
        "device-resident (channels_last)": (fresh(torch.channels_last), forever(task.train)),
        f"DataLoader + PIL ({args.workers} workers)": (fresh(torch.contiguous_format), forever(standard)),
    }
    speeds: dict[str, list[float]] = {name: [] for name in paths}
    print(f"block {args.block}, preset {args.preset} (width x{recipe.model['width_multiplier']}), "
          f"batch {cfg.batch_size}, {args.rounds} rounds x {args.steps} steps per path, device {engine.device}, "
          f"torch threads {torch.get_num_threads()}, {len(splits.train_labels):,} training images")
    for r in range(1, args.rounds + 1):
        for name, ((model, optimizer, scheduler), batches) in paths.items():
            speed = train_segment(engine, model, optimizer, scheduler, task, batches, args.steps)
            speeds[name].append(speed)
            print(f"round {r}{' (warm-up)' if r == 1 else ''}: {name:<34} {speed:8.0f} images/s", flush=True)

    n = min(args.eval_images, len(splits.val_labels))
    held_out = eval_loader(splits.val_images[:n], splits.val_labels[:n], task_cfg.eval_batch_size,
                           device=engine.device)
    print(f"\nafter {total_steps} steps each; median of rounds 2..{args.rounds}; accuracy on {n:,} held-out images")
    medians = {}
    for name, ((model, _, _), _) in paths.items():
        medians[name] = statistics.median(speeds[name][1:])
        acc = engine.evaluate(model, lambda m: score(m, held_out))["acc"]
        print(f"{name:<34} {medians[name]:8.0f} images/s   accuracy {acc:.2%}")
    fast, slow = medians.values()
    print(f"ratio (device-resident / DataLoader): {fast / slow:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
