"""The image cache on any storage: data and cache on ``s3://`` (a local moto server) or local
folders; a build never deletes a committed cache, and one unreadable file never aborts a build."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pyarrow.fs as pafs
import pytest

import cxr_tune.data.cache as cache_module
from cxr_tune import storage
from cxr_tune.data.cache import META, cache_path, load_images, prepare_cache, role_datasets
from cxr_tune.data.imaging import decode_gray
from cxr_tune.data.sources import build_manifest
from cxr_tune.data.splits import assign_roles
from tests.conftest import S3_BUCKET

# Every test starts the S3 server before this module's Ray: local Ray workers inherit the
# environment (AWS_ENDPOINT_URL, credentials) that ray.init saw, and nothing set later.
pytestmark = [pytest.mark.usefixtures("s3_server"), pytest.mark.slow]  # starts Ray


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small local SYNTHETIC set: enough for every split and class, quick to upload."""
    from cxr_tune.data.synthetic import synthesize

    return synthesize(str(tmp_path_factory.mktemp("small") / "chest_xray"), n=60, seed=5)


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh empty folder for data and cache: local, or a prefix in the test bucket."""
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_dir")


def files(folder: str) -> dict[str, int]:
    """Every file under ``folder`` (relative name -> size)."""
    fs, inner = storage.filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return {i.path[len(inner):]: i.size for i in infos if i.type == pafs.FileType.File}


def first_unique_path(manifest) -> str:
    """A path the cache build reads (of byte-identical files only the first is decoded)."""
    return manifest.drop_duplicates("content_hash")["path"].iloc[0]


def test_cache_on_s3_from_data_on_s3_builds_reuses_and_reads_back(ray_session, small_root):
    prefix = f"s3://{S3_BUCKET}/e2e-{uuid.uuid4().hex[:8]}"
    data, cache_dir = storage.join(prefix, "chest_xray"), storage.join(prefix, "cache")
    storage.copy(small_root, data)
    source = build_manifest(data, cache_dir, progress=False)
    assert source.synthetic and source.manifest["path"].str.startswith(data + "/").all()

    built = prepare_cache(source.manifest, 24, cache_dir)
    unique = source.manifest["content_hash"].nunique()
    assert not built.reused and built.n_images == unique and built.failures.empty
    assert built.data_path.startswith(cache_path(cache_dir, source.manifest, 24) + "/data-")
    again = prepare_cache(source.manifest, 24, cache_dir)
    assert again.reused and again.data_path == built.data_path

    roles = assign_roles(source.manifest)
    datasets = role_datasets(again, roles, ("train", "val"))
    for role, dataset in datasets.items():
        expected = roles[roles["role"] == role].drop_duplicates("content_hash")
        assert dataset.count() == len(expected)
    val = datasets["val"].take(1)[0]
    path = roles.loc[roles["content_hash"] == val["content_hash"], "path"].iloc[0]
    assert np.array_equal(val["image"], decode_gray(storage.read_bytes(path), 24))

    rows = source.manifest.iloc[:4]
    from_cache, kept = load_images(rows, 24, cache_dir, source.manifest)
    assert len(kept) == len(rows.drop_duplicates("content_hash"))
    assert np.array_equal(from_cache[0], decode_gray(storage.read_bytes(kept["path"].iloc[0]), 24))


def _race(monkeypatch, manifest, cache_dir: str) -> dict:
    """Make a second builder commit the same key while the first one is between writing its data
    and committing it; returns the second builder's cache and its files as they were then."""
    real_failures, other = cache_module._failures, {}

    def racing(data_path, unique):
        if not other:
            other["started"] = True
            other["cache"] = prepare_cache(manifest, 16, cache_dir)
            other["files"] = files(other["cache"].data_path)
        return real_failures(data_path, unique)

    monkeypatch.setattr(cache_module, "_failures", racing)
    return other


