"""Where the model looked: Grad-CAM maps from an export's weights, and figures of them.

Grad-CAM (Selvaraju et al. 2017) weighs a convolutional layer's feature maps by the gradient of
the PNEUMONIA logit with respect to them, keeps the positive part and upsamples it to the image:
the regions whose features raised the score. Computed with captum's ``LayerGradCam`` on the
networks rebuilt from ``weights.safetensors`` (:func:`cxr_tune.modelfile.load_members`; nothing is
unpickled). The layer is the last one with spatial resolution:

- this project's CNN: the last block's activation, taken at the input of its max-pool (twice the
  resolution of the block's output);
- ResNet-18: ``layer4``; DenseNet-121: the last dense block (``denseblock4``).

An ensemble's map is the mean of its members' maps; test-time views are not applied (the map is
of the image as given). A map shows what raised the score, not that the reason is medical: a
model that keys on a marker, a tube or the film's edge shows exactly that, which is the point::

    members = load_members(folder, meta)
    maps = grad_cam(members, images)   # (N, S, S), >= 0
    explain_figure("out.png", images[0], maps[0], "P(PNEUMONIA) 0.91: PNEUMONIA at balanced", grid=cam_grid(members))
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_tune import storage
from cxr_tune.modelfile import Members
from cxr_tune.plotting import drawable, figure, save_figure, subplots
from cxr_tune.train.intensity import normalize_intensity
from cxr_tune.train.model import ConvBlock, PneumoniaCNN, TorchvisionNet

#: what a map's colours mean, said on every figure (:func:`_overlay`)
SCALED = "Each map is scaled to its own image's maximum: colours are not comparable between images."
#: the maps' colours: perceptually uniform and rising in brightness, so the hottest spot is the brightest in greyscale and
#: to colour-blind eyes too ("jet" printed its hottest dark red as dark as its coldest dark blue)
HEAT_CMAP = "inferno"
#: the colourbar's label beside every figure of maps (:func:`_colourbar`)
HEAT_LABEL = "Grad-CAM, low to high (scaled per image)"


def target_layer(net: nn.Module) -> tuple[nn.Module, bool]:
    """``(layer, attribute_to_layer_input)``: where Grad-CAM reads the feature maps of ``net``."""
    if isinstance(net, PneumoniaCNN):
        last = net.features[-1]  # plain layout: the last block's MaxPool2d; blocks: a ConvBlock with .pool
        return (last.pool if isinstance(last, ConvBlock) else last), True
    if isinstance(net, TorchvisionNet):
        inner = net.net
        return (inner.layer4 if hasattr(inner, "layer4") else inner.features.denseblock4), False
    raise TypeError(f"no Grad-CAM layer known for {type(net).__name__}")


def cam_grid(members: Members) -> str:
    """What a map can resolve, said on every figure of maps: the cells of its layer and the input pixels each covers
    (``Grad-CAM at 4x4 cells, each 16x16 px of the input``, the committed model's), read from that layer's shape on a blank
    input. The upsampled map's smooth shading looks finer than the grid it interpolates; an ensemble whose members read
    different grids names each, in the members' order."""
    size = members.image_size
    grids = list(dict.fromkeys(_layer_grid(net, size) for net in members.nets))
    cells = [f"{h}x{w} cells, each {size / h:.3g}x{size / w:.3g} px" for h, w in grids]
    if len(cells) == 1:
        return f"Grad-CAM at {cells[0]} of the input"
    return f"Grad-CAM averaged over members at {cells[0]} of the input, {', '.join(cells[1:-1] + [''])}and {cells[-1]}"


def _layer_grid(net: nn.Module, size: int) -> tuple[int, int]:
    """The height and width of the feature maps Grad-CAM reads in ``net`` (:func:`target_layer`) for a ``size`` px input."""
    layer, to_input = target_layer(net)
    shapes: list[torch.Size] = []
    hook = layer.register_forward_hook(lambda _layer, inputs, output: shapes.append((inputs[0] if to_input else output).shape))
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 1, size, size))
    finally:
        hook.remove()
    return int(shapes[0][-2]), int(shapes[0][-1])


def grad_cam(members: Members, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM of the PNEUMONIA logit for uint8 ``images`` ``(N, S, S)``: non-negative maps
    ``(N, S, S)``, the mean over an ensemble's members (each in its own logit units)."""
    from captum.attr import LayerAttribution, LayerGradCam

    size = images.shape[-1]
    total = np.zeros(images.shape, dtype=np.float64)
    for net, hp in zip(members.nets, members.hparams, strict=True):
        net = net.eval()
        layer, to_input = target_layer(net)
        cam = LayerGradCam(net, layer)
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size, None].copy()).float() / 255.0
            x = normalize_intensity(x, hp.intensity).requires_grad_(True)
            with torch.enable_grad():
                attribution = cam.attribute(x, attribute_to_layer_input=to_input, relu_attributions=True)
            upsampled = LayerAttribution.interpolate(attribution.detach(), (size, size), interpolate_mode="bilinear")
            total[start : start + len(x)] += upsampled[:, 0].clamp(min=0).double().numpy()
    return total / len(members.nets)


