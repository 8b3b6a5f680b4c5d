"""What every plot of the package shares: its legend sits beside the axes, never on them, and text from outside it
(a file name in a title) is drawn as written (:func:`drawable`).

A legend at a fixed corner (``loc="lower right"``) covered exactly the points a plot is about: the
selected trial that transfers badly sits low and to the right, a specificity operating point sits at
low false positive rate and middling sensitivity. ``loc="best"`` only makes that less likely. Outside
the axes nothing drawn can be under it. Used by the report's plots, the reliability diagram, the
transfer plot and the benchmarks' plots alike. :func:`save_figure` writes them whole.

Every figure is made by :func:`subplots` or :func:`figure`: drawn by Agg, unknown to pyplot, so that the caller's
backend stays as it was (``matplotlib.use("Agg")`` at report's import and in each plot function switched a notebook's
backend for good when it called ``predict.main([..., "--explain", D])``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cxr_tune.formatting import printable

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

GAP = 0.02  # between the axes and its legend, as a share of the axes' width


def figure(**kwargs: Any) -> Figure:
    """A figure drawn by Agg whatever the caller's backend, which it leaves alone; pyplot never holds it, so it is
    freed with its last reference. ``kwargs`` go to :class:`matplotlib.figure.Figure` (e.g. ``figsize``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots(nrows, ncols, figsize=...)`` drawn as :func:`figure` draws: the figure and its axes (one, or an array).

    >>> fig, ax = subplots(figsize=(5, 4)); _ = ax.plot([0, 1], [0, 1], label="a line")
    >>> legend_beside(ax) is not None and bool(fig.get_size_inches()[0] > 5)
    True
    """
    fig = figure(**kwargs)
    return fig, fig.subplots(nrows, ncols)


def legend_beside(ax: Axes, **kwargs: Any) -> Legend | None:
    """The axes' legend to its right, the figure widened by the legend's width (the axes keep their size
    once the figure is laid out); only entries that draw something (an empty scatter listed "trial (best
    epoch)" where there was none). ``kwargs`` go to ``ax.legend`` (e.g. ``fontsize``). None without entries.
    """
    shown = [(handle, label) for handle, label in zip(*ax.get_legend_handles_labels(), strict=True) if _draws(handle)]
    if not shown:
        return None
    handles, labels = zip(*shown, strict=True)
    legend = ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1 + GAP, 1.0), borderaxespad=0.0, **kwargs)
    ax.set_anchor("W")  # a square ROC or reliability plot keeps to the left of its space, next to its legend
    fig = ax.figure
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + legend.get_window_extent().width / fig.dpi + GAP * width, height)
    return legend


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Lay ``fig`` (:func:`figure`'s) out and write it to ``path`` with everything it draws. The saved image grows to hold a
    title or label wider than the figure (``bbox_inches="tight"``): confusion.png, 4.5 inches wide, cut its title to
    "external validation (selection set) at threshold 0.", the threshold it exists to show lost at both ends."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")


def readable_ticks(ax: Axes, most: int = 5) -> None:
    """At most ``most`` ticks on each axis, each value written out in full: an axis of scores packed in a narrow range
    (carved AUC 0.977-0.996 over a 4-inch panel) got nine ticks whose labels ran together ("0.97750.98000.9825"), and
    a still narrower one an offset ("1e-5+9.752e-1") no reader decodes."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=most - 1, min_n_ticks=2))
        axis.set_major_formatter(ScalarFormatter(useOffset=False))


def _draws(artist: Any) -> bool:
    """Whether a legend handle shows on the plot: a scatter with points, a line with two vertices or a marker
    (a step of one result is invisible); anything else: yes."""
    if hasattr(artist, "get_offsets") and not hasattr(artist, "get_xdata"):
        return len(artist.get_offsets()) > 0
    if hasattr(artist, "get_xdata"):
        return len(artist.get_xdata()) > 1 or (len(artist.get_xdata()) == 1 and artist.get_marker() not in (None, "None", "", " "))
    return True


def drawable(text: str) -> str:
    r"""``text`` (a file name, say) as a figure can draw it: each character the figure's font has no glyph for (CJK in
    matplotlib's default DejaVu Sans), or that is not printable, escaped as the console escapes what it cannot show
    (Python's ``backslashreplace``: :func:`cxr_tune.errors.run_cli`), where matplotlib drew an empty box and warned
    "Glyph ... missing from font(s)"; and each ``$`` as ``\$``, so that a name is never taken for mathtext (one with
    ``$\x$`` in it stopped the figure's savefig). Line breaks stay: captions are several lines. No font is added.

    >>> print(drawable("PNEUMONIA/肺炎_1.jpeg"), drawable("tête\tà $5"))
    PNEUMONIA/\u80ba\u708e_1.jpeg tête\tà \$5
    """
    covered = _glyphs()
    return "".join(char if char == "\n" or (char.isprintable() and ord(char) in covered)
                   else printable(char) if not char.isprintable()  # a tab, an escape code: as the console shows them
                   else char.encode("ascii", "backslashreplace").decode("ascii") for char in text).replace("$", r"\$")


def _glyphs() -> frozenset[int]:
    """The code points the fonts of figure text (``rcParams``, as matplotlib picks a file for each family) have glyphs for."""
    from matplotlib.font_manager import FontProperties, findfont

    return _code_points(tuple(findfont(FontProperties(family=[family])) for family in FontProperties().get_family()))


@lru_cache(maxsize=4)
def _code_points(fonts: tuple[str, ...]) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(point for font in fonts for point in FT2Font(font, face_index=getattr(font, "face_index", 0)).get_charmap())
