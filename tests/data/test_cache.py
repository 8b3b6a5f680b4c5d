"""The Ray Data image cache: built once, reused without decoding, atomic, keyed by its inputs."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import cxr_tune.data.cache as cache_module
from cxr_tune import storage
from cxr_tune.data.cache import cache_key, cache_path, find_cache, load_images, prepare_cache, role_datasets
from cxr_tune.data.imaging import decode_gray
from cxr_tune.data.sources import build_manifest
from cxr_tune.data.splits import assign_roles


@pytest.fixture(scope="module")
def source(synthetic_root):
    return build_manifest(str(synthetic_root))


@pytest.mark.slow  # builds caches through Ray
def test_build_then_reuse_without_decoding(ray_session, source, tmp_path, monkeypatch):
    built = prepare_cache(source.manifest, 24, str(tmp_path))
    assert not built.reused and built.n_images == source.manifest["content_hash"].nunique()
    monkeypatch.setattr(cache_module, "decode_batch", lambda *a, **k: pytest.fail("decoded on a cache hit"))
    again = prepare_cache(source.manifest, 24, str(tmp_path))
    assert again.reused and again.path == built.path


def test_key_changes_with_size_files_and_preprocessing(monkeypatch):
    manifest = pd.DataFrame({"path": ["/d/a.png", "/d/b.png", "/d/c.png"], "content_hash": ["h1", "h2", "h2"]})
    base = cache_key(manifest, 24)
    assert cache_key(manifest, 32) != base
    assert cache_key(manifest.assign(content_hash=["h1", "h2", "h3"]), 24) != base  # the same files, one rewritten
    assert cache_key(manifest.iloc[::-1], 24) == base and cache_key(manifest.iloc[:2], 24) == base  # the images, not their order or copies
    monkeypatch.setattr(cache_module, "PREPROCESS_VERSION", 999)
    assert cache_key(manifest, 24) != base


@pytest.mark.slow  # builds caches through Ray
def test_an_interrupted_build_is_never_reused(ray_session, source, tmp_path):
    # What a build killed before its commit leaves: the folder without meta.json, and a temp folder.
    final = cache_path(str(tmp_path), source.manifest, 16)
    storage.makedirs(storage.join(final, "data"))
    storage.makedirs(storage.join(str(tmp_path), "images", ".building-dead"))
    assert find_cache(str(tmp_path), source.manifest, 16) is None
    cache = prepare_cache(source.manifest, 16, str(tmp_path))
    assert not cache.reused and cache.n_images == source.manifest["content_hash"].nunique()


@pytest.mark.slow  # builds caches through Ray
def test_role_datasets_hold_each_distinct_image_once_with_its_label(ray_session, source, tmp_path):
    roles = assign_roles(source.manifest)
    cache = prepare_cache(source.manifest, 24, str(tmp_path))
    datasets = role_datasets(cache, roles, ("train", "val"))
    for role, dataset in datasets.items():
        expected = roles[roles["role"] == role].drop_duplicates("content_hash")
        rows = dataset.take_all()
        assert len(rows) == len(expected)
        assert sum(r["label"] for r in rows) == expected["label"].sum()
        assert rows[0]["image"].shape == (24, 24) and rows[0]["image"].dtype == np.uint8
    val = datasets["val"].take(1)[0]
    path = roles.loc[roles["content_hash"] == val["content_hash"], "path"].iloc[0]
    assert np.array_equal(val["image"], decode_gray(path, 24))  # the cache holds exactly decode_gray's pixels


@pytest.mark.slow  # builds caches through Ray
def test_a_file_that_breaks_after_the_scan_is_listed_not_fatal(ray_session, tmp_path, synthetic_root):
    from tests.conftest import copy_tree

    root = copy_tree(synthetic_root, tmp_path / "copy")
    source = build_manifest(str(root))
    victim, gone = source.manifest["path"].iloc[0], source.manifest["path"].iloc[1]
    with open(victim, "r+b") as handle:  # same size and hash in the manifest, broken content on disk
        handle.truncate(10)
    os.remove(gone)  # listed by the scan, gone when the cache build reads it
    cache = prepare_cache(source.manifest, 16, str(tmp_path / "cache"))
    assert list(cache.failures["path"]) == [victim, gone] and cache.failures["reason"].iloc[0]
    # The file that could not be read at all may be back next run: this build is not kept, so the next run reads it again.
    assert list(cache.failures["retry"]) == [False, True] and not cache.saved
    assert find_cache(str(tmp_path / "cache"), source.manifest, 16) is None
    # Read by this run only, then deleted as the command ends (each such run left a full copy nothing read or deleted).
    from cxr_tune.data.cache import remove_unsaved_builds

    assert os.path.isdir(cache.data_path)
    remove_unsaved_builds()  # the command's exit
    assert not os.path.exists(cache.data_path)


@pytest.mark.slow  # builds caches through Ray
def test_load_images_reads_the_cache_or_decodes(ray_session, source, tmp_path):
    rows = source.manifest.iloc[:5]
    prepare_cache(source.manifest, 24, str(tmp_path / "a"))
    from_cache, kept = load_images(rows, 24, str(tmp_path / "a"), source.manifest)
    decoded, _ = load_images(rows, 24, str(tmp_path / "empty"), source.manifest)
    assert np.array_equal(from_cache, decoded) and len(kept) == 5


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path / "elsewhere"))
    assert storage.default_cache_dir() == str(tmp_path / "elsewhere")


def test_a_cache_that_must_be_built_in_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    import os

    from cxr_tune import storage
    from cxr_tune.data.cache import check_buildable
    from cxr_tune.errors import UserError

    check_buildable(str(tmp_path), 64)  # writable: nothing to say
    monkeypatch.setattr(storage.os, "access", lambda path, mode: False)  # a read-only mount (root passes any chmod)
    with pytest.raises(UserError, match=r"the image cache '\S+' cannot be written: no permission to write in '\S+', and it holds no 64 px copy"):
        check_buildable(str(tmp_path), 64)
    assert os.path.isdir(tmp_path)


def test_the_block_layout_a_run_records_is_the_number_of_parquet_files_the_build_wrote(tmp_path):
    """The order a run reads its training images in follows the build's blocks (two per CPU Ray had): train records their number."""
    from cxr_tune.data.cache import ImageCache, parquet_files

    data = tmp_path / "data-0123"
    data.mkdir()
    for block in range(4):
        (data / f"0359_{block:06d}-0.parquet").write_bytes(b"")
    cache = ImageCache(path=str(tmp_path), image_size=32, n_images=0, failures=pd.DataFrame(), reused=True, build_seconds=0.0, data_name=data.name)
    assert parquet_files(cache) == 4


