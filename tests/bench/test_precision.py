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
