"""Does a longer final fit help? The export's own runs trained again for other schedule lengths, side by side.

The final fit trains each of the search's best configurations with new seeds for a fixed schedule
(``final_fit_epochs``) and averages their last epochs. With an average of the weights (EMA) in
every run, the schedule's length is the one knob the search never judged: its trials stopped at
``max_epochs``. This retrains every member of an export (same configuration, same seed, the search's
precision option) once per epoch count asked, in one Ray session one after another, and scores each
ensemble on the experiment's external set at a threshold the model's own rule picks there.

The first epoch count is the reference: by default the export's own schedule (then twice it), trained again the
same day, which shows how far a retrain of identical runs moves (training is not bit-reproducible
here) where the export shipped each run's last epoch (final-fit runs); an export of search trials
shipped at their best epoch (``--no-final-fit``, or an ensemble that beat the final fit) differs from
its retrain by the epoch kept as well, and the summary says so (:func:`reference_note`); every later count is compared with it as well as with the committed export, each by a
paired bootstrap of the AUC difference. Every number is a **selection-set number** (the external
set chose the configurations and every threshold; choosing the schedule on it would make it choose
that too). Results: ``final_fit_epochs_<counts>.md`` and ``.json``, so runs of other counts sit side by side; the
``.json`` keeps every run's external scores, image by image in the order of ``external_paths``.

``--vary KEY=VALUE ...`` asks the other question the search could not: the same runs (configurations,
seeds, schedule) with one recipe change the space never offered (say ``mixup=0.2`` or
``convs_per_block=2``), compared with the committed export by the same paired bootstrap; its results
carry the change in their name.
"""

from __future__ import annotations

import pandas as pd

from typing import Any

from cxr_tune.bench.common import check_varied, other_experiment_data, results_folder, write_result
from cxr_tune.bench.external_scoring import export_on_external, score_row, score_table, threshold_by_rule, train_external_scores
from cxr_tune.bench.kept import kept_runs
from cxr_tune.cliargs import assignments_text
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import code_span
from cxr_tune.train.hparams import HParams


def plan_runs(members: list[dict], epochs: list[int], changes: dict[str, Any] | None = None) -> list[dict]:
    """One run per (epoch count, member): the member's hyperparameters and seed with ``changes``, the
    count's schedule. A change no configuration can take is refused here, before anything trains."""
    runs = [{"epochs": count, "member": m["trial_id"], "hparams": {**m["hparams"], **(changes or {}), "epochs": count}}
            for count in epochs for m in members]
    for spec in runs:
        check_varied(spec["hparams"])
    return runs


def reference_note(members: list[dict], reference: int) -> str:
    """What the first count's row measures, in words: the members' own schedule trained again, last epoch kept, is a
    retrain of identical runs only where the export shipped their last epoch; a member shipped at an earlier (best)
    epoch of its trial differs by that epoch too. Empty when the first count is not the members' schedule."""
    own = int(members[0]["hparams"]["epochs"])
    if reference != own:
        return ""
    shipped = [int(m["epoch"]) for m in members if m.get("epoch") is not None]
    if all(e >= own for e in shipped):
        return " (the export's own schedule trained again: how far a retrain of identical runs moves)"
    kept = sorted(set(shipped))
    return (f" (the members' own {own}-epoch schedule trained again; but the export shipped {'its member' if len(members) == 1 else 'its members'} "
            f"at the best epoch of {'its' if len(members) == 1 else 'their'} trial ({'epoch' if len(kept) == 1 else 'epochs'} "
            f"{', '.join(map(str, kept))} of {own}), so the difference from the committed is a retrain's noise and another epoch together)")


