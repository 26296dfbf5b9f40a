"""`cnnlab faces train|margins|verify|search|export|baseline|plot|tune`: Siamese face verification on LFW. Flags and `--config FILE.yaml` fill one dataclass,
`cnnlab.tasks.faces.FaceTrainConfig`; every field is a flag of the same name."""
from __future__ import annotations

from pathlib import Path

from cnnlab.cli.options import add_face_recipe_flags as add_config_flags
from cnnlab.cli.options import face_config_from_args as config_from_args
from cnnlab.cli.options import lfw_root_from_args as data_root_from_args


def register(sub) -> None:
    faces = sub.add_parser("faces", help="Siamese face verification on LFW: train, compare margins, verify, search")
    commands = faces.add_subparsers(dest="faces_command", metavar="SUBCOMMAND")
    commands.required = True

    p = commands.add_parser("train", help="train on LFW View 1 (or the 10 View 2 folds) and score the test pairs")
    p.add_argument("--protocol", choices=["view1", "view2"], default="view1")
    p.add_argument("--data", metavar="DIR", help="LFW folder with the protocol files (default: $CNNLAB_DATA/lfw)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/faces-<protocol>)")
    p.add_argument("--folds", type=int, nargs="+", metavar="N", help="view2: run only these folds (1-10)")
    p.add_argument("--no-test", action="store_true",
                   help="view1: train and validate only; never read the DevTest pairs")
    add_config_flags(p)
    p.set_defaults(func=run_train)

    p = commands.add_parser("margins", help="one View 1 model per contrastive margin, compared side by side")
    p.add_argument("--margins", type=float, nargs="+", default=[1.0, 2.0], metavar="M")
    p.add_argument("--data", metavar="DIR", help="LFW folder (default: $CNNLAB_DATA/lfw)")
    p.add_argument("--out", metavar="DIR", default="runs/faces-margins")
    add_config_flags(p)
    p.set_defaults(func=run_margins)

    p = commands.add_parser("verify", help="same person? distance between two face images vs the model's threshold")
    p.add_argument("model", help="model.pt written by `faces train`")
    p.add_argument("image1")
    p.add_argument("image2")
    p.add_argument("--threshold", type=float, help="override the calibrated threshold stored in the model")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_verify)

    p = commands.add_parser("search", help="the k gallery images nearest to a query face")
    p.add_argument("model")
    p.add_argument("--gallery", required=True, metavar="DIR",
                   help="images, flat or one folder per person (person/image.jpg)")
    p.add_argument("--query", required=True, metavar="IMG")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_search)

    p = commands.add_parser("export", help="write the model's embedding network as ONNX (checked against PyTorch)")
    p.add_argument("model")
    p.add_argument("out", help="output .onnx file (a .json with the threshold and input spec goes beside it)")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=run_export)

    p = commands.add_parser("baseline", help="score the pretrained backbone without fine-tuning on View 1 DevTest")
    p.add_argument("--data", metavar="DIR", help="LFW folder (default: $CNNLAB_DATA/lfw)")
    p.add_argument("--out", metavar="DIR", help="write baseline.json here")
    add_config_flags(p)
    p.set_defaults(func=run_baseline)

    p = commands.add_parser("plot", help="redraw a tested run's figures from its files")
    p.add_argument("run_dir")
    p.set_defaults(func=run_plot)

    # optuna is a dependency: a tuner that fails to import is an error, never a missing command.
    from cnnlab.cli.tune import register as register_tune
    register_tune(commands)


# ---------------------------------------------------------------------------- runs, then figures
def view1_with_plots(config, data_root, out_dir, *, evaluate_test: bool, report=None, log=print) -> dict:
    """`train_view1`, then, when DevTest was scored, its figures drawn from the run's files
    and listed in metrics.json ("plots"): what `faces train` and `make demo` produce."""
    from cnnlab.plots.faces import plot_run
    from cnnlab.tasks.faces import record_plots, train_view1
    metrics = train_view1(config, data_root, out_dir, evaluate_test=evaluate_test, report=report, log=log)
    if metrics["test"] is not None:
        metrics = record_plots(out_dir, metrics, plot_run(out_dir))
    return metrics


def margins_with_report(config, margins, data_root, out_dir, *, log=print) -> dict:
    """`compare_margins`, then each run's figures (as `faces train` draws them), the
    side-by-side figures and the comparison (comparison.json lists the figures,
    comparison.md embeds them)."""
    from cnnlab.io import read_json
    from cnnlab.plots.faces import plot_margin_comparison, plot_run
    from cnnlab.tasks.faces import METRICS_FILE, compare_margins, record_plots, write_margins_report
    comparison = compare_margins(config, margins, data_root, out_dir, log=log)
    runs = comparison["runs"]
    for run in runs:
        record_plots(run["run_dir"], read_json(Path(run["run_dir"]) / METRICS_FILE), plot_run(run["run_dir"]))
    figures = plot_margin_comparison([Path(r["run_dir"]) for r in runs], [f"margin {r['margin']:g}" for r in runs],
                                     out_dir)
    return write_margins_report(out_dir, comparison, figures)


