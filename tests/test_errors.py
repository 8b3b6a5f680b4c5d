"""How a command ends on what it cannot do: an output it could not write, or would destroy another
folder by writing, stops it with one line before any work; a reader of its output that went away
(``predict ... | head``) ends it quietly."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, call_cli
from tests.model_exports import export_folder, kermany_set, save_images

COMMANDS = {  # module, its arguments with BLOCKED (a path under a regular file) where it writes, the flag the line names
    "search --storage": ("cxr_tune.search", ["--space", "smoke", "--storage", "BLOCKED"], "--storage"),
    "train --storage": ("cxr_tune.train", ["--storage", "BLOCKED"], "--storage"),
    "export --out": ("cxr_tune.export", ["EXPERIMENT", "--out", "BLOCKED"], "--out"),
    "adapt --out": ("cxr_tune.adapt", ["--model", "MODEL", "--images", "IMAGES", "--out", "BLOCKED"], "--out"),
    "predict --csv": ("cxr_tune.predict", ["--model", "MODEL", "IMAGES", "--csv", "BLOCKED"], "--csv"),
    "predict --metrics": ("cxr_tune.predict", ["--model", "MODEL", "IMAGES", "--metrics", "BLOCKED"], "--metrics"),
    "predict --explain": ("cxr_tune.predict", ["--model", "MODEL", "IMAGES", "--explain", "BLOCKED"], "--explain"),
    "data synthesize": ("cxr_tune.data", ["synthesize", "BLOCKED"], "OUT"),
    "data inspect --cache-dir": ("cxr_tune.data", ["inspect", "--cache-dir", "BLOCKED"], "--cache-dir"),  # a read-only one may hold a cache to reuse
    "bench search --storage": ("cxr_tune.bench", ["search", "--storage", "BLOCKED"], "--storage"),
    "bench tta --out": ("cxr_tune.bench", ["tta", "MODEL", "--out", "BLOCKED"], "--out"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_under_a_file_stops_the_command_with_one_line_naming_both(command, tmp_path):
    module, args, flag = COMMANDS[command]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{}")  # adapt looks for it first; nothing reads it before the check
    paths = {"BLOCKED": str(a_file / "out"), "EXPERIMENT": str(tmp_path), "MODEL": str(tmp_path / "model"), "IMAGES": str(tmp_path)}
    done = call_cli(module, *(paths.get(arg, arg) for arg in args))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.strip() == f"error: {flag} '{paths['BLOCKED']}' cannot be written: '{a_file}' is a file, not a folder"


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    export_folder(root / "model")
    return root / "model", save_images(kermany_set(4, 5), root / "images")


def test_a_csv_that_names_a_folder_is_refused_and_one_in_a_new_folder_is_written(model_and_images, tmp_path):
    model, images = model_and_images
    refused = call_cli("cxr_tune.predict", "--model", str(model), str(images), "--csv", str(images))
    assert refused.returncode == 2 and refused.stderr.strip() == f"error: --csv '{images}' is a folder; name a file in it"
    written = call_cli("cxr_tune.predict", "--model", str(model), str(images), "--csv", str(tmp_path / "new" / "scores.csv"))
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "new" / "scores.csv").read_text().splitlines()[0] == "path,label,probability,prediction,threshold,check,content_hash"


def test_a_command_whose_reader_went_away_ends_with_status_141_and_no_traceback(model_and_images):
    model, images = model_and_images
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes its first line
    try:
        done = subprocess.run([sys.executable, "-m", "cxr_tune.predict", "--model", str(model), str(images)],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, cwd=ROOT)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr[-3000:])


@pytest.mark.parametrize("command", ["export", "adapt"])
def test_an_out_folder_that_holds_other_files_is_refused_and_left_as_it_was(command, tmp_path):
    """A model takes the place of its whole --out folder: ``--out ~`` must not empty a home folder."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{}")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("a year of work")
    args = {"export": [str(tmp_path), "--out", str(tmp_path / "thesis")],
            "adapt": ["--model", str(tmp_path / "model"), "--images", str(tmp_path), "--out", str(tmp_path / "thesis")]}[command]
    done = call_cli(f"cxr_tune.{command}", *args)
    assert done.returncode == 2 and done.stderr.startswith(f"error: --out '{tmp_path / 'thesis'}' holds files and is not a model folder"), done.stderr
    assert [p.name for p in (tmp_path / "thesis").iterdir()] == ["chapter1.tex"]


