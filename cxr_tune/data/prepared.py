"""From CLI flags to what training needs: the source, its roles, and Ray Datasets per image size.

Used by ``python -m cxr_tune.train`` and ``python -m cxr_tune.search`` alike, so both see the same
split and the same cached pixels.

External validation (``--val-data``): ``auto`` (the default) uses the data's own ``val/`` folder
when it holds at least :data:`MIN_EXTERNAL_PER_CLASS` images of each class, and sets it aside
otherwise (the official download's 16 images are too few to tell trials apart); ``none`` never
uses one; a path names a folder of ``NORMAL/`` and ``PNEUMONIA/`` images from the target site.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_tune import storage
from cxr_tune.data.sources import CLASSES, EXTERNAL, Source, add_groups, load_external, load_source
from cxr_tune.data.splits import assign_roles
from cxr_tune.errors import UserError
from cxr_tune.formatting import first_listed

if TYPE_CHECKING:  # the cache module imports Ray Data helpers; only its type is named here
    from cxr_tune.data.cache import ImageCache

#: Fewer labelled images per class than this cannot rank trials: one image moves balanced
#: accuracy by more than 2.5 points, and bootstrap intervals span most of the range.
MIN_EXTERNAL_PER_CLASS = 20


@dataclass(frozen=True)
class DataOptions:
    """Where the data is and how it is split; every field is a CLI flag."""

    data: str | None = None
    cache_dir: str | None = None
    val_fraction: float = 0.15
    split_seed: int = 0
    use_official_val: bool = False
    synthetic_n: int | None = None
    val_data: str = "auto"  # "auto", "none", or a folder of NORMAL/ and PNEUMONIA/ images

    @classmethod
    def from_args(cls, args: Any, *, builds_cache: bool = True) -> DataOptions:
        """The data flags every command shares (see ``add_data_arguments``), with paths made absolute
        so that a saved experiment reads the same data from any working directory. ``builds_cache`` False (``data inspect``,
        whose scan is only saved time): the default cache folder is not checked, so a HOME where nothing can be made does
        not stop it; a folder the user named (``--cache-dir``, ``$CXR_TUNE_CACHE``) still is."""
        def absolute(path: str | None) -> str | None:
            return storage.resolve(path) if path else None

        val_data = args.val_data if args.val_data in ("auto", "none") else absolute(args.val_data)
        options = cls(absolute(args.data), absolute(args.cache_dir), args.val_fraction, args.split_seed, args.use_official_val,
                      args.synthetic_n, val_data)
        named_by = "--cache-dir" if args.cache_dir else f"${storage.CACHE_ENV}" if os.environ.get(storage.CACHE_ENV) else "the cache folder"
        if builds_cache or named_by != "the cache folder":
            storage.check_writable(options.resolved_cache_dir, named_by, read_only_ok=True)
        return options

    @property
    def resolved_cache_dir(self) -> str:
        return storage.resolve(self.cache_dir) if self.cache_dir else storage.default_cache_dir()


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data flags of every command that reads data (data, train, search); :meth:`DataOptions.from_args` reads them."""
    from cxr_tune.cliargs import float_between, int_between, nonnegative_int
    from cxr_tune.data.synthetic import DEFAULT_N, MIN_N

    parser.add_argument("--cache-dir", default=None, help="where manifests and image caches live (default: $CXR_TUNE_CACHE or the user cache folder)")
    parser.add_argument("--val-fraction", type=float_between(0.0, 0.9, low_open=True, high_open=True), default=0.15, help="share of the training folder carved out, by patient group, for validation (default: 0.15)")
    parser.add_argument("--split-seed", type=nonnegative_int, default=0, help="seed of the validation split (default: 0)")
    parser.add_argument("--use-official-val", action="store_true", help="put the data's own val/ folder into carved validation instead of using it as the external set (default: off)")
    parser.add_argument("--val-data", default="auto", metavar="PATH|auto|none",
                        help="external validation: a folder of NORMAL/ and PNEUMONIA/ images from the site the model will meet; it selects "
                             "trials, epochs, ensemble members and the threshold, and is never trained on. 'auto': the data's own val/ folder "
                             "when it holds at least 20 images of each class (the official 16-image folder is set aside); 'none': carved "
                             "validation only (default: auto)")
    parser.add_argument("--synthetic-n", type=int_between(MIN_N), default=DEFAULT_N,
                        help=f"images in the built-in SYNTHETIC set used when no data is given, at least {MIN_N} (default: {DEFAULT_N})")


