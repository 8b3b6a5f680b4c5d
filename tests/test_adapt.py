"""``cxr_tune.adapt``: AdaBN changes BatchNorm running statistics and nothing else; the CLI writes
a model predict can load. No training and no Ray: the networks are freshly built and their
BatchNorm layers given non-default values, so "unchanged" means something."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_tune.adapt import MIN_IMAGES, ONE_SIDED_SHARE, adapt, adapt_batchnorm, em_prevalence, site_threshold
from cxr_tune.data.imaging import try_decode_gray
from cxr_tune.errors import UserError
from cxr_tune.export import Scored, write_export
from cxr_tune.modelfile import Members, load_members, serving_model, torch_scores
from cxr_tune.serving import META_FILE, read_meta
from cxr_tune.train.hparams import HParams
from cxr_tune.train.intensity import normalize_intensity
from cxr_tune.train.model import build_model
from tests.conftest import ROOT, call_cli, copy_tree

SIZE = 32
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def make_members(seeds: tuple[int, ...] = (0,)) -> Members:
    """Networks as a trained model would have them: BatchNorm affine and statistics away from their defaults."""
    nets, hps = [], []
    for seed in seeds:
        hp = HParams(image_size=SIZE, depth=2, filters=4, intensity="zscore", seed=seed)
        torch.manual_seed(seed)
        net = build_model(hp)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(123)
        nets.append(net.eval())
        hps.append(hp)
    return Members(nets, hps)


def site_images(n: int, seed: int = 0) -> np.ndarray:
    """Brighter, lower-contrast films than anything the networks were set up for."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(170, 20, (n, SIZE, SIZE)), 0, 255).astype(np.uint8)


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    stats = {k: v for k, v in state.items() if k.endswith(BN_STATS)}
    return stats, {k: v for k, v in state.items() if k not in stats}


