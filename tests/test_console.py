"""What reaches the command's log file (``search.log``, ``train.log``) from the libraries."""

from __future__ import annotations

import logging

from cxr_tune.console import library_output_to


def test_the_log_file_gets_ray_data_from_warning_up_not_its_debug_records(tmp_path, monkeypatch):
    """Ray Data sets its logger to DEBUG as it is imported; a tiny search's log was 82 of 100 lines of its debug records."""
    import ray.data  # noqa: F401 - imported, as Ray Tune imports it before any command runs

    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    ray_data = logging.getLogger("ray.data")
    before = ray_data.level
    ray_data.setLevel(logging.DEBUG)  # what the import leaves without RAY_DATA_LOG_LEVEL, whatever ran before in this process
    log = tmp_path / "search.log"
    try:
        with library_output_to(str(log)):
            executor = logging.getLogger("ray.data._internal.execution.streaming_executor")
            executor.debug("Data Context for dataset dataset_1: {'target_max_block_size': '134217728'}")
            executor.info("Starting execution of Dataset dataset_1.")
            logging.getLogger("ray.data.dataset").warning("The Ray cluster currently does not have any available CPUs.")
            logging.getLogger("ray.tune").warning("a Tune warning")
    finally:
        ray_data.setLevel(before)
    text = log.read_text()
    assert "does not have any available CPUs" in text and "a Tune warning" in text
    assert "Data Context" not in text and "Starting execution" not in text


def test_a_ray_data_level_the_user_asked_for_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_DATA_LOG_LEVEL", "DEBUG")
    log = tmp_path / "search.log"
    with library_output_to(str(log)):
        logging.getLogger("ray.data._internal.execution.streaming_executor").debug("Data Context for dataset dataset_1")
    assert "Data Context" in log.read_text()


CLEANUP = ("Detected that the Ray Train controller actor (21749f92f76168724e9f38e201000000) is dead. Cleaning up placement group = "
           "[PlacementGroupID(c7f09ea9fbc2df09adf2c8c296c201000000)] created by this run.")
STARTUP = ("WARNING: 8 PYTHON worker processes have been started on node: af8fec00 with address: 192.0.2.2, which is 4x the maximum "
           "expected startup concurrency (2). This could be a result of using a large number of actors, tasks blocked in ray.get() "
           "calls, or tasks with fractional CPU requests (e.g., num_cpus=0.1) allowing high concurrency.")


def test_lines_every_healthy_search_prints_are_left_out_of_the_log_and_the_verbose_console_and_others_are_kept(tmp_path, capsys):
    """Ray 2.60's placement-group cleaner at every trial end and the raylet's process-count notice read like errors."""
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from cxr_tune.console import route_worker_output

    saved = list(dispatcher.handlers)
    log = tmp_path / "search.log"
    with open(log, "w", encoding="utf-8") as handle:
        undo = route_worker_output(handle, verbose=True)
        try:
            dispatcher.emit({"pid": 4451, "actor_name": "PlacementGroupCleaner", "is_err": True,
                             "lines": [CLEANUP, "Failed to clean up placement group: the GCS is gone"]})
            dispatcher.emit({"pid": 4452, "actor_name": "RayTrainWorker", "is_err": True, "lines": ["a worker's own warning"]})
            ray_worker.print_to_stdstream({"pid": "raylet", "is_err": False, "lines": [STARTUP]}, ignore_prefix=False)
            ray_worker.print_to_stdstream({"pid": "raylet", "is_err": False, "lines": ["WARNING: the node is low on memory"]}, ignore_prefix=False)
        finally:
            undo()
            dispatcher.handlers = saved
    console = capsys.readouterr()
    for shown in (log.read_text(), console.out + console.err):
        assert "Failed to clean up placement group" in shown and "a worker's own warning" in shown and "low on memory" in shown
        assert "is dead. Cleaning up" not in shown and "startup concurrency" not in shown


def test_a_log_on_a_full_disk_neither_hides_the_error_that_ended_the_block_nor_prints_logging_errors(tmp_path, monkeypatch, capsys):
    """Before: every record Ray logged printed a "--- Logging error ---" traceback, and search.log's close raised
    ENOSPC again in place of the error that ended the search (compute.jsonl's, which names its file)."""
    import errno
    import io
    import os

    from cxr_tune import console

    class FullDisk(io.StringIO):
        def flush(self) -> None:
            if self.getvalue():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self) -> None:
            self.flush()

    monkeypatch.setattr(console, "open", lambda *args, **kwargs: FullDisk(), raising=False)
    ended = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "compute.jsonl"))
    try:
        with library_output_to(str(tmp_path / "search.log")):
            logging.getLogger("ray.tune").warning("Trial task failed for trial run_trial_8d1566fc")
            raise ended
    except OSError as exc:
        assert exc is ended
    assert capsys.readouterr().err == ""
