"""`cnnlab report RUN_DIR`: figures, embedding analysis and an HTML/Markdown report of a
`cnnlab cifar compare` run folder."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="write report.html/report.md (figures, t-SNE, confusions) for a compare run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of `cnnlab cifar compare`")
    p.add_argument("--tsne-points", type=int, default=2000,
                   help="t-SNE sample per block (default 2000, ~6-13 s per block on 2 CPU cores; 0 skips t-SNE)")
    p.add_argument("--knn-k", type=int, default=5, help="neighbours for the k-NN accuracy (default 5)")
    p.add_argument("--top-k", type=int, default=5, help="confused class pairs listed per block (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, folds and t-SNE (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.core.files import check_output_dir
    from cnnlab.reports.cifar import write_report

    check_output_dir(args.run_dir, what="run folder")  # the report is written into it; check before the analysis
    path = write_report(args.run_dir, tsne_points=args.tsne_points, seed=args.seed,
                        knn_k=args.knn_k, top_k=args.top_k)
    print(path)
    return 0