def test_adapt_batchnorm_changes_running_statistics_and_nothing_else():
    members = make_members((0, 1))  # an ensemble: every member is adapted
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in members.nets]
    images = site_images(24)
    adapted = adapt_batchnorm(members, images, batch_size=8)

    assert adapted.hparams == members.hparams and len(adapted.nets) == 2
    for net, original, kept in zip(adapted.nets, members.nets, before, strict=True):
        assert not net.training and all(not m.training for m in net.modules())  # returned ready to score
        assert all(torch.equal(v, kept[k]) for k, v in original.state_dict().items())  # the input is untouched
        stats, rest = split_state(net.state_dict())
        old_stats, old_rest = split_state(kept)
        assert rest.keys() == old_rest.keys() and stats.keys() == old_stats.keys()
        for key, tensor in rest.items():  # conv, BatchNorm affine, linear head: bit for bit
            assert torch.equal(tensor, old_rest[key]), key
        for key in (k for k in stats if k.endswith(("running_mean", "running_var"))):
            assert not torch.allclose(stats[key], old_stats[key]), key
        # The first BatchNorm's mean is the plain average of the site's first-layer features
        # (equal batches: the cumulative average of the batch means is the overall mean).
        x = normalize_intensity(torch.from_numpy(images[:, None].copy()).float() / 255.0, "zscore")
        with torch.no_grad():
            features = net.features[0](x)
        assert torch.allclose(net.features[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)


def test_adapted_statistics_do_not_depend_on_the_old_ones():
    """AdaBN re-estimates from the site alone: two networks that differ only in their BatchNorm
    running statistics end up identical."""
    a, b = make_members((0,)), make_members((0,))
    for module in b.nets[0].modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.add_(3.0)
            module.running_var.mul_(4.0)
    images = site_images(20, seed=1)
    left, right = adapt_batchnorm(a, images).nets[0].state_dict(), adapt_batchnorm(b, images).nets[0].state_dict()
    assert all(torch.allclose(left[k].float(), right[k].float()) for k in left)


def test_site_statistics_do_not_depend_on_the_file_order_and_pool_every_pixel():
    """Two groups of films sorted one after the other (a site folder's NORMAL/ then PNEUMONIA/), 13 of
    them in batches of 8: any file order gives the same statistics; the first norm's are its input's
    over all 13 exactly, and the deeper ones close to their input's through the norms as adapted."""
    members = make_members((0,))
    rng = np.random.default_rng(2)
    images = np.concatenate([np.clip(rng.normal(m, 15, (n, SIZE, SIZE)), 0, 255) for m, n in ((60, 6), (200, 7))]).astype(np.uint8)
    sorted_order = adapt_batchnorm(members, images, batch_size=8).nets[0]
    shuffled = adapt_batchnorm(members, images[rng.permutation(len(images))], batch_size=8).nets[0]
    left, right = sorted_order.state_dict(), shuffled.state_dict()
    assert all(torch.equal(left[k], right[k]) for k in left)  # before: 6 of 65 real decisions flipped with the file order
    seen = {}
    norms = [m for m in sorted_order.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.register_forward_pre_hook(lambda module, inputs: seen.__setitem__(module, inputs[0]))
    with torch.no_grad():
        sorted_order(normalize_intensity(torch.from_numpy(images[:, None].copy()).float() / 255.0, "zscore"))
    first, *deeper = norms
    assert torch.allclose(first.running_mean, seen[first].mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.running_var, seen[first].var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    for norm in deeper:  # batches normalize with their own statistics on the way there, as in training
        assert torch.allclose(norm.running_mean, seen[norm].mean(dim=(0, 2, 3)), rtol=0.1, atol=0.05)


@pytest.fixture
def exported(tmp_path) -> Path:
    """A real export folder (model.onnx, weights.safetensors, model.json) of ``make_members()``."""
    members = make_members((0,))
    images = site_images(12, seed=5)
    rows = pd.DataFrame({"content_hash": [f"h{i}" for i in range(12)], "path": [f"v{i}.png" for i in range(12)], "label": [0, 1] * 6})
    info = {"data_description": "SYNTHETIC test", "synthetic": True, "data_root": str(tmp_path), "class_counts_train": [10, 30]}
    folder = tmp_path / "model"
    write_export(members, str(folder), ["trial_0"], [{"epoch": 0}], {"val": Scored(rows, images)}, "val", {}, info, None)
    return folder


def write_site(folder: Path, n_per_class: int) -> Path:
    """A site folder laid out NORMAL/PNEUMONIA (adapt must not read the labels), plus one broken file."""
    images = site_images(2 * n_per_class, seed=9)
    for i, pixels in enumerate(images):
        path = folder / ("PNEUMONIA" if i % 2 else "NORMAL") / f"site-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    (folder / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def test_the_cli_writes_an_adapted_model_that_predict_loads(exported, tmp_path):
    site = write_site(tmp_path / "site", 10)
    out = tmp_path / "adapted"
    done = call_cli("cxr_tune.adapt", "--model", str(exported), "--images", str(site), "--out", str(out), "--threshold", "keep")
    assert done.returncode == 0, done.stderr
    assert "Adapted" in done.stdout and "20 image(s)" in done.stdout and "1 unreadable" in done.stdout

    old_meta, meta = (json.loads((folder / "model.json").read_text()) for folder in (exported, out))
    record = meta["adaptation"]
    assert "AdaBN" in record["method"] and record["images"] == 20 and record["skipped_files"] == 1
    assert Path(record["source"]) == site.resolve() and Path(record["from_model"]) == exported.resolve()
    assert meta["threshold"] == old_meta["threshold"] and "kept" in record["threshold"] and record["threshold_rule"] == "keep"
    assert meta["before_adaptation"]["validation"] == old_meta["validation"] and "validation" not in meta
    assert meta["members"] == old_meta["members"] and meta["preprocessing"] == old_meta["preprocessing"]
    props = {entry.key: entry.value for entry in onnx.load(str(out / "model.onnx")).metadata_props}
    assert float(props["threshold"]) == meta["threshold"]  # the site's, in the file predict scores with

    # The weights file: only BatchNorm statistics moved, and to exactly what adapt_batchnorm gives
    # on the site's decodable images.
    original, adapted = (load_members(str(folder), read_meta(folder / META_FILE)) for folder in (exported, out))
    stats, rest = split_state(adapted.nets[0].state_dict())
    old_stats, old_rest = split_state(original.nets[0].state_dict())
    assert all(torch.equal(rest[k], old_rest[k]) for k in rest)
    assert any(not torch.allclose(stats[k].float(), old_stats[k].float()) for k in stats)
    files = sorted(p for p in site.rglob("*") if p.is_file())
    decoded = np.stack([image for image, _ in (try_decode_gray(p, SIZE) for p in files) if image is not None])
    expected = adapt_batchnorm(original, decoded).nets[0].state_dict()
    assert all(torch.allclose(stats[k].float(), expected[k].float(), atol=1e-5) for k in stats)

    # predict scores with the new ONNX file, and its scores are the adapted network's.
    predicted = call_cli("cxr_tune.predict", "--model", str(out), str(site), "--csv", str(tmp_path / "p.csv"), "--quiet")
    assert predicted.returncode == 0, predicted.stderr
    assert "Labelled images: 20" in predicted.stdout and "Skipped 1 unreadable" in predicted.stdout
    scores = pd.read_csv(tmp_path / "p.csv")["probability"].to_numpy()
    assert np.allclose(scores, torch_scores(serving_model(adapted), decoded), atol=1e-4)
    assert not np.allclose(scores, torch_scores(serving_model(original), decoded), atol=1e-3)  # adaptation changed the outputs


def test_adapting_a_model_of_older_preprocessing_says_so_for_a_site_whose_decoding_changed_and_records_the_version(exported, tmp_path, capsys):
    """Before: every adaptation of a version-1 model warned, PNG sites too (their pixels are as version 1 made them), and
    the adapted model.json said only the export's version although its BatchNorm statistics were computed from this code's pixels."""
    from cxr_tune.data.imaging import PREPROCESS_VERSION
    from tests.data.test_dicom import jpeg_dicom

    meta = json.loads((exported / "model.json").read_text())
    meta["preprocessing"]["preprocess_version"] = 1
    (exported / "model.json").write_text(json.dumps(meta))
    site = write_site(tmp_path / "site", 10)
    adapt(str(exported), str(site), str(tmp_path / "png-site"), threshold_rule="keep")
    assert "Warning" not in capsys.readouterr().err
    (site / "NORMAL" / "scan.dcm").write_bytes(jpeg_dicom(site_images(1, seed=3)[0])[0])  # JPEG-compressed: version 2 decodes it with Pillow
    adapted = adapt(str(exported), str(site), str(tmp_path / "adapted"), threshold_rule="keep")
    assert f"Warning: 1 of the 21 image(s) scored (first: '{site / 'NORMAL' / 'scan.dcm'}') decode otherwise than when '{exported / 'model.json'}' " \
           f"was exported (preprocessing version 1, this code's {PREPROCESS_VERSION}; version 2: " in capsys.readouterr().err
    assert adapted["adaptation"]["preprocess_version"] == PREPROCESS_VERSION  # what its statistics were computed from
    assert adapted["preprocessing"]["preprocess_version"] == 1  # what its weights trained on


def test_adapting_an_adapted_model_keeps_the_unadapted_models_measurements_and_the_chain(exported, tmp_path):
    """The second adaptation moved only the first one's threshold under before_adaptation: the
    measured sets were lost, ``keep`` kept the first site's threshold, and the card's tables were empty."""
    from cxr_tune.modelcard import calibration_section, performance_section, subgroup_section

    original = json.loads((exported / "model.json").read_text())
    once = adapt(str(exported), str(write_site(tmp_path / "site1", 10)), str(tmp_path / "once"))
    twice = adapt(str(tmp_path / "once"), str(two_group_site(tmp_path / "site2", 10)), str(tmp_path / "twice"), threshold_rule="keep")
    thrice = adapt(str(tmp_path / "twice"), str(write_site(tmp_path / "site3", 10)), str(tmp_path / "thrice"), threshold_rule="keep")
    for adapted in (once, twice, thrice):
        assert adapted["before_adaptation"] == {key: original[key] for key in ("validation", "threshold", "threshold_rule", "operating_points")}
        assert adapted["adaptation"]["unadapted_threshold"] == original["threshold"]
    assert twice["threshold"] == thrice["threshold"] == original["threshold"]  # keep: the unadapted model's, not the first site's
    assert [e["source"] for e in thrice["adaptation"]["earlier_adaptations"]] == [str((tmp_path / s).resolve()) for s in ("site1", "site2")]
    assert thrice["adaptation"]["earlier_adaptations"][0]["from_model"] == str(exported.resolve())
    assert "earlier_adaptations" not in thrice["adaptation"]["earlier_adaptations"][1]  # a chain, not nested copies
    card = (tmp_path / "thrice" / "MODEL_CARD.md").read_text()
    for section in (performance_section, subgroup_section, calibration_section):
        assert section(thrice) == section(once)
    assert any(line.startswith("| carved validation (selection set) | 12 |") for line in performance_section(thrice))
    assert f"- Adapted before: to `{(tmp_path / 'site1').resolve()}` (20 image(s), rule `" in card
    assert f"the unadapted model is `{exported.resolve()}`" in card


def test_the_cli_refuses_too_few_images_and_overwriting_the_model(exported, tmp_path):
    from cxr_tune.adapt import main

    few = write_site(tmp_path / "few", (MIN_IMAGES - 1) // 2)
    with pytest.raises(UserError, match=f"at least {MIN_IMAGES}"):
        main(["--model", str(exported), "--images", str(few), "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="new folder"):
        main(["--model", str(exported), "--images", str(few), "--out", str(exported)])
    with pytest.raises(UserError, match="no model.json"):
        main(["--model", str(tmp_path / "nowhere"), "--images", str(few), "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists()


def test_adapt_names_each_unreadable_file_with_the_reason_as_predict_does(exported, tmp_path):
    """Before: "(AdaBN; 2 unreadable file(s) skipped)" and nothing on which files or why, and a site too small to adapt
    to was refused with "holds 0 readable image(s)" without naming the file that was not readable."""
    site = write_site(tmp_path / "site", 10)
    (site / "PNEUMONIA" / "empty.png").write_bytes(b"")
    done = call_cli("cxr_tune.adapt", "--model", str(exported), "--images", str(site), "--out", str(tmp_path / "out"), "--threshold", "keep")
    predicted = call_cli("cxr_tune.predict", "--model", str(exported), str(site), "--quiet")
    assert done.returncode == predicted.returncode == 0, (done.stderr, predicted.stderr)

    def listed(stdout: str) -> list[str]:
        return stdout.split("Skipped 2 unreadable file(s):\n", 1)[1].splitlines()[:2]

    assert listed(done.stdout) == listed(predicted.stdout)
    assert listed(done.stdout)[0].startswith(f"  {site / 'NORMAL' / 'broken.jpeg'}: ") and "empty file" in listed(done.stdout)[1]
    assert "2 file(s) that could not be read as images were skipped" in (tmp_path / "out" / "MODEL_CARD.md").read_text()

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.jpeg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"holds 0 readable image\(s\) and 1 unreadable file\(s\) \(.*x\.jpeg: not an image .*\); BatchNorm"):
        adapt(str(exported), str(junk), str(tmp_path / "none"))


def test_adapt_counts_folders_not_read_apart_from_unreadable_files_as_predict_does(exported, tmp_path):
    """adapt said "(AdaBN; 2 unreadable file(s) skipped)" and model.json skipped_files 2 for a broken file and an @eaDir
    folder; now the folder is counted as a folder, in the same words as predict."""
    site = write_site(tmp_path / "site", 10)
    (site / "NORMAL" / "@eaDir").mkdir()
    (site / "NORMAL" / "@eaDir" / "thumb.png").write_bytes((site / "NORMAL" / "site-000.png").read_bytes())
    done = call_cli("cxr_tune.adapt", "--model", str(exported), "--images", str(site), "--out", str(tmp_path / "out"), "--threshold", "keep")
    predicted = call_cli("cxr_tune.predict", "--model", str(exported), str(site), "--quiet")
    assert done.returncode == predicted.returncode == 0, (done.stderr, predicted.stderr)
    assert "(AdaBN; 1 unreadable file(s) and 1 folder(s) not read skipped)" in done.stdout, done.stdout
    assert "Skipped 1 unreadable file(s) and 1 folder(s) not read:" in done.stdout and "Skipped 1 unreadable file(s) and 1 folder(s) not read:" in predicted.stdout
    record = json.loads((tmp_path / "out" / "model.json").read_text())["adaptation"]
    assert (record["skipped_files"], record["skipped_folders"]) == (1, 1)


def test_adapt_reads_a_site_folder_on_object_storage_as_a_local_one(exported, tmp_path, s3_dir):
    """Before: "'s3://...' does not exist; pass image files or folders"."""
    from cxr_tune import storage

    site = write_site(tmp_path / "site", 10)
    storage.copy(str(site), storage.join(s3_dir, "site"))
    for where, images in (("local", str(site)), ("s3", storage.join(s3_dir, "site"))):
        done = call_cli("cxr_tune.adapt", "--model", str(exported), "--images", images, "--out", str(tmp_path / where))
        assert done.returncode == 0 and "20 image(s)" in done.stdout and "1 unreadable" in done.stdout, done.stderr
    local, remote = (json.loads((tmp_path / where / "model.json").read_text()) for where in ("local", "s3"))
    assert remote["files"] == local["files"] and remote["threshold"] == local["threshold"]  # the same weights and threshold
    assert remote["adaptation"]["source"] == storage.join(s3_dir, "site")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["members"][0].pop("hparams"), "members[0] is not a network"),
    (lambda m: m.update(calibration={"method": "platt"}), "calibration is {'method': 'platt'}"),
    (lambda m: m.update(tta_views="x"), "tta_views is 'x'"),
])
def test_an_edited_model_json_is_one_line_naming_it(exported, tmp_path, edit, message):
    meta = json.loads((exported / "model.json").read_text())
    edit(meta)
    (exported / "model.json").write_text(json.dumps(meta))
    site = write_site(tmp_path / "site", 10)
    done = call_cli("cxr_tune.adapt", "--model", str(exported), "--images", str(site), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"'{exported / 'model.json'}': {message}" in done.stderr and "export the model again" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_model_json_that_no_longer_describes_model_onnx_is_refused_naming_it(exported, tmp_path):
    """Before: adapt rebuilt the network from model.json's members, tta_views and calibration, which predict never reads
    (it scores with the hashed model.onnx), so a hand edit wrote another model than the one given, with status 0 (a
    calibration slope doubled: every site image called PNEUMONIA, and "as it was: 100%" where predict called 78 %)."""
    site = write_site(tmp_path / "site", 10)
    edits = {
        "intensity": lambda m: m["members"][0]["hparams"].update(intensity="none"),  # the graph normalizes with zscore
        "views": lambda m: m.update(tta_views=3),  # the graph scores 1 view
        "calibration": lambda m: m.update(calibration={**PLATT, "slope": 2.0}),  # the graph's map is the identity: its slope doubled
        "image size": lambda m: m["members"][0]["hparams"].update(image_size=64),  # the graph takes 32x32
    }
    for name, edit in edits.items():
        folder = copy_tree(exported, tmp_path / name)
        meta = json.loads((folder / "model.json").read_text())
        edit(meta)
        (folder / "model.json").write_text(json.dumps(meta))
        with pytest.raises(UserError, match="the file was damaged or edited: export the model again") as caught:
            adapt(str(folder), str(site), str(tmp_path / f"out-{name}"), threshold_rule="keep")
        assert str(caught.value).startswith(f"'{folder / 'model.json'}' no longer describes '{folder / 'model.onnx'}': "), name
        assert not (tmp_path / f"out-{name}").exists()
    adapted = adapt(str(exported), str(site), str(tmp_path / "out"), threshold_rule="keep")  # untouched: adapted as before
    assert adapted["adaptation"]["images"] == 20 and (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("hparams"), "hparams is not the selected trial's hyperparameters (it is missing)"),
    (lambda m: m["hparams"].update(class_weighting="evil"), "hparams is not the selected trial's hyperparameters (class_weighting='evil'"),
])
@pytest.mark.parametrize("rule", ["prior-shift", "mixture", "keep"])
def test_edited_hyperparameters_are_one_line_naming_model_json_before_the_site_is_read(exported, tmp_path, edit, message, rule):
    """Every rule writes a model card, which reads the class weighting: with class_weighting "evil", mixture and keep
    decoded the site, re-estimated BatchNorm and chose a threshold, then crashed writing the card (float('evil'))."""
    meta = json.loads((exported / "model.json").read_text())
    edit(meta)
    (exported / "model.json").write_text(json.dumps(meta))
    (tmp_path / "empty").mkdir()  # refused before the images are read: an empty folder would say it holds 0 images
    with pytest.raises(UserError, match="damaged or edited: export the model again") as caught:
        adapt(str(exported), str(tmp_path / "empty"), str(tmp_path / "out"), threshold_rule=rule)  # before: ZeroDivisionError, KeyError
    assert f"'{exported / 'model.json'}': {message}" in str(caught.value)


def test_an_older_export_with_a_since_removed_hyperparameter_adapts_with_mixture_and_is_refused_for_prior_shift(exported, tmp_path):
    """Mixture and keep need only the class weighting (the card reads it). Before: every rule checked the whole of hparams,
    so an export whose hparams keep a key this version no longer knows was refused as damaged for mixture too."""
    meta = json.loads((exported / "model.json").read_text())
    meta["hparams"]["dropout_schedule"] = "cosine"  # a key of an older version
    (exported / "model.json").write_text(json.dumps(meta))
    site = write_site(tmp_path / "site", 10)
    adapted = adapt(str(exported), str(site), str(tmp_path / "out"), threshold_rule="mixture")
    assert adapted["adaptation"]["images"] == 20 and (tmp_path / "out" / "model.onnx").exists()
    # prior-shift computes the training prior from the hyperparameters: there the record must be whole
    with pytest.raises(UserError, match="unknown hyperparameter 'dropout_schedule'"):
        adapt(str(exported), str(site), str(tmp_path / "out2"), threshold_rule="prior-shift")


PLATT = {"method": "platt", "slope": 1.0, "intercept": 0.0, "fitted_on": "validation"}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("train_class_counts"), "needs train_class_counts, the NORMAL and PNEUMONIA image counts (two whole numbers above 0), and it is None"),
    (lambda m: m.update(train_class_counts=[0, 0]), "needs train_class_counts, the NORMAL and PNEUMONIA image counts (two whole numbers above 0), and it is [0, 0]"),
    (lambda m: m.update(train_class_counts=[10, "30"]), "and it is [10, '30']"),
    (lambda m: m.update(calibration=PLATT) or m["validation"].update(class_counts=[0, 6]), "needs validation.class_counts (the set the calibration was fitted on)"),
    (lambda m: m.update(calibration=PLATT) or m["validation"].update(class_counts=[6]), "and it is [6]"),  # before: IndexError
    (lambda m: m.update(calibration=PLATT) or m["validation"].update(class_counts=["6", "6"]), "and it is ['6', '6']"),  # before: TypeError
])
def test_prior_shift_refuses_counts_it_cannot_start_from_before_reading_the_site(exported, tmp_path, edit, message):
    """Refused before the images are read: an empty site folder would say it holds 0 images."""
    meta = json.loads((exported / "model.json").read_text())
    edit(meta)
    (exported / "model.json").write_text(json.dumps(meta))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="export the model again") as caught:
        adapt(str(exported), str(tmp_path / "empty"), str(tmp_path / "out"), threshold_rule="prior-shift")
    assert str(caught.value).startswith(f"'{exported / 'model.json'}': --threshold prior-shift ") and message in str(caught.value)


