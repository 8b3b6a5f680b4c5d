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
