"""storage: the same helpers, the same results, on a local folder and on an S3 bucket (moto)."""

from __future__ import annotations

import json
import os
import re
import threading

import pandas as pd
import pyarrow.fs as pafs
import pytest

from cxr_tune import storage
from cxr_tune.errors import UserError
from tests.conftest import S3_BUCKET, call_cli, kermany_folder
from tests.exports import write_export


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty folder: a local one, or a fresh prefix in the test bucket."""
    if request.param == "local":
        return str(tmp_path / "base")
    return request.getfixturevalue("s3_dir")


def tree(path: str) -> dict[str, bytes]:
    """Every file under ``path`` by its relative name, with its bytes."""
    fs, inner = storage.filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return {
        i.path[len(inner):].lstrip("/\\").replace("\\", "/"): storage.read_bytes(storage.join(path, i.path[len(inner):].lstrip("/\\")))
        for i in infos if i.type == pafs.FileType.File
    }


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "parent", "name"), [
    ("s3://bucket/runs/exp1/trials.csv", "s3://bucket/runs/exp1", "trials.csv"),
    ("s3://bucket/runs/exp1/", "s3://bucket/runs", "exp1"),
    ("s3://bucket/top", "s3://bucket", "top"),
    ("s3://bucket", "s3://bucket", "bucket"),
    ("gs://b/a/b", "gs://b/a", "b"),
    ("/data/runs/trials.csv", "/data/runs", "trials.csv"),
    ("runs/exp1", "runs", "exp1"),
])
def test_parent_and_name_keep_the_scheme(path, parent, name):
    assert storage.parent(path) == parent
    assert storage.name(path) == name


# --- round trips on both kinds ---------------------------------------------------------------


def test_bytes_text_frame_and_csv_round_trip(base):
    frame = pd.DataFrame({"trial": ["a", "b"], "auc": [0.91, 0.87], "epochs": [3, 5]})
    storage.write_bytes_atomic(storage.join(base, "deep", "er", "blob.bin"), b"\x00\x01")
    storage.write_text_atomic(storage.join(base, "note.txt"), "héllo")
    storage.write_frame(storage.join(base, "t.parquet"), frame)
    storage.write_csv(storage.join(base, "t.csv"), frame)
    assert storage.read_bytes(storage.join(base, "deep", "er", "blob.bin")) == b"\x00\x01"
    assert storage.read_text(storage.join(base, "note.txt")) == "héllo"
    pd.testing.assert_frame_equal(storage.read_frame(storage.join(base, "t.parquet")), frame)
    pd.testing.assert_frame_equal(storage.read_csv(storage.join(base, "t.csv")), frame)
    assert storage.read_text(storage.join(base, "t.csv")).splitlines()[0] == "trial,auc,epochs"  # no index column
    assert storage.read_csv(storage.join(base, "t.csv"), usecols=["auc"]).columns.tolist() == ["auc"]


def test_a_json_file_cut_short_is_one_line_naming_it(tmp_path):
    """Before: each reader of a file a run wrote (run.json, a cache's meta, a fold's row) let a raw JSONDecodeError through."""
    path = str(tmp_path / "run.json")
    storage.write_text_atomic(path, '{"data": "400 images"}\n{"a": 1}\n')
    assert storage.read_json(path, lines=True) == [{"data": "400 images"}, {"a": 1}]
    storage.write_text_atomic(path, '{"data": "400 im')
    with pytest.raises(UserError, match=rf"^'{path}' could not be read \(Unterminated string starting at: line 1 column 10 \(char 9\)\); "
                                        r"it is damaged or half-written \(a copy or a run cut short\)$"):
        storage.read_json(path)


def test_listdir_glob_and_kinds(base):
    for rel in ("checkpoint_000/state.pt", "checkpoint_001/state.pt", "trials.csv", ".hidden"):
        storage.write_bytes_atomic(storage.join(base, *rel.split("/")), b"x")
    assert storage.listdir(base) == [".hidden", "checkpoint_000", "checkpoint_001", "trials.csv"]
    assert storage.glob(base, "checkpoint_*") == [storage.join(base, "checkpoint_000"), storage.join(base, "checkpoint_001")]
    assert storage.glob(base, "*.csv") == [storage.join(base, "trials.csv")]
    assert storage.listdir(storage.join(base, "missing")) == []
    assert storage.is_dir(storage.join(base, "checkpoint_000")) and not storage.is_file(storage.join(base, "checkpoint_000"))
    assert storage.is_file(storage.join(base, "trials.csv")) and not storage.is_dir(storage.join(base, "trials.csv"))
    assert not storage.exists(storage.join(base, "missing"))


#: Names a URI reads as syntax or cannot hold as written: a fragment, a query, an escape, a space, a non-ASCII letter.
AWKWARD_NAMES = ("img#1.jpeg", "q?x.jpeg", "p%23c.jpeg", "sp ace.jpeg", "é.jpeg")


def test_names_a_uri_reads_as_syntax_name_the_object_they_name(base):
    """Before, on object storage: a name joined into a URI, or listed and joined back, named another object or
    none (``img#1.jpeg`` as ``img``, ``p%23c.jpeg`` as ``p#c.jpeg``) or did not parse (``q?x.jpeg``, a space)."""
    written = {file_name: bytes([i]) for i, file_name in enumerate(AWKWARD_NAMES)} | {"img": b"not me", "p#c.jpeg": b"nor me"}
    for file_name, data in written.items():
        storage.write_bytes_atomic(storage.join(base, "up", file_name), data)
    folder = storage.join(base, "up")
    assert storage.listdir(folder) == sorted(written)
    found = {storage.name(path): path for path in storage.glob(folder, "*.jpeg")}
    assert {file_name: storage.read_bytes(path) for file_name, path in found.items()} == {k: v for k, v in written.items() if k != "img"}
    assert all(storage.is_file(path) for path in found.values())
    assert tree(folder) == written


def test_copy_a_folder_and_a_file_up_and_down(base, tmp_path):
    local = tmp_path / "src"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "a.bin").write_bytes(b"a" * 1000)
    (local / "b.txt").write_text("b")
    storage.copy(str(local), storage.join(base, "up"))
    assert tree(storage.join(base, "up")) == {"sub/a.bin": b"a" * 1000, "b.txt": b"b"}
    storage.copy(storage.join(base, "up"), str(tmp_path / "down" / "again"))
    assert tree(str(tmp_path / "down" / "again")) == {"sub/a.bin": b"a" * 1000, "b.txt": b"b"}
    storage.copy(storage.join(base, "up", "b.txt"), str(tmp_path / "one" / "nested" / "b.txt"))
    assert (tmp_path / "one" / "nested" / "b.txt").read_text() == "b"
    storage.copy(str(local / "b.txt"), storage.join(base, "single", "b.txt"))
    assert storage.read_text(storage.join(base, "single", "b.txt")) == "b"
    with pytest.raises(FileNotFoundError):
        storage.copy(storage.join(base, "nothing"), str(tmp_path / "x"))


