"""bench precision: which configurations it trains."""

from __future__ import annotations

from cxr_tune.bench.precision import configurations


def test_a_params_file_with_a_top_level_hparams_key_reads_as_train_reads_it(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("hparams:\n  depth: 3\n  image_size: 64\n")
    assert [(hp.depth, hp.image_size) for hp in configurations(str(params), [])] == [(3, 64)]
    assert [(hp.depth, hp.image_size) for hp in configurations(str(params), [32, 48])] == [(3, 32), (3, 48)]


def test_the_summary_names_the_data_and_external_set_it_scored_on():
    """It called the external set "half A of the official test split" whatever --data was."""
    import pandas as pd

    from cxr_tune.bench.common import data_named
    from cxr_tune.bench.precision import summary

    frame = pd.DataFrame([{"image_size": 32, "seed": s, "precision": p, "img_per_s": 10.0, "ext_auc": 0.6, "ext_balanced_accuracy": 0.5,
                           "val_auc": 0.7} for s in range(2) for p in ("fp32", "bf16")])
    text = "\n".join(summary(frame, 1, data_named("SYNTHETIC chest X-rays (generated, not real patients) at /d/syn", "/d/site")))
    assert text.startswith("Data: SYNTHETIC chest X-rays (generated, not real patients) at /d/syn; external set: `/d/site`. Each run:")
    assert "half A" not in text and "official test split" not in text


def test_the_record_holds_the_configurations_trained_not_the_last_sizes_own_schedule(tmp_path):
    """precision_quality.json's hparams was the last size's base configuration with its own epochs (12 at 128 px for runs of
    4 epochs at 64 and 128 px)."""
    from cxr_tune.bench.precision import configuration_line, trained

    params = tmp_path / "params.yaml"
    params.write_text("depth: 3\nimage_size: 64\nepochs: 12\n")
    configs = trained(configurations(str(params), [32, 48]), 1)
    assert [(c["image_size"], c["epochs"], c["depth"]) for c in configs] == [(32, 1, 3), (48, 1, 3)]
    assert all("seed" not in c for c in configs)  # each row's seed is its run's
    line = configuration_line(str(params), configs, 2)
    assert '"depth": 3' in line and "at 32 and 48 px, 1 epochs; seeds 0-1" in line and "image_size" not in line
