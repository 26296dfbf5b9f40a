"""`cnnlab faces train|margins|export|baseline|compare|plot` (here), `verify|search|index|score|calibrate|serve`
(`cli.faces_use`) and `tune` (`cli.tune`): Siamese face verification on LFW. Flags and
`--config FILE.yaml` fill one dataclass, `cnnlab.tasks.faces.FaceTrainConfig`; every field is a
flag of the same name."""
from __future__ import annotations

from pathlib import Path

from cnnlab.cli import tune
from cnnlab.cli.faces_use import register as register_use
from cnnlab.cli.options import add_face_recipe_flags as add_config_flags
from cnnlab.cli.options import add_lfw_flag, onnx_opset, positive_int
from cnnlab.cli.options import face_config_from_args as config_from_args
from cnnlab.cli.options import lfw_root_from_args as data_root_from_args


def register(sub) -> None:
    faces = sub.add_parser("faces", help="Siamese face verification on LFW: train, compare margins, verify, search")
    commands = faces.add_subparsers(dest="faces_command", metavar="SUBCOMMAND")
    commands.required = True

    p = commands.add_parser("train", help="train on LFW View 1 (or the 10 View 2 folds) and score the test pairs")
    p.add_argument("--protocol", choices=["view1", "view2"], default="view1")
    add_lfw_flag(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/faces-<protocol>)")
    p.add_argument("--folds", type=int, nargs="+", metavar="N", help="view2: run only these folds (1-10)")
    p.add_argument("--no-test", action="store_true",
                   help="view1: train and validate only; never read the DevTest pairs")
    p.add_argument("--score-folder", action="append", dest="score_folders", metavar="DIR",
                   help="view1: then score the saved model on this identity folder (DIR/<person>/<image>, e.g. "
                        "$CNNLAB_DATA/att-faces) as `faces score` does, at its LFW threshold, no calibration; in "
                        "metrics.json (scored_folders), never used for a choice; repeatable")
    add_config_flags(p)
    p.set_defaults(func=run_train)

    p = commands.add_parser("margins", help="one View 1 model per contrastive margin, compared side by side")
    p.add_argument("--margins", type=float, nargs="+", default=[1.0, 2.0], metavar="M")
    add_lfw_flag(p)
    p.add_argument("--out", metavar="DIR", default="runs/faces-margins")
    add_config_flags(p)
    p.set_defaults(func=run_margins)

    p = commands.add_parser("export", help="write the model's embedding network as ONNX (checked against PyTorch)")
    p.add_argument("model")
    p.add_argument("out", help="output .onnx file (a .json with the threshold and input spec goes beside it)")
    p.add_argument("--opset", type=onnx_opset, default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=run_export)

    p = commands.add_parser("baseline", help="score the pretrained backbone without fine-tuning on View 1 "
                            "DevTest (and --extra-val's people)")
    add_lfw_flag(p)
    p.add_argument("--out", metavar="DIR", help="write baseline.json here")
    add_config_flags(p)
    p.set_defaults(func=run_baseline)

    p = commands.add_parser("compare", help="two runs on the same validation pairs: AUC of B - A with a 95%% "
                            "interval from resampling the people")
    p.add_argument("run_a", help="run folder A (the reference)")
    p.add_argument("run_b", help="run folder B")
    p.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="the resamples' seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the comparison here")
    p.set_defaults(func=run_compare)

    p = commands.add_parser("plot", help="redraw a tested run's figures from its files")
    p.add_argument("run_dir")
    p.set_defaults(func=run_plot)

    register_use(commands)  # faces verify, search, index, score, calibrate, serve
    tune.register(commands)


