"""What the training step computes in: precision and memory layout, stated per device.

``--precision`` (train, search, bench) is ``auto``, ``fp32``, ``bf16`` or ``fp16``:

- ``auto`` picks **bf16 autocast** on CPUs with native bf16 (AVX512-BF16 or AMX, as torch reports
  them) and on CUDA GPUs that support bf16 (Ampere and newer); **fp16 autocast with a gradient
  scaler** on older CUDA GPUs with tensor cores (Volta, Turing); **fp32** everywhere else (a CPU
  without native bf16 would emulate it, slower than fp32).
- Only the training forward and backward pass run in the lower precision: weights, gradients,
  optimizer state, BatchNorm statistics and the loss stay fp32, and every evaluation score is
  computed in fp32 with TF32 off (:func:`fp32_scoring`), so the scores stored with a checkpoint
  are the ones the exported fp32 ONNX model gives on the CPU (export refuses a drift above 1e-4).

``--memory-format`` (``auto``, ``channels_last``, ``contiguous``): ``auto`` is channels_last,
measured faster for these CNNs on a CPU with AVX512-BF16 in fp32 and in bf16
(``results/benchmarks/train_throughput.md``) and in fp32 on one without AVX-512
(``results/benchmarks/device_check_cpu_without_bf16/gpu.md``), and the layout cuDNN's tensor-core
convolutions prefer; ``bench gpu`` measures it on a GPU.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cxr_tune.train.hparams import MEMORY_FORMATS, PRECISIONS

if TYPE_CHECKING:
    import torch  # each function imports it: search and train --help (add_precision_arguments) answer without loading torch

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # torch's names


@dataclass(frozen=True)
class Precision:
    """The resolved choice for one device: ``name`` is fp32, bf16 or fp16."""

    name: str
    channels_last: bool
    device_type: str  # "cpu" or "cuda"
    reason: str

    @property
    def memory_format(self) -> torch.memory_format:
        import torch

        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the training forward pass runs in (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device_type, dtype=getattr(torch, _DTYPES[self.name]))

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        import torch

        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        what = "fp32" if self.name == "fp32" else f"{self.name} autocast"
        return f"{what}, {layout} ({self.reason})"

    def record(self) -> dict[str, Any]:
        """What checkpoints, trial tables and model.json keep."""
        return {"precision": self.name, "channels_last": self.channels_last, "precision_reason": self.reason}


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), as torch sees it."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # an older or unusual torch build: assume not
        return False


def cuda_capability(device: torch.device | None = None) -> tuple[int, int]:
    import torch

    return torch.cuda.get_device_capability(device)


def resolve(requested: str = "auto", device_type: str = "cpu", memory_format: str = "auto", *, device: torch.device | None = None) -> Precision:
    """The precision and layout to train in on ``device_type`` (``cpu`` or ``cuda``), and why.

    >>> resolve("fp32", "cpu", "contiguous").describe()
    'fp32, contiguous (asked for: --precision fp32)'
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory format {memory_format!r} is not one of {', '.join(MEMORY_FORMATS)}")
    channels_last = memory_format != "contiguous"  # auto: channels_last on both device types (measured)
    if requested != "auto":
        return Precision(requested, channels_last, device_type, f"asked for: --precision {requested}")
    if device_type == "cuda":
        import torch

        major, minor = cuda_capability(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bf16", channels_last, "cuda", f"auto: this GPU (compute capability {major}.{minor}) supports bf16")
        if major >= 7:
            return Precision("fp16", channels_last, "cuda", f"auto: this GPU (compute capability {major}.{minor}) has fp16 tensor cores but no bf16; gradients are loss-scaled")
        return Precision("fp32", channels_last, "cuda", f"auto: this GPU (compute capability {major}.{minor}) has no fast half precision")
    if cpu_has_native_bf16():
        return Precision("bf16", channels_last, "cpu", "auto: this CPU has native bf16 (AVX512-BF16/AMX)")
    return Precision("fp32", channels_last, "cpu", "auto: this CPU has no native bf16, which would be emulated and slower than fp32")


def resolve_here(requested: str, memory_format: str = "auto", *, use_gpu: bool = False) -> Precision | None:
    """The driver's reading of :func:`resolve` for the workers it starts (each worker resolves for its own device and
    records it per epoch); None for GPU workers when this machine has no GPU to ask."""
    import torch

    if use_gpu and not torch.cuda.is_available():
        return None
    return resolve(requested, "cuda" if use_gpu else "cpu", memory_format)


def epochs_trained_in(history: Iterable[Mapping[str, Any]], through_epoch: int | None = None) -> dict[str, Any]:
    """What epochs 1 to ``through_epoch`` (default: all) trained in, from their history rows, each of which records its
    own epoch's ``precision`` and ``channels_last``: one value when they all agree, else each value with its epochs. A run
    resumed where ``--precision auto`` resolves otherwise (another CPU or GPU) trains its later epochs in another precision,
    and a record naming one would be wrong for the others. Keys no row records are left out.

    >>> epochs_trained_in([{"epoch": 1, "precision": "bf16"}, {"epoch": 2, "precision": "bf16"}, {"epoch": 3, "precision": "fp32"}])
    {'precision': 'bf16 (epochs 1-2), fp32 (epoch 3)'}
    """
    rows = sorted((row for row in history if through_epoch is None or int(row["epoch"]) <= through_epoch), key=lambda row: int(row["epoch"]))
    record: dict[str, Any] = {}
    for key in ("precision", "channels_last"):
        spans: list[list[Any]] = []  # [value, first epoch, last epoch], in epoch order
        for row in rows:
            value = row.get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):  # a row from before the record
                continue
            if spans and spans[-1][0] == value:
                spans[-1][2] = int(row["epoch"])
            else:
                spans.append([value, int(row["epoch"]), int(row["epoch"])])
        if len({str(value) for value, _, _ in spans}) == 1:
            record[key] = spans[0][0]
        elif spans:
            record[key] = ", ".join(f"{value} (epoch {first})" if first == last else f"{value} (epochs {first}-{last})" for value, first, last in spans)
    return record


