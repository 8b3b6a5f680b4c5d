"""cxr_tune: Ray-distributed hyperparameter search for pediatric chest X-ray pneumonia CNNs.

The pieces, in the order data flows through them:

- :mod:`cxr_tune.data`   — manifest, leak-free splits, Ray Data image cache
- :mod:`cxr_tune.train`  — hyperparameters, CNN, augmentation, metrics, Ray Train loop
- :mod:`cxr_tune.search` — search-space files, Ray Tune + Optuna + ASHA, selection, report
- :mod:`cxr_tune.export` / :mod:`cxr_tune.predict` — a pickle-free ONNX model and its use
"""

import os
import signal
import sys

__version__ = "0.1.0"

# onnxruntime's Linux builds (1.31.1, the pinned one) start a telemetry uploader as it is imported, which keeps a
# device id and queued events about the machine in ~/.cache/Microsoft/DeveloperTools; ORT_DISABLE_TELEMETRY,
# its opt-out, is read only then, so it is set here, before any module of the project imports onnxruntime (and
# inherited by the processes the project starts). A value in the environment is kept: 0 turns it back on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def _stopped_at_start_up(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while a command imports its libraries, before :func:`cxr_tune.errors.run_cli` takes over: one
    line and the status a shell reports (a Ctrl-C printed a traceback through pandas' imports; SIGTERM ended it silently).
    Nothing has been written yet, so nothing is left to clean up."""
    os.write(2, b"interrupted\n" if signum == signal.SIGINT else b"terminated\n")
    os._exit(128 + signum)


# `python -m cxr_tune.<command>` imports this package with sys.argv[0] set to "-m", and only then the command's module,
# whose imports take 1-3 s. A signal already ignored (a script's `command &` ignores SIGINT) stays ignored; run_cli
# installs the command's own handlers.
if sys.argv[:1] == ["-m"]:
    for _stop, _untouched in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(_stop) is _untouched:
            signal.signal(_stop, _stopped_at_start_up)