def test_the_mixture_threshold_separates_two_groups_of_site_scores_and_declines_one():
    from cxr_tune.adapt import mixture_threshold

    rng = np.random.default_rng(0)
    logits = np.r_[rng.normal(-1.0, 1.5, 120), rng.normal(4.0, 0.6, 200)]  # a broad NORMAL-like and a tight PNEUMONIA-like group
    threshold, details = mixture_threshold(1 / (1 + np.exp(-logits)))
    cut = np.log(threshold / (1 - threshold))
    assert 1.0 < cut < 3.5 and abs(details["pneumonia_like_share"] - 200 / 320) < 0.05
    called = logits >= cut
    assert called[120:].mean() > 0.95 and called[:120].mean() < 0.15
    threshold, details = mixture_threshold(1 / (1 + np.exp(-rng.normal(2.0, 1.0, 300))), min_weight=0.45)
    assert threshold is None and "no two groups" in details["fallback"]  # one group: no split, and why


@pytest.mark.parametrize("rule", ["mixture", "prior-shift"])
def test_the_site_threshold_does_not_depend_on_the_order_of_the_scores(rule):
    """The site folder's file order changes nothing in model.json, to the last digit."""
    from cxr_tune.adapt import site_threshold

    rng = np.random.default_rng(1)
    scores = 1 / (1 + np.exp(-np.r_[rng.normal(-1.0, 1.5, 60), rng.normal(3.0, 0.8, 40)]))
    meta = {"threshold": 0.5, "train_class_counts": [40, 60], "hparams": {"class_weighting": "none"}}
    assert site_threshold(rule, scores, meta) == site_threshold(rule, scores[rng.permutation(len(scores))], meta)


