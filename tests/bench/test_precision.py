"""bench precision: which configurations it trains."""

from __future__ import annotations

from cxr_tune.bench.precision import configurations


def test_a_params_file_with_a_top_level_hparams_key_reads_as_train_reads_it(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("hparams:\n  depth: 3\n  image_size: 64\n")
    assert [(hp.depth, hp.image_size) for hp in configurations(str(params), [])] == [(3, 64)]
    assert [(hp.depth, hp.image_size) for hp in configurations(str(params), [32, 48])] == [(3, 32), (3, 48)]
