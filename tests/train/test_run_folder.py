"""``python -m cxr_tune.train``'s run folder, checked without Ray: what a folder already holds decides what a command may
add to it, and what a finished run leaves there to read."""

from __future__ import annotations

import json

import pytest

from cxr_tune.errors import UserError


@pytest.fixture
def no_ray(monkeypatch):
    import cxr_tune.ray_session

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", lambda *a, **k: pytest.fail("Ray started"))


def files_in(folder) -> dict[str, bytes]:
    """Each file in ``folder`` and its bytes, but the lock every command holds in a run folder."""
    from cxr_tune.folder_lock import LOCK_FILE

    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def test_a_single_run_under_the_name_of_a_cross_validation_is_refused_in_one_line_before_ray_starts(tmp_path, no_ray):
    """Before: it trained and wrote metrics.json and checkpoints beside the folds, and rewrote run.json's keys."""
    from cxr_tune.train.__main__ import main

    run = tmp_path / "cv3"
    (run / "folds").mkdir(parents=True)
    (run / "folds" / "plan.json").write_text(json.dumps({"k": 3, "seed": 0, "hparams": {}, "images": "400 images, sha256 0123456789ab"}))
    (run / "cv.md").write_text("# 3-fold cross-validation by patient group\n")
    (run / "run.json").write_text(json.dumps({"precision_flags": {"precision": "auto", "memory_format": "auto"}}))
    before = files_in(run)
    with pytest.raises(UserError, match=rf"^'{run}' holds a cross-validation \(--cv 3\), not a single run; give the run another --name, "
                                        r"or --cv 3 to resume that one$"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "cv3"])
    assert files_in(run) == before


def test_cross_validation_under_the_name_of_a_single_run_is_refused_in_one_line_before_ray_starts(tmp_path, no_ray):
    """Before: Tune started the folds beside the single run's checkpoints."""
    from cxr_tune.train.__main__ import main
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    run = tmp_path / "one"
    (run / "checkpoint_000").mkdir(parents=True)
    save_state(str(run / "checkpoint_000"), {"hparams": HParams().to_dict(), "epoch": 2}, {})
    (run / "run.json").write_text(json.dumps({"data": "400 images, sha256 0123456789ab", "deciding_set": "carved"}))
    before = files_in(run)
    said = rf"^'{run}' holds a single train run, not a cross-validation; give --cv 2 another --name, or leave out --cv to resume that run$"
    with pytest.raises(UserError, match=said):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "one", "--cv", "2"])
    assert files_in(run) == before
    (run / "checkpoint_000" / "state.pt").unlink()  # stopped before its first checkpoint: its run.json names its data all the same
    with pytest.raises(UserError, match=said):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "one", "--cv", "2"])
