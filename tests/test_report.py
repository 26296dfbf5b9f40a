"""`cnnlab report` on a real (tiny) compare-style run: two BlockNets trained by the engine on
synthetic images, embeddings saved by `save_embeddings`, files laid out as `cifar compare`
writes them."""
import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError
from cnnlab.models import count_parameters, create_model
from cnnlab.reports.analysis import EMBEDDINGS_FILE, analyse_embeddings
from cnnlab.reports.cifar import write_report
from cnnlab.reports.plots.cifar import CONFUSION_SIZE, CURVES_SIZE, SCATTER_SIZE, TSNE_SIZE
from cnnlab.reports.plots.common import DPI
from cnnlab.tasks.classification import save_embeddings

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]
BLOCKS = {"A": 6, "C": 3}  # block -> epochs (lr 0.1: learns on seeds 0-2, measured)


def oriented_stripes(n, num_classes, seed, size=32):
    """The class is the stripe orientation alone; colours, frequency and phase vary per
    image. Random (untrained) features mostly see the colours, so only a trained network
    separates the classes: the contrast the embedding metrics must show."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes)
    yy, xx = np.mgrid[0:size, 0:size] / size
    theta = (np.pi * labels / num_classes)[:, None, None]
    freq = rng.uniform(2.5, 4.5, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    background, foreground = rng.uniform(0, 1, (2, n, 1, 1, 3))
    img = background + (foreground - background) * stripes[..., None] + rng.normal(0, 0.05, (n, size, size, 3))
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from cnnlab.tasks.classification import ClassificationConfig, ClassificationTask, eval_loader
    from cnnlab.training.engine import Engine, TrainConfig

    out = tmp_path_factory.mktemp("run")
    # One thread: the nets are tiny, and on a busy shared machine two intra-op threads
    # waiting on each other made this fixture ~10x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    c = len(CLASS_NAMES)
    train, val, test = (oriented_stripes(n, c, seed) for n, seed in ((480, 1), (120, 2), (240, 3)))
    # Flips would turn one orientation class into another.
    task_cfg = ClassificationConfig(flip=False)
    rows = []
    for block, epochs in BLOCKS.items():
        torch.manual_seed(0)
        model = create_model(block, width_multiplier=0.125, num_classes=c)
        task = ClassificationTask.from_arrays(*train, *val, task_cfg, batch_size=32, device="cpu")
        fit = Engine(TrainConfig(epochs=epochs, batch_size=32, lr=0.1, device="cpu"), out / block,
                     run_config={"model": {"block": block, "width_multiplier": 0.125}}).fit(model, task)
        loader = eval_loader(*test, 240, device="cpu")
        save_embeddings(fit.eval_model, loader, out / block / EMBEDDINGS_FILE, CLASS_NAMES)
        arrays = np.load(out / block / EMBEDDINGS_FILE)
        test_acc = float((arrays["logits"].argmax(1) == arrays["labels"]).mean())
        rows.append({"block": block, "params": count_parameters(model), "macs": 1_000_000 * (len(rows) + 1),
                     "val_acc": fit.final["val_acc"], "test_acc": test_acc, "train_acc": fit.final["train_acc"],
                     "train_time_s": fit.final["train_time_s"], "images_per_s": fit.final["images_per_s"],
                     "device": "cpu", "run_dir": block})
    results = {"preset": "test", "recipe": {"epochs": BLOCKS, "lr": 0.1, "batch_size": 32},
               "data": {"source": "synthetic oriented stripes", "classes": CLASS_NAMES},
               "environment": {"torch": torch.__version__}, "rows": rows}
    (out / "results.json").write_text(json.dumps(results))
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    untrained = create_model("A", width_multiplier=0.125, num_classes=c)
    untrained_npz = save_embeddings(untrained, eval_loader(*test, 240, device="cpu"),
                                    tmp_path_factory.mktemp("untrained") / EMBEDDINGS_FILE, CLASS_NAMES)
    return out, untrained_npz


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self.tables += tag == "table"


def test_report_writes_every_promised_file(trained_run):
    out, _ = trained_run
    html_path = write_report(out, tsne_points=120, seed=0)
    assert html_path == out / "report.html"
    analysis = json.loads((out / "analysis.json").read_text())
    expected_pngs = {"figures/training_curves.png": CURVES_SIZE, "figures/accuracy_params_time.png": SCATTER_SIZE}
    for block in BLOCKS:
        expected_pngs[f"figures/tsne_{block}.png"] = TSNE_SIZE
        expected_pngs[f"figures/confusion_{block}.png"] = CONFUSION_SIZE
    assert set(analysis["figures"].values()) == set(expected_pngs)
    for name in ["report.html", "report.md", "analysis.json", "analysis.csv", *expected_pngs]:
        assert (out / name).stat().st_size > 0, name
    for name, (w, h) in expected_pngs.items():
        with Image.open(out / name) as img:
            img.load()
            assert img.size == (round(w * DPI), round(h * DPI)), name

    parser = _Images()
    parser.feed(html_path.read_text())
    parser.close()
    assert parser.tables >= 3  # results, embedding metrics, confused pairs
    embedded = {img["data-file"]: img["src"] for img in parser.images}
    assert set(embedded) == set(expected_pngs)
    for name, src in embedded.items():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (out / name).read_bytes()

    md = (out / "report.md").read_text()
    assert all(f"]({name})" in md for name in expected_pngs)
    assert "cat" in md and "| A |" in md and "Environment" in md
    for block in BLOCKS:
        a = analysis["blocks"][block]
        assert -1.0 <= a["silhouette"] <= 1.0 and 0.0 <= a["knn_accuracy"] <= 1.0
        assert len(a["top_confused_pairs"]) <= 5
    csv_lines = (out / "analysis.csv").read_text().splitlines()
    assert csv_lines[0].startswith("block,") and len(csv_lines) == 1 + len(BLOCKS)
    assert isinstance(analysis["shared_confusions"], list)
    # The report's claims are in both outputs; this run lacks blocks, so none is judged yet.
    assert [c["verdict"] for c in analysis["claims"]] == ["not judged yet"] * 3
    assert "## The reference report's findings, checked" in md and "B has the best validation accuracy" in md


def test_report_reuses_cached_analysis_until_embeddings_change(trained_run):
    out, _ = trained_run
    write_report(out, tsne_points=120, seed=0)
    first = json.loads((out / "analysis.json").read_text())
    write_report(out, tsne_points=120, seed=0)
    second = json.loads((out / "analysis.json").read_text())
    assert all(second["cache_hits"].values())
    assert second["blocks"] == first["blocks"]
    npz = out / "C" / EMBEDDINGS_FILE
    npz.write_bytes(npz.read_bytes())  # same content, new mtime: must not be trusted
    write_report(out, tsne_points=120, seed=0)
    assert json.loads((out / "analysis.json").read_text())["cache_hits"] == {"A": True, "C": False}


def test_trained_embedding_separates_classes_better_than_untrained(trained_run):
    out, untrained_npz = trained_run
    trained = analyse_embeddings(out / "A" / EMBEDDINGS_FILE, tsne_points=0)
    untrained = analyse_embeddings(untrained_npz, tsne_points=0)
    for a in (trained, untrained):
        assert -1.0 <= a["silhouette"] <= 1.0 and 0.0 <= a["knn_accuracy"] <= 1.0
    assert trained["silhouette"] > untrained["silhouette"] + 0.1
    assert trained["knn_accuracy"] > untrained["knn_accuracy"] + 0.15


def _fake_run(out, blocks=("A", "D-dw"), with_embeddings=("A",)):
    """A hand-made run folder: random embeddings, two epochs of metrics."""
    rng = np.random.default_rng(0)
    names = np.array(["airplane", "automobile", "bird", "cat"])
    rows = []
    for i, block in enumerate(blocks):
        d = out / block
        d.mkdir(parents=True)
        lines = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e, "val_loss": 2.1 / e,
                  "val_acc": 0.25 * e, "lr": 0.1, "epoch_time_s": 1.0, "images_per_s": 100.0} for e in (1, 2)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        (d / "config.yaml").write_text(f"model:\n  block: {block}\n")
        if block in with_embeddings:
            labels = np.repeat(np.arange(4), 15)
            np.savez(d / EMBEDDINGS_FILE, features=rng.normal(size=(60, 8)).astype(np.float32), labels=labels,
                     logits=rng.normal(size=(60, 4)).astype(np.float32), class_names=names)
        rows.append({"block": block, "params": 1000 * (i + 1), "macs": 5e6, "val_acc": 0.5, "test_acc": 0.45,
                     "train_acc": 0.6, "train_time_s": 10.0 + i, "images_per_s": 50.0, "device": "cpu",
                     "run_dir": block})
    (out / "results.json").write_text(json.dumps({"preset": "quick", "recipe": {}, "data": {},
                                                  "environment": {}, "rows": rows}))
    return out


def test_cli_report_prints_path_and_notes_blocks_without_embeddings(tmp_path, capsys):
    out = _fake_run(tmp_path / "run")
    assert main(["report", str(out), "--tsne-points", "40"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    analysis = json.loads((out / "analysis.json").read_text())
    assert list(analysis["blocks"]) == ["A"] and analysis["not_analysed"] == ["D-dw"]
    assert "No embeddings_test.npz (not analysed): D-dw." in (out / "report.md").read_text()
    # Curves and the scatter still cover both blocks.
    assert (out / "figures" / "training_curves.png").is_file()
    assert not (out / "figures" / "tsne_D-dw.png").exists()


@pytest.mark.parametrize("make", [lambda p: p / "nowhere", lambda p: p])
def test_report_of_a_folder_without_results_is_a_one_line_error(tmp_path, capsys, make):
    target = make(tmp_path)
    with pytest.raises(CnnlabError):
        write_report(target)
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error:") and "\n" not in err


def test_bad_metrics_line_is_reported_with_its_place(tmp_path):
    out = _fake_run(tmp_path / "run", blocks=("A",), with_embeddings=())
    with open(out / "A" / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(CnnlabError, match=r"metrics.jsonl:3"):
        write_report(out, tsne_points=0)


@pytest.mark.parametrize("n", [3, 10, 15, 45, 300])
def test_class_colors_are_distinct_for_many_classes(n):
    from cnnlab.reports.plots.common import class_colors

    colors = class_colors(n)
    assert colors.shape == (n, 4) and ((colors >= 0) & (colors <= 1)).all()
    assert len({tuple(np.round(c, 4)) for c in colors}) == n
