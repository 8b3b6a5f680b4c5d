"""The networks: this project's CNN (plain or residual blocks, optional squeeze-and-excitation) and
torchvision's ResNet-18 / DenseNet-121 with a grayscale stem; one logit out.

Every network takes float images ``(B, 1, H, W)`` already normalized and returns the PNEUMONIA
logit ``(B,)``. :class:`ServingModel` wraps one with the input pipeline (uint8 → intensity
normalization → logit → probability) so the exported model needs nothing but decoded, resized
pixels. Nothing is downloaded: torchvision's networks train from scratch here, or start from a
local weights file (:func:`load_weights`, ``--weights PATH``).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from cxr_tune.train.hparams import HParams, HParamsError
from cxr_tune.train.intensity import normalize_intensity


#: torchvision's DenseNet files name ``denselayer1.norm1`` as ``denselayer1.norm.1`` (its own loader remaps them the same way).
_LEGACY_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


TORCHVISION_MIN_SIZE = 32  # torchvision's networks downsample by 32: a smaller image has no pixel left for their last stage


def training_problem(hp: HParams) -> str | None:
    """Why ``hp`` can be loaded but not trained, or None: a torchvision network below 64 px ends in a 1x1 map, where
    BatchNorm in train mode cannot normalize a batch of one image (it crashed inside Ray). The VGG-style network keeps
    a larger map wherever its BatchNorm layers sit, and trains on one image a batch."""
    if hp.arch != "cnn" and hp.batch_size < 2 and hp.image_size < 2 * TORCHVISION_MIN_SIZE:
        return (f"arch {hp.arch} at image_size {hp.image_size} ends in a 1x1 map, where BatchNorm cannot train on a batch of one image; "
                f"use batch_size >= 2 or image_size >= {2 * TORCHVISION_MIN_SIZE}")
    return None


def max_depth(image_size: int) -> int:
    """Deepest network whose last feature map is still at least 1x1 (one halving per block)."""
    return max(0, image_size.bit_length() - 1)


class ConvBlock(nn.Module):
    """``convs`` conv-BN-ReLU layers, optional squeeze-and-excitation, an optional skip connection
    (``residual``: identity, or a 1x1 conv + BN where the width changes), then a 2x2 max-pool."""

    def __init__(self, channels_in: int, width: int, *, convs: int, kernel: int, residual: bool, se_ratio: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = channels_in
        for index in range(convs):
            layers += [nn.Conv2d(channels, width, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(width)]
            if not (residual and index == convs - 1):  # a residual block adds before its last ReLU
                layers.append(nn.ReLU(inplace=True))
            channels = width
        if se_ratio > 0:
            from torchvision.ops import SqueezeExcitation

            layers.append(SqueezeExcitation(width, max(1, round(width * se_ratio))))
        self.body = nn.Sequential(*layers)
        self.skip: nn.Module | None = None
        if residual:
            self.skip = nn.Identity() if channels_in == width else nn.Sequential(nn.Conv2d(channels_in, width, 1, bias=False), nn.BatchNorm2d(width))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.skip is not None:
            y = torch.relu(y + self.skip(x))
        return self.pool(y)


class PneumoniaCNN(nn.Module):
    """This project's CNN sized by :class:`HParams`: ``depth`` blocks, global pooling, dropout, one logit."""

    def __init__(self, hp: HParams) -> None:
        super().__init__()
        if hp.depth > max_depth(hp.image_size):
            raise HParamsError(
                f"depth={hp.depth} would shrink a {hp.image_size} px image below 1x1 "
                f"({hp.image_size}/2^{hp.depth}); use depth <= {max_depth(hp.image_size)} or larger images"
            )
        layers: list[nn.Module] = []
        channels = 1
        for width in hp.widths:
            if hp.block == "plain" and hp.se_ratio == 0:
                # Plain blocks keep the flat layer layout of the first versions, so their
                # checkpoints and exported weights load as they are.
                for _ in range(hp.convs_per_block):
                    layers += [nn.Conv2d(channels, width, hp.kernel_size, padding=hp.kernel_size // 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                    channels = width
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(ConvBlock(channels, width, convs=hp.convs_per_block, kernel=hp.kernel_size,
                                        residual=hp.block == "residual", se_ratio=hp.se_ratio))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(hp.dropout),
            nn.Linear(channels, 1),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


class TorchvisionNet(nn.Module):
    """A torchvision classifier with a one-channel stem and a dropout + one-logit head."""

    def __init__(self, hp: HParams) -> None:
        super().__init__()
        import torchvision.models as models

        if hp.arch == "resnet18":
            net = models.resnet18(weights=None)
            net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            net.fc = nn.Sequential(nn.Dropout(hp.dropout), nn.Linear(net.fc.in_features, 1))
        elif hp.arch == "densenet121":
            net = models.densenet121(weights=None)
            net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            net.classifier = nn.Sequential(nn.Dropout(hp.dropout), nn.Linear(net.classifier.in_features, 1))
        else:
            raise HParamsError(f"arch={hp.arch!r} is not a torchvision network")
        if hp.image_size < TORCHVISION_MIN_SIZE:
            raise HParamsError(f"arch={hp.arch} downsamples by {TORCHVISION_MIN_SIZE}; use image_size >= {TORCHVISION_MIN_SIZE}, not {hp.image_size}")
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class ServingModel(nn.Module):
    """uint8 grayscale ``(B, 1, H, W)`` → PNEUMONIA probability ``(B,)``; what gets exported."""

    def __init__(self, net: nn.Module, intensity: str) -> None:
        super().__init__()
        self.net = net
        self.intensity = intensity

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_intensity(images.float() / 255.0, self.intensity)
        return torch.sigmoid(self.net(x))


def build_model(hp: HParams) -> nn.Module:
    """The network ``hp`` describes (raises :class:`HParamsError` when it cannot be built)."""
    return PneumoniaCNN(hp) if hp.arch == "cnn" else TorchvisionNet(hp)


def step_flops(hp: HParams) -> int:
    """Floating-point operations of one training step on one image (forward and backward) as torch's
    ``FlopCounterMode`` counts them (convolutions and matrix products): what one network costs
    against another. On a CPU a small network's step also pays for what no FLOP counts
    (augmentation, normalization, memory traffic), so the time ratio is smaller than this one."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_model(hp).eval()  # eval: a batch of one image is fine for batch norm; the FLOPs are the same
    with FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, hp.image_size, hp.image_size)).sum().backward()
    return int(counter.get_total_flops())


def load_weights(net: nn.Module, path: str) -> list[str]:
    """Load a user's local pretrained weights file (safetensors, or a PyTorch state dict read with
    ``weights_only=True``: never unpickled) into ``net``; returns the names it did not fill.

    Made for torchvision's ImageNet files: ``module.``/``model.`` prefixes are dropped, DenseNet's
    legacy key names (``denselayer1.norm.1``) are read as torchvision reads them, a three-channel
    first convolution is summed over its colour channels (the usual way to start a grayscale stem
    from RGB weights), and the classification head (the 1000-class one) is left at its
    initialization. Everything else must match both ways: raises ``ValueError`` when a parameter of
    the network outside its head finds no tensor of its shape in the file, or a tensor of the file
    outside its head is left over. Same-named layers of a deeper sibling (ResNet-34 or -50 for a
    ResNet-18, DenseNet-169 for a DenseNet-121) would otherwise start the network from a scramble.
    """
    from cxr_tune import storage

    data = storage.read_bytes(path)
    try:
        tensors = _read_tensors(data, safetensors=path.endswith(".safetensors"))
    except Exception as exc:  # noqa: BLE001 - torch and safetensors raise KeyError('101'), EOFError(''), ...: none says what the file is
        kind = "a safetensors file" if path.endswith(".safetensors") else "a PyTorch file of tensors (read with weights_only=True: no pickled code)"
        raise ValueError(f"'{path}' cannot be read as {kind}: {type(exc).__name__}") from exc
    if not isinstance(tensors, dict):
        raise ValueError(f"'{path}' holds a {type(tensors).__name__}, not a state dict of named tensors")
    own = {name: value for name, value in net.state_dict().items()}
    wanted = {_relative(name): name for name in own}
    head = _head_name(net)
    fitted, left_over = {}, []
    for key, tensor in tensors.items():
        key = _LEGACY_DENSENET.sub(r"\1\2", key.removeprefix("module.").removeprefix("model."))
        target = wanted.get(key) or (key if key in own else None)
        if target is not None and isinstance(tensor, torch.Tensor):
            if tensor.ndim == 4 and own[target].ndim == 4 and tensor.shape[1] == 3 and own[target].shape[1] == 1:
                tensor = tensor.sum(dim=1, keepdim=True)
            if tensor.shape == own[target].shape:
                fitted[target] = tensor
                continue
        if key.split(".", 1)[0] != head:
            left_over.append(key)
    unfilled = [name for name, _ in net.named_parameters() if name not in fitted and _relative(name).split(".", 1)[0] != head]
    if unfilled or left_over:
        raise ValueError(f"'{path}' fills {len(fitted)} of this network's {len(own)} tensors and does not fit it: "
                         + "; ".join(part for part in (
                             f"{len(unfilled)} of its parameters find no tensor of their shape ({', '.join(unfilled[:3])}{', ...' if len(unfilled) > 3 else ''})" if unfilled else "",
                             f"{len(left_over)} of the file's tensors are left over ({', '.join(left_over[:3])}{', ...' if len(left_over) > 3 else ''})" if left_over else "")
                                           if part)
                         + " (another architecture's file, another depth or width, or not a weights file)")
    net.load_state_dict(fitted, strict=False)
    return sorted(set(own) - set(fitted))


def check_weights_file(net: nn.Module, path: str, *, flag: str = "--weights") -> None:
    """Refuse a weights file that is missing, or that :func:`load_weights` cannot read or fit into ``net``, in one line
    starting with ``flag`` (the file's name in it), before Ray starts: train and search check ``--weights`` with this.
    Only what reading the file raises is the user's (OSError, ValueError); an error of ours stays a traceback."""
    from cxr_tune import storage
    from cxr_tune.errors import UserError

    if not storage.exists(path):
        raise UserError(f"{flag}: '{path}' does not exist")
    try:
        load_weights(net, path)
    except (OSError, ValueError) as exc:  # a file it cannot read, or one that fits nothing: the message names the file
        raise UserError(f"{flag}: {str(exc).splitlines()[0]}") from None


def _relative(name: str) -> str:
    """A parameter's name as a weights file names it (TorchvisionNet wraps torchvision's network as ``net``)."""
    return name.split("net.", 1)[1] if name.startswith("net.") else name


def _head_name(net: nn.Module) -> str:
    """The top-level module that holds the network's last linear layer: the head a weights file's own (ImageNet's) replaces."""
    last = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)][-1]
    return _relative(last).split(".", 1)[0]


def _read_tensors(data: bytes, *, safetensors: bool) -> object:
    """A weights file's content: named tensors (a checkpoint's ``state_dict`` or ``model`` entry when it has one)."""
    if safetensors:
        from safetensors.torch import load

        return load(data)
    import io

    tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return tensors.get("state_dict", tensors.get("model", tensors)) if isinstance(tensors, dict) else tensors
