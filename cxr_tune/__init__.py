"""cxr_tune: Ray-distributed hyperparameter search for pediatric chest X-ray pneumonia CNNs.

The pieces, in the order data flows through them:

- :mod:`cxr_tune.data`   — manifest, leak-free splits, Ray Data image cache
- :mod:`cxr_tune.train`  — hyperparameters, CNN, augmentation, metrics, Ray Train loop
- :mod:`cxr_tune.search` — search-space files, Ray Tune + Optuna + ASHA, selection, report
- :mod:`cxr_tune.export` / :mod:`cxr_tune.predict` — a pickle-free ONNX model and its use
"""

import os
import sys

__version__ = "0.1.0"

# onnxruntime's Linux builds (1.31.1, the pinned one) start a telemetry uploader as it is imported, which keeps a
# device id and queued events about the machine in ~/.cache/Microsoft/DeveloperTools; ORT_DISABLE_TELEMETRY,
# its opt-out, is read only then, so it is set here, before any module of the project imports onnxruntime (and
# inherited by the processes the project starts). A value in the environment is kept: 0 turns it back on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


# `python -m cxr_tune.<command>` imports this package with sys.argv[0] set to "-m", and only then the command's module,
# whose imports take 1-3 s: a Ctrl-C or SIGTERM there is one line too (errors.run_cli takes over after them).
if sys.argv[:1] == ["-m"]:
    from cxr_tune.errors import stop_quietly_during_start_up

    stop_quietly_during_start_up()