# ---------------------------------------------------------------------------- commands
def run_train(args) -> int:
    from cnnlab.errors import CnnlabError
    from cnnlab.tasks.faces import train_view2
    config = config_from_args(args)
    out = Path(args.out or f"runs/faces-{args.protocol}")
    if args.protocol == "view1":
        if args.folds:
            raise CnnlabError("--folds applies to --protocol view2 only")
        metrics = view1_with_plots(config, data_root_from_args(args), out, evaluate_test=not args.no_test)
        if metrics["test"] is None:
            v = metrics["validation"]
            print(f"validation: AUC {v['auc']:.4f}, accuracy {v['accuracy']:.2%} (test pairs not read)")
    else:
        folds = None
        if args.folds:
            if any(not 1 <= f <= 10 for f in args.folds):
                raise CnnlabError(f"--folds are numbered 1-10, got {args.folds}")
            folds = [f - 1 for f in args.folds]
        summary = train_view2(config, data_root_from_args(args), out, folds=folds)
        print(f"View 2 ({summary['folds_run']} of {summary['num_folds']} folds): accuracy "
              f"{summary['accuracy']['mean']:.2%} ± {summary['accuracy']['std']:.2%}, "
              f"AUC {summary['auc']['mean']:.4f} ± {summary['auc']['std']:.4f}")
    print(f"results: {out / 'metrics.json'}  model: {out / 'model.pt' if args.protocol == 'view1' else out}")
    return 0


def run_margins(args) -> int:
    from cnnlab.tasks.faces import margins_markdown
    out = Path(args.out)
    comparison = margins_with_report(config_from_args(args), args.margins, data_root_from_args(args), out)
    print(margins_markdown(comparison))
    print(f"comparison: {out / 'comparison.md'}")
    return 0 if comparison["runs"] else 1


def _load(path, device):
    from cnnlab.env import resolve_device
    from cnnlab.models.siamese import load_model
    model, extra = load_model(path, resolve_device(device))
    for key in ("crop", "input_size"):
        if key not in extra:
            from cnnlab.errors import CnnlabError
            raise CnnlabError(f"{path} lacks the preprocessing it was trained with ({key}); "
                              "use a model.pt written by `cnnlab faces train`")
    return model, extra


def _decode(paths, extra) -> "torch.Tensor":
    import torch
    from cnnlab.data.faces import FacePreprocess, decode_faces
    images = decode_faces(paths, FacePreprocess(crop=extra["crop"], size=extra["input_size"]))
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def run_verify(args) -> int:
    from cnnlab.distances import create_distance
    from cnnlab.models.siamese import verify
    model, extra = _load(args.model, args.device)
    threshold = args.threshold if args.threshold is not None else extra.get("threshold")
    if threshold is None:
        from cnnlab.errors import CnnlabError
        raise CnnlabError(f"{args.model} holds no calibrated threshold; pass --threshold")
    images = _decode([args.image1, args.image2], extra)
    d, same = verify(model, images[0], images[1], float(threshold), create_distance(extra.get("distance", "euclidean")))
    print(f"distance {d:.4f}  threshold {float(threshold):.4f}  {'same person' if same else 'different people'}")
    return 0


def run_search(args) -> int:
    import torch
    from cnnlab.data.faces import FacePreprocess, load_gallery
    from cnnlab.distances import create_distance
    from cnnlab.errors import CnnlabError
    from cnnlab.models.siamese import search
    from cnnlab.tasks.faces import embed_images
    model, extra = _load(args.model, args.device)
    gallery = load_gallery(args.gallery, FacePreprocess(crop=extra["crop"], size=extra["input_size"]))
    for path, reason in gallery.report.bad:
        print(f"skipped {path}: {reason}")
    if len(gallery.names) == 0:
        raise CnnlabError(f"no readable images in {Path(args.gallery)}")
    if not 1 <= args.k <= len(gallery.names):
        raise CnnlabError(f"-k must be in 1..{len(gallery.names)} (gallery size), got {args.k}")
    z = torch.from_numpy(embed_images(model, gallery.images))
    query = _decode([args.query], extra)
    dist, idx = search(model, z, query, k=args.k, distance=create_distance(extra.get("distance", "euclidean")))
    threshold = extra.get("threshold")
    print(f"{'rank':>4}  {'distance':>8}  {'match':<5}  image")
    for rank, (d, i) in enumerate(zip(dist[0].tolist(), idx[0].tolist()), start=1):
        match = "" if threshold is None else ("yes" if d <= threshold else "no")
        who = f"  ({gallery.people[i]})" if gallery.people[i] is not None else ""
        print(f"{rank:>4}  {d:>8.4f}  {match:<5}  {gallery.names[i]}{who}")
    return 0


def run_export(args) -> int:
    from cnnlab.export import export_onnx, write_export_metadata
    model, extra = _load(args.model, "cpu")
    report = export_onnx(model, args.out, input_size=extra["input_size"], opset=args.opset)
    meta = write_export_metadata(report, model, extra={"threshold": extra.get("threshold"),
                                                        "distance": extra.get("distance"), "crop": extra["crop"]})
    print(f"wrote {report.path} (opset {report.opset}, {report.input_size} px; max |onnx - torch| "
          f"{report.max_abs_diff:.1e} with {report.runtime}); metadata {meta}")
    return 0


def run_baseline(args) -> int:
    from cnnlab.tasks.faces import untrained_baseline
    untrained_baseline(config_from_args(args), data_root_from_args(args), args.out)
    return 0


def run_plot(args) -> int:
    from cnnlab.plots.faces import plot_run
    for path in plot_run(args.run_dir):
        print(path)
    return 0
