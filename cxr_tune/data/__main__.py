"""``python -m cxr_tune.data {inspect,prepare,synthesize}``: look at, cache, or generate data."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cxr_tune import storage
from cxr_tune.data.report import inspect_report, roles_table, skipped_report
from cxr_tune.data.sources import load_source
from cxr_tune.data.splits import assign_roles
from cxr_tune.data.synthetic import DEFAULT_N, synthesize
from cxr_tune.errors import run_cli


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that reads data (also used by train and search)."""
    parser.add_argument("--cache-dir", default=None, help="where manifests and image caches live (default: $CXR_TUNE_CACHE or the user cache folder)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of the training folder carved out, by patient group, for validation (default: 0.15)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the validation split (default: 0)")
    parser.add_argument("--use-official-val", action="store_true", help="also put the official val/ folder (16 images) into validation (default: set aside)")
    parser.add_argument("--synthetic-n", type=int, default=DEFAULT_N, help=f"images in the built-in SYNTHETIC set used when no data is given (default: {DEFAULT_N})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="counts, patients, duplicates, sizes, leakage and unreadable files")
    inspect.add_argument("path", nargs="?", help="data folder in the Kermany layout (default: the built-in SYNTHETIC set)")
    add_data_arguments(inspect)

    prepare = commands.add_parser("prepare", help="build (or reuse) the Ray Data image cache at one image size")
    prepare.add_argument("path", nargs="?", help="data folder in the Kermany layout (default: the built-in SYNTHETIC set)")
    prepare.add_argument("--image-size", type=int, default=128, help="side of the square grayscale images in pixels (default: 128)")
    add_data_arguments(prepare)

    synth = commands.add_parser("synthesize", help="write the SYNTHETIC chest X-ray set to a folder")
    synth.add_argument("out", help="new folder to write (Kermany layout)")
    synth.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of images (default: {DEFAULT_N})")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "synthesize":
        out = synthesize(args.out, n=args.n, seed=args.seed)
        print(f"Wrote {args.n} SYNTHETIC images (seed {args.seed}) to {out}")
        return 0
    cache_dir = args.cache_dir or storage.default_cache_dir()
    source = load_source(args.path, cache_dir, synthetic_n=args.synthetic_n)
    if args.command == "inspect":
        print(inspect_report(source))
        return 0
    return _prepare(args, source, cache_dir)


def _prepare(args: argparse.Namespace, source, cache_dir: str) -> int:
    from cxr_tune.data.cache import check_image_size, find_cache, prepare_cache
    from cxr_tune.ray_session import ray_session

    check_image_size(args.image_size)
    roles = assign_roles(source.manifest, val_fraction=args.val_fraction, seed=args.split_seed, use_official_val=args.use_official_val)
    print(f"Data: {source.description}")
    print(roles_table(roles).to_string())
    print(skipped_report(source.skipped))
    cache = find_cache(cache_dir, source.manifest, args.image_size)
    if cache is None:  # only a build needs Ray
        with ray_session():
            cache = prepare_cache(source.manifest, args.image_size, cache_dir)
    verb = "Reused" if cache.reused else f"Built in {cache.build_seconds:.1f} s:"
    print(f"{verb} image cache of {cache.n_images} images at {args.image_size}x{args.image_size} px: {cache.path}")
    if not cache.failures.empty:
        print(skipped_report(cache.failures, "Files that failed to decode (left out)"))
    return 0


if __name__ == "__main__":
    run_cli(main)