# ---------------------------------------------------------------------------- commands
def run_train(args) -> int:
    from cnnlab.core.errors import CnnlabError
    from cnnlab.core.files import check_output_dir
    from cnnlab.tasks.faces import train_view2
    config = config_from_args(args)
    out = check_output_dir(args.out or f"runs/faces-{args.protocol}")  # before any image is read
    for folder in args.score_folders or []:
        if args.protocol != "view1":
            raise CnnlabError("--score-folder applies to --protocol view1 (one model) only; score a fold's model "
                              "with `cnnlab faces score DIR --model OUT/fold-NN`")
        if not Path(folder).is_dir():
            raise CnnlabError(f"--score-folder: identity folder not found: {folder}")
    if args.protocol == "view1":
        if args.folds:
            raise CnnlabError("--folds applies to --protocol view2 only")
        from cnnlab.pipelines import view1_with_plots
        metrics = view1_with_plots(config, data_root_from_args(args), out, evaluate_test=not args.no_test,
                                   log=print)
        if metrics["test"] is None:
            v = metrics["validation"]
            print(f"validation: AUC {v['auc']:.4f}, accuracy {v['accuracy']:.2%} (test pairs not read)")
        if args.score_folders:
            score_folders(out, args.score_folders, metrics, device=config.device)
    else:
        folds = None
        if args.folds:
            if any(not 1 <= f <= 10 for f in args.folds):
                raise CnnlabError(f"--folds are numbered 1-10, got {args.folds}")
            folds = [f - 1 for f in args.folds]
        summary = train_view2(config, data_root_from_args(args), out, folds=folds, log=print)
        from cnnlab.training.distributed import is_main_process
        if not is_main_process():
            return 0  # the other ranks of a torchrun run only trained; rank 0 reports
        val, other = summary["accuracy_val_threshold"], summary["accuracy"]
        print(f"View 2 ({summary['folds_run']} of {summary['num_folds']} folds): accuracy "
              f"{val['mean']:.2%} ± {val['std']:.2%} at the thresholds calibrated on validation people, "
              f"{other['mean']:.2%} ± {other['std']:.2%} at those from the other folds' pairs; "
              f"AUC {summary['auc']['mean']:.4f} ± {summary['auc']['std']:.4f}")
    print(f"results: {out / 'metrics.json'}  model: {out / 'model.pt' if args.protocol == 'view1' else out}")
    return 0


def score_folders(run_dir: Path, folders: list[str], metrics: dict, *, device: str) -> None:
    """The run's saved model scored on identity folders it never trained on, exactly as
    `faces score FOLDER --model RUN` scores them (at the LFW-calibrated threshold: no
    calibration on the folder), added to the run's metrics.json as `scored_folders`."""
    from cnnlab.core.files import write_json
    from cnnlab.training.distributed import is_main_process
    from cnnlab.verifier import FaceVerifier, score_identity_folder
    if not is_main_process():
        return
    verifier = FaceVerifier.load(run_dir, device=device)
    metrics["scored_folders"] = []
    for folder in folders:
        result = score_identity_folder(verifier, folder, progress=False)
        at = result["at_model_threshold"]
        print(f"{folder} (never trained on, no calibration): {result['images']} images of {result['people']} people, "
              f"AUC {result['auc']:.4f}, accuracy {at['accuracy']:.2%} at the model's threshold, best-threshold "
              f"accuracy {result['best_threshold_accuracy']:.2%} (upper bound: peeks at the labels)")
        metrics["scored_folders"].append(result)
    write_json(run_dir / "metrics.json", metrics)


def run_margins(args) -> int:
    from cnnlab.core.files import check_output_dir
    from cnnlab.pipelines import margins_with_report
    from cnnlab.reports.margins import margins_markdown
    out = check_output_dir(args.out)  # before any image is read
    comparison = margins_with_report(config_from_args(args), args.margins, data_root_from_args(args), out,
                                     log=print)
    print(margins_markdown(comparison))
    print(f"comparison: {out / 'comparison.md'}")
    return 0 if comparison["runs"] else 1


def run_export(args) -> int:
    from cnnlab.verifier import FaceVerifier
    from cnnlab.verifier.export import export_onnx, write_export_metadata
    verifier = FaceVerifier.load(args.model, device="cpu", runtime="torch")
    export = export_onnx(verifier.model, args.out, input_size=verifier.input_size, opset=args.opset)
    meta = write_export_metadata(export, verifier.model, extra={
        "threshold": verifier.extra.get("threshold"), "distance": verifier.distance_name,
        "crop": verifier.extra.get("crop"), "preprocess": verifier.face.spec(), "fingerprint": verifier.fingerprint})
    print(f"wrote {export.path} (opset {export.opset}, {export.input_size} px; max |onnx - torch| "
          f"{export.max_abs_diff:.1e} with {export.runtime}); metadata {meta}")
    return 0


def run_baseline(args) -> int:
    from cnnlab.core.files import check_output_dir
    from cnnlab.tasks.faces import untrained_baseline
    config = config_from_args(args, trains=False)
    if args.out is not None:
        check_output_dir(args.out)  # before any image is read
    untrained_baseline(config, data_root_from_args(args), args.out, log=print)
    return 0


def run_compare(args) -> int:
    from cnnlab.core.files import write_json
    from cnnlab.tasks.faces.compare import compare_runs, format_comparison
    result = compare_runs(args.run_a, args.run_b, resamples=args.resamples, seed=args.seed)
    print("\n".join(format_comparison(result)))
    if args.json:
        write_json(args.json, result)
        print(f"comparison: {args.json}")
    return 0


def run_plot(args) -> int:
    from cnnlab.reports.plots.faces import plot_run
    for path in plot_run(args.run_dir):
        print(path)
    return 0