@dataclass(frozen=True)
class SplitData:
    """A source with roles assigned (no Ray needed to build it)."""

    source: Source
    roles: pd.DataFrame
    cache_dir: str
    options: DataOptions = field(default_factory=DataOptions)
    external: str = ""  # where the external validation set came from ("" when there is none)
    external_note: str = ""  # why there is none, when a val/ folder was set aside

    def class_counts(self, role: str = "train") -> tuple[int, int]:
        """(NORMAL, PNEUMONIA) distinct images in ``role``; what ``balanced`` weighting uses."""
        rows = self.roles.loc[self.roles["role"] == role].drop_duplicates("content_hash")
        return int((rows["label"] == 0).sum()), int((rows["label"] == 1).sum())

    @property
    def has_test(self) -> bool:
        return bool((self.roles["role"] == "test").any())

    @property
    def has_external(self) -> bool:
        return bool((self.roles["role"] == "external").any())

    def fingerprint(self) -> str:
        """Which images play which role, in a few characters (their contents, not their paths): a run resumed on
        other data, or another split of it, would score its later epochs on another validation set."""
        return roles_fingerprint(self.roles)

    def deciding_set(self, select_on: str) -> str:
        """``external`` when runs on this data are selected on an external set, else ``carved``."""
        return "external" if self.has_external and select_on == "external" else "carved"

    def describe_external(self, select_on: str, *, left_out: bool = True) -> str:
        """What selects: the external set (a selection set) or carved validation, and why; a line on the data's own
        val/ folder when it goes unused for a reason that line does not give; then (``left_out``) a line on the images
        the patient-group rule left out, when it left out any; a line when the test folder scores one class only."""
        return "\n".join([self._what_selects(select_on), *self.data_notes(left_out=left_out)])

    def data_notes(self, *, left_out: bool = True) -> list[str]:
        """:meth:`describe_external`'s lines after what selects (``train --cv`` says what judges its folds instead)."""
        return [*self._set_aside(), *self._test_one_class(), *(self._left_out() if left_out else [])]

    def _what_selects(self, select_on: str) -> str:
        if self.has_external:
            counts = self.roles.loc[self.roles["role"] == "external", "label"].value_counts()
            what = f"External validation: {self.external} ({counts.get(0, 0)} NORMAL, {counts.get(1, 0)} PNEUMONIA images)"
            if select_on == "external":
                return (f"{what} selects epochs, trials, ensemble members and the threshold; it is never trained on, "
                        f"and every number on it is a selection-set number (optimistic).")
            return f"{what} is scored every epoch for comparison; selection uses validation carved from train (--select-on carved)."
        note = f" ({self.external_note})" if self.external_note else ""
        return f"No external validation set: selection uses validation carved from train{note}."

    def describe_skipped(self, shown: int = 3) -> str | None:
        """One line on the files (and folders) the scan could not use: how many, the first ``shown`` with
        the reason, and the command that lists them all; None when there are none."""
        skipped = self.source.skipped
        if skipped.empty:
            return None
        return f"Skipped {len(skipped)} file(s) that cannot be used ({first_listed(skipped, shown)}); {self._command('inspect')} lists them all."

    def describe_cache_failures(self, cache: ImageCache, shown: int = 3) -> str | None:
        """One line on the files the scan read but the image-cache build could not (left out of this run),
        as :meth:`describe_skipped` says the scan's; None when there are none."""
        failed = cache.failures
        if failed.empty:
            return None
        again = (" The cache was not saved: the next run reads the files that could not be read again." if not cache.saved
                 else "")
        return (f"Left out {len(failed)} file(s) that failed in the {cache.image_size} px image-cache build ({first_listed(failed, shown)}); "
                f"{self._command('prepare', '--image-size', str(cache.image_size))} lists them all.{again}")

    def _command(self, verb: str, *flags: str) -> str:
        """The ``python -m cxr_tune.data`` command that reads the same data as this run."""
        data = self.options.data or ""
        val_data = self.options.val_data if self.options.val_data not in ("auto", "none") else ""
        return " ".join([f"python -m cxr_tune.data {verb}", *([shlex.quote(data)] if data else []), *flags,
                         *(["--val-data", shlex.quote(val_data)] if val_data else []),
                         *(["--cache-dir", shlex.quote(self.options.cache_dir)] if verb == "prepare" and self.options.cache_dir else [])])

    def _set_aside(self) -> list[str]:
        """A line on the data's own val/ folder when it goes unused for a reason :meth:`_what_selects` does not give
        (``--val-data`` named another folder, or none): its images would otherwise drop out without a word."""
        unused = self.roles[self.roles["role"] == "unused"]
        if unused.empty or self.external_note:  # the external note already says why the folder is set aside
            return []
        notes = "; ".join(note for note in unused["role_note"].unique() if note)
        return [f"Not used: the val/ folder's {int((unused['label'] == 0).sum())} NORMAL and {int((unused['label'] == 1).sum())} "
                f"PNEUMONIA images{f' ({notes})' if notes else ''}."]

    def _test_one_class(self) -> list[str]:
        """A line when the test folder has images of one class only to score: its metrics of the other class would
        otherwise first show as n/a at the end of a search, in the export."""
        counts = self.class_counts("test")
        if min(counts) > 0 or max(counts) == 0:  # both classes, or no test folder at all
            return []
        held = int(counts[1] > 0)
        rate = "specificity" if held == 1 else "sensitivity"
        return [f"Test: the test/ folder has no {CLASSES[1 - held]} image to score ({counts[held]} {CLASSES[held]}), so its {rate}, "
                f"AUC and balanced accuracy will be n/a."]

    def _left_out(self) -> list[str]:
        excluded = self.roles[self.roles["role"] == "excluded"]
        if excluded.empty:
            return []
        reasons = excluded.groupby("role_note").size().sort_values(ascending=False)
        return [f"Left out {len(excluded)} image(s) by the patient-group rule (python -m cxr_tune.data inspect lists them): "
                + "; ".join(f"{n} ({note})" for note, n in reasons.items())]

    @property
    def roles_used(self) -> tuple[str, ...]:
        """The roles a training run reads: train, carved validation and the external set if any."""
        return ("train", "val", "external") if self.has_external else ("train", "val")


