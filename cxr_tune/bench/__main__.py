"""``python -m cxr_tune.bench {data,train,scoring,precision,gpu,search,replay,value,epochs,scaling,ablation,transfer,tta}``: measurements for results/.

Each benchmark measures its alternatives side by side in one run and writes its result, with the
command, under ``results/``. ``gpu`` needs only PyTorch (it runs on the lent GPU machine, where Ray
is not installed); the others read the real data in ``../shared/data/chest_xray_224`` by default.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cxr_tune.cliargs import assignment, help_text, int_between, nonnegative_int, positive_float, positive_int, with_exit_statuses
from cxr_tune.data.input_checks import MAX_SIZE, MIN_SIZE
from cxr_tune.errors import run_cli
from cxr_tune.train.hparams import ARCHITECTURES, PRECISIONS
from cxr_tune.views import TTA_VIEWS

RESOLVED_PRECISIONS = tuple(name for name in PRECISIONS if name != "auto")  # what "auto" picks among: a run measures one of these
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.bench", description=help_text(__doc__))
    commands = parser.add_subparsers(dest="command", required=True)
    size = int_between(MIN_SIZE, MAX_SIZE)
    data = commands.add_parser("data", help="Ray Data cache build vs a plain Pillow loop, and a cache hit")
    data.add_argument("--data", default=None, help="Kermany folder (default: ../shared/data/chest_xray_224)")
    data.add_argument("--image-size", type=size, default=128, help="image size (default: 128)")
    data.add_argument("--full-res-images", type=nonnegative_int, default=0,
                      help="how many images to re-encode at the original download's resolution for the second comparison (default: 0 = all)")
    data.add_argument("--out", default=None, help="folder for data_cache.md and .json (default: results/benchmarks, for the default real data only; other --data needs --out)")
    train = commands.add_parser("train", help="training images/s by precision and layout, Ray Data + Ray Train vs a bare loop")
    train.add_argument("--data", default=None, help="Kermany folder (default: ../shared/data/chest_xray_224)")
    train.add_argument("--sizes", type=size, nargs="+", default=[64, 128, 224], help="image sizes (default: 64 128 224)")
    train.add_argument("--precision", choices=PRECISIONS, nargs="+", default=["fp32", "auto"],
                       help="precisions to compare, each with and without channels_last; auto is what --precision auto picks here (default: fp32 auto)")
    train.add_argument("--epochs", type=int_between(2, 100), default=2, help="epochs per path; the first is a warm-up (default: 2)")
    train.add_argument("--images", type=nonnegative_int, default=1024, help="training images per epoch, drawn from the training role (default: 1024; 0, or more than the role holds: all)")
    train.add_argument("--out", default=None, help="folder for train_throughput.md and .json (default: results/benchmarks, for the default real data only; other --data needs --out)")
    scoring = commands.add_parser("scoring", help="each epoch's scoring of the validation sets: read from Ray Data every epoch vs kept in the worker")
    scoring.add_argument("--data", default=None, help="Kermany folder with a val/ folder (default: ../shared/data/chest_xray_224)")
    scoring.add_argument("--image-size", type=size, default=64, help="image size (default: 64, as results/real/best)")
    scoring.add_argument("--epochs", type=int_between(2, 100), default=6, help="epochs per run; the first is left out (default: 6)")
    scoring.add_argument("--images", type=positive_int, default=1024, help="training images per epoch (default: 1024; more than the training role holds: all)")
    scoring.add_argument("--out", default=None, help="folder for scoring.md and .json (default: results/benchmarks, for the default real data only; other --data needs --out)")
    precision = commands.add_parser("precision", help="fp32 vs bf16 training: external-set AUC and balanced accuracy over seeds (default data: the real data)")
    precision.add_argument("--data", default=None, help="Kermany folder (default: ../shared/data/chest_xray_224)")
    precision.add_argument("--params", default=None, help="model.json or YAML of hyperparameters (default: results/real/best/model.json)")
    precision.add_argument("--sizes", type=size, nargs="*", default=[], help="image sizes to train the configuration at (default: its own)")
    precision.add_argument("--seeds", type=int_between(2, 20), default=3, help="seeds per precision (default: 3)")
    precision.add_argument("--epochs", type=positive_int, default=6, help="epochs per run (default: 6)")
    precision.add_argument("--precision", choices=RESOLVED_PRECISIONS, nargs="+", default=["fp32", "bf16"], help="precisions (default: fp32 bf16)")
    precision.add_argument("--out", default=None, help="folder for precision_quality.md and .json (default: results/benchmarks, for the default real data only; other --data needs --out)")
    gpu = commands.add_parser("gpu", help="the device check: the training step on one GPU by precision, layout, size, and 1-8 packed trials (no Ray needed)")
    gpu.add_argument("--device", default="cuda", help="torch device (default: cuda; cpu runs the same code on the CPU)")
    gpu.add_argument("--sizes", type=size, nargs="+", default=[64, 128, 224], help="image sizes (default: 64 128 224)")
    gpu.add_argument("--precision", choices=RESOLVED_PRECISIONS, nargs="+", default=["fp32", "bf16", "fp16"], help="precisions (default: fp32 bf16 fp16)")
    gpu.add_argument("--packed", type=int_between(1, 64), nargs="+", default=[1, 2, 4, 8], help="trial processes at once (default: 1 2 4 8)")
    gpu.add_argument("--packed-size", type=size, default=128, help="image size of the packed trials (default: 128)")
    gpu.add_argument("--packed-precision", choices=PRECISIONS, nargs="+", default=["auto"],
                     help="precisions of the packed trials, each measured in turn (default: auto, as a search's trials train)")
    gpu.add_argument("--images", type=positive_int, default=2048, help="random images per timed epoch (default: 2048)")
    gpu.add_argument("--epochs", type=positive_int, default=2, help="timed epochs after a warm-up (default: 2)")
    gpu.add_argument("--seconds", type=positive_float, default=20.0, help="seconds each packed configuration trains (default: 20)")
    gpu.add_argument("--trial-epochs", type=positive_int, default=12, help="epochs of one trial, for trials per hour (default: 12)")
    gpu.add_argument("--compile", nargs="+", default=[], choices=COMPILE_MODES, metavar="MODE",
                     help="also time the step with its network compiled by torch.compile in each MODE "
                          f"({', '.join(COMPILE_MODES)}), beside the eager step (default: none)")
    gpu.add_argument("--arch", choices=ARCHITECTURES, default="cnn",
                     help="the network: the project's CNN, or torchvision's resnet18 / densenet121 from scratch (default: cnn)")
    gpu.add_argument("--out", default=None, help="folder for gpu.md and gpu.json (default: results/benchmarks)")
    search = commands.add_parser("search", help="TPE + ASHA vs random search without early stopping, same trials")
    search.add_argument("--data", default=None, help="Kermany folder (default: ../shared/data/chest_xray_224)")
    search.add_argument("--trials", type=positive_int, default=12, help="trials per search (default: 12)")
    search.add_argument("--storage", default="results/benchmarks/search_runs", help="where the two experiments go")
    search.add_argument("--seed", type=nonnegative_int, default=0, help="the seed of both searches (default: 0; another seed's files get a _seedN suffix)")
    search.add_argument("--out", default=None, help="folder for the summary, the trial tables and the replay (default: results/benchmarks, for the default real data only; other --data needs --out)")
    replay = commands.add_parser("replay", help="early-stopping rules (Ray's ASHA, Optuna's, synchronous halving) replayed on a search that ran every trial to the end")
    replay.add_argument("experiment", help="a finished search run with --no-early-stopping (e.g. bench search's random arm)")
    replay.add_argument("--compare", default=None, metavar="EXPERIMENT", help="a search that ran with early stopping, shown as it ran (e.g. bench search's TPE + ASHA arm)")
    replay.add_argument("--out", default=None, help="folder for the table and plot (default: results/benchmarks)")
    value = commands.add_parser("value", help="does searching pay? the selected model vs the default configuration, and vs the default given the search's compute")
    value.add_argument("experiment", help="the finished real-data search (default configuration runs use its data, split and external set)")
    value.add_argument("--model", default=None, help="the experiment's exported model folder (default: EXPERIMENT/best; e.g. the committed results/real/best)")
    value.add_argument("--seeds", type=positive_int, default=None, help="seeds of the default configuration given the search's compute (default: as many as fit in it)")
    value.add_argument("--out", default=None, help="folder for value_of_search.md and .json (default: results/benchmarks, for a search of the default real data only; another needs --out)")
    epochs = commands.add_parser("epochs", help="does a longer final fit help? the export's runs retrained for other epoch counts, ensembles side by side")
    epochs.add_argument("experiment", help="the finished real-data search selected on an external set (its data, split and external set)")
    epochs.add_argument("--model", default=None, help="the experiment's exported model folder (default: EXPERIMENT/best; e.g. the committed results/real/best)")
    epochs.add_argument("--epochs", type=positive_int, nargs="+", default=None,
                        help="epoch counts; the others are compared with the first (default: the export's own schedule and twice it)")
    epochs.add_argument("--vary", nargs="+", default=[], type=assignment, metavar="KEY=VALUE",
                        help="retrain the members with these changes to their configurations (all of them together), e.g. mixup=0.2")
    epochs.add_argument("--out", default=None, help="folder for final_fit_epochs_*.md and .json (default: results/benchmarks, for a search of the default real data only; another needs --out)")
    scaling = commands.add_parser("scaling", help="search throughput on a local cluster of 1 vs 2 worker nodes")
    scaling.add_argument("--out", default=None, help="folder for scaling_nodes.md and .json (default: results/benchmarks)")
    ablation = commands.add_parser("ablation", help="real-data recipe: ensemble and threshold rule post hoc, and one-change retrains")
    ablation.add_argument("experiment", help="a finished real-data experiment folder")
    ablation.add_argument("--vary", nargs="*", default=[], type=assignment, metavar="KEY=VALUE", help="one-change variants of the selected configuration to retrain")
    ablation.add_argument("--epochs", type=positive_int, default=10, help="epochs per retrained run (default: 10)")
    ablation.add_argument("--ensemble", type=positive_int, default=3, help="trials in the averaging ensemble (default: 3)")
    ablation.add_argument("--out", default=None, help="folder for ablation.md and .json (default: results/real, for a search of the default real data only; another needs --out)")
    transfer = commands.add_parser("transfer", help="carved validation vs the external set of a --select-on carved search, and what each selection rule would ship")
    transfer.add_argument("experiment", help="a finished experiment searched with --select-on carved on data with an external validation set")
    transfer.add_argument("--out", default=None, help="folder for transfer_<name>.md, .json and .png (default: results/benchmarks, for a search of the default real data only; another needs --out)")
    tta = commands.add_parser("tta", help="does test-time augmentation help an export? its members with 1..9 views averaged, on a labelled sample")
    tta.add_argument("model", help="an export folder with its weights (e.g. results/real/best)")
    tta.add_argument("--images", default=None, help="labelled images in NORMAL/ and PNEUMONIA/ folders (default: ../shared/data/chest_xray_224/val, half A)")
    tta.add_argument("--views", type=int_between(1, len(TTA_VIEWS)), nargs="+", default=list(range(1, len(TTA_VIEWS) + 1)),
                     help=f"view counts to score, each 1 to {len(TTA_VIEWS)}, the views export --tta knows (default: all)")
    tta.add_argument("--out", default=None, help="folder for tta_<model>.md and .json (default: results/benchmarks, for the committed results/real/best on half A only; another model or --images needs --out)")
    for command in (data, train, scoring, value, epochs, ablation):  # the ones that start Ray themselves
        command.add_argument("--verbose", action="store_true", help="also show Ray's own output on the console (always in the log file named at the start)")
    return with_exit_statuses(parser)


def main(argv: Sequence[str] | None = None) -> int:
    from cxr_tune import storage

    args = build_parser().parse_args(argv)
    for value in vars(args).values():  # any argument written as a URI is a location (data, experiment, model, images): refused as elsewhere
        if isinstance(value, str):
            storage.check_plain_uri(value)
    for flag in ("out", "storage"):  # a results folder it could not write stops it before the measuring, not after
        if getattr(args, flag, None):
            storage.check_writable(getattr(args, flag), f"--{flag}")
    if "verbose" not in args:
        return run_command(args)
    from cxr_tune.console import library_output_to

    log = str(Path(storage.local_cache_dir(), "logs", f"bench-{args.command}.log"))
    print(f"Ray logs: {log}" + ("" if args.verbose else " (--verbose shows them here too)"), flush=True)
    with library_output_to(log, verbose=args.verbose):
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    if args.command == "data":
        from cxr_tune.bench.data import run

        run(args.data, args.image_size, args.full_res_images, args.out)
    elif args.command == "train":
        from cxr_tune.bench.train import run

        run(args.data, args.sizes, args.precision, args.epochs, args.images, args.out)
    elif args.command == "scoring":
        from cxr_tune.bench.scoring import run

        run(args.data, args.image_size, args.epochs, args.images, args.out)
    elif args.command == "precision":
        from cxr_tune.bench.precision import run

        run(args.data, args.params, args.sizes, args.seeds, args.epochs, args.precision, args.out)
    elif args.command == "gpu":
        from cxr_tune.bench.gpu import run

        out = Path(args.out) if args.out else Path(__file__).resolve().parents[2] / "results" / "benchmarks"
        run(args.device, args.sizes, args.precision, args.packed, args.packed_size, args.images, args.epochs, args.seconds, args.trial_epochs, out,
            args.compile, args.arch, args.packed_precision)
    elif args.command == "search":
        from cxr_tune.bench.search import run

        run(args.data, args.trials, args.storage, args.seed, args.out)
    elif args.command == "replay":
        from cxr_tune.bench.replay import run

        run(args.experiment, args.compare, Path(args.out) if args.out else None)
    elif args.command == "value":
        from cxr_tune.bench.value import run

        run(args.experiment, args.seeds, args.model, args.out)
    elif args.command == "epochs":
        from cxr_tune.bench.epochs import run

        run(args.experiment, args.epochs, args.model, dict(args.vary), args.out)
    elif args.command == "scaling":
        from cxr_tune.bench.scaling import run

        run(args.out)
    elif args.command == "ablation":
        from cxr_tune.bench.ablation import run

        run(args.experiment, args.vary, args.epochs, args.ensemble, args.out)
    elif args.command == "transfer":
        from cxr_tune.bench.transfer import run

        run(args.experiment, args.out)
    elif args.command == "tta":
        from cxr_tune.bench.tta import run

        run(args.model, args.images, args.views, Path(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    run_cli(main)
