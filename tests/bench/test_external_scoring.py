"""The benchmarks that score models beside an export on its external set (``bench value``, ``bench epochs``)
name what they cannot compare before they train anything (read from the committed real-data searches)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import ROOT, call_cli


@pytest.mark.parametrize("bench", ["value", "epochs"])
def test_a_bench_refuses_a_missing_export_another_experiments_export_unknown_images_and_a_carved_search(bench, tmp_path):
    missing = call_cli("cxr_tune.bench", bench, "results/real/external", "--model", str(tmp_path))
    assert missing.returncode == 2
    assert str(tmp_path) in missing.stderr and "external_predictions.csv" in missing.stderr and "Traceback" not in missing.stderr

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(ROOT / "results/real/best/external_predictions.csv", other)
    meta = json.loads((ROOT / "results/real/best/model.json").read_text())
    meta["search"]["command"] = "python -m cxr_tune.search --name another"
    (other / "model.json").write_text(json.dumps(meta))
    foreign = call_cli("cxr_tune.bench", bench, "results/real/external", "--model", str(other))
    assert foreign.returncode == 2 and "is not an export of" in foreign.stderr and "--name another" in foreign.stderr

    elsewhere = tmp_path / "elsewhere"  # this experiment's export, scored on images its external set does not hold
    elsewhere.mkdir()
    shutil.copy(ROOT / "results/real/best/model.json", elsewhere)
    scored = (ROOT / "results/real/best/external_predictions.csv").read_text().splitlines()
    scored[1] = "/somewhere/else/NORMAL/IM-9999-0001.jpeg," + scored[1].split(",", 1)[1]
    (elsewhere / "external_predictions.csv").write_text("\n".join(scored) + "\n")
    unknown = call_cli("cxr_tune.bench", bench, "results/real/external", "--model", str(elsewhere))
    assert unknown.returncode == 2 and "not the experiment's external set" in unknown.stderr and "IM-9999-0001" in unknown.stderr

    carved = call_cli("cxr_tune.bench", bench, "results/real/carved", "--model", "results/real/best-no-labels")
    assert carved.returncode == 2 and "not selected on an external set" in carved.stderr


def test_an_export_is_read_in_its_own_image_order_with_each_images_content_hash():
    """Retrained runs' scores are keyed by content hash and put in this order, so every row of a table scores the same images."""
    import pandas as pd

    from cxr_tune.bench.external_scoring import export_on_external
    from cxr_tune.experiment import Experiment

    export = export_on_external(Experiment(str(ROOT / "results/real/external")), str(ROOT / "results/real/best"))
    table = pd.read_csv(ROOT / "results/real/best/external_predictions.csv")
    assert export.paths == table["path"].tolist() and export.labels.tolist() == table["label"].tolist()
    assert export.probabilities.tolist() == table["probability"].tolist()
    assert len(export.hashes) == len(set(export.hashes)) == len(table)  # one distinct image per row


def test_an_unreadable_model_json_beside_the_predictions_is_named_in_one_line(tmp_path):
    from cxr_tune.bench.external_scoring import export_on_external
    from cxr_tune.errors import UserError
    from cxr_tune.experiment import Experiment

    shutil.copy(ROOT / "results/real/best/external_predictions.csv", tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(UserError, match=r"model\.json' is not readable JSON"):
        export_on_external(Experiment(str(ROOT / "results/real/external")), str(tmp_path))


def test_a_model_folder_with_a_pipe_stays_in_its_table_cell():
    """``bench epochs`` names the committed model in its table's first cell: a ``|`` in the folder name split the row."""
    from cxr_tune.bench.external_scoring import score_table
    from cxr_tune.formatting import code_span

    row = {"model": f"{code_span('/models/a|b`c', in_table=True)} as committed", "cpu_minutes": None, "auc": 0.9, "auc_ci": [0.8, 0.95],
           "balanced_accuracy": 0.8, "ba_ci": [0.7, 0.9], "sensitivity": 0.8, "specificity": 0.8, "threshold": 0.5}
    header, _, line = score_table([row], {}).splitlines()
    cells = lambda text: len(text.replace("\\|", "").split("|"))  # noqa: E731 - a cell boundary is a | not written \|
    assert cells(line) == cells(header) and "``/models/a\\|b`c``" in line


def test_an_interval_the_bootstrap_could_not_bound_reads_n_a():
    """A paired AUC difference of two models that rank alike (every resample 0) is withheld as None: the cell said "+0.0000"
    with no interval and no word, as if one had not been computed."""
    from cxr_tune.bench.external_scoring import score_table

    row = {"model": "m", "cpu_minutes": 1.0, "auc": 0.9, "auc_ci": None, "balanced_accuracy": 0.8, "ba_ci": [0.7, 0.9], "sensitivity": 0.8,
           "specificity": 0.8, "threshold": 0.5, "auc - ref": 0.0, "ref_ci": None}
    line = score_table([row], {"ref": "AUC minus ref"}).splitlines()[2]
    assert "0.9000 [n/a]" in line and "0.0000 [n/a]" in line and "0.8000 [0.700, 0.900]" in line