def resumed_note(last: Collection[str], requested: str, memory_format: str = "auto", *, use_gpu: bool = False) -> str | None:
    """The line a resumed run or search prints when a run it continues (``last``: the precision each such run's last
    epoch trained in; runs with no epoch left are not in it) trained that epoch in another precision than its next
    epochs train in (``requested`` as :func:`resolve_here` resolves it): ``--precision auto`` resolves per machine, so
    a run moved to another one changes precision. Not a refusal: moving a run is legitimate, and each epoch records its
    own precision. None when nothing changes (a run that changed once and resumes again where it last trained is
    quiet), or when this machine cannot tell (GPU workers, no GPU here).

    >>> resumed_note(["fp32", "fp32"], "fp32", "contiguous") is None
    True
    """
    names = list(dict.fromkeys(last))  # each once, in the order given
    now = resolve_here(requested, memory_format, use_gpu=use_gpu) if names else None
    if now is None or names == [now.name]:
        return None
    return (f"Note: the last epochs so far trained in {' and '.join(names)}, the next train in {now.describe()}; each epoch records "
            "its own precision, and a model's records name every precision its epochs trained in")


@contextlib.contextmanager
def fp32_scoring() -> Iterator[None]:
    """Evaluation in plain fp32: no autocast, and on CUDA no TF32 in convolutions or matmuls (cuDNN
    uses TF32 for convolutions by default, about 1e-3 relative error), so stored scores match the
    CPU fp32 ONNX export."""
    import torch

    if not torch.cuda.is_available():
        with torch.autocast("cpu", enabled=False):
            yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def configure_device(device: torch.device, *, deterministic: bool = False) -> None:
    """Per-process settings for the device a worker trains on.

    CUDA: cuDNN picks the fastest convolution algorithms for each input shape it meets
    (``cudnn.benchmark``: one autotune per shape, so the last, smaller training batch and a
    scoring batch cost one extra each, once), unless ``deterministic``, which trades that speed for bitwise-repeatable
    runs (deterministic algorithms; what a resumed run needs to continue exactly on a GPU).
    """
    if device.type != "cuda":
        return
    import torch

    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
