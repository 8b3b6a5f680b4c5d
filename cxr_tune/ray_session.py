"""Start (or join) Ray once per command, with the settings this project relies on.

Local runs keep the dashboard on but bound to 127.0.0.1: Tune's trial clean-up asks the State API,
which needs it (see ``RAY_NOTES.md``). ``--address auto`` joins a running cluster instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

_QUIET_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # Train's controller polls its workers every 2 s by default; a finished trial then idles that
    # long before its CPUs go to the next one. Polling is cheap.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray Train's own ingest options trip a Ray Data deprecation warning in every trial.
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a ``with`` block; reuses an already-initialized Ray (tests do that)."""
    import ray

    if ray.is_initialized():
        yield
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    workers_env = {k: os.environ[k] for k in _QUIET_ENV}
    # Inside trials Ray Data only iterates materialized blocks; its one warning there is that the
    # (deliberately) disabled progress bars are disabled, once per worker process.
    workers_env["RAY_DATA_LOG_LEVEL"] = "ERROR"
    quiet = {"logging_level": logging.WARNING, "runtime_env": {"env_vars": workers_env}}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
    try:
        yield
    finally:
        ray.shutdown()
