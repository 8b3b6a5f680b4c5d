"""The validation sets are read from Ray Data once per worker and replayed, unless they are too big to hold."""

from __future__ import annotations

import numpy as np

from cxr_tune.train.scoring_sets import ScoringSet


class CountingShard:
    """Stands in for a Ray Data shard: ``n`` rows in batches, counting the passes that read it."""

    def __init__(self, n: int) -> None:
        self.n, self.passes = n, 0

    def iter_batches(self, *, batch_size: int, batch_format: str):
        assert batch_format == "numpy"
        self.passes += 1
        for start in range(0, self.n, batch_size):
            rows = np.arange(start, min(start + batch_size, self.n))
            yield {"image": np.zeros((len(rows), 4, 4), np.uint8) + rows[:, None, None].astype(np.uint8),
                   "label": (rows % 2).astype(np.float32), "content_hash": rows.astype(str), "path": rows.astype(str)}


def rows(batches) -> list[int]:
    return [int(h) for batch in batches for h in batch["content_hash"]]


def test_a_set_is_read_once_and_replayed_in_the_same_order():
    shard = CountingShard(10)
    scoring = ScoringSet(shard, batch_size=4)
    first = list(scoring.batches())
    assert rows(first) == list(range(10)) and scoring.kept
    for _ in range(3):
        again = list(scoring.batches())
        assert rows(again) == rows(first) and all(np.array_equal(a["image"], b["image"]) for a, b in zip(again, first))
    assert shard.passes == 1
    assert set(first[0]) == {"image", "label", "content_hash"}  # only what scoring reads is held


def test_workers_split_the_batches_and_together_score_every_row_once():
    shard = CountingShard(10)
    parts = [ScoringSet(shard, batch_size=2, rank=rank, world=3) for rank in range(3)]
    for _ in range(2):
        seen = [rows(part.batches()) for part in parts]
        assert sorted(sum(seen, [])) == list(range(10)) and seen[1] == [2, 3, 8, 9]
    assert shard.passes == 3  # each worker read its shard once


def test_the_scores_the_workers_gather_are_in_the_set_s_order_whatever_their_number():
    # Before: rank 0's batches, then rank 1's (0, 2, 4, ... 1, 3, 5, ...), and the bootstrap interval, which draws by position,
    # moved with the worker count (0.5769-0.7227 with one worker, 0.5643-0.7252 with two, on the same scores).
    from cxr_tune.train.scoring_sets import in_set_order

    for n, batch_size, world in ((10, 2, 3), (11, 4, 2), (3, 2, 4), (0, 2, 2), (9, 2, 1)):
        shard = CountingShard(n)
        per_rank = [np.array(rows(ScoringSet(shard, batch_size, rank, world).batches()), dtype=int) for rank in range(world)]
        assert in_set_order(per_rank, batch_size).tolist() == list(range(n)), (n, batch_size, world)


def test_a_set_bigger_than_the_limit_is_read_every_pass():
    shard = CountingShard(10)
    one_batch = sum(array.nbytes for array in next(ScoringSet(CountingShard(4), batch_size=4).batches()).values())
    scoring = ScoringSet(shard, batch_size=4, keep_limit_bytes=one_batch)
    assert rows(scoring.batches()) == list(range(10)) and not scoring.kept
    assert rows(scoring.batches()) == list(range(10)) and shard.passes == 2


def test_a_pass_cut_short_keeps_nothing():
    shard = CountingShard(10)
    scoring = ScoringSet(shard, batch_size=4)
    next(scoring.batches())
    assert not scoring.kept
    assert rows(scoring.batches()) == list(range(10)) and scoring.kept and shard.passes == 2