def test_a_large_cache_is_built_in_blocks_of_bounded_size_and_the_real_data_keeps_its_layout():
    from cxr_tune.data.cache import BLOCK_BYTES, build_blocks

    for size in (64, 96, 128, 224):  # the real data (5,502 distinct images) on 2 CPUs: the 4 files it was built with
        assert build_blocks(5502, size, cpus=2) == 4
    blocks = build_blocks(20_000, 224, cpus=2)  # before: 4 pieces of 240 MiB, 1.16 GB in one decoding process
    assert 20_000 / blocks * 224 * 224 <= BLOCK_BYTES and blocks == 8
    assert build_blocks(10, 1024, cpus=2) == 1 and build_blocks(0, 64, cpus=2) == 1


@pytest.mark.slow  # builds caches through Ray
def test_blocks_bounded_by_bytes_hold_the_same_pixels(ray_session, source, tmp_path, monkeypatch):
    from cxr_tune.data.cache import parquet_files

    rows = source.manifest.drop_duplicates("content_hash")
    monkeypatch.setattr(cache_module, "BLOCK_BYTES", 24 * 24 * 40)  # 40 images a block
    cache = prepare_cache(source.manifest, 24, str(tmp_path / "small"))
    assert parquet_files(cache) == -(-len(rows) // 40)
    small, _ = load_images(rows, 24, str(tmp_path / "small"), source.manifest)
    decoded, _ = load_images(rows, 24, str(tmp_path / "none"), source.manifest)
    assert np.array_equal(small, decoded)


def test_each_role_is_read_only_once_the_cluster_shows_a_free_cpu(monkeypatch):
    """read_parquet samples the files in tasks of a whole CPU, and the cluster's free-CPU count still holds them for a
    moment after they end: Ray Data, reading then, warned "The Dataset job will hang unless more CPUs are freed up"."""
    import types

    import ray
    import ray.data

    class Cluster:
        free, warned, reads = 2.0, [], 0

        def available_resources(self) -> dict:
            free, self.free = self.free, 2.0  # the sampling tasks' CPUs show as taken for one look only
            return {"CPU": free} if free else {}

        def read_parquet(self, path, **kwargs):
            self.reads += 1
            self.free = 0.0
            return self

        def map_batches(self, *args, **kwargs):
            return self

        def materialize(self):
            if not ray.available_resources().get("CPU"):  # Ray Data's own check before it runs a dataset
                self.warned.append("The Dataset job will hang unless more CPUs are freed up")
            return types.SimpleNamespace(context=types.SimpleNamespace())

    cluster = Cluster()
    monkeypatch.setattr(ray, "available_resources", cluster.available_resources)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray.data, "read_parquet", cluster.read_parquet)
    roles = pd.DataFrame({"role": ["train", "val", "test"], "content_hash": ["a", "b", "c"], "label": [0, 1, 0]})
    datasets = role_datasets(types.SimpleNamespace(data_path="cache/data", image_size=24), roles, ("train", "val", "test"))
    assert set(datasets) == {"train", "val", "test"} and cluster.reads == 3
    assert cluster.warned == []


