"""Does a longer final fit help? The export's own runs trained again for other schedule lengths, side by side.

The final fit trains each of the search's best configurations with new seeds for a fixed schedule
(``final_fit_epochs``) and averages their last epochs. With an average of the weights (EMA) in
every run, the schedule's length is the one knob the search never judged: its trials stopped at
``max_epochs``. This retrains every member of an export (same configuration, same seed, the search's
precision option) once per epoch count asked, in one Ray session one after another, and scores each
ensemble on the experiment's external set at a threshold the model's own rule picks there.

The first epoch count is the reference: by default the export's own schedule (then twice it), trained again the
same day, which shows how far a retrain of identical runs moves (training is not bit-reproducible
here); every later count is compared with it as well as with the committed export, each by a
paired bootstrap of the AUC difference. Every number is a **selection-set number** (the external
set chose the configurations and every threshold; choosing the schedule on it would make it choose
that too). Results: ``final_fit_epochs_<counts>.md`` and ``.json``, so runs of other counts sit side by side.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pandas as pd

from cxr_tune.bench.common import write_result
from cxr_tune.bench.external_scoring import export_on_external, score_row, threshold_by_rule
from cxr_tune.experiment import Experiment
from cxr_tune.train.checkpoints import load_predictions
from cxr_tune.train.hparams import HParams


def plan_runs(members: list[dict], epochs: list[int]) -> list[dict]:
    """One run per (epoch count, member): the member's hyperparameters and seed, the count's schedule."""
    return [{"epochs": count, "member": m["trial_id"], "hparams": {**m["hparams"], "epochs": count}}
            for count in epochs for m in members]


def run(experiment_dir: str, epochs: list[int] | None, model: str | None = None) -> None:
    """``epochs``: the counts to train, the first the reference (default: the export's own schedule and twice it)."""
    import ray

    from cxr_tune.data.prepared import datasets_by_size
    from cxr_tune.ray_session import ray_session
    from cxr_tune.search.runner import run_options
    from cxr_tune.train.trainer import Resources, make_trainer

    experiment = Experiment(experiment_dir)
    export = export_on_external(experiment, model)
    members = export.meta.get("members") or [{"trial_id": export.meta.get("trial_id"), "hparams": export.meta["hparams"]}]
    own = int(members[0]["hparams"]["epochs"])
    epochs = epochs or [own, 2 * own]
    runs = plan_runs(members, epochs)
    split = experiment.split()
    sizes = sorted({int(r["hparams"]["image_size"]) for r in runs})
    print(f"{len(runs)} run(s): {len(members)} member(s) of '{export.model}' x {len(epochs)} schedule(s) ({', '.join(map(str, epochs))} epochs)", flush=True)
    with ray_session(), tempfile.TemporaryDirectory() as scratch:
        cpus = float(ray.cluster_resources()["CPU"])
        datasets = datasets_by_size(split, sizes)
        for index, spec in enumerate(runs):
            hp = HParams.from_config(spec["hparams"])
            started = time.time()
            result = make_trainer(hp, datasets[hp.image_size], split.class_counts(), resources=Resources(1, cpus), storage_path=scratch,
                                  name=f"run{index}-{spec['member']}-{spec['epochs']}ep", deciding=experiment.deciding_set,
                                  run=run_options(experiment.options), loop_options={"keep": "last"}).fit()
            if result.error:
                raise result.error
            with result.checkpoint.as_directory() as folder:
                spec["scores"] = load_predictions(folder, "ext").set_index("content_hash")["score"]
            spec["cpu_minutes"] = (time.time() - started) / 60 * cpus
            print(f"[{index + 1}/{len(runs)}] {spec['member']}, {spec['epochs']} epochs: {spec['cpu_minutes']:.1f} CPU-minutes", flush=True)
    labels, committed = export.labels, export.probabilities
    rule = HParams.from_config(members[0]["hparams"])  # the export's threshold rule, as its runs recorded it
    rows = [score_row(f"`{export.model}` as committed", labels, committed, float(export.meta["threshold"]), None, {})]
    control: np.ndarray | None = None
    for count in epochs:
        group = [r for r in runs if r["epochs"] == count]
        scores = pd.concat([r["scores"] for r in group], axis=1).mean(axis=1).loc[export.hashes].to_numpy()
        references = {"committed": committed} if control is None else {"committed": committed, "control": control}
        row = score_row(f"{len(group)} runs of {count} epochs, averaged", labels, scores, threshold_by_rule(labels, scores, rule),
                        sum(r["cpu_minutes"] for r in group), references)
        row["epochs"], row["members_auc"] = count, [_auc(labels, r["scores"].loc[export.hashes].to_numpy()) for r in group]
        rows.append(row)
        control = scores if control is None else control
    summary = [
        f"Experiment `{experiment.path}`, its exported model `{export.model}` ({len(members)} member(s)). External set: `{experiment.external}` "
        f"({len(labels)} images); **every number here is a selection-set number** (it chose the configurations and every threshold). "
        f"Each member retrained with its own configuration and seed for {', '.join(map(str, epochs))} epochs, last epoch kept, one run "
        f"after another; the last column compares with the {epochs[0]}-epoch ensemble"
        + (" (the export's own schedule trained again: how far a retrain of identical runs moves)." if epochs[0] == own else "."),
        "",
        _table(rows, epochs[0]),
        "",
        "AUC differences are paired 95 % bootstrap intervals over the same resampled images; an interval that spans zero is no "
        "measured difference. Members alone: each retrained run's own AUC on the same images.",
    ]
    write_result("final_fit_epochs_" + "_".join(map(str, epochs)), "Final-fit schedule length: the export's runs retrained for other epoch counts", summary,
                 {"rows": rows, "runs": [{k: v for k, v in r.items() if k != "scores"} for r in runs]})


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _table(rows: list[dict], control: int) -> str:
    from cxr_tune.formatting import fmt, interval

    def diff(row: dict, key: str) -> str:
        return fmt(row[f"auc - {key}"]) + interval(row[f"{key}_ci"]) if f"{key}_ci" in row else ""

    return pd.DataFrame([{
        "model": row["model"], "CPU-minutes": f"{row['cpu_minutes']:.1f}" if row["cpu_minutes"] is not None else "",
        "AUC [95 % CI]": fmt(row["auc"]) + interval(row["auc_ci"]),
        "members alone (AUC)": ", ".join(fmt(a) for a in row.get("members_auc", [])),
        "balanced accuracy [95 % CI]": fmt(row["balanced_accuracy"]) + interval(row["ba_ci"]),
        "sensitivity": fmt(row["sensitivity"]), "specificity": fmt(row["specificity"]), "threshold": fmt(row["threshold"], 3),
        "AUC minus the committed [paired 95 % CI]": diff(row, "committed"),
        f"AUC minus {control} epochs retrained [paired 95 % CI]": diff(row, "control"),
    } for row in rows]).to_markdown(index=False, disable_numparse=True)

