"""The GPU device check: the project's training step on one GPU, by precision, layout and image size, and packed trials.

``--arch`` picks the network: the project's CNN (default) or torchvision's ResNet-18 / DenseNet-121
(which need torchvision where the check runs).

Made for a machine that has PyTorch but not Ray, Optuna or pandas (the lent device machine):
it imports only torch, numpy and the project's model, augmentation and training step
(:mod:`cxr_tune.train.steps` via :mod:`cxr_tune.bench.bare`). Two measurements, written to
``results/benchmarks/gpu.md`` (and ``.json``) with the machine named:

1. **Step throughput**: training images per second of the project's step (augmentation,
   intensity normalization, autocast forward/backward, optimizer, scheduler) in fp32, bf16 and
   fp16, contiguous and channels_last, at each image size, next to a *bare loop* (the same
   network's forward, loss, backward and optimizer step on pre-normalized tensors, nothing else),
   so the step's own overhead shows; plus peak GPU memory.
2. **Packed trials**: N = 1, 2, 4, 8 trial processes training at once on the one GPU (what
   ``--gpus-per-worker 1/N`` does to a search): total images per second, trials per hour (a trial
   being ``--trial-epochs`` epochs over the 5,216 training images) and each process's peak memory,
   in ``--packed-precision`` (default: what ``auto`` picks there, as a search's trials train).

3. With ``--compile MODE ...``: the step with its network compiled by ``torch.compile`` (the
   augmentation, loss and optimizer stay eager), next to the eager channels_last step of the same
   run, with the first epoch's seconds (compilation included) beside the steady rate.

Images are random tensors already on the device: this measures the GPU, not the data path.
``python -m cxr_tune.bench gpu --device cpu --sizes 32 ...`` runs the same code on a CPU (the
test suite does, at a tiny size).
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from cxr_tune.bench.bare import BareRun, synchronize
from cxr_tune.errors import RunFailure, UserError
from cxr_tune.formatting import code_span
from cxr_tune.train.hparams import HParams
from cxr_tune.train.precision import configure_device, resolve
from cxr_tune.train.steps import bce_loss, build_optimizer, optimizer_step

TRAIN_IMAGES = 5216  # the official training split: what one trial-epoch trains on
MODEL = {"depth": 5, "filters": 24, "width_growth": 2.0, "batch_size": 32, "augment_strength": 0.5}
READY_TIMEOUT_S = 600.0  # packed trials' warm-up (one epoch of 512 images each): longer means a process is stuck


def hparams(size: int, arch: str = "cnn") -> HParams:
    """The measured configuration: the project's CNN (``MODEL``; 16 filters at 224 px), or a torchvision network at batch 32."""
    return HParams(image_size=size, epochs=1000, arch=arch, **{**MODEL, "filters": 16 if size >= 224 else 24})


def synthetic_batch(n: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=generator)
    labels = (torch.rand(n, generator=generator) < 0.74).float()
    return images.to(device), labels.to(device)


def step_rate(size: int, precision_name: str, layout: str, device: torch.device, images: int, epochs: int,
              compile_mode: str | None = None, arch: str = "cnn") -> dict[str, Any]:
    """Images/s of the project's step after a warm-up epoch, the warm-up epoch's seconds, and peak memory."""
    hp = hparams(size, arch)
    precision = resolve(precision_name, device.type, layout)
    pixels, labels = synthetic_batch(images, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = BareRun(hp, precision, device, pixels, labels, compile_mode=compile_mode)
    rates = [run.train_epoch() for _ in range(epochs + 1)]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"step_img_s": sum(rates[1:]) / epochs, "first_epoch_s": images / rates[0], "peak_mib": peak}


def bare_loop_rate(size: int, precision_name: str, layout: str, device: torch.device, images: int, epochs: int, arch: str = "cnn") -> float:
    """Images/s of the network alone: forward, loss, backward, step on pre-normalized tensors."""
    hp = hparams(size, arch)
    precision = resolve(precision_name, device.type, layout)
    from cxr_tune.train.model import build_model

    net = build_model(hp).to(device, memory_format=precision.memory_format).train()
    optimizer, scaler = build_optimizer(hp, net), precision.grad_scaler()
    pixels, labels = synthetic_batch(images, size, device)
    x_all = (pixels.unsqueeze(1).float() / 255.0 - 0.5).contiguous(memory_format=precision.memory_format)
    pos_weight = torch.tensor(1.0, device=device)
    rates = []
    for _ in range(epochs + 1):
        synchronize(device)
        started = time.perf_counter()
        for x, y in zip(x_all.split(hp.batch_size), labels.split(hp.batch_size), strict=True):
            with precision.autocast():
                logits = net(x)
            optimizer_step(bce_loss(logits, y, pos_weight, 0.0), optimizer, scaler)
        synchronize(device)
        rates.append(images / (time.perf_counter() - started))
    return sum(rates[1:]) / len(rates[1:])


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:300]


