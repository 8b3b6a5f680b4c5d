"""Hyperparameters: one typed place, defaults, and clear errors for bad configs."""

from __future__ import annotations

import pytest

from cxr_tune.errors import UserError
from cxr_tune.train.hparams import HParams, HParamsError, read_params


def test_defaults_are_valid_and_round_trip():
    hp = HParams()
    assert HParams.from_config(hp.to_dict()) == hp


def test_per_block_widths_follow_the_sampled_depth():
    hp = HParams.from_config({"depth": 3, "filters_0": 8, "filters_1": 16, "filters_2": 24})
    assert hp.widths == (8, 16, 24)
    assert HParams(depth=3, filters=8, width_growth=2.0).widths == (8, 16, 32)


def test_a_block_width_beyond_depth_is_refused_naming_the_widths_depth_takes(tmp_path):
    """filters_5 with depth 2 was dropped without a word, and filters_9 alone (depth 4 by default) was said to leave
    filters_0 missing; a search draws filters_0..filters_{depth-1} only, so nothing it builds is refused."""
    with pytest.raises(UserError, match=r"^--set: filters_5 is beyond depth=2 \(filters_0..filters_1\)$"):
        read_params(None, [("depth", 2), ("filters_0", 8), ("filters_1", 16), ("filters_5", 64)])
    with pytest.raises(UserError, match=r"^--set: filters_9 is beyond depth=4 \(filters_0..filters_3\)$"):
        read_params(None, [("filters_9", 8)])
    params = tmp_path / "p.yaml"
    params.write_text("depth: 1\nfilters_0: 8\nfilters_1: 16\n")
    with pytest.raises(UserError, match=r"p\.yaml: filters_1 is beyond depth=1 \(filters_0\)$"):
        read_params(str(params), [])


@pytest.mark.parametrize(("config", "message"), [
    ({"bogus": 1}, "unknown hyperparameter 'bogus'"),
    ({"dropout": 1.5}, "dropout=1.5 is out of range"),
    ({"depth": 0}, "depth=0 is out of range"),
    ({"lr": "fast"}, "lr='fast' has the wrong type"),
    ({"depth": 2.5}, "wrong type"),
    ({"optimizer": "adam9"}, "optimizer='adam9' is not one of"),
    ({"class_weighting": "sometimes"}, "class_weighting='sometimes'"),
    ({"class_weighting": -1.0}, "must be a positive number"),
    ({"kernel_size": 4}, "must be odd"),
    ({"depth": 3, "filters_0": 8}, "filters_1 is missing"),
    ({"hflip": "yes"}, "wrong type"),
])
def test_bad_configs_are_rejected_with_the_reason(config, message):
    with pytest.raises(HParamsError, match=message):
        HParams.from_config(config)


@pytest.mark.parametrize(("weighting", "expected"), [("none", 1.0), ("balanced", 0.25), (3.0, 3.0)])
def test_class_weighting_sets_pos_weight(weighting, expected):
    assert HParams(class_weighting=weighting).pos_weight(n_negative=100, n_positive=400) == expected


def test_a_params_file_may_be_flat_or_under_an_hparams_key_and_set_overrides_it(tmp_path):
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("depth: 3\nimage_size: 64\n")
    nested.write_text("hparams:\n  depth: 3\n  image_size: 64\n")
    assert read_params(str(flat), []) == read_params(str(nested), []) == HParams(depth=3, image_size=64)
    assert read_params(str(nested), [("depth", 2)]).depth == 2
    with pytest.raises(UserError, match="^--set: unknown hyperparameter 'bogus'"):
        read_params(str(nested), [("bogus", 1)])


def test_image_size_takes_the_range_a_data_folder_is_checked_against():
    from cxr_tune.data.input_checks import MAX_SIZE, MIN_SIZE

    assert HParams(image_size=MIN_SIZE).image_size == MIN_SIZE and HParams(image_size=MAX_SIZE).image_size == MAX_SIZE
    for size in (MIN_SIZE - 1, MAX_SIZE + 1):
        with pytest.raises(HParamsError, match="image_size"):
            HParams(image_size=size)


