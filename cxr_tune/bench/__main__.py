"""``python -m cxr_tune.bench {data,train,search,scaling,ablation,transfer}``: measurements for results/."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cxr_tune.cliargs import int_between, nonnegative_int, positive_int
from cxr_tune.data.cache import MAX_SIZE, MIN_SIZE
from cxr_tune.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="Ray Data cache build vs a plain Pillow loop, and a cache hit")
    data.add_argument("--data", default=None, help="Kermany folder (default: ../shared/data/chest_xray_224)")
    data.add_argument("--image-size", type=int_between(MIN_SIZE, MAX_SIZE), default=128, help="image size (default: 128)")
    data.add_argument("--full-res-images", type=nonnegative_int, default=0,
                      help="how many images to re-encode at the original download's resolution for the second comparison (default: 0 = all)")
    train = commands.add_parser("train", help="training images/s through Ray Data + Ray Train vs a bare PyTorch loop")
    train.add_argument("--data", default=None, help="Kermany folder (default: ../shared/data/chest_xray_224)")
    train.add_argument("--image-size", type=int_between(MIN_SIZE, MAX_SIZE), default=128, help="image size (default: 128)")
    train.add_argument("--epochs", type=positive_int, default=2, help="epochs over the training split per path (default: 2)")
    search = commands.add_parser("search", help="TPE + ASHA vs random search without early stopping, same trials")
    search.add_argument("--data", default=None, help="Kermany folder (default: ../shared/data/chest_xray_224)")
    search.add_argument("--trials", type=positive_int, default=12, help="trials per search (default: 12)")
    search.add_argument("--storage", default="results/benchmarks/search_runs", help="where the two experiments go")
    commands.add_parser("scaling", help="search throughput on a local cluster of 1 vs 2 worker nodes")
    ablation = commands.add_parser("ablation", help="real-data recipe: ensemble and threshold rule post hoc, and one-change retrains")
    ablation.add_argument("experiment", help="a finished real-data experiment folder")
    ablation.add_argument("--vary", nargs="*", default=[], metavar="KEY=VALUE", help="one-change variants of the selected configuration to retrain")
    ablation.add_argument("--epochs", type=positive_int, default=10, help="epochs per retrained run (default: 10)")
    ablation.add_argument("--ensemble", type=positive_int, default=3, help="trials in the averaging ensemble (default: 3)")
    transfer = commands.add_parser("transfer", help="carved validation vs the external set of a finished search, and what each selection rule would ship")
    transfer.add_argument("experiment", help="a finished experiment folder whose data had an external validation set")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "data":
        from cxr_tune.bench.data import run

        run(args.data, args.image_size, args.full_res_images)
    elif args.command == "train":
        from cxr_tune.bench.train import run

        run(args.data, args.image_size, args.epochs)
    elif args.command == "search":
        from cxr_tune.bench.search import run

        run(args.data, args.trials, args.storage)
    elif args.command == "scaling":
        from cxr_tune.bench.scaling import run

        run()
    elif args.command == "ablation":
        from cxr_tune.bench.ablation import run

        run(args.experiment, args.vary, args.epochs, args.ensemble)
    elif args.command == "transfer":
        from cxr_tune.bench.transfer import run

        run(args.experiment)
    return 0


if __name__ == "__main__":
    run_cli(main)
