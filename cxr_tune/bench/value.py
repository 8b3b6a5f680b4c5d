"""Does searching pay? The selected model against not searching at all, on the external sample, with the compute each used.

Three models, each scored on the experiment's external set (on the real data, half A of the official test split:
**selection-set numbers** — it chose the search's model and every threshold here, so all rows are
optimistic alike; AUC is threshold-free and the fairest column):

- **the search**: the exported ``best/`` (search, final fit, ensemble), at its own threshold;
- **the default**: the documented default configuration (:class:`cxr_tune.train.hparams.HParams`'s
  defaults) trained once, its last epoch, threshold by the same rule on the same set;
- **the default given the search's compute**: the default trained with as many seeds as fit in
  the CPU-minutes the search and its final fit used, averaged.

Every run uses the experiment's own split and the search's training machinery (Ray Train, the
same step and precision). Intervals: 95 % bootstrap over images; the difference in AUC to the
search's model is a paired bootstrap (same resampled images for both).
"""

from __future__ import annotations

import math

import pandas as pd

from cxr_tune.bench.common import other_experiment_data, results_folder, write_result
from cxr_tune.bench.external_scoring import export_on_external, score_row, score_table, threshold_by_rule, train_external_scores
from cxr_tune.bench.kept import kept_runs
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import code_span
from cxr_tune.train.hparams import HParams


def run(experiment_dir: str, seeds: int | None, model: str | None = None, out: str | None = None) -> None:
    """``model``: the experiment's exported folder (default ``EXPERIMENT/best``; a committed copy such as ``results/real/best``)."""
    import ray

    from cxr_tune.data.prepared import datasets_by_size
    from cxr_tune.ray_session import ray_session
    from cxr_tune.train.progress import epoch_lines

    experiment = Experiment(experiment_dir)
    export = export_on_external(experiment, model)
    folder = results_folder("value", out, other_experiment_data(experiment))  # after the checks of --model, before any training
    model, meta, hashes = export.model, export.meta, export.hashes
    search_minutes = experiment.compute_minutes()
    options = experiment.options
    # The documented defaults, judged by the search's own criterion and sensitivity floor.
    hp = HParams(criterion=options.select, min_sensitivity=options.min_sensitivity)
    split = experiment.split()
    runs: list[dict] = []
    with (kept_runs("value", {"experiment": experiment.path, "model": model, "hparams": hp.to_dict(), "seeds": seeds}) as kept, ray_session(),
          epoch_lines(sum(not kept.has(_run_name(index)) for index in range(seeds)) * hp.epochs if seeds else None,
                      experiment.deciding_set) as callbacks_for):
        cpus = float(ray.cluster_resources()["CPU"])
        datasets = datasets_by_size(split, [hp.image_size])[hp.image_size]
        budget = seeds
        index = 0
        while True:
            scores, minutes, earlier = train_external_scores(experiment, HParams.from_config({**hp.to_dict(), "seed": index}), datasets, split.class_counts(),
                                                             cpus, kept, _run_name(index), callbacks_for(f"default configuration, seed {index}", hp.epochs))
            runs.append({"seed": index, "cpu_minutes": minutes, "scores": scores})
            print(f"default configuration, seed {index}: {minutes:.1f} CPU-minutes" + (" (trained by an earlier try)" if earlier else ""), flush=True)
            index += 1
            if budget is None:  # as many seeds as fit in the search's compute, estimated from the first run
                budget = max(1, math.floor(search_minutes / runs[0]["cpu_minutes"]))
            if index >= budget:
                break
    labels, searched = export.labels, export.probabilities
    single = runs[0]["scores"].loc[hashes].to_numpy()
    averaged = pd.concat([r["scores"] for r in runs], axis=1).mean(axis=1).loc[hashes].to_numpy()
    rows = [
        score_row("the search (best/: search, final fit, ensemble)", labels, searched, float(meta["threshold"]), search_minutes, {}),
        score_row("the default configuration, one run", labels, single, threshold_by_rule(labels, single, hp), runs[0]["cpu_minutes"], {"search": searched}),
        score_row(f"the default configuration, {len(runs)} seeds averaged" + (" (the search's compute)" if seeds is None else ""), labels, averaged,
                  threshold_by_rule(labels, averaged, hp), sum(r["cpu_minutes"] for r in runs), {"search": searched}),
    ]
    summary = [
        f"Experiment {code_span(experiment.path)}, its exported model {code_span(model)}. External set: {code_span(experiment.external)} ({len(labels)} images); **every number here is a "
        "selection-set number** (that set chose the search's model and every threshold). Default configuration: "
        + ", ".join(f"`{k}={v}`" for k, v in hp.to_dict().items() if k in ("arch", "depth", "filters", "image_size", "epochs", "lr", "batch_size", "augment_strength")),
        "",
        score_table(rows, {"search": "AUC minus the search's [paired 95 % CI]"}),
        "",
        ("The last column is the default's AUC minus the search's on the same images, with a paired 95 % bootstrap interval: an interval "
         "below zero means the search's model ranks these patients measurably better."),
    ]
    write_result("value_of_search", "Does the search pay? The selected model vs the default configuration", summary,
                 {"rows": rows, "search_cpu_minutes": search_minutes, "default_runs": [{k: v for k, v in r.items() if k != "scores"} for r in runs]}, folder)
    kept.remove()


def _run_name(seed: int) -> str:
    return f"default-seed{seed}"
