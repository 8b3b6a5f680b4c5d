"""The sets a run scores every epoch (carved validation, the external set), read from Ray Data once.

Every epoch scores the same images, but each pass over a Ray Data shard starts a streaming
execution of its own and formats every batch again: in a Ray Train run of the real data at 64 px,
reading its two sets' 35 batches of 32 every epoch took 0.43 s per epoch more than replaying them
(results/benchmarks/scoring.md). A worker therefore keeps its own batches after the first pass
and replays them, unless they hold more than ``keep_limit_bytes`` (a set that large streams every
epoch, as before): the real data's carved and external sets, 1,089 images, hold 55 MB at 224 px.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KEEP_LIMIT_BYTES = 256 * 2**20  # per set and worker; packed trials each hold their own
COLUMNS = ("image", "label", "content_hash")  # what scoring reads (:func:`cxr_tune.train.steps.score_batches`)


@dataclass
class ScoringSet:
    """One set's batches for one worker: every ``world``-th batch starting at ``rank`` (the workers
    of a DDP run split the scoring and gather the scores). ``shard`` is what
    ``ray.train.get_dataset_shard`` returns (anything with ``iter_batches``)."""

    shard: Any
    batch_size: int
    rank: int = 0
    world: int = 1
    keep_limit_bytes: int = KEEP_LIMIT_BYTES
    _kept: list[dict[str, np.ndarray]] | None = field(default=None, init=False, repr=False)

    @property
    def kept(self) -> bool:
        """Whether later passes replay the batches held in memory (no Ray Data)."""
        return self._kept is not None

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This worker's batches, in the same order every pass."""
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[dict[str, np.ndarray]] | None = []
        held = 0
        for index, batch in enumerate(self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy")):
            if index % self.world != self.rank:
                continue
            batch = {name: np.asarray(batch[name]) for name in COLUMNS}
            if kept is not None:
                held += sum(array.nbytes for array in batch.values())
                if held <= self.keep_limit_bytes:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._kept = kept  # only once a pass has run to its end


def in_set_order(per_rank: list[np.ndarray], batch_size: int) -> np.ndarray:
    """What the ranks scored (one array per rank, in rank order), put back in the set's own order: batch ``b`` is rank
    ``b % world``'s. The objective's bootstrap interval draws images by position, so in rank order it followed the
    worker count."""
    world = len(per_rank)
    batches = [[part[start:start + batch_size] for start in range(0, len(part), batch_size)] for part in per_rank]
    ordered = [batches[b % world][b // world] for b in range(sum(len(rank) for rank in batches))]
    return np.concatenate(ordered) if ordered else np.concatenate(per_rank)
