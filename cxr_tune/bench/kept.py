"""A benchmark's finished runs, kept on disk until it has written its result, so Ctrl-C or a crash loses only the run in progress.

``bench epochs``, ``bench value`` and ``bench ablation`` train runs one after another, 20 to 45 minutes
on 2 CPUs, and used to train in a temporary folder that Ctrl-C threw away. Now each finished run's
record (its scores and CPU-minutes) is kept in the user's cache, in a folder named after the
benchmark and a hash of its plan (the experiment, the export, the runs' configurations), and the
same command again trains only the runs it lacks::

    with kept_runs("epochs", plan) as kept:
        record = kept.get("run0") or kept.put("run0", train(storage_path=kept.fresh("run0")))
        ...
        write_result(...)
        kept.remove()

Another plan is another folder. A run that was interrupted starts again from its first epoch, so
every CPU-minute reported was measured in one piece. The benchmark removes the folder once it has
written its result: run again, it measures again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_tune import storage

TRAIN_DIR = "train"


@dataclass(frozen=True)
class KeptRuns:
    folder: Path

    @classmethod
    def for_plan(cls, bench: str, plan: dict[str, Any]) -> KeptRuns:
        key = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cls(Path(storage.local_cache_dir(), "bench", f"{bench}-{key}"))

    def names(self) -> list[str]:
        """The runs finished so far."""
        return sorted(path.stem for path in self.folder.glob("*.json"))

    def has(self, run: str) -> bool:
        return self._record(run).is_file()

    def get(self, run: str) -> dict[str, Any] | None:
        """The record of ``run`` if it finished in this or an earlier try."""
        path = self._record(run)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, run: str, record: dict[str, Any]) -> dict[str, Any]:
        storage.write_text_atomic(str(self._record(run)), json.dumps(record))
        return record

    def fresh(self, run: str) -> str:
        """Ray Train's storage folder for ``run``, emptied of an interrupted try's checkpoints (Train would resume from them)."""
        shutil.rmtree(self.folder / TRAIN_DIR / run, ignore_errors=True)
        return str(self.folder / TRAIN_DIR)

    def remove(self) -> None:
        """Once the benchmark has written its result: run again, it measures again."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _record(self, run: str) -> Path:
        return self.folder / f"{run}.json"


@contextmanager
def kept_runs(bench: str, plan: dict[str, Any]) -> Iterator[KeptRuns]:
    """The benchmark's kept runs; says what an earlier try left and, when the block fails or is stopped, what this one keeps."""
    kept = KeptRuns.for_plan(bench, plan)
    if done := kept.names():
        print(f"{len(done)} finished run(s) kept by an earlier try of this command ({kept.folder}): not trained again", flush=True)
    try:
        yield kept
    except BaseException as exc:
        if done := kept.names():
            print(f"{'Stopped' if isinstance(exc, KeyboardInterrupt) else 'Failed'}; {len(done)} finished run(s) are kept in {kept.folder}: "
                  "the same command again trains only the rest", flush=True)
        raise
