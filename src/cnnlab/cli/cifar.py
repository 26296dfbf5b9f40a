"""`cnnlab cifar train|compare|eval`: train one block, compare blocks under one recipe,
re-score a checkpoint. Flags, `--config FILE.yaml` and `--preset` fill the same dataclasses."""
from __future__ import annotations

import argparse

# flag dest -> (recipe section, option name)
_RECIPE_FLAGS = {
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"), "momentum": ("train", "momentum"),
    "weight_decay": ("train", "weight_decay"), "schedule": ("train", "schedule"),
    "warmup": ("train", "warmup"), "ema": ("train", "ema"), "grad_clip": ("train", "grad_clip"),
    "device": ("train", "device"), "precision": ("train", "precision"),
    "channels_last": ("train", "channels_last"), "compile": ("train", "compile"), "seed": ("train", "seed"),
    "progress": ("train", "progress"),
    "label_smoothing": ("task", "label_smoothing"), "cutout": ("task", "cutout"),
    "width_multiplier": ("model", "width_multiplier"), "dropout": ("model", "dropout"),
    "data": ("data", "root"), "val_size": ("data", "val_size"), "train_subset": ("data", "train_subset"),
    "download": ("data", "download"),
}


def _recipe_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe (defaults come from --preset, then --config)")
    g.add_argument("--preset", choices=["full", "quick"], default="full",
                   help="full: the 30-epoch reference recipe; quick: sized for ~10 min on a 2-core CPU")
    g.add_argument("--config", metavar="FILE", help="YAML with train:/task:/model:/data: sections")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--optimizer", choices=["sgd", "adamw"])
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["onecycle", "cosine", "constant"])
    g.add_argument("--warmup", type=float, help="fraction of steps warming up to the peak lr")
    g.add_argument("--ema", type=float, help="EMA decay of the weights (0 = off)")
    g.add_argument("--grad-clip", type=float, help="max gradient norm (0 = off)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (worth it on a GPU)")
    g.add_argument("--seed", type=int)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--cutout", type=int, help="Cutout square side in pixels (0 = off)")
    g.add_argument("--width-multiplier", type=float)
    g.add_argument("--dropout", type=float)
    g.add_argument("--data", metavar="PATH", help="CIFAR-10 folder (default: $CNNLAB_DATA), or 'synthetic'")
    g.add_argument("--val-size", type=int)
    g.add_argument("--train-subset", type=int, help="stratified subset of training images")
    g.add_argument("--download", action="store_true", default=None,
                   help="download the official CIFAR-10 when no copy is found (needs internet)")
    g.add_argument("--device", help="auto (default), cpu or cuda")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal)")


def register(sub) -> None:
    cifar = sub.add_parser("cifar", help="train and compare blocks on CIFAR-10")
    commands = cifar.add_subparsers(dest="cifar_command", metavar="SUBCOMMAND")
    commands.required = True

    p = commands.add_parser("compare", help="train several blocks with one recipe; write results.{json,csv,md}")
    p.add_argument("--blocks", nargs="+", default=["A", "B", "C", "D", "D-dw", "E"], metavar="BLOCK")
    p.add_argument("--out", required=True, help="output folder; rerunning with it reuses finished blocks")
    p.add_argument("--no-report", action="store_true", help="skip writing report.md/report.html")
    _recipe_flags(p)
    p.set_defaults(func=run_compare)

    p = commands.add_parser("train", help="train one block into a run directory")
    p.add_argument("--block", required=True)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _recipe_flags(p)
    p.set_defaults(func=run_train)

    p = commands.add_parser("eval", help="re-score a run's checkpoint on validation and test")
    p.add_argument("run_dir")
    p.add_argument("--data", metavar="PATH", help="override the data folder recorded in the run")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.set_defaults(func=run_eval)


def _recipe(args):
    from cnnlab.tasks.cifar import resolve_recipe
    overrides: dict[str, dict] = {}
    for dest, (section, key) in _RECIPE_FLAGS.items():
        overrides.setdefault(section, {})[key] = getattr(args, dest, None)
    return resolve_recipe(args.preset, args.config, overrides)


def run_compare(args) -> int:
    from cnnlab.tasks.cifar import check_blocks, compare, results_markdown
    check_blocks(args.blocks)  # an unknown name fails here, before data or training
    results = compare(args.blocks, _recipe(args), args.out, report=not args.no_report)
    print(results_markdown(results), end="")
    if "report" in results:
        print(f"report: {results['report']}")
    return 0


def run_train(args) -> int:
    from pathlib import Path

    from cnnlab.engine import CHECKPOINT
    from cnnlab.errors import CnnlabError
    from cnnlab.tasks.cifar import check_blocks, load_data, train_block

    (block,) = check_blocks([args.block])
    recipe = _recipe(args)
    out = Path(args.out)
    if (out / CHECKPOINT).is_file() and not args.resume:
        raise CnnlabError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    row = train_block(block, recipe, load_data(recipe.data, recipe.train.progress), out)
    print(f"{block}: val {row['val_acc']:.2%}  test {row['test_acc']:.2%}  train {row['train_acc']:.2%}  "
          f"{row['train_time_s']:.1f} s  {row['images_per_s']:.0f} img/s  -> {out}")
    return 0


def run_eval(args) -> int:
    from cnnlab.tasks.cifar import evaluate_run
    r = evaluate_run(args.run_dir, data=args.data, device=args.device)
    print(f"val acc {r['val_acc']:.2%} (loss {r['val_loss']:.4f})  "
          f"test acc {r['test_acc']:.2%} (loss {r['test_loss']:.4f})  -> {args.run_dir}/eval.json")
    return 0