def test_a_file_not_read_at_all_is_marked_to_be_read_again_unlike_bytes_that_do_not_decode(tmp_path):
    from tests.conftest import write_image

    good = write_image(tmp_path / "IM-0001-0001.jpeg", seed=1)
    broken = write_image(tmp_path / "IM-0002-0001.jpeg", seed=2)
    broken.write_bytes(broken.read_bytes()[:20])
    paths = np.array([str(good), str(broken), str(tmp_path / "gone.jpeg")])
    table = cache_module.decode_batch({"path": paths, "content_hash": np.array(["a", "b", "c"])}, size=16).to_pydict()
    assert [bool(e) for e in table["error"]] == [False, True, True] and table["retry"] == [False, False, True]


def test_search_and_train_name_the_files_the_cache_build_left_out(tmp_path):
    from cxr_tune.data.cache import ImageCache
    from cxr_tune.data.prepared import DataOptions, split_data
    from tests.conftest import kermany_folder

    root = kermany_folder(tmp_path / "data", {"train": {"NORMAL": [f"IM-000{i}-0001.jpeg" for i in range(1, 5)],
                                                        "PNEUMONIA": [f"person{i}_virus_1.jpeg" for i in range(1, 5)]}})
    split = split_data(DataOptions(data=str(root), cache_dir=str(tmp_path / "cache"), val_data="none"))
    failures = pd.DataFrame({"content_hash": list("abcd"), "path": [f"/d/{i}.jpeg" for i in range(4)],
                             "reason": ["truncated image (file ends before the image data does)"] + ["permission denied"] * 3,
                             "retry": [False, True, True, True]})
    cache = ImageCache(path="/c", image_size=32, n_images=9, failures=failures, reused=False, build_seconds=1.0, saved=False)
    assert split.describe_cache_failures(cache) == (
        "Left out 4 file(s) that failed in the 32 px image-cache build (/d/0.jpeg: truncated image (file ends before the image data "
        "does); /d/1.jpeg: permission denied; /d/2.jpeg: permission denied; and 1 more); python -m cxr_tune.data prepare "
        f"{root} --image-size 32 --cache-dir {tmp_path / 'cache'} lists them all. The cache was not saved: the next run reads "
        "the files that could not be read again.")
    assert split.describe_cache_failures(replace(cache, failures=failures.iloc[:0])) is None