def test_components_that_never_cross_give_no_threshold_not_a_component_mean():
    """A narrow NORMAL-like group inside a broad, heavier PNEUMONIA-like one: the weighted densities
    never cross between the means. The old rule returned the first grid point, the NORMAL-like mean."""
    from cxr_tune.adapt import crossing_logit

    assert crossing_logit(np.array([0.0, 0.5]), np.array([1.0, 3.0]), np.array([0.1, 0.9])) is None
    assert crossing_logit(np.array([0.5, 0.0]), np.array([3.0, 1.0]), np.array([0.9, 0.1])) is None  # order of components does not matter
    cut = crossing_logit(np.array([-2.0, 2.0]), np.array([1.0, 1.0]), np.array([0.5, 0.5]))
    assert cut == pytest.approx(0.0, abs=0.01)  # equal groups cross halfway


def test_two_tight_groups_cross_between_them_not_at_the_lower_one():
    """20 copies of one NORMAL and 20 of one PNEUMONIA film: each component is a spike whose density
    underflowed to 0 between them, and the threshold landed on the NORMAL copies (0.1036 for 0.1 and 0.9)."""
    from cxr_tune.adapt import crossing_logit, mixture_threshold

    threshold, _ = mixture_threshold(np.r_[np.full(25, 0.1), np.full(25, 0.9)])
    assert threshold == pytest.approx(0.5, abs=0.01)
    cut = crossing_logit(np.array([-2.0, 2.0]), np.array([0.001, 0.001]), np.array([0.3, 0.7]))
    assert cut == pytest.approx(0.0, abs=0.01)


