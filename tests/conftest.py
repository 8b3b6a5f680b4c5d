"""Shared fixtures: a private cache folder, small image folders, one Ray for the session, CLIs in and out of process."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

# Quiet, self-contained Ray for tests; set before anything imports Ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "chest_xray_224"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test uses its own cache folder, never the user's."""
    cache = tmp_path_factory.mktemp("cxr_cache")
    os.environ["CXR_TUNE_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def synthetic_root(private_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SYNTHETIC set (train + test) shared by the whole session."""
    from cxr_tune.data.synthetic import synthesize

    out = tmp_path_factory.mktemp("synthetic") / "chest_xray"
    synthesize(str(out), n=300, seed=3)
    return out


@pytest.fixture(scope="session")
def site_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled external site folder (see :func:`synthetic_site`), shared by the search modules that need one."""
    return synthetic_site(tmp_path_factory.mktemp("site") / "site", tmp_path_factory.mktemp("site-draw"), seed=7)


def synthetic_site(folder: Path, scratch: Path, seed: int, n: int = 120) -> Path:
    """A labelled external folder (NORMAL/, PNEUMONIA/) from another SYNTHETIC draw (another "site");
    ``site-`` names keep its patient ids apart from the main set's."""
    from cxr_tune.data.synthetic import synthesize

    drawn = Path(synthesize(str(scratch / "draw"), n=n, seed=seed))
    for cls in ("NORMAL", "PNEUMONIA"):
        (folder / cls).mkdir(parents=True)
        for path in sorted((drawn / "train" / cls).iterdir()):
            shutil.copyfile(path, folder / cls / f"site-{path.name}")
    return folder


def write_image(path: Path, *, mode: str = "L", size: tuple[int, int] = (40, 30), seed: int = 0, fmt: str | None = None) -> Path:
    """A small random image in ``mode``; distinct seeds give distinct bytes."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 4096, size[::-1], dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8), "RGB").convert(mode)
    image.save(path, format=fmt)
    return path


def read_trials(experiment: Path) -> pd.DataFrame:
    """An experiment's ``trials.csv`` with its trial ids as text. Tune's ids are 8 hex digits, and
    pandas alone reads ``56361754`` as a number and ``8e901234`` as infinity (a fresh clone's suite
    once drew both in one search)."""
    return pd.read_csv(experiment / "trials.csv", dtype={"trial_id": str})


def table_rows(text: str) -> list[list[str]]:
    """The cells of every row of the tables (markdown) in a command's output, header rows included."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]


def read_only_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(a 12-image Kermany folder, a cache folder this process may not write: ``os.access`` says no for it, as for a
    user without the permission, whom the tests' root cannot play)."""
    from cxr_tune import storage

    data = kermany_folder(tmp_path / "data", {"train": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)],
                                                        "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]}})
    read_only = tmp_path / "read-only-cache"
    read_only.mkdir()
    access = os.access
    monkeypatch.setattr(storage.os, "access", lambda path, mode: not str(path).startswith(str(read_only)) and access(path, mode))
    return data, read_only


def kermany_folder(root: Path, layout: dict[str, dict[str, list[str]]], seed: int = 0) -> Path:
    """``{split: {class: [file names]}}`` → real images at ``root/split/class/name``, the same pixels in every run:
    each image's seed is a CRC of its place (``hash()`` of text differs per process unless PYTHONHASHSEED is set, so
    every run of the suite drew other images)."""
    for split, classes in layout.items():
        for cls, names in classes.items():
            for i, name in enumerate(names):
                write_image(root / split / cls / name, seed=zlib.crc32(repr((seed, split, cls, i)).encode()))
    return root


class SharedRay:
    """One local Ray for the whole session, set up as the CLIs set it up and started on first use:
    a start costs seconds of both cores, and every in-process search, Train run and cache build
    of the suite can share one. A test that needs a Ray of its own calls :meth:`release` first;
    the next module that asks for the shared one starts it again."""

    def __init__(self) -> None:
        self._session = contextlib.ExitStack()

    def ensure(self) -> None:
        import ray

        from cxr_tune.ray_session import ray_session as project_ray_session

        if not ray.is_initialized():
            self.release()
            self._session.enter_context(project_ray_session(num_cpus=2))

    def release(self) -> None:
        self._session.close()

    def settle(self, grace_s: float = 30.0) -> str:
        """Wait up to ``grace_s`` for every CPU of the shared Ray to come free (a search's trial
        processes take a few seconds to give theirs back); if some stay held, say what holds them
        and release this Ray, so that the next module starts on a clean one. Returns "" when all
        came free, else what held them."""
        import ray

        if not ray.is_initialized() or cpus_come_free(ray, grace_s):
            return ""
        held = cpu_holders(ray)
        self.release()
        return held


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``own_ray`` run last, in their order: each releases the session's shared Ray, and
    the next test that shares it would start it again (about 6 s of both cores). A test that uses the
    shared Ray must be marked ``slow``: the fast lane (``-m "not slow"``) promises to start no Ray, and
    one such test there started it (about 8 CPU-seconds) for a single cache build."""
    unmarked = [item.nodeid for item in items if "shared_ray" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(f"these tests start the session's Ray but are not marked slow: {', '.join(unmarked)}")
    items.sort(key=lambda item: item.get_closest_marker("own_ray") is not None)  # a stable sort


@pytest.fixture(scope="session")
def shared_ray(s3_server):
    """The session's Ray (after the S3 server: a local Ray's workers inherit the environment ray.init saw)."""
    ray = SharedRay()
    yield ray
    ray.release()


@pytest.fixture(scope="module")
def ray_session(shared_ray):
    """Ray for a module's in-process work: the session's shared one."""
    import ray

    _settle(shared_ray, "before")  # what ran between two modules that share it counts too
    shared_ray.ensure()
    yield ray
    _settle(shared_ray, "after")


def _settle(shared_ray: SharedRay, when: str) -> None:
    """A module starts on a Ray whose CPUs are all free: one that something left held is released
    (the next ``ensure`` starts a fresh one), with a warning that says what held them."""
    if held := shared_ray.settle():
        warnings.warn(f"CPUs of the session's Ray were held {when} a module; released that Ray. {held}", stacklevel=2)


def cpus_come_free(ray, grace_s: float, sweep_after_s: float = 3.0) -> bool:
    """Wait up to ``grace_s`` for every CPU of the running Ray to come free (actors and trial
    processes give theirs back a few seconds after their work ends); whether they did. After
    ``sweep_after_s`` the placement groups no live actor uses are removed, as a command's wait for a
    free CPU removes them (a trial the search's end stopped as it started can leave its group
    reserved; waiting out the grace for it cost 31 s and a Ray restart in a fresh clone)."""
    import time

    from cxr_tune.ray_session import remove_idle_placement_groups

    start = time.monotonic()
    swept = False
    while ray.available_resources().get("CPU", 0.0) + 1e-9 < ray.cluster_resources().get("CPU", 0.0):
        if time.monotonic() - start >= grace_s:
            return False
        if not swept and time.monotonic() - start >= sweep_after_s:
            remove_idle_placement_groups(min_age_s=sweep_after_s)
            swept = True
        time.sleep(0.2)
    return True


def cpu_holders(ray) -> str:
    """What Ray says holds its CPUs: resources, live actors that hold some, placement groups."""
    from ray.util.state import list_actors, list_placement_groups

    free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
    try:
        actors = [f"{a.class_name} ({a.state}, {a.required_resources})" for a in
                  list_actors(filters=[("state", "!=", "DEAD")], detail=True, raise_on_missing_output=False)
                  if a.required_resources.get("CPU")]
        groups = [f"{g.placement_group_id[:8]} ({g.state}, {[b['unit_resources'] for b in g.bundles]})" for g in
                  list_placement_groups(detail=True, raise_on_missing_output=False) if g.state != "REMOVED"]
    except Exception as error:  # noqa: BLE001 - the State API may be down with what is wrong
        return f"{free:g} of {total:g} CPUs free; the State API did not answer ({error})"
    return f"{free:g} of {total:g} CPUs free; live actors holding CPUs: {actors or 'none'}; placement groups: {groups or 'none'}"


def run_cli(*args: str, timeout: int = 600, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` as a user would, behind the command ``prefix`` if any; returns the
    finished process (never raises).

    For what only a process of its own shows: what it imports, its console, signals, its own Ray.
    Otherwise :func:`call_cli` gives the same answer without a second interpreter's start-up.
    """
    return subprocess.run(
        [*prefix, sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )


def permissions_bind() -> tuple[str, ...]:
    """The :func:`run_cli` prefix under which a chmod 000 file or folder cannot be read: none for a
    user; for root (a container), ``setpriv`` without the capabilities that read past permissions.
    Skips the test where root cannot drop them."""
    if os.geteuid() != 0:
        return ()
    prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, which reads past permissions, and setpriv cannot drop that here")
    return prefix


@contextlib.contextmanager
def unreadable(*paths: Path):
    """``paths`` at chmod 000 for the block, then readable again (so that the test's folder can be removed)."""
    modes = [path.stat().st_mode for path in paths]
    try:
        for path in paths:
            path.chmod(0)
        yield
    finally:
        for path, mode in zip(paths, modes, strict=True):
            path.chmod(mode)


def call_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` run inside this process: the exit status and the lines the command
    prints, as :func:`run_cli` returns them, from the same ``main`` behind the same error handling
    (one line and status 2 for a user's mistake, 130 for Ctrl-C). A search joins the session's Ray
    when a fixture started it (``ray_session``); Ray's workers may add lines of their own."""
    import importlib
    import io
    import traceback
    from unittest import mock

    from cxr_tune.errors import run_cli as cli_runner

    target = importlib.import_module(module)
    if not hasattr(target, "main"):
        target = importlib.import_module(f"{module}.__main__")
    out, err = io.StringIO(), io.StringIO()
    # The working folder and sys.argv as python -m sets them (a search records its command from sys.argv).
    with pytest.MonkeyPatch.context() as patch, mock.patch.object(sys, "argv", [target.__file__, *args]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.chdir(ROOT)
        try:
            cli_runner(target.main, list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except Exception:  # noqa: BLE001 - what the interpreter would print and exit 1 with
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, out.getvalue(), err.getvalue())


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


S3_BUCKET = "cxr-tune-test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A local S3 server (moto) for the session, with bucket ``S3_BUCKET``; ``s3://`` reaches it.

    It sets the standard ``AWS_*`` variables in ``os.environ`` for the rest of the session, so it
    must start before Ray does: a local Ray's workers inherit the environment of ``ray.init``.
    (Being session-scoped, pytest sets it up before the module-scoped ``ray_session``.)
    """
    from tests.s3server import clear_foreign_aws_settings, moto_server

    folder = tmp_path_factory.mktemp("moto")
    with moto_server(str(folder / "moto.log")) as server:
        saved = {**clear_foreign_aws_settings()}
        settings = server.environment(str(folder))
        saved.update({k: os.environ[k] for k in settings if k in os.environ})
        os.environ.update(settings)
        try:
            server.create_bucket(S3_BUCKET)
            yield server
        finally:
            for key in settings:
                os.environ.pop(key, None)
            os.environ.update(saved)


@pytest.fixture
def s3_dir(s3_server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty ``s3://`` folder for one test."""
    import re
    import uuid

    label = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40]
    return f"s3://{S3_BUCKET}/{label}-{uuid.uuid4().hex[:8]}"


def lines_before_ray(main, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> list[str]:
    """The console lines a command (its ``main``) prints before it starts Ray, where it is stopped: what it says of its data."""
    import cxr_tune.ray_session

    class BeforeRay(Exception):
        pass

    def no_ray(*args, **kwargs):
        raise BeforeRay

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", no_ray)
    with pytest.raises(BeforeRay):
        main(argv)
    return capsys.readouterr().out.splitlines()


def folder_with_bad_files(root: Path) -> Path:
    """A small Kermany folder whose train/NORMAL also holds four files no command can use: truncated, empty, text named .jpeg, a dangling link."""
    kermany_folder(root, {"train": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)],
                                    "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]}})
    normal = root / "train" / "NORMAL"
    good = (normal / "IM-0000-0001.jpeg").read_bytes()
    (normal / "IM-0100-0001.jpeg").write_bytes(good[: len(good) // 2])
    (normal / "IM-0101-0001.jpeg").write_bytes(b"")
    (normal / "IM-0102-0001.jpeg").write_text("not an image")
    os.symlink(root / "gone.jpeg", normal / "IM-0103-0001.jpeg")
    return root
