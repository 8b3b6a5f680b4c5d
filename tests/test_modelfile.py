"""The model files an export ships and what reads them back: the ONNX file scores the members' mean probability
over uint8 views of each image and is checked against PyTorch before anything is written; rebuilding the networks in
PyTorch (adapt, predict --explain, bench tta) stops with one line naming the file when ``model.json`` was edited or
``weights.safetensors`` damaged, never a traceback."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import cxr_tune.modelfile as modelfile
from cxr_tune.errors import UserError
from cxr_tune.modelfile import Members, build_files, load_members, recorded_calibration, recorded_views, serving_model, torch_scores
from cxr_tune.serving import read_meta
from cxr_tune.views import TTA_VIEWS
from tests.model_exports import brightness_members, export_folder, kermany_set


def two_members() -> Members:
    """Two networks that disagree: the same brightness score at a calibrated and at an overconfident gain."""
    a, b = brightness_members(30.0), brightness_members(90.0)
    return Members(a.nets + b.nets, a.hparams + b.hparams)


def own_scores(members: Members, images: np.ndarray) -> np.ndarray:
    """Each member scored on its own, one row per member."""
    return np.stack([torch_scores(serving_model(Members([net], [hp])), images) for net, hp in zip(members.nets, members.hparams, strict=True)])


def view(images: np.ndarray, zoom: float, dx: float, dy: float, degrees: float) -> np.ndarray:
    """One test-time view as a real image would be: resampled bilinearly (border pixels repeated) and stored as uint8."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[cos, -sin, 2 * dx], [sin, cos, 2 * dy]]], dtype=torch.float32).expand(len(images), -1, -1)
    x = torch.from_numpy(images[:, None]).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return np.rint(moved[:, 0].numpy()).clip(0, 255).astype(np.uint8)


def test_an_ensemble_s_onnx_scores_are_the_mean_of_its_members_own_scores():
    members, images = two_members(), kermany_set(40, 0).images
    mine = own_scores(members, images)
    assert np.abs(mine[0] - mine[1]).max() > 0.05  # the members disagree, so the first alone is not the mean
    assert np.allclose(build_files(members).scores(images), mine.mean(axis=0), atol=1e-5)


def test_test_time_views_score_each_view_as_a_uint8_image():
    members, images = two_members(), kermany_set(40, 0).images
    expected = np.mean([own_scores(members, view(images, *v)) for v in TTA_VIEWS], axis=0).mean(axis=0)
    assert np.allclose(build_files(members, len(TTA_VIEWS)).scores(images), expected, atol=1e-4)  # views truncated to uint8 are off by 2e-2


def test_an_export_whose_onnx_scores_drift_from_pytorch_is_refused(monkeypatch):
    members, images = two_members(), kermany_set(10, 0).images
    build_files(members, check_images=images)  # agrees: no complaint
    monkeypatch.setattr(modelfile, "torch_scores", lambda model, images: torch_scores(model, images) + 1e-3)
    with pytest.raises(RuntimeError, match="the ONNX export disagrees with the PyTorch model"):
        build_files(members, check_images=images)


@pytest.mark.parametrize(("category", "message"), [
    (FutureWarning, "torch.onnx.export's dynamo=False will be removed in the next release"),
    (torch.jit.TracerWarning, "Converting a tensor to a Python boolean might cause the trace to be incorrect"),
])
def test_an_export_shows_a_warning_it_does_not_know_and_none_of_those_it_does(monkeypatch, category, message):
    """Known today: the legacy exporter's deprecations and the traced loop over the test-time views' grids."""
    import warnings

    export = torch.onnx.export

    def warning_export(*args, **kwargs):
        warnings.warn(message, category, stacklevel=1)  # what a future torch, or a traced model, might say
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", warning_export)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_files(two_members(), len(TTA_VIEWS))
    assert [(w.category, str(w.message)) for w in caught] == [(category, message)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("modelfile") / "model"
    export_folder(folder)
    return folder


def edited(pristine: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], Any]) -> tuple[Path, dict[str, Any]]:
    """A copy of the export whose ``model.json`` ``edit`` changed; (folder, model.json as read back)."""
    folder = Path(shutil.copytree(pristine, tmp_path / "model"))
    meta = json.loads((folder / "model.json").read_text())
    edit(meta)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder, read_meta(folder / "model.json")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["members"][0].pop("hparams"), "model.json': members[0] is not a network (it has no hparams object)"),
    (lambda m: m["members"].__setitem__(0, "x"), "model.json': members[0] is not a network (it has no hparams object)"),
    (lambda m: m["members"][0]["hparams"].update(dropout=5), "model.json': members[0] is not a network (dropout=5.0 is out of range"),
    (lambda m: m["members"][0]["hparams"].update(filters=2), "weights.safetensors' does not hold the network members[0] of '"),
])
def test_members_that_do_not_match_the_weights_are_one_line_naming_the_file(pristine, tmp_path, edit, message):
    folder, meta = edited(pristine, tmp_path, edit)
    with pytest.raises(UserError, match="damaged or edited: export the model again") as caught:
        load_members(str(folder), meta)
    assert message in str(caught.value) and str(folder) in str(caught.value)