def test_a_site_of_identical_images_falls_back_in_one_line_without_sklearn_warnings():
    """Five ConvergenceWarning lines ("fewer distinct clusters") were printed above the result."""
    import warnings

    from cxr_tune.adapt import mixture_threshold

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threshold, details = mixture_threshold(np.full(40, 0.3))
    assert threshold is None and "no two groups" in details["fallback"]
    assert [str(w.message) for w in caught] == []


def site_posteriors(n: int, prevalence: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of a site at ``prevalence``: calibrated posteriors of a model trained at prior 0.5
    (class logits N(+-1, 1), so the posterior is sigmoid(2 x))."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(int)
    return labels, 1 / (1 + np.exp(-2 * rng.normal(2 * labels - 1, 1.0)))


def test_prior_shift_estimates_the_site_prevalence_and_calls_that_share_pneumonia():
    labels, scores = site_posteriors(4000, 0.2)
    assert scores.mean() > 0.3  # the posteriors alone still lean towards the training prior
    assert em_prevalence(scores, 0.5) == pytest.approx(labels.mean(), abs=0.02)
    meta = {"train_class_counts": [300, 300], "hparams": {"class_weighting": "none"}, "threshold": 0.5}
    threshold, details = site_threshold("prior-shift", scores, meta)
    assert details["estimated_prevalence"] == pytest.approx(labels.mean(), abs=0.02) and details["effective_training_prior"] == 0.5
    assert (scores >= threshold).mean() == pytest.approx(details["estimated_prevalence"], abs=0.005)


def test_prior_shift_on_a_calibrated_model_adapted_before_starts_from_its_calibration_set_carried_forward():
    """Adapting moves the measured sets under before_adaptation: the calibration set's counts were then not found."""
    from cxr_tune.adapt import probability_prior

    calibrated = {"calibration": {"method": "temperature", "fitted_on": "validation"}, "validation": {"class_counts": [30, 70]}}
    adapted = {"calibration": calibrated["calibration"], "adaptation": {"method": "AdaBN"}, "before_adaptation": {"validation": {"class_counts": [30, 70]}}}
    assert probability_prior(calibrated) == probability_prior(adapted) == pytest.approx(0.7)


def test_prior_shift_calls_a_block_of_tied_scores_the_way_nearer_the_estimate_and_says_the_share():
    """81 copies of one film (a tied block at 0.43) among 19 others: the quantile fell in the block and
    ``>=`` called 96 % PNEUMONIA against an EM estimate of about 0.43; not calling the block (15 %) is nearer."""
    meta = {"train_class_counts": [300, 300], "hparams": {"class_weighting": "none"}, "threshold": 0.5}
    rng = np.random.default_rng(4)
    scores = np.r_[[0.001, 0.002, 0.04, 0.07], np.full(81, 0.43), rng.uniform(0.8, 0.99, 15)]
    threshold, details = site_threshold("prior-shift", scores, meta)
    called = (scores >= threshold).mean()
    assert 0.3 < details["estimated_prevalence"] < 0.6 and called == pytest.approx(0.15)
    assert 0.43 < threshold < scores[-15:].min()
    assert details["summary"].startswith(f"calls {called:.3f} of the site's images PNEUMONIA, not the EM-estimated prevalence")
    # 16 identical films: the estimate is about 0, and so is the share called (before: all 16).
    threshold, details = site_threshold("prior-shift", np.full(16, 0.2), meta)
    assert threshold > 0.2 and details["summary"].startswith("calls the EM-estimated prevalence")


def two_group_site(folder: Path, n: int, *, groups: int = 2) -> Path:
    """Smooth films and films with a bright opacity (two groups a network scores apart), under
    NORMAL/ and PNEUMONIA/ folders that adapt never reads; ``groups=1``: smooth films only."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    opacity = ((yy - SIZE // 2) ** 2 + (xx - SIZE // 2) ** 2 < (SIZE // 4) ** 2) * 80
    for i in range(2 * n):
        blob = groups == 2 and i % 2 == 1
        pixels = np.clip(rng.normal(150, 8, (SIZE, SIZE)) + (opacity if blob else 0), 0, 255).astype(np.uint8)  # not flat (input_checks)
        path = folder / ("PNEUMONIA" if i % 2 else "NORMAL") / f"site-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return folder


def test_the_default_site_threshold_splits_a_two_group_site_and_a_one_group_site_keeps_and_says_why(exported, tmp_path):
    meta = adapt(str(exported), str(two_group_site(tmp_path / "two", 20)), str(tmp_path / "out"))
    record = meta["adaptation"]
    assert record["threshold_rule"] == "mixture" and "mixture" in record["threshold_details"]["method"]
    assert meta["threshold"] != record["unadapted_threshold"]
    assert json.loads((tmp_path / "out" / "model.json").read_text())["threshold"] == meta["threshold"]
    scored = call_cli("cxr_tune.predict", "--model", str(tmp_path / "out"), str(tmp_path / "two"), "--csv", str(tmp_path / "p.csv"), "--quiet")
    predictions = pd.read_csv(tmp_path / "p.csv")
    opacity = predictions["path"].str.contains("PNEUMONIA")
    # The threshold falls between the two groups: each is called one way (which way is the untrained network's business).
    assert scored.returncode == 0 and predictions.groupby(opacity)["prediction"].nunique().eq(1).all()
    assert predictions.groupby(opacity)["prediction"].first().nunique() == 2

    one = call_cli("cxr_tune.adapt", "--model", str(exported), "--images", str(two_group_site(tmp_path / "one", 20, groups=1)), "--out", str(tmp_path / "kept"))
    assert one.returncode == 0, one.stderr
    kept = json.loads((tmp_path / "kept" / "model.json").read_text())
    assert kept["adaptation"]["threshold_rule"] == "keep" and kept["threshold"] == kept["adaptation"]["unadapted_threshold"]
    assert "no mixture threshold:" in one.stdout and kept["adaptation"]["threshold_fallback"] in one.stdout
    # One group of look-alike images falls on one side of the kept threshold: adapt warns rather than ship that silently.
    share = kept["adaptation"]["called_pneumonia_share"]
    assert min(share, 1 - share) < 0.1
    assert ("Warning: at this threshold the adapted model calls" in one.stderr) == (min(share, 1 - share) < ONE_SIDED_SHARE)
    assert "Warning:" not in one.stdout
    assert 0.3 < record["called_pneumonia_share"] < 0.7  # the two-group site's threshold splits it


def test_adapt_records_the_share_called_before_and_after_and_warns_when_adaptation_moves_it_far(exported, tmp_path):
    """A site the model as exported calls all NORMAL (its threshold set above every score) split in two
    by the mixture threshold: no labels are needed to see the share move from 0 % to about half."""
    from cxr_tune.adapt import moved_far

    meta = json.loads((exported / "model.json").read_text())
    (exported / "model.json").write_text(json.dumps({**meta, "threshold": 1.0}))
    site = two_group_site(tmp_path / "two", 20)
    out = os.path.relpath(tmp_path / "out", ROOT)  # as typed in the folder the command runs in (call_cli: ROOT)
    done = call_cli("cxr_tune.adapt", "--model", str(exported), "--images", str(site), "--out", out)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "model.json").read_text())["adaptation"]
    assert record["called_pneumonia_share_before"] == 0.0 and 0.3 < record["called_pneumonia_share"] < 0.7
    assert f"({exported} as it was: 0%)" in done.stdout and "AdaBN assumes the site's mix" in done.stdout
    # Before: the warning went to stdout, no SYNTHETIC note (predict and compare give one for this model), and "Written: <out as typed>".
    assert "Warning: adaptation moved the share of the site's images called PNEUMONIA from 0% to" in done.stderr
    assert "Warning:" not in done.stdout
    assert "Note: this model was trained on SYNTHETIC data; its outputs mean nothing for real patients." in done.stderr
    assert f"Written: {tmp_path / 'out'}\n" in done.stdout
    assert "the model it was adapted from, at its threshold, called 0.0%" in (tmp_path / "out" / "MODEL_CARD.md").read_text()
    # The reviewer's half-A cases: the whole site, for results/real/best and the model that became best-no-labels, stays quiet.
    assert not moved_far(0.612, 0.581) and not moved_far(0.765, 0.578)
    assert moved_far(0.068, 0.602) and moved_far(0.106, 0.613) and moved_far(0.106, 0.581)


@pytest.mark.parametrize("ece", [0.2, 0.01])
def test_adapt_prints_each_estimate_beside_the_training_share_and_ends_with_the_labelled_check(exported, tmp_path, capsys, ece):
    """Before: the mixture's PNEUMONIA-like share and EM's prevalence were printed alone (on results/real/best's site, 0.55
    and 0.740 against a true 0.625, the training share 0.742 nowhere), EM with no word on the model's poor calibration,
    and the compare check only when a warning fired."""
    from cxr_tune.adapt import main

    meta = json.loads((exported / "model.json").read_text())
    meta["validation"]["calibration"]["ece"] = ece
    (exported / "model.json").write_text(json.dumps(meta))
    site = two_group_site(tmp_path / "two", 20)
    def check(out: str) -> str:  # a command to paste: a folder name with a space is quoted
        return f"Check on a labelled sample from the site before use: python -m cxr_tune.compare --model {exported} --model '{tmp_path / out}' LABELLED_FOLDER"

    assert main(["--model", str(exported), "--images", str(site), "--out", str(tmp_path / "m 1")]) == 0
    mixture = capsys.readouterr().out
    assert "the mixture's PNEUMONIA-like group holds" in mixture and "not the share called PNEUMONIA at the threshold below" in mixture
    assert "; the training data's: 0.750 (30 of 40 images)" in mixture and mixture.rstrip().endswith(check("m 1"))

    assert main(["--model", str(exported), "--images", str(site), "--out", str(tmp_path / "e 1"), "--threshold", "prior-shift"]) == 0
    em = capsys.readouterr().out
    assert "EM's estimate of the site's PNEUMONIA prevalence: " in em and "; the training data's: 0.750 (30 of 40 images)" in em
    assert em.rstrip().endswith(check("e 1"))
    caveat = "Caution: EM takes the probabilities as calibrated, and model.json records ECE 0.200 on the carved validation set"
    assert (caveat in em) == (ece > 0.05)
    recorded = json.loads((tmp_path / "e 1" / "model.json").read_text())["adaptation"]["threshold_details"]
    assert ("caveat" in recorded) == (ece > 0.05)


def test_an_export_with_test_time_views_keeps_them_when_adapted(tmp_path):
    members = make_members((0,))
    images = site_images(12, seed=5)
    rows = pd.DataFrame({"content_hash": [f"h{i}" for i in range(12)], "path": [f"v{i}.png" for i in range(12)], "label": [0, 1] * 6})
    info = {"data_description": "SYNTHETIC test", "synthetic": True, "data_root": str(tmp_path), "class_counts_train": [10, 30]}
    write_export(members, str(tmp_path / "model"), ["trial_0"], [{"epoch": 0}], {"val": Scored(rows, images)}, "val", {}, info, None, tta=3)
    site = write_site(tmp_path / "site", 10)
    meta = adapt(str(tmp_path / "model"), str(site), str(tmp_path / "adapted"), threshold_rule="keep")
    assert json.loads((tmp_path / "model" / "model.json").read_text())["tta_views"] == 3
    assert meta["tta_views"] == 3 and "3 test-time views" in meta["output"]["meaning"]
    adapted = load_members(str(tmp_path / "adapted"), meta)
    files = sorted(p for p in site.rglob("*") if p.is_file())
    decoded = np.stack([image for image, _ in (try_decode_gray(p, SIZE) for p in files) if image is not None])
    predicted = call_cli("cxr_tune.predict", "--model", str(tmp_path / "adapted"), str(site), "--csv", str(tmp_path / "p.csv"), "--quiet")
    assert predicted.returncode == 0, predicted.stderr
    scores = pd.read_csv(tmp_path / "p.csv")["probability"].to_numpy()
    assert np.allclose(scores, torch_scores(serving_model(adapted, 3), decoded), atol=1e-4)  # the ONNX file averages the 3 views
    assert not np.allclose(scores, torch_scores(serving_model(adapted), decoded), atol=1e-4)


def test_images_unlike_the_training_xrays_are_left_out_of_the_site_statistics(exported, tmp_path):
    site = write_site(tmp_path / "site", 10)
    with_photo = copy_tree(site, tmp_path / "with_photo")
    gray = site_images(1, seed=3)[0].astype(np.float64)
    Image.fromarray(np.stack([gray, gray * 0.6, gray * 0.3], axis=-1).astype(np.uint8)).save(with_photo / "NORMAL" / "photo.png")
    done = [call_cli("cxr_tune.adapt", "--model", str(exported), "--images", str(folder), "--out", str(tmp_path / f"out-{folder.name}"),
                     "--threshold", "keep") for folder in (site, with_photo)]
    assert all(run.returncode == 0 for run in done), [run.stderr for run in done]
    assert "Left out" not in done[0].stdout
    listed = done[1].stdout.split("Left out 1 image(s) unlike the chest X-rays", 1)[1].splitlines()[1:2]
    assert listed == [f"  {with_photo / 'NORMAL' / 'photo.png'}: " + listed[0].split(": ", 1)[1]] and "colour image" in listed[0]
    plain, adapted = (json.loads((tmp_path / f"out-{name}" / "model.json").read_text())["adaptation"] for name in ("site", "with_photo"))
    assert (plain["images"], plain["left_out_images"]) == (adapted["images"], 0) == (20, 0) and adapted["left_out_images"] == 1
    assert "1 image(s) unlike the training X-rays" in (tmp_path / "out-with_photo" / "MODEL_CARD.md").read_text()
    # The photo changed nothing: the same BatchNorm statistics as without it.
    weights = [(tmp_path / f"out-{name}" / "weights.safetensors").read_bytes() for name in ("site", "with_photo")]
    assert weights[0] == weights[1]


@pytest.mark.parametrize("flags", [["--help"], ["--model", "m", "--images", "i", "--out", "o", "--bogus"]])
def test_help_and_a_mistyped_flag_answer_without_loading_torch(flags):
    """``adapt --help`` took 2 s and a bad flag 2.6 s, importing torch to print a usage line."""
    import subprocess
    import sys

    code = ("import sys\nfrom cxr_tune.adapt import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'cxr_tune.modelfile' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "False False"


def test_the_file_order_of_a_site_changes_nothing_in_model_json(exported, tmp_path):
    """The same 140 images under names in opposite orders: scored in batches of 128 in file order, the
    threshold moved in its ninth digit (the batches' other images move a float32 score's last digits)."""
    images = np.concatenate([site_images(70, seed=11), np.clip(site_images(70, seed=12).astype(int) - 60, 0, 255).astype(np.uint8)])
    for folder, names in (("forward", range(len(images))), ("reverse", reversed(range(len(images))))):
        for name, pixels in zip(names, images, strict=True):
            path = tmp_path / folder / f"site-{name:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    written = [adapt(str(exported), str(tmp_path / folder), str(tmp_path / f"out-{folder}"), threshold_rule="prior-shift")
               for folder in ("forward", "reverse")]
    assert written[0]["threshold"] == written[1]["threshold"]
    assert written[0]["adaptation"]["threshold_details"] == written[1]["adaptation"]["threshold_details"]
    assert (tmp_path / "out-forward" / "model.onnx").read_bytes() == (tmp_path / "out-reverse" / "model.onnx").read_bytes()


def test_adapt_hashes_the_site_images_once(exported, tmp_path, monkeypatch):
    """adapt put the images in content order to score them, then adapt_batchnorm hashed them again to order its batches."""
    import cxr_tune.adapt as module

    hashed: list[int] = []
    content_order = module.content_order
    monkeypatch.setattr(module, "content_order", lambda images: hashed.append(len(images)) or content_order(images))
    adapt(str(exported), str(write_site(tmp_path / "site", 10)), str(tmp_path / "adapted"), threshold_rule="keep")
    assert hashed == [20]


def test_compare_on_a_labelled_copy_of_the_site_a_model_was_adapted_to_says_so_by_its_images(exported, tmp_path):
    """Adapted to a flat unlabelled copy of the site's images, then compared on the labelled folder elsewhere: no note,
    as model.json named the site only by its folder. adapt now records the content hashes of the images it adapted to."""
    site = write_site(tmp_path / "labelled", 10)
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in site.rglob("site-*.png"):
        (flat / path.name).write_bytes(path.read_bytes())
    adapted = tmp_path / "adapted"
    adapt(str(exported), str(flat), str(adapted), threshold_rule="keep")
    done = call_cli("cxr_tune.compare", "--model", str(exported), "--model", str(adapted), str(site))
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if "selection-set" in line] == [
        f"Note ({adapted}): 20 of 20 scored images adapted this model (the site it was adapted to, by content: model.json "
        "adaptation.image_hashes): these are selection-set numbers for this model, optimistic, not an independent test."]


def test_adapt_predict_and_compare_count_a_byte_identical_copy_once_alike(exported, tmp_path):
    """A site of 20 images, one saved twice: adapt said "to 21 image(s)" and its share called PNEUMONIA counted the copy twice,
    where predict says "of 20 images ... 1 byte-identical copy counted once"; predict's note said "21 of 21 scored images
    adapted this model" where compare's said "20 of 20"."""
    site = write_site(tmp_path / "site", 10)
    (site / "NORMAL" / "broken.jpeg").unlink()
    (site / "NORMAL" / "copy.png").write_bytes((site / "NORMAL" / "site-000.png").read_bytes())
    adapted = tmp_path / "adapted"
    done = call_cli("cxr_tune.adapt", "--model", str(exported), "--images", str(site), "--out", str(adapted), "--threshold", "keep")
    assert done.returncode == 0, done.stderr
    assert f"Adapted {exported} to 21 image files from {site}, 20 distinct (1 byte-identical copy counted once below)" in done.stdout, done.stdout
    record = json.loads((adapted / "model.json").read_text())["adaptation"]
    assert record["images"] == 21 and record["distinct_images"] == 20
    predicted = call_cli("cxr_tune.predict", "--model", str(exported), str(site), "--quiet")
    called = next(line for line in predicted.stdout.splitlines() if "images called PNEUMONIA" in line)
    assert called.startswith(f"{round(record['called_pneumonia_share_before'] * 20)} of 20 images called PNEUMONIA"), (called, record)
    note = "Note: 20 of 20 scored images adapted this model"
    assert note in call_cli("cxr_tune.predict", "--model", str(adapted), str(site), "--quiet").stdout
    assert note.replace("Note:", f"Note ({adapted}):") in call_cli("cxr_tune.compare", "--model", str(exported), "--model", str(adapted), str(site)).stdout
