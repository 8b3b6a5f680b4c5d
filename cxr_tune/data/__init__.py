"""Data layer: sources → manifest → leak-free splits → Ray Data image cache.

Data flows one way through these modules::

    sources.load_source(...)        -> Source (manifest of readable images, skipped files)
    splits.assign_roles(...)        -> manifest with a ``role`` column (train/val/test/...)
    cache.prepare_cache(...)        -> decoded, resized uint8 images as Parquet, built once
    cache.role_datasets(...)        -> one materialized Ray Dataset per role

Names are imported lazily: Ray Data workers import :mod:`cxr_tune.data.cache` to decode images
and should not pay for scikit-learn and SciPy on start-up.
"""

from cxr_tune.lazy import lazy_exports

_EXPORTS = {
    "CLASSES": "sources",
    "Source": "sources",
    "build_manifest": "sources",
    "load_source": "sources",
    "assign_roles": "splits",
    "group_kfold": "splits",
    "leakage": "splits",
    "PREPROCESS_VERSION": "imaging",
    "decode_gray": "imaging",
    "prepare_cache": "cache",
    "role_datasets": "cache",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
