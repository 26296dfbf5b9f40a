"""The CIFAR-10 block comparison: every block in the same `BlockNet`, trained with the same
recipe by the one engine, scored on validation each epoch and on the test set once at the end.

Recipes come as presets. `full` is the 30-epoch reference budget, close to Page's DAWNBench
ResNet recipe ("How to train your ResNet", 2018): batch 512, SGD with Nesterov momentum,
a linear one-cycle schedule peaking at 0.4 after 20% of the steps, weight decay 5e-4, label
smoothing 0.1, random crop + flip, bf16 and channels_last on a GPU. `quick` shrinks the budget
until all six blocks train in about ten minutes on a 2-core CPU: a quarter-width network, a
stratified training subset, a few epochs, a smaller validation split. The results table
says which was used.

Layout of `compare --out OUT`:
    OUT/results.json  {"preset", "recipe", "data", "environment", "rows": [...]}  (accuracies 0..1)
    OUT/results.csv   the rows (OUT/results.md, the Markdown table, is the report layer's)
    OUT/<block>/      an engine run directory + embeddings_test.npz (test features and logits)

The figures and report.{md,html} are drawn from these files afterwards (`cnnlab.reports.cifar`, run
by the CLI and the demo): this module trains and scores, it never draws.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from cnnlab.blocks import BLOCKS
from cnnlab.core import runfiles
from cnnlab.core.config import RUN_ONLY_FIELDS, build_config, option
from cnnlab.core.env import device_name, environment, resolve_device
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import atomic_write_text, check_output_dir, load_yaml, read_json, to_plain, write_json
from cnnlab.core.progress import no_log
from cnnlab.core.runfiles import CIFAR_EMBEDDINGS as EMBEDDINGS
from cnnlab.metrics.classification import TRAIN_ACC_NOTE
from cnnlab.models import BlockNet, BlockNetConfig, count_parameters
from cnnlab.tasks.classification import (
    ClassificationConfig,
    ClassificationTask,
    count_macs,
    eval_loader,
    save_embeddings,
    score,
)
from cnnlab.training.checkpoint import load_weights
from cnnlab.training.distributed import broadcast_object, is_main_process
from cnnlab.training.engine import FINAL, Engine, TrainConfig

ROW_FIELDS = ["block", "params", "macs", "val_acc", "test_acc", "train_acc", "train_time_s",
              "images_per_s", "device", "precision", "run_dir"]

@dataclass
class CifarDataConfig:
    # None: `cnnlab.data.cifar.find_cifar_root` looks in $CNNLAB_DATA, else the download folder.
    root: str | None = option(None, "CIFAR-10 folder (default: $CNNLAB_DATA), or 'synthetic'")
    val_size: int = option(5000, "training images held out for validation (stratified)")
    train_subset: int | None = option(None, "stratified subset of training images")  # None: all of them
    seed: int = option(0, "seed of the validation split and the subset")
    download: bool = option(False, "download the official CIFAR-10 when no copy is found (needs internet)")
    # Synthetic data is for tests and smoke runs.
    synthetic_train: int = option(1000, "training images when root is 'synthetic'")
    synthetic_val: int = option(200, "validation images when root is 'synthetic'")
    synthetic_test: int = option(200, "test images when root is 'synthetic'")

    def __post_init__(self):
        if self.val_size < 1:
            raise ValueError(f"val_size must be >= 1, got {self.val_size}")
        if self.train_subset is not None and self.train_subset < 10:
            raise ValueError(f"train_subset must be >= 10 (one per class), got {self.train_subset}")


PRESETS: dict[str, dict] = {
    "full": {
        "train": dict(epochs=30, batch_size=512, lr=0.4, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                      schedule="onecycle", warmup=0.2, ema=0.0, precision="auto", channels_last=True),
        "task": dict(label_smoothing=0.1, crop_padding=4, flip=True, cutout=0),
        "model": dict(width_multiplier=1.0, dropout=0.0),
        "data": dict(val_size=5000, train_subset=None),
    },
    # Sized so that `make demo` stays within 15 minutes on a 2-core CPU without AMX (fp32; its
    # time per step: docs/performance.md, "The whole make demo"). Too short to rank the blocks;
    # results.md says so and points to the full table.
    "quick": {
        "train": dict(epochs=4, batch_size=128, lr=0.2, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                      schedule="onecycle", warmup=0.2, ema=0.0, precision="auto", channels_last=True),
        "task": dict(label_smoothing=0.1, crop_padding=4, flip=True, cutout=0),
        "model": dict(width_multiplier=0.25, dropout=0.0),
        "data": dict(val_size=2000, train_subset=9000),
    },
}
SECTIONS = ("train", "task", "model", "data")
# Model options a recipe may set; the block itself is chosen per run.
MODEL_OPTIONS = ("widths", "depths", "stem_widths", "width_multiplier", "dropout", "block_options")


@dataclass
class Recipe:
    preset: str
    train: TrainConfig
    task: ClassificationConfig
    model: dict
    data: CifarDataConfig

    def model_config(self, block: str) -> BlockNetConfig:
        return BlockNetConfig(block=block, **copy.deepcopy(self.model))

    def to_dict(self) -> dict:
        return {"preset": self.preset, **{s: to_plain(getattr(self, s)) for s in SECTIONS}}


def resolve_recipe(preset: str = "full", config_file: str | Path | None = None,
                   overrides: dict[str, dict] | None = None) -> Recipe:
    """Preset, then a YAML file with `train:`/`task:`/`model:`/`data:` sections, then flags
    (None values ignored) fill the same dataclasses; bad values become one-line errors."""
    if preset not in PRESETS:
        raise CnnlabError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    from_file = load_yaml(config_file) if config_file else {}
    unknown = set(from_file) - set(SECTIONS) - {"preset"}
    if unknown:
        raise CnnlabError(f"config file sections must be {', '.join(SECTIONS)}; got {', '.join(sorted(unknown))}")
    for section in SECTIONS:
        if from_file.get(section) is not None and not isinstance(from_file[section], dict):
            raise CnnlabError(f"config file {config_file}: section {section!r} must be a mapping of options "
                              f"(key: value lines under `{section}:`), got {from_file[section]!r}")
    overrides = overrides or {}
    layers = {s: [PRESETS[preset][s], from_file.get(s), overrides.get(s)] for s in SECTIONS}
    model = {}
    for layer in layers["model"]:
        for key, value in (layer or {}).items():
            if key not in MODEL_OPTIONS:
                raise CnnlabError(f"unknown model option {key!r}; valid: {', '.join(MODEL_OPTIONS)}")
            if value is not None:
                model[key] = value
    model = to_plain(build_config(BlockNetConfig, {"block": "A"}, model))
    model.pop("block")
    data = build_config(CifarDataConfig, *layers["data"])
    if data.root == "synthetic":
        given = {k for layer in layers["data"][1:] for k, v in (layer or {}).items() if v is not None}
        data = sized_for_synthetic(data, given)
    return Recipe(preset, build_config(TrainConfig, *layers["train"]),
                  build_config(ClassificationConfig, *layers["task"]), model, data)


def sized_for_synthetic(data: CifarDataConfig, given: set[str]) -> CifarDataConfig:
    """The data config for the synthetic set. A preset's `val_size` and `train_subset` are sized
    for CIFAR-10's 50,000 training images and do not apply; given in a config file or as flags,
    they do: `val_size` images held out of the `synthetic_train` ones (it sets `synthetic_val`),
    `train_subset` of the rest (it sets `synthetic_train`). A size larger than the synthetic
    data is refused, never trained past without a word."""
    val = data.val_size if "val_size" in given else data.synthetic_val
    if not 1 <= val < data.synthetic_train:
        what = "val_size" if "val_size" in given else "synthetic_val"
        raise CnnlabError(f"{what} {val} must be below the {data.synthetic_train} synthetic training images "
                          f"(synthetic_train)")
    total = data.synthetic_train
    if "train_subset" in given and data.train_subset is not None:
        if data.train_subset > total - val:
            raise CnnlabError(f"train_subset {data.train_subset} is larger than the {total - val} synthetic "
                              f"training images left after validation (synthetic_train {total} - val {val})")
        total = val + data.train_subset
    return dataclasses.replace(data, synthetic_val=val, synthetic_train=total)


def check_blocks(blocks: list[str]) -> list[str]:
    """Canonical block names, or a one-line error listing the valid ones (before any work)."""
    names = []
    for name in blocks:
        try:
            names.append(BLOCKS.canonical(name))
        except KeyError as exc:
            raise CnnlabError(exc.args[0]) from None
    if len(set(names)) != len(names):
        raise CnnlabError(f"a block is listed twice: {' '.join(blocks)}")
    return names


def load_data(config: CifarDataConfig, progress: bool | None = None, log: Callable[[str], None] = no_log,
              out: str | Path | None = None):
    """The splits. Unreadable files are skipped and summarised through `log` (the first few
    and a count); every one of them is listed in `out`/bad_files.json when `out` is given
    (`train_block` writes that list into its run folder too)."""
    from cnnlab.data.cifar import load_cifar10, synthetic_cifar
    if config.root == "synthetic":
        splits = synthetic_cifar(config.synthetic_train, config.synthetic_test,
                                 val_size=config.synthetic_val, seed=config.seed)
    else:
        splits = load_cifar10(config.root, val_size=config.val_size, seed=config.seed,
                              train_subset=config.train_subset, download=config.download, progress=progress)
    listed = splits.report.write(out) if out is not None else None
    if splits.report.bad:
        log(f"{splits.report.summary()} of {splits.report.total} in {splits.info['path']}")
        for line in splits.report.preview(listed_in=listed):
            log(f"  {line}")
    return splits


def data_summary(splits, config: CifarDataConfig) -> dict:
    return {"source": splits.source, "train": len(splits.train_labels), "val": len(splits.val_labels),
            "test": len(splits.test_labels), "train_subset": config.train_subset, "val_size": config.val_size,
            "seed": config.seed, "class_names": list(splits.class_names),
            "skipped_files": len(splits.report.bad)}


# ---------------------------------------------------------------------------- one block
def train_block(block: str, recipe: Recipe, splits, run_dir: str | Path, *,
                log: Callable[[str], None] = no_log) -> dict:
    """Train (or resume, or reuse) one block in `run_dir`; score the test set once at the end.
    Returns the results row (empty on the other ranks of a torchrun run)."""
    run_dir = Path(run_dir)
    model_config = recipe.model_config(block)
    if len(splits.class_names) != model_config.num_classes:  # else a traceback mid-training
        raise CnnlabError(f"the data has {len(splits.class_names)} classes ({', '.join(splits.class_names[:12])}) "
                          f"but the network has {model_config.num_classes} outputs; CIFAR-10 folders need "
                          f"exactly {model_config.num_classes} class folders")
    engine = Engine(recipe.train, run_dir, run_config={
        "task": recipe.task, "model": model_config, "data": {**to_plain(recipe.data), "source": splits.source}})
    final_path = run_dir / FINAL
    finished = None
    # Rank 0 reads the folder and tells the other ranks (under torchrun they may not see its disk).
    if engine.is_main and (run_dir / runfiles.CONFIG).is_file():
        diff = engine.config_diff(load_yaml(run_dir / runfiles.CONFIG))
        if diff:
            raise CnnlabError(f"{run_dir} holds a run with different settings ({', '.join(diff)}); "
                              "use another output directory or delete that one")
        if final_path.is_file() and "test_acc" in read_json(final_path) and (run_dir / EMBEDDINGS).is_file():
            finished = read_json(final_path)
    finished = broadcast_object(finished, engine.dist)
    if finished is not None:
        log(f"{block}: finished earlier, reusing {run_dir}")
        return _row(finished, block)
    if engine.is_main:
        splits.report.write(run_dir)  # every skipped file, beside the run it was left out of
    model = engine.build_model(lambda: BlockNet(model_config))
    task = ClassificationTask.from_arrays(
        splits.train_images, splits.train_labels, splits.val_images, splits.val_labels, recipe.task,
        batch_size=recipe.train.batch_size, device=engine.device, seed=recipe.train.seed,
        channels_last=recipe.train.channels_last, dist=engine.dist)
    result = engine.fit(model, task, resume=True)
    if not engine.is_main:
        return {}  # the other ranks only train: rank 0 holds the same weights, scores and writes
    if result.resumed_from_epoch:
        log(f"{block}: resumed after epoch {result.resumed_from_epoch}")
    test = score_test(engine, result.eval_model, splits, recipe, run_dir)
    final = {**result.final, "block": block, "params": count_parameters(model), "macs": count_macs(model),
             "test_loss": test["loss"], "test_acc": test["acc"], "train_acc_note": TRAIN_ACC_NOTE,
             "skipped_files": len(splits.report.bad),
             "device_name": device_name(engine.device)}
    engine.write_final(final)
    return _row(final, block)


def score_test(engine: Engine, model, splits, recipe: Recipe, run_dir: Path) -> dict:
    """The one test-set pass: embeddings and logits are saved for the analysis, and the test
    loss and accuracy are computed from those same logits."""
    loader = eval_loader(splits.test_images, splits.test_labels, recipe.task.eval_batch_size,
                         device=engine.device, channels_last=recipe.train.channels_last)
    path = save_embeddings(model, loader, run_dir / EMBEDDINGS, splits.class_names)
    with np.load(path) as saved:
        logits, labels = saved["logits"].astype(np.float64), saved["labels"]
    # scipy's log-softmax (float64, numpy's exp and sum), not torch's: torch's rounds some
    # entries differently, and the test loss of a run would change in its last digits.
    log_probs = log_softmax(logits, axis=1)
    return {"loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
            "acc": float((logits.argmax(1) == labels).mean())}


def _row(final: dict, block: str) -> dict:
    return {"block": block, "params": final["params"], "macs": final["macs"], "val_acc": final["val_acc"],
            "test_acc": final["test_acc"], "train_acc": final["train_acc"], "train_time_s": final["train_time_s"],
            "images_per_s": final["images_per_s"], "device": final.get("device_name", final["device"]),
            "precision": final.get("precision", "unrecorded"),  # runs from before it was recorded
            "run_dir": block}


# ---------------------------------------------------------------------------- the comparison
def compare(blocks: list[str], recipe: Recipe, out: str | Path, *, log: Callable[[str], None] = no_log,
            on_results: Callable[[dict], None] | None = None) -> dict:
    """Train every block with the same recipe into OUT/<block>/, writing the results files
    after each block, so an interruption never loses finished rows; a rerun reuses them.
    `on_results(results)` runs after each block's files are written (the report layer's
    results.md, `cnnlab.pipelines`). Returns the results (the contents of results.json)."""
    blocks = check_blocks(blocks)
    out = Path(out)
    results_path = out / runfiles.CIFAR_RESULTS
    earlier = read_json(results_path) if results_path.is_file() else None
    if earlier is not None and earlier.get("recipe") != _comparable_recipe(recipe):
        raise CnnlabError(f"{out} holds results of a different recipe; use another --out or delete it")
    splits = load_data(recipe.data, progress=recipe.train.progress, log=log,
                       out=out if is_main_process() else None)
    results = {"preset": recipe.preset, "recipe": _comparable_recipe(recipe),
               "data": data_summary(splits, recipe.data),
               "environment": environment(resolve_device(recipe.train.device)),
               "rows": [r for r in (earlier or {}).get("rows", []) if r["block"] not in blocks]}
    for i, block in enumerate(blocks, 1):
        log(f"[{i}/{len(blocks)}] block {block}")
        row = train_block(block, recipe, splits, out / block, log=log)
        if not is_main_process():
            continue  # under torchrun rank 0 writes the results
        results["rows"].append(row)
        log(f"{block}: val {row['val_acc']:.2%}  test {row['test_acc']:.2%}  "
            f"{row['train_time_s']:.1f} s  {row['images_per_s']:.0f} img/s")
        write_results(results, out)
        if on_results is not None:
            on_results(results)
    return results


def _comparable_recipe(recipe: Recipe) -> dict:
    plain = recipe.to_dict()
    # Where and how visibly it ran does not change what was trained.
    plain["train"] = {k: v for k, v in plain["train"].items() if k not in RUN_ONLY_FIELDS}
    return plain


def write_results(results: dict, out: Path) -> None:
    """results.json and results.csv (the Markdown table is the report layer's: `cnnlab.reports.results_table`)."""
    write_json(out / runfiles.CIFAR_RESULTS, results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(results["rows"])
    atomic_write_text(out / "results.csv", buffer.getvalue())


# ---------------------------------------------------------------------------- re-scoring
def evaluate_run(run_dir: str | Path, *, data: str | None = None, device: str | None = None,
                 log: Callable[[str], None] = no_log) -> dict:
    """Re-score a run's checkpoint (EMA weights when kept) on its validation and test sets,
    rebuilt from the run's own config.yaml; writes RUN/eval.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnlabError(f"run folder not found: {run_dir}")
    saved = load_yaml(run_dir / runfiles.CONFIG)
    try:
        train = build_config(TrainConfig, saved["train"], {"device": device, "progress": False})
        task = build_config(ClassificationConfig, saved["task"])
        model_config = build_config(BlockNetConfig, saved["model"])
        data_plain = {k: v for k, v in saved["data"].items() if k != "source"}
    except KeyError as exc:
        raise CnnlabError(f"{run_dir}/config.yaml is not a cifar run config (missing {exc.args[0]!r})") from None
    data_config = build_config(CifarDataConfig, data_plain, {"root": data})
    check_output_dir(run_dir, what="run folder")  # eval.json is written into it
    engine = Engine(train)
    # The checkpoint before the data: a malformed one is one line before minutes of loading.
    model = engine.prepare(load_weights(run_dir, BlockNet(model_config)))
    splits = load_data(data_config, log=log)
    results = {}
    for split, images, labels in (("val", splits.val_images, splits.val_labels),
                                  ("test", splits.test_images, splits.test_labels)):
        loader = eval_loader(images, labels, task.eval_batch_size, device=engine.device,
                             channels_last=train.channels_last)
        results.update({f"{split}_{k}": v
                        for k, v in engine.evaluate(model, lambda m, loader=loader: score(m, loader)).items()})
    results.update({"run_dir": str(run_dir), "device": str(engine.device), "data": splits.source})
    write_json(run_dir / "eval.json", results)
    return results

