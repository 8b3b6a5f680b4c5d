"""optuna-dashboard's own loader opens the committed real-data study; ``listed_trials`` is how the
end-to-end search test opens the study a search writes with the command it prints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard  # in the test extra, pinned like the dashboard extra
import pytest


ROOT = Path(__file__).resolve().parents[2]
COMMITTED_STUDY = ROOT / "results" / "real" / "external" / "study.db"


def dashboard_get(storage_url: str, path: str) -> dict:
    """GET ``path`` from the dashboard's WSGI app, which loads the storage URL as its CLI does."""
    app = optuna_dashboard.wsgi(storage_url)
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD="GET", PATH_INFO=path)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), f"{path}: {status[0]} {body[:200]!r}"
    return json.loads(body)


def listed_trials(storage_url: str, study_name: str) -> list[dict]:
    studies = dashboard_get(storage_url, "/api/studies")["study_summaries"]
    (study,) = [s for s in studies if s["study_name"] == study_name]
    return dashboard_get(storage_url, f"/api/studies/{study['study_id']}")["trials"]


def test_dashboard_opens_the_committed_real_data_study(tmp_path: Path):
    """The study a real search wrote (``results/real/external``), read from a copy."""
    if not COMMITTED_STUDY.exists():
        pytest.skip(f"{COMMITTED_STUDY} is not in this checkout")
    db = tmp_path / "study.db"
    shutil.copy(COMMITTED_STUDY, db)
    (name,) = optuna.get_all_study_names(f"sqlite:///{db}")
    stored = optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials
    trials = listed_trials(f"sqlite:///{db}", name)
    assert len(trials) == len(stored) > 0
    for listed, trial in zip(trials, stored):
        assert {p["name"] for p in listed["params"]} == set(trial.params)
        assert (listed.get("values") or [None])[0] == trial.value  # a trial cut off by the budget has none
