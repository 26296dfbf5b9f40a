"""`cnnlab cifar train|compare|eval`: train one block, compare blocks under one recipe,
re-score a checkpoint. Flags, `--config FILE.yaml` and `--preset` fill the same dataclasses."""
from __future__ import annotations

import argparse

from cnnlab.cli import catalog
from cnnlab.cli.flags import add_config_flags

# What the data section exposes: its seed and the synthetic sizes stay in --config files
# (a second --seed would be ambiguous next to the training seed).
_DATA_FLAGS = ("root", "val_size", "train_subset", "download")
_MODEL_FLAGS = ("width_multiplier", "dropout")


def _recipe_flags(p: argparse.ArgumentParser) -> None:
    """--preset, --config, then one flag per recipe setting, generated from the dataclasses.
    Flags default to None ("not given"), so they override the preset and the file only when
    given; a bad value is the dataclass's one-line error."""
    run_only = catalog.load()["run_only_fields"]
    g = p.add_argument_group("recipe (defaults come from --preset, then --config)")
    g.add_argument("--preset", choices=sorted(catalog.load()["cifar_presets"]), default="full",
                   help="full: the 30-epoch reference recipe; quick: sized for ~10 min on a 2-core CPU")
    g.add_argument("--config", metavar="FILE", help="YAML with train:/task:/model:/data: sections")
    # The dataclass defaults are not the recipe's (the preset's are), so they are not shown.
    common = dict(show_default=False)  # help texts: on the config fields (`config.option`)
    flags = add_config_flags(g, "TrainConfig", section="train", exclude=run_only, **common)
    flags |= add_config_flags(g, "ClassificationConfig", section="task", **common)
    flags |= add_config_flags(g, "BlockNetConfig", section="model", only=_MODEL_FLAGS, **common)
    flags |= add_config_flags(g, "CifarDataConfig", section="data", only=_DATA_FLAGS, rename={"root": "data"},
                              **common)
    run = p.add_argument_group("where and how visibly it runs (never changes the result)")
    flags |= add_config_flags(run, "TrainConfig", section="train", only=run_only, **common)
    p.set_defaults(recipe_flags=flags)


def register(sub) -> None:
    cifar = sub.add_parser("cifar", help="train and compare blocks on CIFAR-10")
    commands = cifar.add_subparsers(dest="cifar_command", metavar="SUBCOMMAND")
    commands.required = True

    p = commands.add_parser("compare", help="train several blocks with one recipe; write results.{json,csv,md}")
    default_blocks = catalog.load()["default_blocks"]
    p.add_argument("--blocks", nargs="+", default=list(default_blocks), metavar="BLOCK",
                   help=f"blocks to compare (default: {' '.join(default_blocks)})")
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
    from cnnlab.cli.flags import flag_values
    from cnnlab.tasks.cifar import resolve_recipe
    return resolve_recipe(args.preset, args.config, flag_values(args, args.recipe_flags))


def run_compare(args) -> int:
    from cnnlab.core.files import check_output_dir
    from cnnlab.pipelines import compare_blocks
    from cnnlab.reports.results_table import results_markdown
    from cnnlab.tasks.cifar import check_blocks
    check_blocks(args.blocks)  # an unknown name fails here, before data or training
    recipe = _recipe(args)
    check_output_dir(args.out)  # so does an --out that cannot be written
    # Training first, then the report, which reads only the files the training wrote.
    results, report = compare_blocks(args.blocks, recipe, args.out, report=not args.no_report, log=print)
    print(results_markdown(results), end="")
    if report is not None:
        print(f"report: {report}")
    return 0


def run_train(args) -> int:
    from cnnlab.core.errors import CnnlabError
    from cnnlab.core.files import check_output_dir
    from cnnlab.tasks.cifar import check_blocks, load_data, train_block
    from cnnlab.training.engine import CHECKPOINT, load_checkpoint

    (block,) = check_blocks([args.block])
    recipe = _recipe(args)
    out = check_output_dir(args.out)  # before the data is loaded
    if (out / CHECKPOINT).is_file() and not args.resume:
        raise CnnlabError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if (out / CHECKPOINT).is_file():
        load_checkpoint(out)  # a malformed checkpoint is one line now, not after the data is loaded
    from cnnlab.training.distributed import is_main_process
    main = is_main_process()  # under torchrun rank 0 writes and reports; the others only train
    splits = load_data(recipe.data, recipe.train.progress, log=print, out=out if main else None)
    row = train_block(block, recipe, splits, out, log=print)
    if not main:
        return 0
    print(f"{block}: val {row['val_acc']:.2%}  test {row['test_acc']:.2%}  train {row['train_acc']:.2%}  "
          f"{row['train_time_s']:.1f} s  {row['images_per_s']:.0f} img/s  -> {out}")
    return 0


def run_eval(args) -> int:
    from cnnlab.tasks.cifar import evaluate_run
    r = evaluate_run(args.run_dir, data=args.data, device=args.device, log=print)
    print(f"val acc {r['val_acc']:.2%} (loss {r['val_loss']:.4f})  "
          f"test acc {r['test_acc']:.2%} (loss {r['test_loss']:.4f})  -> {args.run_dir}/eval.json")
    return 0