@pytest.mark.parametrize("override", [
    ("optimizer", "x" * 10_000_000), ("depth", "x" * 10_000_000), ("x" * 10_000_000, 1),
    ("class_weighting", "x" * 10_000_000), ("lr", ["\n" * 10_000_000]),
])
def test_an_error_shows_a_huge_value_cut_to_one_short_line(override):
    with pytest.raises(UserError) as error:
        read_params(None, [override])
    message = str(error.value)
    assert len(message) < 1000 and "\n" not in message and "characters)" in message


def test_a_block_width_key_with_a_huge_index_is_an_unknown_key_not_a_crash():
    with pytest.raises(UserError, match="unknown hyperparameter 'filters_9999"):
        read_params(None, [("filters_" + "9" * 5000, 3)])


def test_batch_size_one_loads_and_is_refused_for_training_only_where_a_batchnorm_map_is_1x1():
    """A model or checkpoint saved with batch_size 1 loads (a minimum of 2 refused their export, adapt and --explain);
    training on one image a batch is refused only for torchvision's networks below 64 px, whose last BatchNorm sees a 1x1
    map (it crashed inside Ray); the VGG-style network trains on it."""
    from cxr_tune.train.model import training_problem

    assert HParams.from_config({"batch_size": 1}).batch_size == 1
    assert training_problem(HParams(batch_size=1, image_size=16)) is None
    assert training_problem(HParams(arch="resnet18", image_size=64, batch_size=1)) is None
    assert training_problem(HParams(arch="resnet18", image_size=32, batch_size=2)) is None
    assert training_problem(HParams(arch="densenet121", image_size=63, batch_size=1)) == (
        "arch densenet121 at image_size 63 ends in a 1x1 map, where BatchNorm cannot train on a batch of one image; use batch_size >= 2 "
        "or image_size >= 64")


def test_an_error_names_the_source_that_gave_the_value_a_params_file_or_set(tmp_path):
    """A bad --set value was blamed on the params file beside it ("sci.yaml: epochs=100000 is out of range")."""
    params = tmp_path / "sci.yaml"
    params.write_text("lr: 1.0e-3\ndepth: 3\n")
    with pytest.raises(UserError, match=r"^--set: epochs=100000 is out of range \[1, 1000\]$"):
        read_params(str(params), [("epochs", 100000)])
    with pytest.raises(UserError, match=r"sci\.yaml with --set: filters_1 is missing for depth=3$"):
        read_params(str(params), [("filters_0", 8)])  # depth from the file, a width from --set
    with pytest.raises(UserError, match=r"^--set: block_filters=\[8, 8, 0\] must all be >= 1$"):
        read_params(str(params), [("filters_0", 8), ("filters_1", 8), ("filters_2", 0)])  # the widths --set gave
    params.write_text("lr: 100.0\n")
    with pytest.raises(UserError, match=r"sci\.yaml: lr=100\.0 is out of range"):
        read_params(str(params), [("epochs", 5)])
    assert read_params(str(params), [("lr", 0.01)]).lr == 0.01  # --set replaces the file's value


