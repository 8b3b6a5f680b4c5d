"""What transfers: carved validation vs the external set for a finished search, and what each rule would ship.

For every trial: its best epoch on carved validation and on the external set side by side, their
rank correlation, the tie set and a plot (the report's own section). Then the external metrics of
the model each selection rule would have picked:

- *carved only*: the best trial by carved validation, at its carved-validation threshold;
- *carved + adapt*: that trial with its BatchNorm statistics re-estimated on the external images
  (AdaBN, labels unused), same threshold;
- *+ mixture threshold* / *+ EM prior shift*: the same two with the threshold the site's
  unlabelled scores give (``adapt --threshold mixture``: where a two-group mixture of the logits
  crosses; ``--threshold prior-shift``: the share called PNEUMONIA matches EM's prevalence estimate);
- *external*: the best trial by the external set, at its external threshold (a selection-set
  number: the same images chose it).

Only a search run with ``--select-on carved`` can say what carved selection ships: there the
external set was scored every epoch but never chose anything. In a search steered by the
external set, every trial's best epoch and kept checkpoint, which trials ASHA let run and what TPE
sampled were chosen on it, so a "carved only" pick from it is not carved-only; such an experiment
is refused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_tune.bench.common import other_experiment_data, results_folder, write_result
from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import code_span

COLUMNS = ["auc", "sensitivity", "specificity", "balanced_accuracy"]


def rule_rows(experiment: Experiment, table: pd.DataFrame) -> list[dict[str, Any]]:
    """External metrics of the model each rule would select (see the module docstring)."""
    from cxr_tune.adapt import adapt_batchnorm, site_threshold
    from cxr_tune.data.cache import load_images
    from cxr_tune.modelfile import members_from_states, serving_model, torch_scores
    from cxr_tune.selection import select_best
    from cxr_tune.train.checkpoints import load_predictions, load_state

    splits = experiment.splits
    carved, external = select_best(table, "carved"), select_best(table, "external")
    rows = []
    checkpoint = experiment.checkpoint_for(carved)
    stored = load_predictions(checkpoint, "ext")
    threshold = float(carved["val_threshold"])
    rows.append(_row("carved only", carved, stored["label"].to_numpy(), stored["score"].to_numpy(), threshold,
                     "threshold chosen on carved validation"))
    members = members_from_states([load_state(checkpoint)])
    images, kept = load_images(splits[splits["role"] == "external"], members.image_size, experiment.cache_dir, splits)
    adapted = torch_scores(serving_model(adapt_batchnorm(members, images)), images)
    rows.append(_row("carved + adapt (AdaBN on the external images, unlabelled)", carved, kept["label"].to_numpy(), adapted, threshold,
                     "threshold chosen on carved validation, kept"))
    meta = {"threshold": threshold, "train_class_counts": experiment.info["class_counts_train"], "hparams": members.hparams[0].to_dict()}
    for rule, how in (("mixture", "mixture threshold"), ("prior-shift", "EM prior shift")):
        for name, labels, scores in (("carved", stored["label"].to_numpy(), stored["score"].to_numpy()),
                                     ("carved + adapt", kept["label"].to_numpy(), adapted)):
            moved, details = site_threshold(rule, scores, meta)
            rows.append(_row(f"{name} + {how}", carved, labels, scores, moved,
                             details["summary"] if details else "no two groups in the scores: threshold kept"))
    stored = load_predictions(experiment.checkpoint_for(external), "ext")
    rows.append(_row("external (selection set: optimistic; the same trials ranked on the external set)", external, stored["label"].to_numpy(), stored["score"].to_numpy(),
                     float(external["ext_threshold"]), "threshold chosen on the external set itself"))
    return rows


def _row(rule: str, trial: pd.Series, labels: np.ndarray, scores: np.ndarray, threshold: float, how: str) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from cxr_tune.train.metrics import rates_at

    rates = rates_at(labels, scores, threshold)
    return {"rule": rule, "trial": trial["trial_id"], "threshold": threshold, "threshold from": how,
            "auc": float(roc_auc_score(labels, scores)), **{k: rates[k] for k in COLUMNS[1:]}}


def run(experiment_dir: str, out: str | None = None) -> Path:
    """Write ``transfer_<experiment name>.md`` / ``.json`` / ``.png`` into ``out`` (default: results/benchmarks, for a search of the
    default real data only); returns the ``.md``."""
    from cxr_tune.search import transfer

    experiment = Experiment(experiment_dir)
    if experiment.deciding_set != "carved":
        raise UserError(f"'{experiment.path}' was selected on the external set, so its epochs, checkpoints and trials already saw it and "
                        "a carved-only pick from it would not be carved-only; run a search with --select-on carved (and --val-data) "
                        "and pass that experiment")
    folder = results_folder("transfer", out, other_experiment_data(experiment))
    table = experiment.trials()
    if not transfer.has_external(table):
        raise UserError(f"'{experiment.path}' has no external validation metrics; run the search with --val-data (or a data folder with a val/ split)")
    name = experiment.name
    rules = pd.DataFrame(rule_rows(experiment, table))
    with tempfile.TemporaryDirectory() as scratch:
        png = Path(scratch, "plot.png")
        note = transfer.plot_transfer(png, table, "carved", f"{name}: carved validation vs external set")
        plot_name = f"transfer_{name}.png"
        if note is None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / plot_name).write_bytes(png.read_bytes())
    summary = [
        f"Experiment {code_span(experiment.path)} (searched with --select-on carved: the external set chose nothing). Carved validation: carved from the training folder by patient. External: the experiment's "
        "external validation set; **every number on it is a selection-set number** (it is the set these rules choose on or compare with).",
        "",
        "## What each rule would ship, measured on the external set",
        "",
        rules.to_markdown(index=False, floatfmt=".4f"),
        "",
        "## Every trial, carved vs external",
        "",
        *transfer.markdown(table, experiment.deciding_set, plot_name, note),
    ]
    return write_result(f"transfer_{name}", f"What transfers: {name}", summary, {"rules": rules.to_dict(orient="records"),
                        "rank_correlations": transfer.rank_correlations(table)}, folder=folder)