def test_remove_a_file_a_folder_and_nothing(base):
    storage.write_bytes_atomic(storage.join(base, "f.txt"), b"x")
    storage.write_bytes_atomic(storage.join(base, "d", "g.txt"), b"y")
    storage.remove(storage.join(base, "f.txt"))
    storage.remove(storage.join(base, "d"))
    storage.remove(storage.join(base, "never"))
    assert storage.listdir(base) == []


def test_write_once_keeps_the_first_complete_file(base):
    path = storage.join(base, "meta.json")
    assert storage.write_bytes_once(path, b"first")
    assert not storage.write_bytes_once(path, b"second")
    assert storage.read_bytes(path) == b"first"


def test_write_once_has_exactly_one_winner_locally(tmp_path):
    path = str(tmp_path / "meta.json")
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        results.append(storage.write_bytes_once(path, f"writer {i}".encode() * 1000))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    content = (tmp_path / "meta.json").read_bytes()  # any writer may win; its file is whole
    assert content.startswith(b"writer ") and content == content[:8] * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temporary file left


@pytest.mark.parametrize(("write", "step"), [("atomic", "fsync"), ("atomic", "replace"), ("once", "fsync")])
def test_a_write_interrupted_midway_leaves_only_the_old_file(tmp_path, monkeypatch, write, step):
    # Before: a Ctrl-C or SIGTERM while the temporary copy was written (or before it was renamed) left NAME.tmp-XXXXXXXX
    # beside the output for good (predict --csv, compare --metrics, a report's plots).
    old = tmp_path / "p.csv"
    old.write_bytes(b"old")

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, step, interrupted)
    with pytest.raises(KeyboardInterrupt):
        if write == "once":
            storage.write_bytes_once(str(tmp_path / "meta.json"), b"new")
        else:
            storage.write_bytes_atomic(str(old), b"new")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"] and old.read_bytes() == b"old"