def test_a_warm_up_as_long_as_the_run_it_was_given_for_is_refused(tmp_path):
    """--set warmup_epochs=50 --set epochs=2 trained a run that was warm-up throughout (the schedule cuts the warm-up to the
    run), its cosine decay never reached, and exited 0. Only a warm-up the user gave is refused: the default one of a
    one-epoch check stays, and a search's trials (a space's warm-up beside --max-epochs) are HParams, which still take it."""
    with pytest.raises(UserError, match=r"^--set: warmup_epochs=50 is not below epochs=2: "):
        read_params(None, [("warmup_epochs", 50), ("epochs", 2)])
    params = tmp_path / "p.yaml"
    params.write_text("warmup_epochs: 3\n")
    with pytest.raises(UserError, match=r"p\.yaml with --set: warmup_epochs=3 is not below epochs=3: "):
        read_params(str(params), [("epochs", 3)])
    assert read_params(str(params), [("epochs", 4)]).warmup_epochs == 3
    assert read_params(None, [("epochs", 1)]).warmup_epochs == 1
    one = tmp_path / "model.json"  # an export records warmup_epochs 1: a one-epoch check of its configuration still runs
    one.write_text('{"hparams": {"warmup_epochs": 1, "epochs": 32}}')
    assert read_params(str(one), [("epochs", 1)]).epochs == 1
    assert HParams.from_config({"warmup_epochs": 50, "epochs": 2}).warmup_epochs == 50
    assert read_params(str(params), [("epochs", 3)], schedule=False).epochs == 3  # bench precision trains its own --epochs


def test_a_model_json_averaging_several_configurations_says_which_one_trains(tmp_path, capsys):
    """train --params best/model.json of a final fit over three trials trained the first member's hyperparameters
    without a word, beside a file that averages six runs of three configurations."""
    import json

    first, other = HParams(lr=1e-3).to_dict(), HParams(lr=3e-3, dropout=0.1).to_dict()
    runs = [("aaa", first), ("aaa", first), ("bbb", other)]
    members = [{"trial_id": f"{trial}-seed{100000 + i}", "hparams": {**hp, "seed": 100000 + i}} for i, (trial, hp) in enumerate(runs)]
    export = {"hparams": members[0]["hparams"], "trial_id": members[0]["trial_id"], "members": members,
              "final_fit": {"runs": [{"name": m["trial_id"], "trial_id": trial} for m, (trial, _) in zip(members, runs)]}}
    model = tmp_path / "model.json"
    model.write_text(json.dumps(export))
    assert read_params(str(model), []).lr == 1e-3
    assert capsys.readouterr().err == (f"Note: {model} averages 3 runs of 2 configurations; training the first member's (trial aaa)\n")
    model.write_text(json.dumps({**export, "members": members[:2]}))  # two seeds of one configuration: nothing to say
    read_params(str(model), [])
    assert capsys.readouterr().err == ""


def test_a_model_json_of_a_large_site_is_read_as_a_params_file_as_predict_reads_it(tmp_path, monkeypatch):
    """An adapted site of ~95,000 images records 1.1 MB of image hashes in model.json: predict loaded it, but
    train --params refused it as over the 1 MB cap on a YAML file. A .json params file gets the model.json cap."""
    import json

    from cxr_tune.yamlfile import MAX_META_BYTES

    model = tmp_path / "model.json"
    model.write_text(json.dumps({"hparams": HParams(lr=2e-3).to_dict(), "data": {"image_hashes": ["a1b2c3d4e5"] * 100_000}}))
    assert 2**20 < model.stat().st_size < MAX_META_BYTES
    assert read_params(str(model), []).lr == 2e-3  # before: "params file '...' is 1,400,0xx bytes; ... at most 1,048,576 (1 MB ...)"
    params = tmp_path / "params.yaml"
    params.write_text("lr: 0.002\n# " + "x" * 2**20 + "\n")  # a YAML params file keeps the 1 MB cap
    with pytest.raises(UserError, match=rf"^params file '{params}' is 1,048,589 bytes; a params file is at most 1,048,576 \(1 MB"):
        read_params(str(params), [])
    monkeypatch.setattr("cxr_tune.yamlfile.MAX_META_BYTES", 2**20)  # as a 40 MB model.json meets the real cap, without writing one
    with pytest.raises(UserError, match=rf"^params file '{model}' is [0-9,]+ bytes; a .json params file is at most 1,048,576 \(32 MB, as a model.json\)$"):
        read_params(str(model), [])
