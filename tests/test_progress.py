"""Progress: a bar on a terminal, plain lines every CNNLAB_PROGRESS_INTERVAL seconds in a log
(`make demo > log 2>&1`), nothing when disabled; and the long steps (CIFAR epochs, the faces'
frozen-feature caching) really report through it."""
from __future__ import annotations

import io
import sys

import pytest
import torch
from tqdm.auto import tqdm

from cnnlab.core.errors import CnnlabError
from cnnlab.core.progress import INTERVAL_ENV, PlainProgress, progress_bar, progress_interval


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_interval_and_at_the_end():
    clock, out = FakeClock(), io.StringIO()
    bar = PlainProgress(range(10), desc="cache frozen features", unit="img", interval=30, clock=clock, file=out)
    for _ in bar:
        clock.now += 10  # each item takes 10 s: a line after items 3, 6 and 9, then the end
    lines = out.getvalue().splitlines()
    assert lines == [
        "cache frozen features: 3/10 img (30%), 10.0 s/img, 0:30 elapsed, 1:10 left",
        "cache frozen features: 6/10 img (60%), 10.0 s/img, 1:00 elapsed, 0:40 left",
        "cache frozen features: 9/10 img (90%), 10.0 s/img, 1:30 elapsed, 0:10 left",
        "cache frozen features: 10/10 img (100%), 10.0 s/img, done in 1:40",
    ]


def test_rate_in_items_per_second_with_the_callers_postfix():
    clock, out = FakeClock(), io.StringIO()
    with PlainProgress(total=2048, desc="epoch 2/30", unit="batch", interval=30, clock=clock, file=out) as bar:
        for _ in range(2048):
            clock.now += 1 / 32  # exact in binary: the 960th step ends at exactly 30 s
            bar.set_postfix({"loss": 1.23456, "img/s": "2048"})
            bar.update()
    assert out.getvalue().splitlines() == [
        "epoch 2/30: 960/2,048 batch (47%), 32.0 batch/s, 0:30 elapsed, 0:34 left, loss=1.235, img/s=2048",
        "epoch 2/30: 1,920/2,048 batch (94%), 32.0 batch/s, 1:00 elapsed, 0:04 left, loss=1.235, img/s=2048",
        "epoch 2/30: 2,048/2,048 batch (100%), 32.0 batch/s, done in 1:04, loss=1.235, img/s=2048",
    ]


def test_study_style_use_counts_from_initial_and_refresh_checks_the_interval():
    clock, out = FakeClock(), io.StringIO()
    bar = PlainProgress(total=6, initial=2, desc="study faces", unit="trial", interval=30, clock=clock, file=out)
    clock.now += 20
    bar.n = 3
    bar.set_postfix_str("best 0.8123 (trial 1)")
    bar.refresh()  # 20 s: not yet
    clock.now += 100
    bar.n = 4
    bar.refresh()
    bar.close()
    bar.close()  # closing twice writes one end line
    assert out.getvalue().splitlines() == [
        "study faces: 4/6 trial (67%), 60.0 s/trial, 2:00 elapsed, 2:00 left, best 0.8123 (trial 1)",
        "study faces: 4/6 trial (67%), 60.0 s/trial, done in 2:00, best 0.8123 (trial 1)",
    ]


def test_unknown_total_and_an_error_inside_writes_no_end_line():
    clock, out = FakeClock(), io.StringIO()
    with pytest.raises(RuntimeError):
        with PlainProgress(iter(range(5)), interval=0, clock=clock, file=out) as bar:
            for i in bar:
                clock.now += 1
                if i == 1:
                    raise RuntimeError("boom")
    # interval 0: a line at every step; the error's own message says the rest.
    assert out.getvalue().splitlines() == ["1 it, 1.0 it/s, 0:01 elapsed"]


def test_non_terminal_stderr_gets_plain_lines_and_disabled_gets_nothing(capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    for _ in progress_bar(range(3), desc="decode"):
        pass
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("decode: 1/3 it (33%)")
    assert err.splitlines()[-1].startswith("decode: 3/3 it (100%)") and "\r" not in err

    for _ in progress_bar(range(3), enable=False, desc="decode"):
        pass
    with progress_bar(total=3, enable=False) as bar:
        bar.update(3)
    assert capsys.readouterr() == ("", "")


def test_a_terminal_gets_the_bar_and_true_forces_it(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(range(3), desc="decode")
    assert isinstance(bar, tqdm) and not isinstance(bar, PlainProgress) and not bar.disable
    list(bar)
    assert "\r" in terminal.getvalue()  # a redrawn bar, not lines

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    forced = progress_bar(range(3), enable=True, desc="decode")
    assert isinstance(forced, tqdm) and not forced.disable
    list(forced)
    assert "decode" in log.getvalue()


def test_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 30.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_interval() == 2.5 and PlainProgress(total=1, file=io.StringIO()).interval == 2.5
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(CnnlabError, match=f"{INTERVAL_ENV} must be a number of seconds >= 0"):
            progress_interval()


# ----------------------------------------------------------------------------- the long steps

@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cifar_block_training_writes_a_line_per_epoch_with_images_per_second(tmp_path, capsys, one_thread):
    from cnnlab.cli import main

    assert main(["cifar", "compare", "--blocks", "A", "--out", str(tmp_path / "run"), "--no-report",
                 "--data", "synthetic", "--epochs", "2", "--batch-size", "50", "--lr", "0.2",
                 "--width-multiplier", "0.125", "--device", "cpu"]) == 0
    lines = capsys.readouterr().err.splitlines()
    for epoch in (1, 2):
        done = [line for line in lines if line.startswith(f"epoch {epoch}/2: ") and "(100%)" in line]
        assert len(done) == 1, lines
        assert " batch/s, done in " in done[0] and "img/s=" in done[0] and "loss=" in done[0]


def test_face_feature_caching_reports_images_per_second(tmp_path, capsys, one_thread):
    from cnnlab.tasks.faces import train_view1
    from test_faces_train import make_fake_lfw, tiny_config

    lfw = make_fake_lfw(tmp_path / "lfw")
    train_view1(tiny_config(epochs=1, progress=None), lfw, tmp_path / "run", evaluate_test=False,
                log=lambda message: None)
    lines = capsys.readouterr().err.splitlines()
    cached = [line for line in lines if line.startswith("cache frozen features: ")]
    assert cached and "(100%)" in cached[-1] and " img/s, done in " in cached[-1], lines
    assert any(line.startswith("epoch 1/1: ") and "(100%)" in line for line in lines), lines


def test_tqdm_to_a_file_still_writes_carriage_returns_not_lines():
    """Why PlainProgress exists: tqdm given a file redraws one bar with '\\r' and writes no
    newline until it closes, so a log would hold one ever-growing line. If a tqdm release
    changes this, PlainProgress can go."""
    import io

    from tqdm import tqdm
    out = io.StringIO()
    bar = tqdm(total=5, file=out, mininterval=0, desc="epoch")
    for _ in range(5):
        bar.update(1)
    text = out.getvalue()
    assert text.count("\r") >= 5 and "\n" not in text
    bar.close()