def named(path: str, most: int = 48) -> str:
    """A figure's first caption lines for the image at ``path`` (as given): its file name, then ``in FOLDER``, the folder
    cut to its last ``most`` characters at a ``/`` (``in .../siteA/NORMAL``): enough to tell two x.png apart, where the
    whole path widened a figure to a long path's width (1856 pixels, bbox tight).

    >>> print(named("/data/hospital_exports/2026/site_A/NORMAL/x.png", most=20))
    x.png
    in .../site_A/NORMAL
    """
    folder, _, name = path.rpartition("/")
    if len(folder) > most:
        tail = folder[len(folder) - most + 3 :]
        folder = "..." + (tail[tail.index("/") :] if "/" in tail else tail)
    return f"{name}\nin {folder}" if folder else name


def explain_figure(path: str | Path, image: np.ndarray, heat: np.ndarray, caption: str, *, grid: str | None = None) -> None:
    """One image beside its map over it, ``caption`` (file name, probability, label, operating point) above, each
    character the font lacks escaped (:func:`cxr_tune.plotting.drawable`), and ``grid`` (:func:`cam_grid`) below.
    The image is the model's input (squashed to a square), which the map is aligned with."""
    fig, (left, right) = subplots(1, 2, figsize=(7, 3.8))
    left.imshow(image, cmap="gray", vmin=0, vmax=255)
    left.set_title(f"model input ({image.shape[1]}x{image.shape[0]}, aspect ratio not kept)", fontsize=9)
    _overlay(right, image, heat)
    _colourbar(fig, right, "vertical")
    right.set_title("Grad-CAM (what raised the PNEUMONIA score)", fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    fig.suptitle(drawable(caption), fontsize=10)  # it names the image's file: drawn as written, whatever its characters
    fig.text(0.5, 0.02, "\n".join(filter(None, [_resolution(grid), SCALED])), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.09 if grid else 0.05, 1, 1))
    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=100, bbox_inches="tight")  # a long file name in the caption widens it, uncut
    storage.write_bytes_atomic(str(path), drawn.getvalue())  # a stop mid-write leaves the figure whole or absent, never cut


def plot_gallery(path: str | Path, rows: dict[str, Sequence[tuple[np.ndarray, np.ndarray, str]]], *, grid: str | None = None) -> None:
    """A grid of maps over images: one row per ``rows`` key (its title), up to four per row, each
    ``(image, map, caption)`` (captions as :func:`explain_figure`'s), ``grid`` (:func:`cam_grid`) in the title."""
    rows = {title: items for title, items in rows.items() if items}
    columns = max(len(items) for items in rows.values())
    fig = figure(figsize=(2.6 * columns, 2.9 * len(rows) + 0.5))
    cells = fig.add_gridspec(len(rows) + 1, columns, height_ratios=[1] * len(rows) + [0.06])  # a last, slim row: the colourbar
    axes = [[fig.add_subplot(cells[row, column]) for column in range(columns)] for row in range(len(rows))]
    for row, (title, items) in enumerate(rows.items()):
        for column in range(columns):
            ax = axes[row][column]
            ax.axis("off")
            if column < len(items):
                image, heat, caption = items[column]
                _overlay(ax, image, heat)
                ax.set_title(drawable(caption), fontsize=8)
        axes[row][0].text(-0.08, 0.5, title, transform=axes[row][0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    fig.suptitle(" ".join(filter(None, ["Grad-CAM over the model input (aspect ratio not kept).", _resolution(grid), SCALED])), fontsize=9, wrap=True)
    _colourbar(fig, fig.add_subplot(cells[-1, :]), "horizontal")  # one for the gallery: each map is scaled alike, to its own maximum
    save_figure(fig, path, dpi=100)


def _resolution(grid: str | None) -> str:
    """:func:`cam_grid`'s sentence as a figure says it ("" without one): the smooth map is that grid interpolated."""
    return f"{grid}: finer shading is interpolation." if grid else ""


def _overlay(ax: Any, image: np.ndarray, heat: np.ndarray) -> None:
    """The map over the image, scaled to its own maximum: a P=0.1 image's map is as bright as a P=0.99 one's."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    peak = float(heat.max())
    ax.imshow(heat / peak if peak > 0 else heat, cmap=HEAT_CMAP, alpha=0.4, vmin=0, vmax=1)


def _colourbar(fig: Any, ax: Any, orientation: str) -> None:
    """A colourbar of :data:`HEAT_CMAP`, from low to high, unnumbered (a map's values have no unit: each is scaled to its own
    image's maximum, only their order means something): a slim one right of ``ax`` (vertical), or filling ``ax`` (horizontal,
    the gallery's row of its own). Drawn opaque, so that its colours read clearly; the maps lie over their image at 0.4."""
    from matplotlib.cm import ScalarMappable

    where = {"ax": ax, "fraction": 0.046, "pad": 0.03} if orientation == "vertical" else {"cax": ax}
    bar = fig.colorbar(ScalarMappable(cmap=HEAT_CMAP), orientation=orientation, ticks=[], **where)
    bar.set_label(HEAT_LABEL, fontsize=7)
