"""The CLI's one error boundary (`cnnlab.cli.run_guarded`): a CnnlabError is one line and exit
2, any other exception one line naming the command and the exception (exit 1), Ctrl-C exit
130; `--debug` (before or after the command) or CNNLAB_DEBUG=1 adds the traceback. Usage
errors are one line too. The demo uses the same boundary, per step."""
from __future__ import annotations

import pytest

import cnnlab.cli.blocks
from cnnlab import demo
from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError


@pytest.fixture
def failing_blocks(monkeypatch):
    """`cnnlab blocks` replaced by a command that raises what the test puts in `raised`."""
    raised = []

    def run(args):
        raise raised[0]

    monkeypatch.setattr(cnnlab.cli.blocks, "run", run)
    monkeypatch.delenv("CNNLAB_DEBUG", raising=False)
    return raised


def test_an_unexpected_exception_is_one_line_naming_the_command_exit_1(failing_blocks, capsys):
    failing_blocks.append(RuntimeError("tensor a (3) must match tensor b (4)\nsecond line of detail"))
    assert main(["blocks"]) == 1
    err = capsys.readouterr().err
    assert err == ("cnnlab blocks: unexpected error: RuntimeError: tensor a (3) must match tensor b (4) "
                   "(run with --debug for the traceback)\n")


def test_a_subcommand_is_named(monkeypatch, capsys):
    import cnnlab.cli.faces

    def run_plot(args):
        raise ValueError("boom")

    monkeypatch.setattr(cnnlab.cli.faces, "run_plot", run_plot)
    assert main(["faces", "plot", "somewhere"]) == 1
    assert capsys.readouterr().err.startswith("cnnlab faces plot: unexpected error: ValueError: boom")


def test_an_exception_without_a_message_is_still_one_line(failing_blocks, capsys):
    failing_blocks.append(MemoryError())
    assert main(["blocks"]) == 1
    assert capsys.readouterr().err == ("cnnlab blocks: unexpected error: MemoryError "
                                       "(run with --debug for the traceback)\n")


def test_a_cnnlab_error_is_one_line_exit_2_even_with_a_newline_in_it(failing_blocks, capsys):
    failing_blocks.append(CnnlabError("file a\nb.pt not found"))
    assert main(["blocks"]) == 2
    assert capsys.readouterr().err == "cnnlab: error: file a b.pt not found\n"


def test_ctrl_c_is_exit_130(failing_blocks, capsys):
    failing_blocks.append(KeyboardInterrupt())
    assert main(["blocks"]) == 130
    assert capsys.readouterr().err == "cnnlab: interrupted\n"


@pytest.mark.parametrize("argv", [["--debug", "blocks"], ["blocks", "--debug"]])
def test_debug_flag_before_or_after_the_command_shows_the_traceback(failing_blocks, capsys, argv):
    failing_blocks.append(RuntimeError("deep inside"))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise raised[0]' in err
    last = err.strip().splitlines()[-1]
    assert last == "cnnlab blocks: unexpected error: RuntimeError: deep inside"  # no hint: it is shown


@pytest.mark.parametrize("value, shown", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_cnnlab_debug_environment_variable(failing_blocks, monkeypatch, capsys, value, shown):
    monkeypatch.setenv("CNNLAB_DEBUG", value)
    failing_blocks.append(CnnlabError("a user error"))
    assert main(["blocks"]) == 2
    err = capsys.readouterr().err
    assert ("Traceback" in err) is shown
    assert err.strip().splitlines()[-1] == "cnnlab: error: a user error"


def test_no_debug_flag_is_false_for_a_command_that_did_not_get_it():
    from cnnlab.cli import build_parser
    parser = build_parser()
    assert parser.parse_args(["blocks"]).debug is False
    assert parser.parse_args(["--debug", "blocks"]).debug is True
    assert parser.parse_args(["cifar", "eval", "run", "--debug"]).debug is True
    assert parser.parse_args(["faces", "tune", "--debug"]).debug is True


@pytest.mark.parametrize("argv, fragment", [
    (["blocks", "--width-multiplier", "x"], "argument --width-multiplier: invalid float value: 'x'"),
    (["cifar", "train", "--out", "o"], "the following arguments are required: --block"),
    (["nope"], "argument COMMAND: invalid choice: 'nope'"),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and fragment in err and "--help" in err


def test_help_still_shows_usage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["blocks", "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: cnnlab blocks")


# ---------------------------------------------------------------------------- the demo
def test_demo_step_with_an_unexpected_error_is_one_line_naming_the_step(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CNNLAB_DEBUG", raising=False)
    calls = []

    def broken(out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(demo, "STEPS", [("broken step", broken), ("never", lambda out: calls.append(1))])
    assert demo.main(["--out", str(tmp_path)]) == 1
    assert calls == []  # later steps do not run
    assert capsys.readouterr().err == ("cnnlab demo step 1 (broken step): unexpected error: OSError: [Errno 28] "
                                       "No space left on device (run with --debug for the traceback)\n")


def test_demo_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    def broken(out):
        raise RuntimeError("why")

    monkeypatch.setattr(demo, "STEPS", [("broken", broken)])
    assert demo.main(["--out", str(tmp_path), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_demo_checks_its_output_folder_before_the_first_step(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(demo, "STEPS", [("one", lambda out: calls.append(1))])
    taken = tmp_path / "file"
    taken.write_text("x")
    assert demo.main(["--out", str(taken)]) == 2
    assert calls == []
    assert capsys.readouterr().err == f"cnnlab: error: --out {taken} is an existing file, not a folder\n"


SPEAKER = """
import sys
from cnnlab.cli import run_guarded
def speak():
    if sys.argv[1] == "other-pipe":
        raise BrokenPipeError(32, "Broken pipe")  # not stdout's: a library's connection
    for _ in range(100_000):
        print("x" * 100)
sys.exit(run_guarded(speak, "cnnlab speak"))
"""


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`cnnlab ... --json | head`: exit 141 (as for SIGPIPE), no error line; a broken pipe that
    is not stdout's is still an unexpected error."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", SPEAKER, "stdout"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.read(10) == b"x" * 10
    proc.stdout.close()  # the reader goes away
    assert proc.wait(timeout=60) == 141 and proc.stderr.read() == b""
    other = subprocess.run([sys.executable, "-c", SPEAKER, "other-pipe"], capture_output=True, timeout=60)
    assert other.returncode == 1
    assert other.stderr.decode().startswith("cnnlab speak: unexpected error: BrokenPipeError")



@pytest.mark.parametrize("entry", [
    "import cnnlab.cli.blocks as b; b.run = lambda args: print('one line') or 0; "
    "from cnnlab.cli import main; main(['blocks'])",
    "from cnnlab import demo; demo.STEPS[:] = [('one step', lambda out: (print('one line'), os._exit(0)))]; "
    "demo.main(['--out', OUT])",
])
def test_printed_lines_reach_a_log_file_before_the_process_ends(entry, tmp_path):
    # os._exit skips the flush at exit, like kill -9 of a long run writing to `> run.log`:
    # what was printed is in the file only if each line was written when printed.
    import os
    import subprocess
    import sys
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # Python's default buffering
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", f"import os; OUT = {str(tmp_path / 'demo')!r}; {entry}; os._exit(0)"],
                       stdout=out, stderr=subprocess.DEVNULL, check=True, env=env)
    assert "one line" in log.read_text()
