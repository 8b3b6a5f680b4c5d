"""The options of one search (every flag of ``python -m cxr_tune.search``), as saved in ``experiment.json``.

Plain data with no Ray import: the experiment reader, export and report load it without Tune.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cxr_tune import storage
from cxr_tune.data.prepared import DataOptions


@dataclass(frozen=True)
class SearchOptions:
    """Every flag of ``python -m cxr_tune.search``; saved to ``experiment.json``."""

    space: str = "wide"
    name: str = ""
    storage: str = "results"
    trials: int | None = None
    max_epochs: int | None = None
    time_budget_min: float | None = None
    job_budget_min: float | None = None  # the whole command: search, final fit, export
    seed: int = 0
    select: str = "balanced_accuracy"
    select_on: str = "external"  # or "carved"; "external" falls back to carved when there is no external set
    min_sensitivity: float = 0.0
    address: str | None = None
    workers_per_trial: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    concurrency: int | None = None
    sampler: str = "tpe"  # or "random": the baseline TPE is measured against
    early_stopping: bool = True  # ASHA; off runs every trial to max_epochs
    precision: str = "auto"  # auto, fp32, bf16, fp16: see cxr_tune.train.precision
    memory_format: str = "auto"  # auto, channels_last, contiguous
    deterministic: bool = False  # bitwise-repeatable GPU runs (slower); CPU runs are repeatable anyway (same machine, image cache and threads)
    weights: dict[str, str] | None = None  # local pretrained weights files by architecture: {"resnet18": PATH}
    final_fit: bool = True  # run the space's final-fit stage after the search (when it has one)
    export: bool = True  # export the selected trial to best/ (--no-export: off, and so for --resume; older experiments lack it: on)
    data: DataOptions = field(default_factory=DataOptions)

    @property
    def experiment_dir(self) -> str:
        return storage.join(storage.resolve(self.storage), self.name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> SearchOptions:
        """The options ``experiment.json`` saved; raises ValueError for a count no search flag takes (an edited file: export
        compared ``trials: "many"`` with the trials trained, a TypeError)."""
        known = set(cls.__dataclass_fields__)  # experiments written by older versions lack newer fields
        for name in _COUNTS:
            value = values.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"options.{name} is {value!r}, not a positive whole number")
        return cls(**{**{k: v for k, v in values.items() if k in known}, "data": DataOptions(**values["data"])})


#: The options that are counts (None: the space's or the cluster's); their flags take positive whole numbers alone.
_COUNTS = ("trials", "max_epochs", "workers_per_trial", "concurrency")