def run(experiment_dir: str, epochs: list[int] | None, model: str | None = None, changes: dict[str, Any] | None = None, out: str | None = None) -> None:
    """``epochs``: the counts to train, the first the reference (default: the export's own schedule and twice it);
    ``changes``: hyperparameters set in every member's configuration (none: the export's runs as they were)."""
    import ray
    from sklearn.metrics import roc_auc_score

    from cxr_tune.data.prepared import datasets_by_size
    from cxr_tune.ray_session import ray_session
    from cxr_tune.train.progress import epoch_lines

    experiment = Experiment(experiment_dir)
    export = export_on_external(experiment, model)
    folder = results_folder("epochs", out, other_experiment_data(experiment))  # after the checks of --model, before any training
    members = export.meta.get("members") or [{"trial_id": export.meta.get("trial_id"), "epoch": export.meta.get("epoch"), "hparams": export.meta["hparams"]}]
    own = int(members[0]["hparams"]["epochs"])
    epochs = epochs or [own, 2 * own]
    changes = changes or {}
    runs = plan_runs(members, epochs, changes)
    split = experiment.split()
    sizes = sorted({int(r["hparams"]["image_size"]) for r in runs})
    changed = f" with {assignments_text(changes)}" if changes else ""
    print(f"{len(runs)} run(s): {len(members)} member(s) of '{export.model}'{changed} x {len(epochs)} schedule(s) ({', '.join(map(str, epochs))} epochs)",
          flush=True)
    names = [f"run{index}-{spec['member']}-{spec['epochs']}ep" for index, spec in enumerate(runs)]
    with kept_runs("epochs", {"experiment": experiment.path, "model": export.model, "runs": runs}) as kept:
        with ray_session():
            cpus = float(ray.cluster_resources()["CPU"])
            datasets = datasets_by_size(split, sizes)
            with epoch_lines(sum(r["epochs"] for r, name in zip(runs, names) if not kept.has(name)), experiment.deciding_set) as callbacks_for:
                for index, (spec, name) in enumerate(zip(runs, names)):
                    hp = HParams.from_config(spec["hparams"])
                    spec["scores"], spec["cpu_minutes"], earlier = train_external_scores(
                        experiment, hp, datasets[hp.image_size], split.class_counts(), cpus, kept, name,
                        callbacks_for(f"[{index + 1}/{len(runs)}] {spec['member']}", spec["epochs"]))
                    print(f"[{index + 1}/{len(runs)}] {spec['member']}, {spec['epochs']} epochs: {spec['cpu_minutes']:.1f} CPU-minutes"
                          + (" (trained by an earlier try)" if earlier else ""), flush=True)
    labels, committed = export.labels, export.probabilities
    rule = HParams.from_config(members[0]["hparams"])  # the export's threshold rule, as its runs recorded it
    ensembles = {count: pd.concat([r["scores"] for r in runs if r["epochs"] == count], axis=1).mean(axis=1).loc[export.hashes].to_numpy()
                 for count in epochs}
    rows = [score_row(f"{code_span(export.model, in_table=True)} as committed", labels, committed, float(export.meta["threshold"]), None, {})]
    for count, scores in ensembles.items():
        group = [r for r in runs if r["epochs"] == count]
        references = {"committed": committed, **({"control": ensembles[epochs[0]]} if count != epochs[0] else {})}
        row = score_row(f"{len(group)} runs of {count} epochs{changed}, averaged", labels, scores, threshold_by_rule(labels, scores, rule),
                        sum(r["cpu_minutes"] for r in group), references)
        row["epochs"], row["members_auc"] = count, [float(roc_auc_score(labels, r["scores"].loc[export.hashes])) for r in group]
        rows.append(row)
    summary = [
        f"Experiment {code_span(experiment.path)}, its exported model {code_span(export.model)} ({len(members)} member(s)). External set: {code_span(experiment.external)} "
        f"({len(labels)} images); **every number here is a selection-set number** (it chose the configurations and every threshold). "
        f"Each member retrained with its own configuration and seed{changed} for {', '.join(map(str, epochs))} epochs, last epoch kept, one run "
        "after another" + (f"; the last column compares with the {epochs[0]}-epoch ensemble" if len(epochs) > 1 else "")
        + ("" if changes else reference_note(members, epochs[0])) + ".",
        "",
        score_table(rows, {"committed": "AUC minus the committed [paired 95 % CI]",
                           **({"control": f"AUC minus {epochs[0]} epochs retrained [paired 95 % CI]"} if len(epochs) > 1 else {})}),
        "",
        "AUC differences are paired 95 % bootstrap intervals over the same resampled images; an interval that spans zero is no "
        "measured difference. Members alone: each retrained run's own AUC on the same images.",
    ]
    name = "final_fit_epochs_" + "_".join(map(str, epochs)) + "".join(f"_{key}-{value}" for key, value in changes.items())
    title = (f"Final fit with {assignments_text(changes)}: the export's runs retrained with that change" if changes
             else "Final-fit schedule length: the export's runs retrained for other epoch counts")
    # Each run's scores in the export's image order: later ensembles (this change with the export's own runs, say) are
    # then computed from the committed files, not retrained.
    stored = [{**{k: v for k, v in r.items() if k != "scores"}, "external_scores": r["scores"].loc[export.hashes].round(6).tolist()} for r in runs]
    write_result(name, title, summary, {"changes": changes, "rows": rows, "external_paths": export.paths, "runs": stored}, folder)
    kept.remove()