def compiled_rates(sizes: list[int], precisions: list[str], modes: Sequence[str], device: torch.device, images: int,
                   epochs: int, arch: str = "cnn") -> Iterator[dict[str, Any]]:
    """The step with its network compiled in each mode, each beside an eager channels_last step measured just before it
    (this machine's speed drifts by a fifth within minutes, so no eager run is shared between modes).

    A mode this machine cannot compile (no CUDA graphs, no C++ compiler) is a row with its error, not
    the end of the check: a GPU session's few minutes keep everything else it measured. Rows come one at a time, so
    each is written as soon as it is measured.
    """
    for size in sizes:
        for name in precisions:
            for mode in modes:
                eager = step_rate(size, name, "channels_last", device, images, epochs, arch=arch)
                row = {"image_size": size, "precision": resolve(name, device.type).name, "layout": "channels_last", "mode": mode,
                       "eager_step_img_s": eager["step_img_s"], "eager_first_epoch_s": eager["first_epoch_s"]}
                try:
                    step = step_rate(size, name, "channels_last", device, images, epochs, compile_mode=mode, arch=arch)
                except Exception as exc:  # noqa: BLE001 - any failure to compile or run compiled
                    row["error"] = _first_line(exc)
                else:
                    row.update({"step_img_s": step["step_img_s"], "first_epoch_s": step["first_epoch_s"],
                                "compiled_over_eager": step["step_img_s"] / eager["step_img_s"], "peak_mib": step["peak_mib"]})
                yield row


def _trial_process(size: int, precision_name: str, device_name: str, seconds: float, go: Any, results: Any, arch: str = "cnn") -> None:
    """One packed trial: says it is ready after its warm-up, trains on its own for ``seconds`` once every process is
    ready, and reports images/s and peak memory, or its error (a CUDA OOM) for the parent to say in one line."""
    try:
        device = torch.device(device_name)
        torch.set_num_threads(1)
        configure_device(device)
        hp = hparams(size, arch)
        precision = resolve(precision_name, device.type)
        pixels, labels = synthetic_batch(512, size, device)
        run = BareRun(hp, precision, device, pixels, labels)
        run.train_epoch()  # warm-up (cuDNN autotuning, allocator)
        results.put({"ready": True})
        if not go.wait(timeout=READY_TIMEOUT_S * 2):  # the parent gave up on another process
            return
        began, seen = time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            run.train_epoch()
            seen += len(pixels)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        results.put({"img_s": seen / (time.perf_counter() - began), "peak_mib": peak})
    except Exception as exc:  # noqa: BLE001 - whatever stops a trial is the parent's one line
        results.put({"error": _first_line(exc)})


def _gather(results: Any, workers: list[Any], stage: str, timeout: float, what: str) -> list[dict[str, Any]]:
    """One message from each process (``stage``: what it says); one line naming ``what`` when a process sends its error, dies
    without a word or none comes in ``timeout`` s (a bare wait hung on a process that died in its warm-up)."""
    deadline, messages = time.monotonic() + timeout, []
    while len(messages) < len(workers):
        try:
            message = results.get(timeout=1.0)
        except queue.Empty:
            died = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if died:
                raise RunFailure(f"{what}: a trial process died (exit code {died[0]}) before it reported") from None
            if all(w.exitcode is not None for w in workers) or time.monotonic() > deadline:
                raise RunFailure(f"{what}: only {len(messages)} of {len(workers)} trial processes {stage} within {timeout:g} s") from None
            continue
        if "error" in message:
            raise RunFailure(f"{what}: a trial process failed: {message['error']}")
        messages.append(message)
    return messages