# --- the object store is the one AWS_ENDPOINT_URL names ----------------------------------------


def test_s3_uris_reach_the_endpoint_in_aws_endpoint_url(s3_server, s3_dir):
    storage.write_bytes_atomic(storage.join(s3_dir, "hello.txt"), b"hi")
    bucket_and_key = s3_dir.split("://", 1)[1] + "/hello.txt"
    direct = pafs.S3FileSystem(endpoint_override=s3_server.endpoint, region="us-east-1", access_key="testing", secret_key="testing")
    with direct.open_input_stream(bucket_and_key) as stream:
        assert stream.readall() == b"hi"


# --- an object store that says no: one line naming the path and why, before the work ------------


MISSING = "s3://no-such-bucket-cxr-tune"


def test_a_missing_bucket_is_named_and_not_taken_for_a_missing_file(s3_server):
    """Before: ``exists`` said False (so "'...' is not a cxr_tune experiment"), and a write ended in pyarrow's traceback."""
    from cxr_tune.experiment import Experiment

    reason = "cannot be reached: the bucket 'no-such-bucket-cxr-tune' does not exist"
    with pytest.raises(UserError, match=f"^'{MISSING}/runs/x/experiment.json' {reason}$"):
        Experiment(f"{MISSING}/runs/x")
    with pytest.raises(UserError, match=f"^--storage '{MISSING}/runs' {reason}$"):
        storage.check_writable(f"{MISSING}/runs", "--storage")
    with pytest.raises(UserError, match=f"^'{MISSING}/p.csv' cannot be written: the bucket 'no-such-bucket-cxr-tune' does not exist$"):
        storage.write_bytes_atomic(f"{MISSING}/p.csv", b"a")
    assert not storage.exists(f"s3://{S3_BUCKET}/never-written")  # in a bucket that exists, a missing file is just missing
    storage.check_writable(f"s3://{S3_BUCKET}/new/out.csv", "--csv", folder=False)


