"""bench value names what it cannot compare before it trains anything (read from the committed real-data searches)."""

from __future__ import annotations

from tests.conftest import call_cli


def test_bench_value_refuses_a_missing_export_and_a_carved_search(tmp_path):
    missing = call_cli("cxr_tune.bench", "value", "results/real/external", "--model", str(tmp_path))
    assert missing.returncode == 2
    assert str(tmp_path) in missing.stderr and "external_predictions.csv" in missing.stderr and "Traceback" not in missing.stderr
    carved = call_cli("cxr_tune.bench", "value", "results/real/carved", "--model", "results/real/best-no-labels")
    assert carved.returncode == 2 and "not selected on an external set" in carved.stderr