def test_a_damaged_or_unreadable_weights_file_is_one_line_naming_it(pristine, tmp_path, monkeypatch):
    cut = (pristine / "weights.safetensors").read_bytes()[:100]  # cut short in its header
    folder, meta = edited(pristine, tmp_path, lambda m: m["files"].update({"weights.safetensors": hashlib.sha256(cut).hexdigest()}))  # past the hash
    weights = folder / "weights.safetensors"
    weights.write_bytes(cut)
    with pytest.raises(UserError, match=f"'{weights}' is damaged .*export the model again"):
        load_members(str(folder), meta)

    def unreadable(path: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))  # as chmod 000 gives anyone but root

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    with pytest.raises(UserError, match=f"'{weights}' could not be read \\(Permission denied\\)"):
        load_members(str(folder), meta)


@pytest.mark.parametrize("edit", [lambda m: m.pop("files"), lambda m: m["files"].pop("weights.safetensors"),
                                  lambda m: m["files"].update({"weights.safetensors": ""})])
def test_a_model_json_without_the_weights_hash_is_one_line_naming_it(pristine, tmp_path, edit):
    folder, meta = edited(pristine, tmp_path, edit)
    (folder / "weights.safetensors").write_bytes(build_files(brightness_members(90.0)).weights)  # another export's networks
    with pytest.raises(UserError) as caught:
        load_members(str(folder), meta)  # before: loaded them, under this model's threshold and metrics
    assert str(caught.value) == (f"'{folder / 'model.json'}' records no hash of weights.safetensors (files); "
                                 "the file was damaged or edited: export the model again")


def test_weights_of_a_folder_swapped_in_after_model_json_was_read_are_called_replaced_and_a_real_mix_still_mixed(pristine, tmp_path):
    """predict --explain and adapt read weights.safetensors seconds after model.json (torch imports between): an export
    or adapt that swapped a whole new folder in meanwhile made them say "the folder mixes two exports" of a whole folder."""
    from cxr_tune.modelfile import write_model_folder

    folder = Path(shutil.copytree(pristine, tmp_path / "model"))
    loaded = read_meta(folder / "model.json")
    other = {key: value for key, value in loaded.items() if key != "files"}
    write_model_folder(str(folder), build_files(brightness_members(90.0)), other)  # another model, swapped in whole
    with pytest.raises(UserError) as caught:
        load_members(str(folder), loaded)
    assert str(caught.value) == (f"the model folder '{folder}' was replaced (by another export or adapt) while this command read it; "
                                 "run the command again")
    assert load_members(str(folder), read_meta(folder / "model.json"))  # whole: read again, it loads

    mixed = Path(shutil.copytree(pristine, tmp_path / "mixed"))
    (mixed / "weights.safetensors").write_bytes(build_files(brightness_members(90.0)).weights)  # another export's file alone
    with pytest.raises(UserError, match=f"^'{mixed / 'weights.safetensors'}' does not match the hash in '{mixed / 'model.json'}': "
                                        r"the file changed since it was exported \(damaged, edited, or another export's file mixed in\); "
                                        "export the model again$"):
        load_members(str(mixed), read_meta(mixed / "model.json"))