def test_writing_a_model_never_replaces_a_folder_that_is_not_one(tmp_path):
    from cxr_tune.errors import UserError
    from cxr_tune.modelfile import ModelFiles, write_model_folder

    (tmp_path / "notes.txt").write_text("kept")
    with pytest.raises(UserError, match="is not a model folder"):
        write_model_folder(str(tmp_path), ModelFiles(b"onnx", b"weights", None), {})
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_train_run_is_never_written_into_a_search_experiment(tmp_path):
    (tmp_path / "search-1").mkdir()
    (tmp_path / "search-1" / "experiment.json").write_text("{}")
    done = call_cli("cxr_tune.train", "--storage", str(tmp_path), "--name", "search-1")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.strip() == f"error: '{tmp_path / 'search-1'}' is a search experiment, not a train run; give the run another --name"
    assert [p.name for p in (tmp_path / "search-1").iterdir()] == ["experiment.json"]


def test_a_search_is_never_started_among_the_files_of_a_folder_that_is_not_an_experiment(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("a year of work")
    (tmp_path / "thesis" / ".DS_Store").write_text("hidden, not named")
    (tmp_path / "notes.txt").write_text("a file")
    for name, reason in (("thesis", "holds files and is not an experiment (no experiment.json; it holds chapter1.tex)"),
                         ("notes.txt", "is a file, not an experiment folder")):
        done = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(tmp_path), "--name", name)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        assert done.stderr.strip() == f"error: --name '{name}': '{tmp_path / name}' {reason}; choose another --name"
    assert sorted(p.name for p in (tmp_path / "thesis").iterdir()) == [".DS_Store", "chapter1.tex"] and (tmp_path / "notes.txt").read_text() == "a file"


STOPPABLE = """
import sys, time
from cxr_tune.errors import EXIT_INTERRUPTED, run_cli

def main(argv):
    try:
        print("working", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        if argv == ["--says-what-was-kept"]:  # as a search does: its own words, then the status of Ctrl-C
            print("kept", flush=True)
            return EXIT_INTERRUPTED
        raise
    return 0

run_cli(main, sys.argv[1:])
"""


@pytest.mark.parametrize("how", ["raises", "--says-what-was-kept", "in the background of a script"])
def test_sigterm_stops_a_command_as_ctrl_c_does_and_ends_it_with_status_143(how, tmp_path):
    """A batch scheduler's stop (or ``kill``) reaches what Ctrl-C reaches. Before, a command died with no word; once Ray had
    started, Ray's own handlers ended a search with status 1 after a native stack dump, with no table, report or resume line."""
    # A script's `command &` starts with SIGINT ignored: SIGTERM, passed on as SIGINT, was lost there (the command ran on).
    ignore_ctrl_c = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if how.startswith("in the background") else typed_at_a_terminal
    process = subprocess.Popen([sys.executable, "-c", STOPPABLE, *([how] if how.startswith("--") else [])], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_ctrl_c)
    try:
        assert process.stdout.readline() == "working\n"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, (out, err)
    assert (out, err) == (("kept\n", "") if how.startswith("--") else ("", "terminated\n"))


def typed_at_a_terminal() -> None:
    """A child's Ctrl-C as a terminal gives it. Children inherit an ignored SIGINT, and a suite started by a script in the
    background (`pytest &`, nohup) has one: there a Ctrl-C test saw the command, rightly, go on (status 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


SWALLOWED = """
import signal, sys, time, weakref
from cxr_tune.errors import run_cli

class Thing:
    pass

def main(argv):
    thing = Thing()
    stop = getattr(signal, argv[0])
    def when_collected(ref):  # Ctrl-C (or SIGTERM) arrives while Python runs a weakref callback
        signal.raise_signal(stop)
    ref = weakref.ref(thing, when_collected)
    del thing
    print("went on", flush=True)
    time.sleep(5)
    print("finished", flush=True)
    return 0