def test_commands_refuse_an_output_in_a_missing_bucket_before_any_work(s3_server, tmp_path):
    """Before: pyarrow's traceback (exit 1) after the data scan, the export or scoring every image."""
    model = write_export(tmp_path / "best")
    images = kermany_folder(tmp_path / "chest_xray", {"test": {"NORMAL": ["a.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    for module, *args in (("cxr_tune.search", "--synthetic-n", "300", "--storage", f"{MISSING}/runs", "--name", "x"),
                          ("cxr_tune.search", "--synthetic-n", "300", "--cache-dir", f"{MISSING}/cache", "--name", "x",
                           "--storage", str(tmp_path / "runs")),
                          ("cxr_tune.predict", "--model", str(model), "--csv", f"{MISSING}/p.csv", str(images / "test")),
                          ("cxr_tune.export", str(tmp_path / "exp"), "--out", f"{MISSING}/model")):
        done = call_cli(module, *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert "the bucket 'no-such-bucket-cxr-tune' does not exist" in done.stderr and done.stdout == ""
    done = call_cli("cxr_tune.export", f"{MISSING}/runs/x")
    assert done.returncode == 2 and "not a cxr_tune experiment" not in done.stderr and "does not exist" in done.stderr


def test_google_cloud_storage_out_of_reach_is_one_line_within_the_retry_limit(monkeypatch):
    """Before: pyarrow's client retried for 15 minutes without a word (no credentials or no network: still silent
    after 2 minutes). The endpoint here is a dead local port, so the answer is the same with or without a network."""
    import time

    monkeypatch.setattr(storage, "GCS_RETRY_SECONDS", 1)
    bounded = storage._bounded_retries  # a user's URI may not carry the endpoint (a query is refused): pyarrow's is set here
    monkeypatch.setattr(storage, "_bounded_retries", lambda uri: f"{bounded(uri)}&endpoint_override=127.0.0.1:9&scheme=http")
    uri = "gs://cxr-tune-unreachable/runs"
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^--storage 'gs://cxr-tune-unreachable/runs' cannot be reached: no answer from Google Cloud Storage"):
        storage.check_writable(uri, "--storage")
    assert time.monotonic() - started < 60
    assert bounded("gs://b/x?retry_limit_seconds=5") == "gs://b/x?retry_limit_seconds=5"  # a limit already named stands


def test_a_uri_with_a_query_or_fragment_is_refused_in_one_line_by_every_command_before_any_work(s3_dir, tmp_path, monkeypatch):
    """Before: :func:`storage.join` put parts after the query or fragment, so ``--storage s3://b/runs#x`` passed
    the checks and pyarrow, which drops a fragment, wrote every file of the run to the one key ``runs``;
    ``?versionId=abc`` failed deep inside pyarrow after Ray started, or after the work. ``bench`` took its model, image,
    experiment and data folders as given: "model '...best#x' does not exist", "benchmark data 's3:/...' does not exist"."""
    import cxr_tune.ray_session

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", no_ray)
    for uri in (f"{s3_dir}/runs#x", f"{s3_dir}/data?versionId=abc", "gs://b/runs#x"):
        for check in (storage.resolve, lambda path: storage.check_writable(path, "--storage")):
            with pytest.raises(UserError, match="^" + re.escape(f"'{uri}': a '?' or '#' in a URI starts a query or fragment")):
                check(uri)
    model = write_export(tmp_path / "best")
    images = kermany_folder(tmp_path / "chest_xray", {"test": {"NORMAL": ["a.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    runs = str(tmp_path / "runs")
    for module, *args, uri in (
            ("cxr_tune.search", "--name", "x", "--storage", f"{s3_dir}/runs#x"),
            ("cxr_tune.search", "--name", "x", "--storage", runs, "--data", f"{s3_dir}/data?versionId=abc"),
            ("cxr_tune.search", "--name", "x", "--storage", runs, "--synthetic-n", "300", "--cache-dir", f"{s3_dir}/cache#x"),
            ("cxr_tune.train", "--storage", runs, "--synthetic-n", "300", "--val-data", f"{s3_dir}/site?versionId=abc"),
            ("cxr_tune.predict", str(images), "--model", f"{s3_dir}/best?versionId=abc"),
            ("cxr_tune.predict", "--model", str(model), f"{s3_dir}/images#x"),
            ("cxr_tune.export", "--out", str(tmp_path / "out"), f"{s3_dir}/exp#x"),
            ("cxr_tune.export", str(tmp_path / "exp"), "--out", f"{s3_dir}/model?versionId=abc"),
            ("cxr_tune.bench", "tta", "--images", str(images / "test"), f"{s3_dir}/best#x"),
            ("cxr_tune.bench", "tta", str(model), "--images", f"{s3_dir}/site?versionId=abc"),
            ("cxr_tune.bench", "data", "--data", f"{s3_dir}/data#x"),
            ("cxr_tune.bench", "precision", "--params", f"{s3_dir}/model.json?versionId=abc"),
            ("cxr_tune.bench", "value", "results/real/external", "--model", f"{s3_dir}/best#x"),
            ("cxr_tune.bench", "replay", "results/real/external", "--compare", f"{s3_dir}/exp?versionId=abc")):
        done = call_cli(module, *args, uri)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stdout == "", (module, uri, done.stderr)
        plain = re.split(r"[?#]", uri)[0]
        assert f"'{uri}': a '?' or '#' in a URI starts a query or fragment" in done.stderr and "as %3F or %23" in done.stderr
        assert f"give the plain path '{plain}', or write a '?' or '#' that is part of a name as %3F or %23" in done.stderr, done.stderr
    assert storage.listdir(s3_dir) == []  # nothing written anywhere on the store


def test_a_uri_with_an_empty_folder_name_is_refused_in_one_line_naming_it(s3_dir, tmp_path):
    """Before: ``s3://team//exp`` ended the command in pyarrow's ``ArrowInvalid: Empty path component`` traceback."""
    uri = f"{s3_dir}//runs"
    for check in (storage.resolve, lambda path: storage.check_writable(path, "--storage")):
        with pytest.raises(UserError, match="^" + re.escape(f"'{uri}': an empty folder name ('//')")):
            check(uri)
    model = write_export(tmp_path / "best")
    images = kermany_folder(tmp_path / "chest_xray", {"test": {"NORMAL": ["a.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    for module, *args, path in (
            ("cxr_tune.search", "--name", "x", "--storage", uri),
            ("cxr_tune.search", "--name", "x", "--storage", str(tmp_path / "runs"), "--data", f"{s3_dir}//data"),
            ("cxr_tune.predict", str(images), "--model", f"{s3_dir}//best"),
            ("cxr_tune.export", str(tmp_path / "exp"), "--out", f"{s3_dir}//model")):
        done = call_cli(module, *args, path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stdout == "", (module, path, done.stderr)
        assert f"'{path}': an empty folder name ('//')" in done.stderr and f"'{path.replace('//', '/').replace(':/', '://', 1)}'" in done.stderr
    assert storage.listdir(s3_dir) == []


def test_credentials_the_store_refuses_are_one_line_naming_the_path(s3_server, s3_dir, tmp_path):
    """Before: ``OSError: ... AWS Error ACCESS_DENIED during HeadObject operation`` and its traceback, from any command."""
    storage.copy(str(write_export(tmp_path / "best")), storage.join(s3_dir, "best"))
    with s3_server.denying():
        with pytest.raises(UserError, match=f"^'{s3_dir}/x.json' cannot be read: access denied; check the credentials"):
            storage.read_bytes(storage.join(s3_dir, "x.json"))
        with pytest.raises(UserError, match=f"^--out '{s3_dir}/out' cannot be reached: access denied"):
            storage.check_writable(storage.join(s3_dir, "out"), "--out")
        for module, *args in (("cxr_tune.predict", "--model", storage.join(s3_dir, "best"), str(tmp_path)),
                              ("cxr_tune.search", "--synthetic-n", "300", "--storage", s3_dir, "--name", "x")):
            done = call_cli(module, *args)
            assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
            assert f"'{s3_dir}" in done.stderr and "access denied; check the credentials" in done.stderr


def test_a_swap_into_a_model_folder_on_object_storage_cut_short_leaves_a_mix_no_command_loads(s3_dir, tmp_path, monkeypatch):
    """What README says of object storage, which cannot rename: a kill during the swap's copy leaves neither model
    whole, and loading the folder says it mixes two exports (locally the exchange is atomic)."""
    from cxr_tune.serving import load_model

    best, new = storage.join(s3_dir, "best"), storage.join(s3_dir, ".best.tmp-1")
    storage.copy(str(write_export(tmp_path / "old", image_size=16)), best)
    storage.copy(str(write_export(tmp_path / "new", image_size=24)), new)
    copied, real_copy = [], storage.copy

    def killed_before_the_second_file(src: str, dst: str) -> None:
        if copied:
            raise KeyboardInterrupt
        copied.append(dst)
        real_copy(src, dst)

    monkeypatch.setattr(storage, "copy", killed_before_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        storage.replace_dir(new, best)
    assert copied == [storage.join(best, "model.onnx")]  # model.json, which marks a folder complete, comes last
    with pytest.raises(UserError, match="model.onnx' does not match the hash in .*: the file changed since it was exported .*another export's file mixed in"):
        load_model(best)


def test_a_swap_cut_short_at_any_file_never_leaves_the_new_card_beside_a_model_that_loads(s3_dir, tmp_path, monkeypatch):
    """Files were copied in name order, model.json last: ``MODEL_CARD.md`` and ``external_predictions.csv`` sort before
    ``model.onnx``, so a kill between them left the new card beside the old model, which loaded, its hashes intact."""
    from cxr_tune.modelfile import ModelFiles, write_model_folder
    from cxr_tune.serving import load_model

    def export(size: int) -> tuple[ModelFiles, dict]:
        folder = write_export(tmp_path / f"export{size}", image_size=size)
        meta = json.loads((folder / "model.json").read_text())
        meta.pop("files")  # written again with both files' hashes
        return ModelFiles((folder / "model.onnx").read_bytes(), f"weights {size}".encode(), None), meta

    best, real_copy = storage.join(s3_dir, "best"), storage.copy
    for cut in range(1, 5):  # the new folder's files but model.json: any of them copied, the next one killed
        storage.remove_tree(best)
        write_model_folder(best, *export(16), extra={"MODEL_CARD.md": b"old card", "external_predictions.csv": b"old"})
        copied: list[str] = []

        def killed(src: str, dst: str) -> None:
            if dst.startswith(best + "/"):  # the swap's copy into best/
                if len(copied) == cut:
                    raise KeyboardInterrupt
                copied.append(storage.name(dst))
            real_copy(src, dst)

        monkeypatch.setattr(storage, "copy", killed)
        with pytest.raises(KeyboardInterrupt):
            write_model_folder(best, *export(24), extra={"MODEL_CARD.md": b"new card", "external_predictions.csv": b"new"})
        monkeypatch.setattr(storage, "copy", real_copy)
        with pytest.raises(UserError, match="another export's file mixed in"):  # whatever was copied: refused, never a silent mix
            load_model(best)
        assert copied[:2] == ["model.onnx", "weights.safetensors"][:cut]


def test_a_folder_name_stays_one_folder_locally_and_on_object_storage():
    from cxr_tune.storage import check_folder_name

    for name in ("exp 2", "réseau-1", "a_b.c"):
        check_folder_name(name, "/data/results")  # any plain name locally
    check_folder_name("exp-2", "s3://bucket/runs")
    for name, base, message in (("a/b", "/r", "must be a plain folder name"), (".hidden", "/r", "must be a plain folder name"),
                                ("exp#2", "/r", "'#' cannot be in a folder name"), ("50%", "s3://b/r", "'%' cannot be"),
                                ("exp 2", "s3://b/r", "' ' cannot be in a folder name on object storage"),
                                # Ray writes the experiment under the plain name, a resume read it escaped (exp%5B1%5D): two folders
                                ("exp[1]", "s3://b/r", "'[' ']' cannot be in a folder name on object storage"),
                                ("résumé", "s3://b/r", "'é' cannot be in a folder name on object storage"),
                                ("", "/r", "--name is empty"), (" ", "s3://b/r", "--name is empty")):  # it would name the base itself
        with pytest.raises(UserError, match=re.escape(message)):
            check_folder_name(name, base)


def test_a_folder_on_a_read_only_file_system_is_said_to_be_that_not_a_missing_permission(tmp_path, monkeypatch):
    """A cache or output on a read-only mount (EROFS) read "no permission to write in '...'", which sends one to chmod."""
    real_statvfs = os.statvfs
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(os, "statvfs", lambda path: type("Read-only", (), {"f_flag": real_statvfs(path).f_flag | os.ST_RDONLY})())
    with pytest.raises(UserError, match=rf"^--storage '{tmp_path}/runs' cannot be written: '{tmp_path}' is on a read-only file system$"):
        storage.check_writable(str(tmp_path / "runs"), "--storage")


def test_a_device_or_pipe_is_written_through_and_a_name_too_long_for_the_write_is_refused(tmp_path):
    import os
    import subprocess
    import sys
    import threading

    from cxr_tune.storage import check_writable, write_text_atomic
    from tests.conftest import ROOT

    check_writable("/dev/null", "--csv", folder=False)  # accepted; written through like the pipe below (before: replaced by a regular file)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    read = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()))
    reader.start()
    write_text_atomic(str(fifo), "a,b\n")
    reader.join(5)
    assert read == ["a,b\n"] and not fifo.is_file()
    with pytest.raises(UserError, match="its name is longer than 241 bytes"):
        check_writable(str(tmp_path / ("a" * 250 + ".csv")), "--csv", folder=False)
    for name in ("out.csv", "shm"):  # a file or folder in a folder under /dev is checked and written as anywhere else
        assert not storage.is_stream(str(tmp_path / name))
    redirected = tmp_path / "log.txt"
    redirected.write_text("an earlier line\n")
    with open(redirected, "a") as out:  # ... --csv /dev/stdout >> log.txt: appended to, never swapped for a new file
        done = subprocess.run([sys.executable, "-c", "from cxr_tune.storage import write_text_atomic; write_text_atomic('/dev/stdout', 'a,b\\n')"],
                              stdout=out, cwd=ROOT)
    assert done.returncode == 0 and redirected.read_text() == "an earlier line\na,b\n"


def test_a_path_through_a_loop_of_symbolic_links_is_one_line_naming_it(tmp_path):
    """Before: ``RuntimeError: Symlink loop`` from every command that resolves a path (--data, --storage, --model, ...)."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match=f"^'{loop}' leads through a loop of symbolic links"):
        storage.resolve(str(loop))
    assert call_cli("cxr_tune.data", "inspect", str(loop)).stderr.strip().startswith(f"error: '{loop}' leads through a loop")


@pytest.mark.parametrize("folder", ["/proc/cxr-tune-x", "/sys/cxr-tune-x"])
def test_a_folder_where_no_file_can_be_made_is_refused_in_one_line_even_as_root(folder, tmp_path):
    """Before: as root os.access passed /proc and /sys, and the first write was a FileNotFoundError or PermissionError traceback."""
    with pytest.raises(UserError, match=rf"^--storage '{folder}' cannot be written: "):
        storage.check_writable(folder, "--storage")
    storage.check_writable(str(tmp_path / "runs"), "--storage")
    assert list(tmp_path.iterdir()) == []  # the check leaves nothing behind


class _Denied:
    """pyarrow's local filesystem as it answers for a path inside a chmod 000 folder (to anyone but root)."""

    def get_file_info(self, what: object) -> None:
        raise PermissionError(13, "Failed stat()ing path. Detail: [errno 13] Permission denied")


def test_a_local_path_that_cannot_be_looked_at_is_one_line_naming_it(tmp_path, monkeypatch):
    """Before: pyarrow's PermissionError went through untouched, a traceback from predict, export, search and train."""
    path = str(tmp_path / "model" / "model.json")
    monkeypatch.setattr(storage, "filesystem", lambda p: (_Denied(), p))
    for ask in (storage.exists, storage.is_file, storage.is_dir, storage.listdir):
        with pytest.raises(UserError) as caught:
            ask(path)
        assert str(caught.value).startswith(f"'{path}' cannot be ") and ": permission denied" in str(caught.value)
        assert isinstance(caught.value, PermissionError)  # what copes with one (a data scan names the folder) still does


def test_a_cache_folder_that_may_be_read_only_must_still_be_makeable_when_it_is_not_there(tmp_path):
    """Before: `data inspect DIR --cache-dir /proc/nope` went on silently (a read-only cache may be reused, but there was none
    to reuse), while a cache folder under a regular file was refused in one line: both are now, an existing read-only one is not."""
    with pytest.raises(UserError, match=r"^--cache-dir '/proc/cxr-tune-x' cannot be written: "):
        storage.check_writable("/proc/cxr-tune-x", "--cache-dir", read_only_ok=True)
    storage.check_writable("/proc", "--cache-dir", read_only_ok=True)  # there, and read-only: reused
    storage.check_writable(str(tmp_path / "new"), "--cache-dir", read_only_ok=True)
    done = call_cli("cxr_tune.data", "inspect", str(tmp_path), "--cache-dir", "/proc/cxr-tune-x")
    assert done.returncode == 2 and done.stderr.startswith("error: --cache-dir '/proc/cxr-tune-x' cannot be written: "), done.stderr


def test_a_write_the_disk_refuses_names_the_file_it_was_writing(tmp_path, monkeypatch):
    """The command's one line names it (errors.out_of_room). Before: Python's write and fsync raise ENOSPC without a path,
    and export, adapt and predict --csv ended with "[Errno 28] No space left on device" and nothing said where."""
    import errno

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.os, "fsync", full)
    with pytest.raises(OSError) as refused:
        storage.write_text_atomic(str(tmp_path / "scores.csv"), "path,label\n")
    assert (refused.value.errno, refused.value.filename) == (errno.ENOSPC, str(tmp_path / "scores.csv"))
    assert list(tmp_path.iterdir()) == []  # its temporary copy is gone too
