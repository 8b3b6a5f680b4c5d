import io
import pickle
import time

from cxr_tune.search.progress import ProgressPrinter


def test_a_restored_printer_keeps_its_counts_but_takes_the_clock_and_verbosity_of_the_running_command(monkeypatch):
    """Tune resumes a search with the copy of its callbacks it saved: that copy's clock and the
    verbosity it was started with belong to another command."""
    printer = ProgressPrinter(total_trials=4, max_epochs=5, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    printer.epochs = {"a": 5, "b": 1}
    printer.started -= 3600  # an hour into the first command
    monkeypatch.setattr(ProgressPrinter, "verbose", True)
    restored = pickle.loads(pickle.dumps(printer))
    assert restored.epochs == {"a": 5, "b": 1} and restored.verbose
    assert time.monotonic() - restored.started < 60 and restored._clock() == "[00:00]"
    assert restored._left() == ""  # nothing done by this command yet: no estimate from the first one's pace
    restored.epochs["b"] = 3
    assert "left" in restored._left()