def split_data(options: DataOptions, *, progress: bool = True, selects: bool = True) -> SplitData:
    """Load the manifest (or the SYNTHETIC default), the external set, and assign roles.

    ``selects=False`` (``train --cv``, which neither scores nor selects on an external set): a ``--val-data`` folder too
    small to select on is taken all the same, since its size decides nothing there."""
    cache_dir = options.resolved_cache_dir
    source = load_source(options.data, cache_dir, synthetic_n=options.synthetic_n, progress=progress)
    manifest, external_splits, external, note = source.manifest, (), "", ""
    # Why the data's own val/ folder goes unused, when it does (its rows' role_note in splits.csv).
    unused = {"none": "--val-data none", "auto": ""}.get(options.val_data, "--val-data named another folder")
    if options.val_data not in ("auto", "none"):
        outside = load_external(options.val_data, cache_dir, progress=progress)
        if selects:
            check_external_size(outside.manifest, f"--val-data '{options.val_data}'")
        manifest = add_groups(pd.concat([source.manifest, outside.manifest], ignore_index=True))
        source = Source(source.root, manifest, pd.concat([source.skipped, outside.skipped], ignore_index=True), source.synthetic)
        external_splits, external = (EXTERNAL,), outside.root
    elif options.val_data == "auto" and not options.use_official_val:
        own = manifest[manifest["split"] == "val"]
        if not own.empty:
            normal, pneumonia = _class_counts(own)
            if min(normal, pneumonia) >= MIN_EXTERNAL_PER_CLASS:
                external_splits, external = ("val",), storage.join(source.root, "val")
            else:
                unused = f"too few to select on ({normal} NORMAL, {pneumonia} PNEUMONIA; at least {MIN_EXTERNAL_PER_CLASS} of each are needed)"
                note = (f"the val/ folder holds {normal} NORMAL and {pneumonia} PNEUMONIA images, too few to select on "
                        f"(at least {MIN_EXTERNAL_PER_CLASS} of each are needed); it is set aside and selection uses "
                        f"validation carved from train. Pass --val-data PATH with a larger labelled sample from the target site.")
    roles = assign_roles(
        manifest,
        val_fraction=options.val_fraction,
        seed=options.split_seed,
        use_official_val=options.use_official_val,
        external_splits=external_splits,
        unused_note=unused,
    )
    kept = _class_counts(roles[roles["role"] == "external"])
    # Counted again once patients shared with the test folder left it (a --val-data folder that selects nothing is kept as it is).
    if external_splits and min(kept) < MIN_EXTERNAL_PER_CLASS and (selects or external_splits != (EXTERNAL,)):
        what = f"--val-data '{options.val_data}'" if external_splits == (EXTERNAL,) else "the val/ folder"
        shrunk = (f"{what} keeps {kept[0]} NORMAL and {kept[1]} PNEUMONIA images once the patients it shares with the test folder are "
                  f"left out; selecting on it needs at least {MIN_EXTERNAL_PER_CLASS} of each")
        if external_splits == (EXTERNAL,):
            raise UserError(f"{shrunk}. Add images or pass --val-data none")
        note = f"{shrunk}, so it is set aside and selection uses validation carved from train."
        external_splits, external = (), ""
        roles = assign_roles(manifest, val_fraction=options.val_fraction, seed=options.split_seed, use_official_val=options.use_official_val,
                             external_splits=(), unused_note="too few to select on once the patients it shares with the test folder are left out")
    return SplitData(source=source, roles=roles, cache_dir=cache_dir, options=options, external=external, external_note=note)


