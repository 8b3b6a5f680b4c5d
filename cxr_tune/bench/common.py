"""What every benchmark shares: where the real data is, the machine it ran on, how results are written."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tune import storage
from cxr_tune.errors import UserError
from cxr_tune.formatting import code_span
from cxr_tune.provenance import provenance
from cxr_tune.selection import REPORTED_RESAMPLES
from cxr_tune.train.hparams import HParams, HParamsError

if TYPE_CHECKING:
    import pandas as pd

    from cxr_tune.experiment import Experiment

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = PROJECT.parent / "shared" / "data" / "chest_xray_224"
RESULTS = PROJECT / "results" / "benchmarks"
#: where Linux names the CPU model (``platform.processor()`` is empty there)
CPUINFO = Path("/proc/cpuinfo")
#: what the default folders hold, as a refusal says it
COMMITTED = "the committed results of the default real data (../shared/data/chest_xray_224) only"


def real_data(path: str | None) -> str:
    data = Path(path) if path else DEFAULT_DATA
    if not data.exists():
        raise UserError(f"benchmark data '{data}' does not exist; pass --data with the Kermany chest_xray folder")
    return str(data)


def results_folder(command: str, out: str | None, other: str | None, default: Path = RESULTS, holds: str = COMMITTED) -> Path:
    """Where ``bench COMMAND`` writes: ``--out`` when given, else ``default``, whose files the README cites, so only for a
    run of what they measured (``other`` None); a run of ``other`` (other data, another model) needs ``--out``: it
    replaced them (a quick sanity run on a small SYNTHETIC set did). Called before any measuring."""
    if out:
        return Path(out)
    if other is not None:
        raise UserError(f"bench {command}: pass --out FOLDER for {other}; the default, {default.relative_to(PROJECT)}, holds {holds}")
    return default


def other_data(data: str | None) -> str | None:
    """How :func:`results_folder` names a ``--data`` folder that is not the default real data (None for that one)."""
    return None if data is None or storage.same_folder(data, str(DEFAULT_DATA)) else f"the data '{data}'"


def other_experiment_data(experiment: Experiment) -> str | None:
    """How :func:`results_folder` names an experiment searched on other data than the default real data (None for that)."""
    root = experiment.info.get("data_root")
    if not experiment.synthetic and root and other_data(root) is None:
        return None
    return f"'{experiment.path}' (searched on {experiment.info.get('data_description') or 'other data'})"


def data_named(description: str, external: str) -> str:
    """The data a benchmark ran on: the folder as every report names it (:attr:`Source.description`, SYNTHETIC
    says so) and its external set by folder, as value, epochs and transfer name theirs; so a run on other data
    never reads as the committed real-data one."""
    return f"{description}; external set: {code_span(external) if external else 'none'}"


def sample_training(roles: pd.DataFrame, images: int) -> pd.DataFrame:
    """``roles`` with all but ``images`` distinct training images (drawn with seed 0) set to ``unused``, so a benchmark
    times a fixed sample; ``images`` 0, or more than there are, keeps them all (the default 1024 on a small set stopped
    on pandas' "larger sample than population" traceback). Example: ``sample_training(split.roles, 1024)``."""
    roles = roles.copy()
    train = roles[roles["role"] == "train"].drop_duplicates("content_hash")
    if not images or images >= len(train):
        return roles
    kept = train.sample(n=images, random_state=0)["content_hash"]
    roles.loc[(roles["role"] == "train") & ~roles["content_hash"].isin(kept), "role"] = "unused"
    return roles


def check_varied(config: dict[str, Any]) -> None:
    """Refuse a configuration a ``--vary KEY=VALUE`` change made (an unknown key, a wrong type, a value out of range)
    in one line, ``--vary: ...``, before anything trains: a bad change found after a retrain has cost that retrain."""
    try:
        HParams.from_config(config)
    except HParamsError as exc:
        raise UserError(f"--vary: {exc}") from None


def cpu_model() -> str:
    """The CPU's model as /proc/cpuinfo names it ("Intel(R) Xeon(R) Platinum 8480+"); where there is none (macOS,
    Windows) what :mod:`platform` says: on Linux that is only "x86_64", which tells no two machines apart."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What ran a benchmark (works without Ray installed: the GPU device check runs there)."""
    import torch

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "ray": ray_version,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def bench_command() -> str:
    """The command that produced a result, as a person would type it (from ``sys.argv``, as
    ``python -m cxr_tune.bench`` sets it)."""
    return shlex.join(["python", "-m", "cxr_tune.bench", *sys.argv[1:]])


def seed_suffix(seed: int) -> str:
    """File-name suffix of a benchmark run with another seed than 0, so it never overwrites seed 0's committed files."""
    return f"_seed{seed}" if seed else ""


def result_record(name: str) -> dict[str, Any]:
    """What every benchmark's JSON opens with: the benchmark, its command, when, the machine, and the code that measured it
    (:func:`cxr_tune.provenance.provenance`: its commit and library versions), so that a number can be tied to a commit."""
    return {"benchmark": name, "command": bench_command(), "measured_at": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "provenance": provenance()}


def write_result(name: str, title: str, summary: list[str], details: dict[str, Any], folder: Path = RESULTS) -> Path:
    """``<folder>/<name>.md`` (for people) and ``.json`` (for tools), with the command."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {**result_record(name), **details}
    command = record["command"]
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))
    lines = [f"# {title}", "", f"Command: {code_span(command)}  ", f"Measured: {record['measured_at']} on {record['machine']['cpus']} CPU(s) ({record['machine']['cpu']})"
             + (f", GPU {record['machine']['gpu']}" if record["machine"]["gpu"] else ", no GPU")
             + f"; torch {record['machine']['torch']}, Ray {record['machine']['ray']}", "", *summary, ""]
    (folder / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(summary))
    print(f"\nWritten: {folder / f'{name}.md'}")
    return folder / f"{name}.md"


def paired_auc_difference(labels: np.ndarray, scores: np.ndarray, reference: np.ndarray, resamples: int = REPORTED_RESAMPLES) -> tuple[float, list[float] | None]:
    """AUC of ``scores`` minus AUC of ``reference`` on the same images, with a 95 % paired bootstrap
    interval (:func:`cxr_tune.set_metrics.paired_differences`, seed 0), None where every resample gave one difference."""
    from cxr_tune.set_metrics import paired_differences

    return paired_differences(labels, scores, 0.5, reference, 0.5, resamples=resamples)["auc"]
