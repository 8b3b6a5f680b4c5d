"""``python -m cxr_tune.data {inspect,prepare,synthesize}``: look at, cache, or generate data."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cxr_tune import storage
from cxr_tune.cliargs import help_text, int_between, nonnegative_int, with_exit_statuses
from cxr_tune.data.input_checks import MAX_SIZE, MIN_SIZE
from cxr_tune.data.prepared import DataOptions, SplitData, add_data_arguments, split_data
from cxr_tune.data.report import inspect_report, roles_text, skipped_report
from cxr_tune.data.synthetic import DEFAULT_N, MIN_N, synthesize
from cxr_tune.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.data", description=help_text(__doc__))
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="counts, patients, duplicates, sizes, leakage and unreadable files")
    inspect.add_argument("data", nargs="?", metavar="PATH", help="data folder in the Kermany layout (default: the built-in SYNTHETIC set)")
    add_data_arguments(inspect)
    inspect.set_defaults(subparser=inspect)  # an unknown flag is reported with this command's usage, not the top level's

    prepare = commands.add_parser("prepare", help="build (or reuse) the Ray Data image cache at one image size")
    prepare.add_argument("data", nargs="?", metavar="PATH", help="data folder in the Kermany layout (default: the built-in SYNTHETIC set)")
    # The search builds each size its space needs itself; prepare is for building one ahead, so the help names them.
    prepare.add_argument("--image-size", type=int_between(MIN_SIZE, MAX_SIZE), default=128, help=(
        f"side of the square grayscale images in pixels, {MIN_SIZE}..{MAX_SIZE} (default: 128, training's default size, "
        "which of the shipped spaces only gpu uses). A search builds the sizes its space trains at itself; build one "
        "ahead with the space's size: wide 64, narrow 64, bench 64, smoke 32, real 64/96, gpu 128/192/224"))
    add_data_arguments(prepare)
    prepare.set_defaults(subparser=prepare)

    synth = commands.add_parser("synthesize", help="write the SYNTHETIC chest X-ray set to a folder")
    synth.add_argument("out", help="new folder to write (Kermany layout)")
    synth.add_argument("--n", type=int_between(MIN_N), default=DEFAULT_N, help=f"number of images, at least {MIN_N} (default: {DEFAULT_N})")
    synth.add_argument("--seed", type=nonnegative_int, default=0, help="generator seed (default: 0)")
    synth.set_defaults(subparser=synth)
    return with_exit_statuses(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "synthesize":
        storage.check_writable(args.out, "OUT")
        out = synthesize(args.out, n=args.n, seed=args.seed)
        print(f"Wrote {args.n} SYNTHETIC images (seed {args.seed}) to {out}")
        return 0
    split = split_data(DataOptions.from_args(args, builds_cache=args.command != "inspect"))
    if args.command == "inspect":
        print(inspect_report(split))
        return 0
    return _prepare(args, split)


def _prepare(args: argparse.Namespace, split: SplitData) -> int:
    from cxr_tune.data.cache import check_buildable, check_image_size, find_cache, prepare_cache
    from cxr_tune.console import library_output_to
    from cxr_tune.ray_session import ray_session

    check_image_size(args.image_size)
    print(f"Data: {split.source.description}")
    print(split.describe_external("external"))
    print(roles_text(split.roles))
    print(skipped_report(split.source.skipped))
    cache = find_cache(split.cache_dir, split.source.manifest, args.image_size)
    if cache is None:  # only a build needs Ray; its console output goes to a file beside a local cache
        check_buildable(split.cache_dir, args.image_size)
        log = None if storage.is_uri(split.cache_dir) else storage.join(split.cache_dir, "prepare.log")
        if log:
            print(f"Ray's output: {log}")
        with library_output_to(log) as handle, ray_session(log=handle):
            cache = prepare_cache(split.source.manifest, args.image_size, split.cache_dir)
    verb = "Reused" if cache.reused else f"Built in {cache.build_seconds:.1f} s:"
    manifest = split.source.manifest
    fewer = _not_cached(len(manifest), manifest["content_hash"].nunique(), len(cache.failures))
    print(f"{verb} image cache of {cache.n_images} images{fewer} at {args.image_size}x{args.image_size} px: {cache.path}")
    if not cache.failures.empty:
        print(skipped_report(cache.failures, "Files that failed in the image-cache build (left out)"))
    if not cache.saved:
        print("The cache was not saved: some files could not be read at all; the next run reads them again.")
    return 0


def _not_cached(files: int, distinct: int, failed: int) -> str:
    """Why the cache holds fewer images than the roles table counts files, or "": byte-identical files (a copy, a
    link) are stored once, and the files that failed in the build are left out; otherwise the two totals differ unexplained."""
    copies = files - distinct
    why = ([f"{copies} byte-identical {'copy' if copies == 1 else 'copies'} stored once"] if copies else []) + (
        [f"{failed} failed in the build, listed below"] if failed else [])
    return f" ({files} files: {'; '.join(why)})" if why else ""


if __name__ == "__main__":
    run_cli(main)