def roles_fingerprint(roles: pd.DataFrame) -> str:
    """:meth:`SplitData.fingerprint` of a roles table (a ``splits.csv``): what a train run's ``run.json`` and a model's
    ``model.json`` record as the data they came from, by one rule."""
    return images_fingerprint(f"{h} {r}" for h, r in zip(roles["content_hash"], roles["role"], strict=True))


def images_fingerprint(lines: Iterable[str]) -> str:
    """"N images, sha256 <12 hex>" of one line per image (its content hash, and what else must match), in any order."""
    import hashlib

    rows = sorted(lines)
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return f"{len(rows)} images, sha256 {digest[:12]}"


def _class_counts(rows: pd.DataFrame) -> tuple[int, int]:
    """Distinct images (by content) of each class: (NORMAL, PNEUMONIA)."""
    counts = rows.drop_duplicates("content_hash")["label"].value_counts()
    return int(counts.get(0, 0)), int(counts.get(1, 0))


def check_external_size(manifest: pd.DataFrame, what: str, instead: str = "pass --val-data none") -> None:
    """Refuse an external set too small to select on; ``instead``: what the user can do other than add images."""
    normal, pneumonia = _class_counts(manifest)
    if min(normal, pneumonia) < MIN_EXTERNAL_PER_CLASS:
        raise UserError(
            f"{what} holds {normal} NORMAL and {pneumonia} PNEUMONIA readable images; selecting on it needs at least "
            f"{MIN_EXTERNAL_PER_CLASS} of each (fewer cannot tell trials apart). Add images or {instead}"
        )


def check_caches_buildable(split: SplitData, sizes: Iterable[int]) -> None:
    """One line, before Ray starts and before a command writes its run or experiment folder, when an image cache
    ``sizes`` needs is missing and the cache folder cannot be written (a read-only shared cache): that folder would
    otherwise hold a half-started run that recorded the unusable cache."""
    from cxr_tune.data.cache import check_buildable, find_cache

    for size in sorted(set(sizes)):
        if find_cache(split.cache_dir, split.source.manifest, size) is None:
            check_buildable(split.cache_dir, size)


def datasets_by_size(split: SplitData, sizes: list[int], roles: tuple[str, ...] | None = None) -> dict[int, dict]:
    """``{image_size: {role: materialized Dataset}}``, building each size's cache once. Needs Ray.

    ``roles`` defaults to what a training run reads (:attr:`SplitData.roles_used`).
    """
    from cxr_tune.data.cache import find_cache, prepare_cache, role_datasets

    roles = roles or split.roles_used
    out = {}
    for size in sorted(set(sizes)):
        if find_cache(split.cache_dir, split.source.manifest, size) is None:
            images = split.source.manifest["content_hash"].nunique()
            print(f"Building the image cache: {images} images at {size}x{size} px (once; later runs reuse it) ...", flush=True)
        cache = prepare_cache(split.source.manifest, size, split.cache_dir)
        state = "reused" if cache.reused else f"built in {cache.build_seconds:.1f} s"
        print(f"Image cache {size}x{size} px ({state}): {cache.path}", flush=True)
        if (failed := split.describe_cache_failures(cache)) is not None:
            print(failed, flush=True)
        out[size] = role_datasets(cache, split.roles, roles)
    return out