@pytest.mark.parametrize(("edit", "read", "message"), [
    (lambda m: m.update(tta_views="x"), recorded_views, "tta_views is 'x', not a number of views in 1..9"),
    (lambda m: m.update(tta_views=0), recorded_views, "tta_views is 0"),
    (lambda m: m.update(calibration={"method": "platt"}), recorded_calibration, "calibration is {'method': 'platt'}, not a method with its slope"),
    (lambda m: m.update(calibration="platt"), recorded_calibration, "calibration is 'platt'"),
])
def test_an_edited_view_count_or_calibration_is_one_line_naming_model_json(pristine, tmp_path, edit, read, message):
    folder, meta = edited(pristine, tmp_path, edit)
    with pytest.raises(UserError, match="damaged or edited") as caught:
        read(str(folder), meta)
    assert f"'{folder / 'model.json'}': {message}" in str(caught.value)


def test_what_an_export_records_reads_back(pristine):
    meta = read_meta(pristine / "model.json")
    assert recorded_views(str(pristine), meta) == 1 and recorded_calibration(str(pristine), meta) is None
    assert len(load_members(str(pristine), meta).nets) == 1


def test_model_onnx_says_what_it_outputs_and_takes_and_its_hash_and_older_files_still_hold(pristine, tmp_path):
    """Before: metadata_props was empty, so a model.onnx copied into another serving tool described itself only as
    'probability' (of which class, called at what threshold, from which pixels: only model.json said)."""
    import onnx

    from cxr_tune.serving import load_model

    meta = json.loads((pristine / "model.json").read_text())
    graph = onnx.load(str(pristine / "model.onnx"))
    props = {entry.key: entry.value for entry in graph.metadata_props}
    assert "P(PNEUMONIA)" in props["output"] and float(props["threshold"]) == meta["threshold"]
    assert props["decision"] == "PNEUMONIA when probability >= threshold, else NORMAL"
    assert "uint8 greyscale" in props["input"] and "[batch, 1, 16, 16]" in props["input"] and "N x C x H x W" in props["input"]
    # every call decode_gray makes, in order, as model.json records them (before: a convert("L") and a plain resize, which
    # flipped 1 of 40 real decisions: the reduced-scale JPEG decode, EXIF orientation and reducing_gap were left out)
    steps = ['draft("L", (16, 16))', "exif_transpose", "min-max scaled", "BILINEAR, reducing_gap=3.0"]
    assert props["preprocessing"].startswith(meta["preprocessing"]["steps"]) and "model.json" in props["record"]
    assert sorted(steps, key=props["preprocessing"].index) == steps
    assert meta["files"]["model.onnx"] == hashlib.sha256((pristine / "model.onnx").read_bytes()).hexdigest()  # the file as written

    older = Path(shutil.copytree(pristine, tmp_path / "older"))  # as exported before: no metadata, its own hash recorded
    del graph.metadata_props[:]
    onnx.save(graph, str(older / "model.onnx"))
    meta["files"]["model.onnx"] = hashlib.sha256((older / "model.onnx").read_bytes()).hexdigest()
    (older / "model.json").write_text(json.dumps(meta))
    images = kermany_set(5, 0).images
    assert np.array_equal(load_model(older).session.run(None, {"image": images[:, None]})[0],
                          load_model(pristine).session.run(None, {"image": images[:, None]})[0])


def test_a_folder_whose_model_json_is_not_an_exports_is_not_replaced(tmp_path):
    """Before: any model.json made a folder an earlier export, so ``export --out fake`` deleted fake/other.txt."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "model.json").write_text("{}")
    (fake / "other.txt").write_text("keep")
    with pytest.raises(UserError) as caught:
        modelfile.check_model_target(str(fake), "--out")
    assert str(caught.value).startswith(f"--out '{fake}' holds files and is not a model folder (its model.json is not an export's")
    assert sorted(p.name for p in fake.iterdir()) == ["model.json", "other.txt"]


def test_an_earlier_export_is_replaced_only_when_it_holds_nothing_the_export_did_not_write(pristine, tmp_path):
    """Before: a user's predictions.csv or gradcam/ beside an earlier export's files was deleted with them."""
    folder = Path(shutil.copytree(pristine, tmp_path / "model"))
    modelfile.check_model_target(str(folder), "--out")  # the export's own files only: replaced
    (folder / "predictions.csv").write_text("path,probability\n")
    (folder / "gradcam").mkdir()
    with pytest.raises(UserError) as caught:
        modelfile.check_model_target(str(folder), "--out")
    assert str(caught.value) == (f"--out '{folder}' is an earlier export but also holds gradcam/, predictions.csv, which no export wrote; "
                                 "the model would replace the whole folder, so move them out first or name a new folder")
    assert (folder / "predictions.csv").exists() and (folder / "gradcam").is_dir()