def packed_rate(processes: int, size: int, precision_name: str, device_name: str, seconds: float, arch: str = "cnn") -> dict[str, Any]:
    """``processes`` trials training at once on one device: their total images/s and the largest peak memory."""
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    workers = [context.Process(target=_trial_process, args=(size, precision_name, device_name, seconds, go, results, arch), daemon=True)
               for _ in range(processes)]
    what = f"packed trials, {processes} process(es) at {size} px in {precision_name}"
    for worker in workers:
        worker.start()
    try:
        _gather(results, workers, "were ready after their warm-up", READY_TIMEOUT_S, what)
        go.set()
        reports = _gather(results, workers, "reported their rate", seconds * 10 + 600, what)
    except BaseException:
        for worker in workers:  # the others of a failed packing (or Ctrl-C), still warming up or training
            worker.terminate()
        raise
    finally:
        for worker in workers:
            worker.join()
    total = sum(r["img_s"] for r in reports)
    peaks = [r["peak_mib"] for r in reports if r["peak_mib"] is not None]
    return {"processes": processes, "total_img_s": total, "per_trial_img_s": total / processes, "peak_mib_per_trial": max(peaks) if peaks else None}


def run(device_name: str, sizes: list[int], precisions: list[str], packed: list[int], packed_size: int, images: int, epochs: int,
        seconds: float, trial_epochs: int, out: Path, compile_modes: Sequence[str] = (), arch: str = "cnn",
        packed_precisions: Sequence[str] = ("auto",)) -> Path:
    """Measure, writing ``out/gpu.md`` and ``gpu.json`` with the command that produced them after each row (marked
    partial until the last), so a run stopped early keeps what it measured."""
    from cxr_tune.bench.common import result_record

    try:
        device = torch.device(device_name)
    except RuntimeError:  # torch's "Expected one of cpu, cuda, ... device type at start of device string", as a traceback
        raise UserError(f"--device {device_name!r} is not a torch device; pass cuda, cuda:N or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch sees no CUDA GPU here; run it on the GPU machine, or pass --device cpu")
    try:
        torch.ones(1, device=device).add_(1).cpu()  # a name torch knows but cannot use here (mps, xla) or compute on (meta)
    except (RuntimeError, NotImplementedError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--device {device_name!r}: torch cannot train on it here ({reason}); pass cuda, cuda:N or cpu") from None
    configure_device(device)  # as a training worker does (cuDNN autotuning on a GPU), so the check times what a trial runs
    auto = resolve("auto", device.type, device=device if device.type == "cuda" else None)
    steps: list[dict[str, Any]] = []
    compiled: list[dict[str, Any]] = []
    packs: list[dict[str, Any]] = []
    record = {**result_record("gpu"), "device": device_name,
              "auto_precision": auto.describe(), "arch": arch, "model": MODEL if arch == "cnn" else {"batch_size": MODEL["batch_size"]}, "steps": steps, "compiled": compiled, "packed": packs, "packed_image_size": packed_size,
              "trial_epochs": trial_epochs, "images_per_epoch": images}
    if arch != "cnn":
        import torchvision

        record["torchvision"] = torchvision.__version__
    planned = len(sizes) * len(precisions) * (2 + len(compile_modes)) + len(packed_precisions) * len(packed)
    out.mkdir(parents=True, exist_ok=True)

    def keep(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
        """Print the row and write the files with it: a run stopped early (a lease's end, Ctrl-C) keeps what it measured."""
        rows.append(row)
        print(json.dumps(row), flush=True)
        done = len(steps) + len(compiled) + len(packs)
        write(out, {**record, "partial": f"stopped after {done} of {planned} measurements"} if done < planned else record)

    for size in sizes:
        for name in precisions:
            for layout in ("contiguous", "channels_last"):
                step = step_rate(size, name, layout, device, images, epochs, arch=arch)
                bare = bare_loop_rate(size, name, layout, device, images, epochs, arch=arch)
                keep(steps, {"image_size": size, "precision": resolve(name, device.type).name, "layout": layout, **step,
                             "bare_loop_img_s": bare, "step_over_bare": step["step_img_s"] / bare})
    for row in compiled_rates(sizes, precisions, compile_modes, device, images, epochs, arch=arch):
        keep(compiled, row)
    for name in packed_precisions:
        packed_precision = auto.name if name == "auto" else resolve(name, device.type).name
        for n in packed:
            result = {"precision": packed_precision, **packed_rate(n, packed_size, packed_precision, device_name, seconds, arch=arch)}
            result["trials_per_hour"] = result["total_img_s"] * 3600 / (TRAIN_IMAGES * trial_epochs)
            keep(packs, result)
    if not planned:  # nothing asked for (the flags cannot say so; a call can)
        write(out, record)
    print(f"Written: {out / 'gpu.md'}")
    return out / "gpu.md"


def write(out: Path, record: dict[str, Any]) -> None:
    (out / "gpu.json").write_text(json.dumps(record, indent=2))
    (out / "gpu.md").write_text(markdown(record))


def model_words(arch: str) -> str:
    if arch == "cnn":
        return (f"PneumoniaCNN, {MODEL['depth']} blocks, {MODEL['filters']} filters x{MODEL['width_growth']:g} (16 at 224 px), "
                f"batch {MODEL['batch_size']}")
    return f"torchvision {arch} with a one-channel stem, from scratch, batch {MODEL['batch_size']}"


def markdown(record: dict[str, Any]) -> str:
    gpu = record["machine"]["gpu"] or f"no GPU (device {record['device']})"
    base = {s["image_size"]: s["step_img_s"] for s in record["steps"] if s["precision"] == "fp32" and s["layout"] == "contiguous"}
    versus = lambda s: f"{s['step_img_s'] / base[s['image_size']]:.2f}" if s["image_size"] in base else "n/a"  # noqa: E731 - no fp32 run asked for
    lines = [
        "# GPU device check: the project's training step on one device",
        "",
        *([f"**Partial: {record['partial']}** (the run ended before the rest; the tables hold what it measured).", ""] if "partial" in record else []),
        f"Command: {code_span(record['command'])}  ",
        f"Machine: **{gpu}**, {record['machine']['cpus']} CPUs ({record['machine']['cpu']}), torch {record['machine']['torch']}; measured {record['measured_at']}. "
        f"`--precision auto` there: {record['auto_precision']}."
        + (f" torchvision {record['torchvision']}." if "torchvision" in record else ""),
        f"Model: {model_words(record.get('arch', 'cnn'))}; {record['images_per_epoch']} random images per epoch, already on the device.",
        "",
        "## Step throughput (images/s; the project's step vs the network alone)",
        "",
        "| image size | precision | layout | project's step | bare loop | step ÷ bare | step ÷ fp32 contiguous | peak MiB |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in record["steps"]:
        peak = f"{s['peak_mib']:.0f}" if s["peak_mib"] is not None else "n/a"
        lines.append(f"| {s['image_size']} | {s['precision']} | {s['layout']} | {s['step_img_s']:.0f} | {s['bare_loop_img_s']:.0f} | "
                     f"{s['step_over_bare']:.2f} | {versus(s)} | {peak} |")
    if record.get("compiled"):
        lines += ["", "## Compiled network (`torch.compile`; augmentation, loss and optimizer stay eager)", "",
                  "Each compiled run beside an eager run of the same configuration, measured one after the other in this run. "
                  "First epoch: its seconds, compilation included (the eager one is the same epoch without it).", "",
                  "| image size | precision | layout | mode | eager step | compiled step | compiled ÷ eager | first epoch s, eager | first epoch s, compiled |",
                  "|---:|---|---|---|---:|---:|---:|---:|---:|"]
        for c in record["compiled"]:
            if "error" in c:
                lines.append(f"| {c['image_size']} | {c['precision']} | {c['layout']} | {c['mode']} | {c['eager_step_img_s']:.0f} | "
                             f"failed: {c['error'].replace('|', '/')} | | {c['eager_first_epoch_s']:.1f} | |")
                continue
            lines.append(f"| {c['image_size']} | {c['precision']} | {c['layout']} | {c['mode']} | {c['eager_step_img_s']:.0f} | {c['step_img_s']:.0f} | "
                         f"{c['compiled_over_eager']:.2f} | {c['eager_first_epoch_s']:.1f} | {c['first_epoch_s']:.1f} |")
    lines += ["", f"## Packed trials at {record['packed_image_size']} px (channels_last)", "",
              f"Trials per hour: total images/s x 3600 / ({TRAIN_IMAGES} images x {record['trial_epochs']} epochs).", "",
              "| precision | trial processes | total images/s | per trial | trials per hour | peak MiB per trial |", "|---|---:|---:|---:|---:|---:|"]
    for p in record["packed"]:
        peak = f"{p['peak_mib_per_trial']:.0f}" if p["peak_mib_per_trial"] is not None else "n/a"
        lines.append(f"| {p['precision']} | {p['processes']} | {p['total_img_s']:.0f} | {p['per_trial_img_s']:.0f} | {p['trials_per_hour']:.1f} | {peak} |")
    return "\n".join(lines) + "\n"
