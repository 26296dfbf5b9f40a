"""Using a trained face model from the command line: `faces verify`, `faces search`,
`faces index build|add|remove|prune`, `faces score`, `faces calibrate` and `faces serve`. Every
command is a thin front end over `cnnlab.verifier.FaceVerifier` (and the HTTP app of
`cnnlab.serve`); none holds library logic."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnlab.cli import catalog
from cnnlab.cli.options import distance_threshold, port_number, positive_float, positive_int


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--runtime", choices=catalog.load()["runtimes"], default="auto",
                   help="how to run the network: auto = onnxruntime on a CPU (fastest, BENCHMARKS.md), torch on a GPU")
    p.add_argument("--batch-size", type=positive_int, help="images per forward pass (default: per runtime)")


def load_verifier(model: str | Path, args: argparse.Namespace, **options):
    from cnnlab.core.progress import is_interactive
    from cnnlab.verifier import FaceVerifier
    # The one-time ONNX export takes seconds on a real model: say so on a terminal, and keep
    # stderr to errors only otherwise.
    log = (lambda m: print(m, file=sys.stderr)) if is_interactive() else None
    return FaceVerifier.load(model, device=args.device, runtime=args.runtime, batch_size=args.batch_size,
                             log=log, **options)


FOLDER_HELP = ("one folder per person: every image under FOLDER/<person>/, at any depth (albums), is that "
               "person's; images directly in FOLDER belong to no one and are left out")
# How many files left out the screen names before "... and N more" (all of them are in --json).
SKIPPED_SHOWN = 5


def register(commands) -> None:
    """`faces verify`, `faces search`, `faces index build|add|remove|prune`, `faces score`,
    `faces calibrate` and `faces serve`: registered here, beside their implementations."""
    p = commands.add_parser("verify", help="same person? distance between two face images vs the model's threshold")
    p.add_argument("model", help="model.pt written by `faces train`")
    p.add_argument("image1")
    p.add_argument("image2")
    p.add_argument("--threshold", type=distance_threshold, help="override the calibrated threshold stored in the model")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_flags(p)
    p.set_defaults(func=run_verify)

    p = commands.add_parser("search", help="the k gallery faces nearest to each query: INDEX QUERY... "
                                           "(or MODEL --gallery DIR --query IMG, embedding the folder now)")
    p.add_argument("target", metavar="INDEX", help="index folder from `faces index build` (or a model, with --gallery)")
    p.add_argument("queries", nargs="*", metavar="QUERY", help="query images")
    p.add_argument("--query", action="append", default=[], metavar="IMG", help="a query image (repeatable)")
    p.add_argument("--gallery", metavar="DIR", help="embed this folder for this search instead of reading an index "
                   "(images, and/or one folder per person, albums inside it included); the first argument is "
                   "then the model")
    p.add_argument("--model", help="with an INDEX: the model to search with (default: the one that built it)")
    p.add_argument("-k", type=positive_int, default=5)
    p.add_argument("--json", action="store_true", help="print the matches as JSON")
    add_model_flags(p)
    p.set_defaults(func=run_search)

    index = commands.add_parser("index", help="a persistent gallery index: enrol faces once, search many times")
    sub = index.add_subparsers(dest="index_command", metavar="SUBCOMMAND")
    sub.required = True
    p = sub.add_parser("build", help="embed every face under GALLERY_DIR into a new index folder (or extend one)")
    p.add_argument("gallery", metavar="GALLERY_DIR",
                   help="images, and/or one folder per person: every image under a person's folder, at any depth "
                        "(albums), is that person's; a deeper folder never names a person")
    p.add_argument("--model", required=True, help="model.pt (or its run directory) written by `faces train`")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to write")
    _add_enrol_flags(p)
    p.set_defaults(func=run_index_build)
    p = sub.add_parser("add", help="add the faces under DIR that the index does not hold yet")
    p.add_argument("index", metavar="INDEX")
    p.add_argument("gallery", metavar="DIR", help="as GALLERY_DIR of `index build`: images, and/or one folder per "
                   "person, every image at any depth")
    p.add_argument("--model", help="default: the model that built the index (another one is refused)")
    _add_enrol_flags(p)
    p.set_defaults(func=run_index_add)
    p = sub.add_parser("remove", help="remove a person's rows, or the rows of image files or folders")
    p.add_argument("index", metavar="INDEX")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders whose rows to remove")
    p.add_argument("--person", metavar="NAME", help="remove every row of this person")
    _add_wait_flag(p)
    p.set_defaults(func=run_index_remove)
    p = sub.add_parser("prune", help="remove the rows whose image files are gone (moved or deleted)")
    p.add_argument("index", metavar="INDEX")
    _add_wait_flag(p)
    p.set_defaults(func=run_index_prune)

    p = commands.add_parser("score", help="score the model on an identity folder it never trained on "
                            "(every same-person pair + as many random different-person pairs)")
    p.add_argument("folder", metavar="FOLDER", help=FOLDER_HELP)
    p.add_argument("--model", required=True, help="model.pt (or its run directory) written by `faces train`")
    p.add_argument("--negatives", type=positive_int, metavar="N",
                   help="different-person pairs to draw (default: as many as same-person pairs)")
    p.add_argument("--seed", type=int, default=0, help="which different-person pairs are drawn (default 0)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--out", metavar="FILE.json", help="also write the full result to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--calibrate-people", type=positive_int, metavar="N",
                   help="calibrate a threshold on N people (drawn with --seed) and score the others with it: "
                        "what `faces calibrate` would buy on this population")
    _add_calibration_flags(p)
    add_model_flags(p)
    p.set_defaults(func=run_score)

    p = commands.add_parser("calibrate", help="move the model's threshold to your people: choose it on labelled "
                            "pairs of an identity folder and write a new model file")
    p.add_argument("model", help="model.pt (or its run directory) written by `faces train`")
    p.add_argument("folder", metavar="FOLDER", help=FOLDER_HELP)
    p.add_argument("--out", required=True, metavar="NEW.pt", help="the calibrated model file to write")
    _add_calibration_flags(p)
    p.add_argument("--negatives", type=positive_int, metavar="N",
                   help="different-person pairs to draw (default: as many as same-person pairs)")
    p.add_argument("--seed", type=int, default=0, help="which different-person pairs are drawn (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_flags(p)
    p.set_defaults(func=run_calibrate)

    p = commands.add_parser("serve", help="HTTP service: POST /verify /embed /search, GET /healthz /docs, a page at /")
    p.add_argument("--model", required=True, help="model.pt (or its run directory) written by `faces train`")
    p.add_argument("--index", metavar="INDEX", help="gallery index for POST /search")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on, 1-65535 (default 8000)")
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0, help="largest image file accepted (MB)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="largest image accepted, in pixels, read from its header (default 40,000,000)")
    p.add_argument("--show-paths", action="store_true",
                   help="show the server's file paths (model, index, gallery images) in answers; default: names only")
    add_model_flags(p)
    p.set_defaults(func=run_serve)


def _add_calibration_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", choices=["far", "accuracy"], default="far",
                   help="far: the most same-person pairs accepted at --far; accuracy: the best accuracy (default far)")
    p.add_argument("--far", type=positive_float, default=1e-3,
                   help="target false-accept rate for --objective far (default 1e-3); with n different-person "
                        "pairs the smallest rate they can show is 1/n")


def _add_wait_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true",
                   help="stop with one line if another process is writing the index (default: wait for it)")


def _add_enrol_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--person", metavar="NAME",
                   help="who every image under the folder shows, at any depth, sub-folders included (default: each "
                        "top-level folder names its person; images directly in the folder are of no one)")
    p.add_argument("--json", action="store_true", help="print the counts and every file left out as JSON")
    p.add_argument("--commit-every", type=positive_int, default=1024, metavar="N",
                   help="save progress every N images: an interrupted build keeps them and the rerun continues")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_wait_flag(p)
    add_model_flags(p)


# ---------------------------------------------------------------------------- verify / search
def run_verify(args) -> int:
    verifier = load_verifier(args.model, args, threshold=args.threshold)
    result = verifier.verify(args.image1, args.image2)
    if getattr(args, "json", False):
        print(json.dumps({**result.to_dict(), "image1": args.image1, "image2": args.image2}))
    else:
        print(f"distance {result.distance:.4f}  threshold {result.threshold:.4f}  "
              f"{'same person' if result.same else 'different people'}")
        print(f"threshold: {verifier.threshold_source}")
    return 0


def run_search(args) -> int:
    """`faces search INDEX QUERY... [-k K] [--json]`, or the first form,
    `faces search MODEL --gallery DIR --query IMG`, which embeds the folder for this search."""
    from cnnlab.core.errors import CnnlabError
    from cnnlab.verifier import GalleryIndex, scan_gallery
    from cnnlab.verifier.index import INDEX_FILE, embed_file_batches
    queries = [*args.queries, *args.query]
    if not queries:
        raise CnnlabError("give at least one query image (QUERY, or --query IMG)")
    target = Path(args.target)
    if args.gallery:
        if args.model:
            raise CnnlabError("--model goes with an INDEX; with --gallery the first argument is the model")
        verifier = load_verifier(target, args)
        scan = scan_gallery(args.gallery)
        embeddings, ok, left_out = embed_file_batches(verifier, scan.images, desc="embed gallery")
        gallery_files = scan.tally()
        gallery_files.left_out += left_out
        gallery_files.used = len(ok)
        # On stderr, beside the embedding's progress: stdout holds only the matches (table or JSON).
        for line in gallery_files.preview(SKIPPED_SHOWN, "the --json output"):
            print(line, file=sys.stderr)
        print(f"gallery {args.gallery}: {gallery_files.summary()}", file=sys.stderr)
        if not ok:
            raise CnnlabError(f"no usable images in {args.gallery} ({gallery_files.summary()})")
        index = GalleryIndex.in_memory(verifier, ok, embeddings, args.gallery)
    else:
        if not (target / INDEX_FILE).is_file():
            if target.is_file() or (target / "model.pt").is_file():
                hint = ("it is a model: add --gallery DIR, or build an index first with "
                        f"`cnnlab faces index build DIR --model {target} --out INDEX`")
            else:
                hint = ("a folder without index.json; build one with `cnnlab faces index build DIR --model M "
                        "--out INDEX`") if target.is_dir() else "not found"
            raise CnnlabError(f"{target} is not a face index ({hint})")
        index = GalleryIndex.open(target)
        model = args.model or index.model_path
        if not args.model and not Path(model).exists():
            raise CnnlabError(f"the model that built {target} ({model}) is gone; pass --model")
        verifier = load_verifier(model, args)
    if index.count == 0:
        raise CnnlabError(f"{target} is empty: add faces with `cnnlab faces index add {target} DIR`")
    # More than the gallery holds is all of it, ranked (the service's rule too: `clamp_k`).
    results = verifier.identify_all(queries, index, k=args.k)  # checks the index's model, then embeds
    if args.json:
        threshold = verifier.threshold if verifier.has_threshold else None
        print(json.dumps({"index": str(index.root), "model": str(verifier.source), "threshold": threshold,
                          **({"gallery_files": gallery_files.to_dict()} if args.gallery else {}),
                          "results": [{"query": q, "matches": [m.to_dict() for m in ms]}
                                      for q, ms in zip(queries, results)]}, indent=2))
        return 0
    if verifier.has_threshold:
        print(f"threshold {verifier.threshold:.4f}: 'within' says whether a distance is at most the threshold "
              "(the model's decision, not an identity)")
        print(f"threshold: {verifier.threshold_source}")
    if index.count < args.k:
        print(f"the gallery holds {index.count} images: all of them, ranked")
    for q, matches in zip(queries, results):
        if len(queries) > 1:
            print(f"query {q}")
        print(f"{'rank':>4}  {'distance':>8}  {'within':<6}  image")
        for m in matches:
            match = "" if m.same is None else ("yes" if m.same else "no")
            who = f"  ({m.person})" if m.person is not None else ""
            print(f"{m.rank:>4}  {m.distance:>8.4f}  {match:<6}  {m.name}{who}")
    return 0


# ---------------------------------------------------------------------------- index
def _enrol_options(args) -> dict:
    return {"commit_every": args.commit_every, "progress": False if args.no_progress else None,
            "person": args.person, "lock_timeout": 0 if args.no_wait else None}


def _print_enrolment(counts, args, index: str) -> None:
    """The first files left out and the counts (every file under the folder), or all as JSON."""
    if args.json:
        print(json.dumps({"index": str(index), **counts.to_dict()}, indent=2))
        return
    for line in counts.files.preview(SKIPPED_SHOWN, "the --json output"):
        print(line)
    print(counts.summary())


def run_index_build(args) -> int:
    from cnnlab.core.files import check_output_dir
    from cnnlab.verifier import build_index
    check_output_dir(args.out)  # before the model is loaded
    verifier = load_verifier(args.model, args)
    counts = build_index(verifier, args.gallery, args.out, **_enrol_options(args))
    _print_enrolment(counts, args, args.out)
    if not args.json:
        print(f"index: {args.out}")
    return 0 if counts.total else 1


def run_index_add(args) -> int:
    from cnnlab.verifier import GalleryIndex, add_to_index
    index = GalleryIndex.open(args.index)
    verifier = load_verifier(args.model or index.model_path, args)
    counts = add_to_index(args.index, args.gallery, verifier, **_enrol_options(args))
    _print_enrolment(counts, args, args.index)
    return 0


def run_index_remove(args) -> int:
    from cnnlab.verifier import remove_from_index
    removed, left = remove_from_index(args.index, person=args.person, paths=args.paths,
                                      lock_timeout=0 if args.no_wait else None)
    print(f"{removed} removed; {left} images in the index")
    return 0


def run_index_prune(args) -> int:
    from cnnlab.verifier import prune_index
    removed, left = prune_index(args.index, lock_timeout=0 if args.no_wait else None)
    print(f"{removed} rows whose files are gone removed; {left} images in the index")
    return 0


# ---------------------------------------------------------------------------- score

def run_score(args) -> int:
    from cnnlab.core.files import check_output_file, write_json
    from cnnlab.verifier import FileTally, LeftOut, score_identity_folder
    if args.out:
        check_output_file(args.out)  # before minutes of embedding
    verifier = load_verifier(args.model, args)
    result = score_identity_folder(verifier, args.folder, negatives=args.negatives, seed=args.seed,
                                   progress=False if args.no_progress else None,
                                   calibrate_people=args.calibrate_people, objective=args.objective, far=args.far)
    if args.out:
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    pairs, skipped = result["pairs"], result["skipped"]
    files = FileTally(result["files"]["seen"], result["files"]["used"], [LeftOut(**item) for item in skipped])
    for line in files.preview(SKIPPED_SHOWN, args.out or "the --json output"):
        print(line)
    print(f"{result['folder']}: {files.summary()}")
    print(f"{result['images']} images of {result['people']} people scored, "
          f"{len(skipped)} skipped; {pairs['matched']} same-person + {pairs['mismatched']} different-person pairs")
    print(f"AUC {result['auc']:.4f}  EER {result['eer']:.4f}")
    at = result["at_model_threshold"]
    if at is None:
        print("accuracy at the model's threshold: none (the model holds no calibrated threshold)")
    else:
        print(f"accuracy at the model's threshold {at['threshold']:.4f}: {at['accuracy']:.4f}")
    if "at_calibrated_threshold" in result:
        c, at = result["calibration"], result["at_calibrated_threshold"]
        print(f"calibrated on {c['people']} other people ({c['objective']}): threshold {at['threshold']:.4f}, "
              f"accuracy {at['accuracy']:.4f}, false-accept rate {at['far']:.4f}, true-accept rate {at['tar']:.4f}"
              + (f" ({c['note']})" if c.get("note") else ""))
    print(f"best-threshold accuracy {result['best_threshold_accuracy']:.4f} at {result['best_threshold']:.4f} "
          "(upper bound: peeks at these pairs' labels)")
    if args.out:
        print(f"written: {args.out}")
    return 0


# ---------------------------------------------------------------------------- calibrate
def run_calibrate(args) -> int:
    from cnnlab.core.files import check_output_file
    from cnnlab.verifier import resolve_model_path
    from cnnlab.verifier.calibrate import calibrate, check_calibrated_output, write_calibrated_model
    check_output_file(args.out)
    source = resolve_model_path(args.model)
    check_calibrated_output(source, args.out)  # before the model is loaded and the folder embedded
    verifier = load_verifier(source, args)
    record, files = calibrate(verifier, args.folder, objective=args.objective, far=args.far,
                              negatives=args.negatives, seed=args.seed, progress=False if args.no_progress else None)
    write_calibrated_model(source, args.out, record)
    pairs = record["pairs"]
    for line in files.preview(SKIPPED_SHOWN, f"`cnnlab faces score {args.folder} --model {args.model} --json`"):
        print(line)
    print(f"{record['folder']}: {files.summary()}")
    print(f"{record['images']} images of {record['people']} people, {record['skipped']} skipped; "
          f"{pairs['matched']} same-person + {pairs['mismatched']} different-person pairs")
    goal = f"false-accept rate <= {args.far:g}" if args.objective == "far" else "best accuracy"
    print(f"threshold {record['threshold']:.4f} ({goal}; was {record['replaced']}): false-accept rate "
          f"{record['far']:.4f}, true-accept rate {record['tar']:.4f}, accuracy {record['accuracy']:.4f} "
          "on these pairs")
    if record.get("note"):
        print(f"note: {record['note']}")
    print(f"written: {args.out} (same embeddings: gallery indexes built with {source} stay valid)")
    return 0


def run_serve(args) -> int:
    from cnnlab.cli.faces_serve import serve
    return serve(args, load_verifier)
