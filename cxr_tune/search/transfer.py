"""Does carved validation predict the external set? Per trial, side by side, ranked and plotted.

Used by ``report.md`` and by ``python -m cxr_tune.bench transfer``: both show every trial's best
epoch on validation carved from train and on the external set, the rank correlation between the
two, and which trials the selection counts as tied with the best.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cxr_tune.formatting import fmt
from cxr_tune.plotting import legend_beside, readable_ticks, save_figure, subplots
from cxr_tune.selection import selection_label

PAIRS = (("balanced_accuracy", "balanced accuracy"), ("auc", "AUC"))
#: a rate's threshold in an axis label: each set's rates are at a threshold chosen on that set itself (AUC needs none)
AT_OWN = {"balanced_accuracy": "\n(at a threshold chosen on this set)"}
FEW_TRIALS = 10  # below this, say that a rank correlation says little
TABLE_COLUMNS = ["trial_id", "rank", "tied", "val_balanced_accuracy", "ext_balanced_accuracy", "ext_objective_low", "ext_objective_high",
                 "val_auc", "ext_auc", "val_loss", "ext_loss", "epochs", "best_epoch"]  # best_epoch: the one the metrics are from
WHOLE = ["rank", "epochs", "best_epoch"]  # counts, read as whole numbers even where a failed trial's blank made the column float


def has_external(table: pd.DataFrame) -> bool:
    return "ext_auc" in table and table["ext_auc"].notna().any()


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """One row per trial that reported, in selection order: carved and external metrics next to each other, and the
    epoch they come from (``best_epoch``) beside the epochs the trial ran."""
    done = table.dropna(subset=["val_auc"])
    if "rank" in done:
        done = done.sort_values("rank")
    done = done.astype({c: "Int64" for c in WHOLE if c in done})
    return done[[c for c in TABLE_COLUMNS if c in done]].reset_index(drop=True)


def rank_correlations(table: pd.DataFrame) -> dict[str, float]:
    """Spearman correlation between carved and external values of each metric over trials (NaN if < 3 trials)."""
    from scipy.stats import spearmanr

    out = {}
    for metric, _ in PAIRS:
        pair = table[[f"val_{metric}", f"ext_{metric}"]].dropna()
        if len(pair) < 3 or pair.nunique().min() < 2:
            out[metric] = math.nan
            continue
        out[metric] = float(spearmanr(pair.iloc[:, 0], pair.iloc[:, 1]).statistic)
    return out


def plot_transfer(path: Path, table: pd.DataFrame, deciding: str, title: str = "Carved validation vs external set") -> str | None:
    """Scatter of carved vs external balanced accuracy and AUC, one point per trial; selected and tied trials marked; the
    ``deciding`` set's axes (``external`` or ``carved``) labelled a selection set."""
    done = table.dropna(subset=["val_auc", "ext_auc"])
    if done.empty:
        return "No trial has both carved and external metrics."
    correlations = rank_correlations(done)
    fig, axes = subplots(1, 2, figsize=(10, 4.5))
    tied = done["tied"].fillna(False).astype(bool) if "tied" in done else pd.Series(False, index=done.index)
    selected = done["rank"] == 1 if "rank" in done else pd.Series(False, index=done.index)
    for ax, (metric, label) in zip(axes, PAIRS, strict=True):
        x, y = done[f"val_{metric}"], done[f"ext_{metric}"]
        ax.scatter(x[~tied], y[~tied], s=22, alpha=0.6, label="trial (best epoch)")
        ax.scatter(x[tied & ~selected], y[tied & ~selected], s=30, color="C1", label="tied with the best")
        ax.scatter(x[selected], y[selected], s=140, marker="*", color="C3", label="selected", zorder=5)
        rho = correlations[metric]
        carved, external = selection_label("carved validation", deciding == "carved"), selection_label("external", deciding == "external")
        ax.set(xlabel=f"{carved} {label}{AT_OWN.get(metric, '')}", ylabel=f"{external} {label}{AT_OWN.get(metric, '')}",
               title=f"{label}: Spearman {'n/a' if math.isnan(rho) else f'{rho:.2f}'}")
        readable_ticks(ax)
    legend_beside(axes[-1], fontsize=8)  # the same markers on both panels
    fig.suptitle(title)
    save_figure(fig, path)
    return None


def markdown(table: pd.DataFrame, deciding: str, plot: str | None, plot_note: str | None) -> list[str]:
    """The report section: correlations, the tie set (on the ``deciding`` set) and the side-by-side table."""
    correlations = rank_correlations(table)
    paired = int(table[[f"{prefix}_{metric}" for metric, _ in PAIRS for prefix in ("val", "ext")]].notna().all(axis=1).sum())  # what they are over
    tied = table[table["tied"].fillna(False).astype(bool)]["trial_id"].tolist() if "tied" in table else []
    external_decides = deciding == "external"
    deciding = "the external set" if external_decides else "carved validation (the external set chose no epoch and no trial)"
    lines = [
        ("Every trial's best epoch on validation carved from train (`val_`) and on the external set (`ext_`, a selection set: "
         "its numbers chose things and are optimistic)." if external_decides else
         "Every trial's best epoch on validation carved from train (`val_`, the selection set: its numbers chose things and are "
         "optimistic) and on the external set (`ext_`: the epoch carved validation picked).")
        + " Sensitivity, specificity and balanced accuracy on each set are at a threshold chosen on that set itself, so `ext_` rates "
          "are optimistic even where the external set chose nothing else: at the threshold carved validation chose they can be lower "
          "(AUC needs no threshold).",
        "",
        f"Rank correlation (Spearman) of carved vs external over the {paired} trials scored on both: "
        + ", ".join(f"{label} {fmt(correlations[metric], 2)}" for metric, label in PAIRS) + "."
        + (" With this few trials a correlation says little: one trial moves it a long way." if paired < FEW_TRIALS else ""),
        "",
        f"Tie set ({len(tied)} trial(s) whose 95 % interval on {deciding} overlaps the best one's; the one with the highest AUC there "
        f"is selected): {', '.join(f'`{t}`' for t in tied) or 'none'}.",
        "",
    ]
    lines += [f"_{plot_note}_" if plot_note else f"![Two scatters, one point per trial's best epoch: external against carved validation "
                                                 f"balanced accuracy, and AUC; the tied trials and the selected one marked.]({plot})", ""]
    lines += [side_by_side(table).to_markdown(index=False, floatfmt=".4f"), ""]
    return lines
