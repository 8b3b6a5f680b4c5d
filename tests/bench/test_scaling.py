"""bench scaling: the folder its Ray clusters live in is removed however a run ends."""

from __future__ import annotations

import pytest

from cxr_tune.bench import scaling


def test_the_cluster_folder_is_removed_when_a_node_start_is_interrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "CLUSTER_ROOT", str(tmp_path))
    made = []

    def interrupted(folder, **kwargs):
        (folder / "head").mkdir()  # a node's temp folder, as start_cluster makes it
        made.append(folder)
        raise KeyboardInterrupt

    monkeypatch.setattr(scaling, "start_cluster", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scaling.run_on(1, tmp_path / "runs")
    assert made and made[0].parent == tmp_path
    assert list(tmp_path.iterdir()) == []