def test_a_builder_that_loses_the_race_keeps_the_committed_cache(ray_session, small_root, where, monkeypatch):
    source = build_manifest(small_root, progress=False)
    cache_dir = storage.join(where, "cache")
    other = _race(monkeypatch, source.manifest, cache_dir)

    late = prepare_cache(source.manifest, 16, cache_dir)

    winner = other["cache"]
    assert not winner.reused and files(winner.data_path) == other["files"]  # not deleted, not replaced
    assert late.reused and late.data_path == winner.data_path  # the loser uses the committed cache
    folder = cache_path(cache_dir, source.manifest, 16)
    assert storage.listdir(folder) == sorted([META, winner.data_name])  # it removed only its own data
    assert len(storage.read_frame(late.data_path)) == late.n_images == source.manifest["content_hash"].nunique()


def test_builders_that_both_commit_both_keep_a_usable_cache(ray_session, small_root, where, monkeypatch):
    # Object stores cannot refuse a second meta.json through pyarrow: two builders that check
    # within the same moment both write it, the later one winning. Nothing may be deleted then.
    source = build_manifest(small_root, progress=False)
    cache_dir = storage.join(where, "cache")
    other = _race(monkeypatch, source.manifest, cache_dir)
    monkeypatch.setattr(cache_module, "_commit", lambda folder, meta: (
        storage.write_text_atomic(storage.join(folder, META), json.dumps(meta)), True)[1])

    late = prepare_cache(source.manifest, 16, cache_dir)

    first = other["cache"]
    assert files(first.data_path) == other["files"]
    n = source.manifest["content_hash"].nunique()
    for cache in (first, late):
        assert not cache.reused and len(storage.read_frame(cache.data_path)) == cache.n_images == n
    folder = cache_path(cache_dir, source.manifest, 16)
    assert json.loads(storage.read_text(storage.join(folder, META)))["data"] == late.data_name
    assert storage.listdir(folder) == sorted([META, first.data_name, late.data_name])


def test_an_unreadable_file_is_listed_as_a_failure_not_an_abort(ray_session, small_root, where):
    data = storage.join(where, "chest_xray")
    storage.copy(small_root, data)
    source = build_manifest(data, progress=False)
    victim = first_unique_path(source.manifest)
    storage.remove(victim)  # listed by the scan, gone when the cache build reads it

    cache = prepare_cache(source.manifest, 16, storage.join(where, "cache"))

    assert list(cache.failures["path"]) == [victim] and cache.failures["reason"].iloc[0]
    assert cache.n_images == source.manifest["content_hash"].nunique() - 1
    images, kept = load_images(source.manifest.iloc[:3], 16, storage.join(where, "no-cache"), source.manifest)
    assert victim not in set(kept["path"]) and len(images) == len(kept)  # decoding without a cache skips it too


def test_the_builtin_synthetic_default_lives_in_an_s3_cache_and_builds_its_image_cache_there(s3_dir, ray_session):
    """The default job on a cluster's cache: no --data, --cache-dir s3://... (it stopped with
    "synthesize writes to a local folder" before). Every node reads the set from the cache."""
    from cxr_tune.data.prepared import DataOptions, datasets_by_size, split_data
    from cxr_tune.data.synthetic import SYNTHETIC_MARKER

    cache = storage.join(s3_dir, "cache")
    split = split_data(DataOptions(cache_dir=cache, synthetic_n=60), progress=False)
    assert split.source.synthetic and split.source.root.startswith(cache) and storage.exists(storage.join(split.source.root, SYNTHETIC_MARKER))
    assert len(split.source.manifest) == 60 and split.source.manifest["path"].str.startswith("s3://").all()
    datasets = datasets_by_size(split, [32], ("train",))[32]
    assert datasets["train"].count() == split.class_counts("train")[0] + split.class_counts("train")[1]
    again = split_data(DataOptions(cache_dir=cache, synthetic_n=60), progress=False)  # generated once, found again
    assert again.source.root == split.source.root and again.source.manifest["content_hash"].tolist() == split.source.manifest["content_hash"].tolist()
