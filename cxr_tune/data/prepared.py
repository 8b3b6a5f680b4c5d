"""From CLI flags to what training needs: the source, its roles, and Ray Datasets per image size.

Used by ``python -m cxr_tune.train`` and ``python -m cxr_tune.search`` alike, so both see the same
split and the same cached pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from cxr_tune import storage
from cxr_tune.data.sources import Source, load_source
from cxr_tune.data.splits import assign_roles


@dataclass(frozen=True)
class DataOptions:
    """Where the data is and how it is split; every field is a CLI flag."""

    data: str | None = None
    cache_dir: str | None = None
    val_fraction: float = 0.15
    split_seed: int = 0
    use_official_val: bool = False
    synthetic_n: int | None = None

    @property
    def resolved_cache_dir(self) -> str:
        return storage.resolve(self.cache_dir) if self.cache_dir else storage.default_cache_dir()


@dataclass(frozen=True)
class SplitData:
    """A source with roles assigned (no Ray needed to build it)."""

    source: Source
    roles: pd.DataFrame
    cache_dir: str
    options: DataOptions = field(default_factory=DataOptions)

    def class_counts(self, role: str = "train") -> tuple[int, int]:
        """(NORMAL, PNEUMONIA) distinct images in ``role``; what ``balanced`` weighting uses."""
        rows = self.roles.loc[self.roles["role"] == role].drop_duplicates("content_hash")
        return int((rows["label"] == 0).sum()), int((rows["label"] == 1).sum())

    @property
    def has_test(self) -> bool:
        return bool((self.roles["role"] == "test").any())


def split_data(options: DataOptions, *, progress: bool = True) -> SplitData:
    """Load the manifest (or the SYNTHETIC default) and assign train/val/test roles."""
    cache_dir = options.resolved_cache_dir
    source = load_source(options.data, cache_dir, synthetic_n=options.synthetic_n, progress=progress)
    roles = assign_roles(
        source.manifest,
        val_fraction=options.val_fraction,
        seed=options.split_seed,
        use_official_val=options.use_official_val,
    )
    return SplitData(source=source, roles=roles, cache_dir=cache_dir, options=options)


def datasets_by_size(split: SplitData, sizes: list[int], roles: tuple[str, ...] = ("train", "val")) -> dict[int, dict]:
    """``{image_size: {role: materialized Dataset}}``, building each size's cache once. Needs Ray."""
    from cxr_tune.data.cache import prepare_cache, role_datasets

    out = {}
    for size in sorted(set(sizes)):
        cache = prepare_cache(split.source.manifest, size, split.cache_dir)
        state = "reused" if cache.reused else f"built in {cache.build_seconds:.1f} s"
        print(f"Image cache {size}x{size} px ({state}): {cache.path}", flush=True)
        out[size] = role_datasets(cache, split.roles, roles)
    return out