run_cli(main, sys.argv[1:])
"""


@pytest.mark.parametrize(("signal_name", "status", "line"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_stop_that_lands_in_a_callback_python_ignores_exceptions_in_still_stops_the_command(signal_name, status, line):
    """Before: the KeyboardInterrupt raised inside a weakref callback (a thread pool's clean-up, in predict --explain) was
    printed as "Exception ignored in: ..." with a traceback, and the command ran to its end with status 0."""
    done = subprocess.run([sys.executable, "-c", SWALLOWED, signal_name], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          preexec_fn=typed_at_a_terminal)
    assert (done.returncode, done.stdout, done.stderr) == (status, "went on\n", f"{line}\n")


STOPPED_AT_START_UP = """
import os, signal, sys, time
sys.argv[0] = "-m"  # as Python sets it while `python -m cxr_tune.<command>` imports the package
import cxr_tune
os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # while the command's module imports pandas, torch, ...
time.sleep(5)
print("went on")
"""


@pytest.mark.parametrize(("signal_name", "status", "line"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_stop_while_a_command_imports_its_libraries_is_one_line_and_its_status(signal_name, status, line):
    """Before: Ctrl-C in a command's first 1-3 s (its imports, before run_cli) printed a 7-21-frame traceback through
    pandas or numpy; SIGTERM there ended it with no word."""
    done = subprocess.run([sys.executable, "-c", STOPPED_AT_START_UP, signal_name], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          preexec_fn=typed_at_a_terminal)
    assert (done.returncode, done.stdout, done.stderr) == (status, "", f"{line}\n")


def test_a_command_started_in_the_background_of_a_script_still_ignores_ctrl_c_while_it_imports():
    """A script's `command &` starts with SIGINT ignored: the start-up handler must not turn it back on."""
    script = STOPPED_AT_START_UP.replace("time.sleep(5)", "time.sleep(0.5)")
    done = subprocess.run([sys.executable, "-c", script, "SIGINT"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert (done.returncode, done.stdout) == (0, "went on\n"), done.stderr


def _ends(exc: BaseException, capsys) -> tuple[int, str]:
    """The status and stderr of a command whose ``main`` raises ``exc``, through run_cli in this process."""
    from cxr_tune.errors import run_cli

    def main(argv):
        raise exc

    with pytest.raises(SystemExit) as ended:
        run_cli(main, [])
    return ended.value.code, capsys.readouterr().err


def _wrapped_by_ray(cause: BaseException) -> BaseException:
    """As a Ray Data task's error reaches the driver (data prepare's cache build): ``RayTaskError(OSError)``."""
    from ray.exceptions import RayTaskError

    return RayTaskError("MapBatches(decode_batch)->Write()", "Traceback ...", cause).as_instanceof_cause()


FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/scores.csv")
ARROW_FULL = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")  # pyarrow's, no path


@pytest.mark.parametrize(("raised", "line"), [
    (FULL, "error: cannot write '/data/out/scores.csv': No space left on device"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/home/me/x.pt"), f"error: cannot write '/home/me/x.pt': {os.strerror(errno.EDQUOT)}"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/a.png"), "error: cannot write '/mnt/ro/a.png': Read-only file system"),
    (OSError(errno.EMFILE, os.strerror(errno.EMFILE), "/imgs/1.png"), "error: cannot open '/imgs/1.png': Too many open files"),
    (ARROW_FULL, "error: cannot write its output: No space left on device"),
    ("FULL, as Ray wraps it", "error: cannot write '/data/out/scores.csv': No space left on device"),
    (MemoryError(), "error: not enough memory (MemoryError)"),
    (MemoryError("Unable to allocate 1.2 GiB for an array"), "error: not enough memory (Unable to allocate 1.2 GiB for an array)"),
    (RuntimeError("can't start new thread"), "error: not enough memory (can't start new thread)"),
    (ImportError("/venv/onnxruntime/capi/state.so: failed to map segment from shared object"), "error: not enough memory (loading state.so)"),
], ids=["ENOSPC", "EDQUOT", "EROFS", "EMFILE", "pyarrow", "RayTaskError", "MemoryError", "numpy", "thread", "shared object"])
def test_a_machine_out_of_room_or_memory_ends_the_command_with_one_line_and_status_1(raised, line, capsys):
    """Before: a full disk, a quota, a read-only mount or a memory cap ended every command with a 27-772-line traceback
    (data prepare's, Ray's ``RayTaskError(OSError)`` from its cache build, 370)."""
    assert _ends(_wrapped_by_ray(FULL) if raised == "FULL, as Ray wraps it" else raised, capsys) == (1, line + "\n")


@pytest.mark.parametrize("raised", [FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), RuntimeError("a bug"), ImportError("no module")])
def test_any_other_error_keeps_its_traceback(raised, capsys):
    """A bug must stay visible: only errors that say the machine ran out of something become one line."""
    from cxr_tune.errors import run_cli

    def main(argv):
        raise raised

    with pytest.raises(type(raised)):
        run_cli(main, [])


def test_an_error_whose_cause_attribute_is_not_an_exception_keeps_its_own_traceback():
    """Before: out_of_room followed any `cause` attribute, and one holding a string raised AttributeError inside
    run_cli's handler, in place of the error it should have shown."""
    import errno

    from cxr_tune.errors import out_of_room

    class Odd(Exception):
        cause = "a library's own words"

    assert out_of_room(Odd()) is None
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y.csv")
    wrapped = Odd()
    wrapped.__cause__ = full
    assert out_of_room(wrapped) == "cannot write '/x/y.csv': No space left on device"
