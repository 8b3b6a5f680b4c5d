"""Measure how the search scales with nodes: trial throughput with 1 vs 2 worker nodes.

Two real Ray clusters on this machine, started as separate node processes (a head without CPUs
plus one or two worker nodes of one CPU each), run the same search (same space, trials, seed and
data) through ``--address``; throughput is finished trials per minute of search time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from cxr_tune.bench.common import PROJECT, results_folder, write_result
from cxr_tune.bench.local_cluster import start_cluster

# The nodes' temp folders live here, not in $TMPDIR: Ray's socket paths inside them must stay under 108 bytes.
CLUSTER_ROOT = "/tmp"
SEARCH = ["--space", "smoke", "--trials", "8", "--max-epochs", "3", "--no-export", "--synthetic-n", "600"]


def search_end_minutes(console: str) -> float:
    """Minutes from the search's start to its last trial's end, read from the search's console
    lines (``[MM:SS] trial ID finished / stopped by ASHA ... / diverged ... / FAILED``)."""
    clock = re.findall(r"^\[(\d+):(\d+)\] trial \S+ (?:finished|stopped|diverged|FAILED)", console, flags=re.MULTILINE)
    if not clock:
        raise RuntimeError("the search printed no trial's end")
    return (int(clock[-1][0]) * 60 + int(clock[-1][1])) / 60


def run_on(nodes: int, storage: Path) -> dict[str, float]:
    """The cluster's folder is removed however the run ends (a node that fails to start, an error, Ctrl-C)."""
    with tempfile.TemporaryDirectory(prefix="rs", dir=CLUSTER_ROOT, ignore_cleanup_errors=True) as folder:
        cluster = start_cluster(Path(folder), workers=nodes, cpus=1, head_cpus=0)
        try:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "cxr_tune.search", *SEARCH, "--address", cluster.address,
                                   "--storage", str(storage), "--name", f"nodes{nodes}"], cwd=PROJECT, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - started
        finally:
            cluster.stop()
    search_minutes = search_end_minutes(done.stdout)
    table = pd.read_csv(storage / f"nodes{nodes}" / "trials.csv")
    return {"nodes": nodes, "trials": len(table), "trial_epochs": int(table["epochs"].sum()), "search_minutes": search_minutes,
            "trials_per_minute": len(table) / search_minutes, "epochs_per_minute": table["epochs"].sum() / search_minutes, "command_seconds": wall}


def run(out: str | None = None) -> None:
    folder = results_folder("scaling", out, None)  # always the built-in SYNTHETIC search the committed result measured
    with tempfile.TemporaryDirectory() as scratch:
        rows = [run_on(nodes, Path(scratch)) for nodes in (1, 2)]
    frame = pd.DataFrame(rows)
    speedup = rows[1]["trials_per_minute"] / rows[0]["trials_per_minute"]
    summary = [
        f"Same search both times: `python -m cxr_tune.search {' '.join(SEARCH)} --address <cluster>` on the built-in SYNTHETIC data.",
        "Each cluster: a head without CPUs and N worker nodes of 1 CPU each, as separate `ray start` processes on this 2-core machine.",
        "",
        frame.to_markdown(index=False, floatfmt=".2f"),
        "",
        f"**Trial throughput, 2 nodes vs 1: {speedup:.2f}x.** Search time is the search's own clock from the first trial to the last "
        "(the command also starts Ray clients, builds the cache and writes the report).",
    ]
    write_result("scaling_nodes", "Search throughput with 1 vs 2 nodes", summary, {"rows": rows, "speedup": speedup}, folder)
