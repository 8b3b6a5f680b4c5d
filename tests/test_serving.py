"""Loading an export: a broken ``model.json`` or a mismatched ``.onnx`` stops with one line naming the file."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto
from PIL import Image

from cxr_tune.errors import UserError
from cxr_tune.serving import load_model, probabilities
from tests.conftest import call_cli
from tests.exports import meta, tiny_onnx, write_export


def _hash(file: Path) -> str:
    """The hash an export records for ``file``."""
    return hashlib.sha256(file.read_bytes()).hexdigest()


def test_a_good_export_loads_from_its_folder_its_onnx_and_its_json(tmp_path):
    folder = write_export(tmp_path / "best", image_size=16, threshold=0.25)
    for path in (folder, folder / "model.onnx", folder / "model.json"):
        model = load_model(path)
        assert model.folder == folder and model.image_size == 16 and model.threshold == 0.25
    images = np.full((3, 16, 16), 51, dtype=np.uint8)
    assert np.allclose(probabilities(model, images), 0.2)


@pytest.mark.parametrize(("images", "got"), [
    (np.full((3, 16, 16), 0.2, np.float32), "float32 array shaped (3, 16, 16)"),
    (np.full((16, 16), 51, np.uint8), "uint8 array shaped (16, 16)"),  # one image, not a stack of one
    (np.full((3, 1, 16, 16), 51, np.uint8), "uint8 array shaped (3, 1, 16, 16)"),  # the graph's own layout
    (np.full((3, 32, 32), 51, np.uint8), "uint8 array shaped (3, 32, 32)"),  # another side than the model's
    ([np.full((16, 16), 51, np.uint8)] * 3, "list"),
])
def test_images_a_caller_passes_in_another_form_are_a_user_error_saying_the_form_not_a_failure_of_the_model_file(tmp_path, images, got):
    """From a notebook, each was "RunFailure: '.../model.onnx' failed while scoring: ..." (status 1 for a command):
    the caller's array blamed on the model file, and onnxruntime's line saying which side was wrong dropped."""
    model = load_model(write_export(tmp_path / "best", image_size=16))
    with pytest.raises(UserError, match=r"^images must be a numpy array of uint8 shaped \(N, 16, 16\) "
                                        rf"\(N images at the model's image size 16, as cxr_tune.data.imaging.decode_gray\(path, 16\) makes each\), not an? {re.escape(got)}$"):
        probabilities(model, images)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "is not readable JSON"),
    ("[" * 200000 + "]" * 200000, "is not readable JSON (maximum recursion depth exceeded"),  # before: a RecursionError traceback
    ("", "is not readable JSON"),
    ("[1, 2]", "the top level must be a JSON object, not list"),
    (json.dumps({"threshold": 0.5}), "preprocessing is missing"),
    (json.dumps({"preprocessing": {}, "threshold": 0.5}), "preprocessing.image_size is missing"),
    (json.dumps({"preprocessing": {"image_size": 16}}), "threshold is missing"),
    (json.dumps(meta(image_size=100000)), "preprocessing.image_size is 100000; it must be a whole number of pixels in 16..1024"),
    (json.dumps(meta(image_size=8)), "preprocessing.image_size is 8"),
    (json.dumps({**meta(), "preprocessing": {"image_size": "16"}}), "preprocessing.image_size is '16'"),
    (json.dumps({**meta(), "preprocessing": {"image_size": 16.5}}), "preprocessing.image_size is 16.5"),
    (json.dumps({**meta(), "preprocessing": {"image_size": True}}), "preprocessing.image_size is True"),
    (json.dumps(meta(threshold=1.5)), "threshold is 1.5; it must be a probability between 0 and 1"),
    (json.dumps(meta(threshold="0.5")), "threshold is '0.5'"),
    ('{"preprocessing": {"image_size": 16}, "threshold": NaN}', "threshold is nan"),
    ('{"preprocessing": {"image_size": 16}, "threshold": Infinity}', "threshold is inf"),
    (json.dumps(meta(model_file="../elsewhere/model.onnx")), "model_file is '../elsewhere/model.onnx'"),
    (json.dumps(meta(model_file="model.pt")), "model_file is 'model.pt'"),
    (json.dumps(meta(data="synthetic")), "data must be an object"),
    (json.dumps(meta(files=["model.onnx"])), "files must be an object of file hashes"),
    (json.dumps(meta(operating_points={"spec95": {"threshold": 0.9, "floor": {"specificity": 0.95}, "misses_floor": "x"}})),
     "operating_points.spec95.misses_floor is 'x'; it must be a rate between 0 and 1"),
    (json.dumps(meta(operating_points={"spec95": {"threshold": 0.9, "floor": {"specificity": "high"}, "misses_floor": 0.9}})),
     "operating_points.spec95.floor is {'specificity': 'high'}"),
    (json.dumps(meta(operating_points={"spec95": {"threshold": 0.9, "floor": [0.95]}})), "operating_points.spec95.floor is [0.95]"),
    (json.dumps(meta(operating_points={"sens98": {"threshold": 0.0, "gives_up": ["a"]}})),
     "operating_points.sens98.gives_up is ['a']; it must be one of sensitivity, specificity"),
    (json.dumps(meta(operating_points={"\x1b[31mFAKE\nAUC 1.0000 [1.000, 1.000]": {"threshold": 0.5}})),
     "operating_points name '\\x1b[31mFAKE\\nAUC 1.0000 [1.000, 1.000]' is not a plain name (1-40 letters, digits, _ . + -)"),
    (json.dumps(meta(operating_points={"x" * 41: {"threshold": 0.5}})), "operating_points name 'xxxxxx"),
    (json.dumps(meta(calibration={"method": "platt\rAUC 1.0"})), "calibration.method 'platt\\rAUC 1.0' is not a plain name"),
    (json.dumps(meta(trial_id="a b")), "trial_id 'a b' is not a plain name"),
    (json.dumps(meta(members=[{"trial_id": "ok_1"}, {"trial_id": "`x`"}])), "members[1].trial_id '`x`' is not a plain name"),
])
def test_a_bad_model_json_is_a_user_error_naming_the_file_and_the_key(tmp_path, text, message):
    folder = write_export(tmp_path / "best", meta_text=text)
    with pytest.raises(UserError) as caught:
        load_model(folder)
    assert message in str(caught.value) and str(folder / "model.json") in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_name_an_export_writes_is_a_plain_name(tmp_path):
    from cxr_tune.operating_points import DEFAULT, NAMES
    from cxr_tune.serving import PLAIN_NAME

    names = [DEFAULT, *NAMES, "none", "platt", "temperature", "5a4e909c_00001", "5a4e909c-seed100000"]
    assert all(PLAIN_NAME.fullmatch(name) for name in names)
    folder = write_export(tmp_path / "best", operating_points={name: {"threshold": 0.5} for name in names}, trial_id="5a4e909c_00001")
    assert set(load_model(folder).meta["operating_points"]) == set(names)


def test_an_operating_point_name_cannot_forge_a_line_of_predicts_output(tmp_path):
    forged = "\x1b[31mFAKE\nAUC 1.0000 [1.000, 1.000]"
    folder = write_export(tmp_path / "best", operating_points={forged: {"threshold": 0.5}})
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(tmp_path / "x.png")
    done = call_cli("cxr_tune.predict", "--model", str(folder), str(tmp_path / "x.png"))
    assert done.returncode == 2 and "\x1b" not in done.stdout + done.stderr  # before: exit 0, an ESC and a forged "AUC 1.0000" line
    assert done.stderr.strip().splitlines() == [f"error: '{folder / 'model.json'}': operating_points name {forged!r} is not a plain name "
                                               "(1-40 letters, digits, _ . + -); export the model again with python -m cxr_tune.export EXPERIMENT"]


def test_a_model_json_larger_than_any_export_writes_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    import cxr_tune.serving

    monkeypatch.setattr(cxr_tune.serving, "MAX_META_BYTES", 2**10)  # as a 40 MB file meets the real limit, without writing one
    folder = write_export(tmp_path / "best", notes="x" * 2**10)
    with pytest.raises(UserError) as caught:
        load_model(folder)
    assert str(caught.value) == (f"'{folder / 'model.json'}' is {(folder / 'model.json').stat().st_size:,} bytes, larger than any model.json "
                                 "an export writes (at most 1,024 bytes); export the model again with python -m cxr_tune.export EXPERIMENT")


def test_an_onnx_path_loads_exactly_that_file(tmp_path):
    folder = write_export(tmp_path / "best")
    tiny_onnx(folder / "other.onnx", constant=0.9)
    with pytest.raises(UserError, match=r"other.onnx' is not the model .*model.json' describes \(its model_file is 'model.onnx'\)"):
        load_model(folder / "other.onnx")  # before: silently loaded model.onnx
    (folder / "model.json").write_text(json.dumps(meta(model_file="other.onnx", files={"other.onnx": _hash(folder / "other.onnx")})))
    images = np.zeros((2, 16, 16), dtype=np.uint8)
    assert np.allclose(probabilities(load_model(folder / "other.onnx"), images), 0.9)
    assert np.allclose(probabilities(load_model(folder), images), 0.9)  # the folder follows model_file


def test_the_graph_must_take_the_image_size_model_json_promises(tmp_path):
    folder = write_export(tmp_path / "best", image_size=16)
    (folder / "model.json").write_text(json.dumps(meta(image_size=32, files={"model.onnx": _hash(folder / "model.onnx")})))
    with pytest.raises(UserError, match="takes 16x16 images but .* says image_size 32"):
        load_model(folder)


def test_missing_files_and_other_files_are_refused(tmp_path):
    folder = write_export(tmp_path / "best")
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="neither an export folder nor its .onnx or model.json file"):
        load_model(folder / "notes.txt")
    (folder / "model.onnx").unlink()
    with pytest.raises(UserError, match="has no model.onnx"):
        load_model(folder)
    (folder / "model.json").unlink()
    with pytest.raises(UserError, match="has no model.json"):
        load_model(folder)


def test_an_experiment_folder_passed_as_a_model_names_its_best_folder(tmp_path):
    """load_model(EXPERIMENT) said "has no model.json; export one with python -m cxr_tune.export EXPERIMENT" of an
    experiment whose export lay in its best/ folder."""
    experiment = tmp_path / "exp"
    write_export(experiment / "best")
    with pytest.raises(UserError, match=rf"^model folder '{experiment}' has no model.json; it is an experiment whose exported model is "
                                        rf"in '{experiment / 'best'}': pass that folder$"):
        load_model(experiment)


@pytest.mark.parametrize("name", ["model.json", "model.onnx"])
def test_a_model_file_that_is_not_a_regular_file_in_its_folder_is_named_for_what_it_is(tmp_path, name):
    folder = write_export(tmp_path / "best")
    (tmp_path / "elsewhere").write_bytes((folder / name).read_bytes())
    (folder / name).unlink()
    (folder / name).symlink_to(tmp_path / "elsewhere")  # a blob store's layout (git-annex, DVC, a Hugging Face cache) links out
    assert load_model(folder).meta["threshold"] == json.loads((tmp_path / "elsewhere" if name == "model.json" else folder / "model.json").read_text())["threshold"]
    (folder / name).unlink()
    (folder / name).mkdir()
    with pytest.raises(UserError, match=rf"^'{folder / name}' is not a regular file \(a folder\); "):  # before: "has no model.json"
        load_model(folder)
    (folder / name).rmdir()
    os.mkfifo(folder / name)
    with pytest.raises(UserError, match=rf"^'{folder / name}' is not a regular file \(a pipe, socket or device\); "):
        load_model(folder)
    (folder / name).unlink()
    (folder / name).symlink_to(os.devnull)
    with pytest.raises(UserError, match=rf"^'{folder / name}' is not a regular file \(a pipe, socket or device\); "):
        load_model(folder)


def test_a_model_folder_reached_through_a_link_loads(tmp_path):
    folder = write_export(tmp_path / "best")
    (tmp_path / "link").symlink_to(folder)
    (folder / "model.onnx").rename(folder / "graph.bin")
    (folder / "model.onnx").symlink_to("graph.bin")  # a link inside the folder is the folder's own file
    assert load_model(tmp_path / "link").threshold == 0.5


def test_a_model_under_the_home_folder_loads_from_a_path_that_starts_with_a_tilde_as_an_experiment_does(tmp_path, monkeypatch):
    """load_model("~/exp/s1/best") said "'~/exp/s1/best/model.json' is not readable JSON ([Errno 2] ...)" while
    Experiment("~/exp/s1") opened the folder above it; predict --model '~/...' (quoted, so the shell kept the ~) alike."""
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = write_export(tmp_path / "exp" / "best", image_size=16, threshold=0.25)
    for path in ("~/exp/best", "~/exp/best/model.onnx", "~/exp/best/model.json"):
        assert load_model(path).folder == folder
    Image.fromarray(np.full((16, 16), 51, dtype=np.uint8)).save(tmp_path / "x.png")
    done = call_cli("cxr_tune.predict", "--model", "~/exp/best", str(tmp_path / "x.png"))
    assert done.returncode == 0 and "x.png" in done.stdout, done.stderr


def test_a_model_whose_files_are_links_into_a_blob_store_loads_from_its_file_paths(tmp_path):
    """A Hugging Face cache or git-annex checkout (snapshots/<rev>/model.onnx -> ../../blobs/<sha>): load_model of the
    link's path said the blob store "is neither an export folder nor its .onnx or model.json file", since the ~ fix
    followed the link to its target, whose folder holds no model.json."""
    folder = write_export(tmp_path / "export", image_size=16, threshold=0.25)
    blobs, snap = tmp_path / "blobs", tmp_path / "snap"
    blobs.mkdir()
    snap.mkdir()
    for file in sorted(folder.iterdir()):
        file.rename(blobs / f"{file.name}.blob")
        (snap / file.name).symlink_to(blobs / f"{file.name}.blob")
    for path in (snap, snap / "model.onnx", snap / "model.json"):
        assert Path(load_model(path).folder) == snap


def test_an_unreadable_onnx_file_is_one_line_naming_it(tmp_path, monkeypatch):
    folder = write_export(tmp_path / "best")
    plain_read = Path.read_bytes

    def unreadable(path: Path) -> bytes:
        if path.name == "model.onnx":
            raise PermissionError(13, "Permission denied", str(path))  # as chmod 000 gives anyone but root
        return plain_read(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    done = call_cli("cxr_tune.predict", "--model", str(folder), str(tmp_path))
    assert done.returncode == 2 and f"'{folder / 'model.onnx'}' could not be read (Permission denied)" in done.stderr
    assert "Traceback" not in done.stderr


def test_predict_with_a_broken_model_json_prints_one_line_and_exits_2(tmp_path):
    folder = write_export(tmp_path / "best", meta_text="{broken")
    done = call_cli("cxr_tune.predict", "--model", str(folder), str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder / "model.json") in lines[0]


def test_an_onnx_file_from_another_export_is_refused_by_its_hash(tmp_path):
    folder = write_export(tmp_path / "best")
    digest = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(meta(files={"model.onnx": digest})))
    assert load_model(folder).threshold == 0.5
    tiny_onnx(folder / "model.onnx", constant=0.9)  # another network, same interface: the threshold is not its own
    for path in (folder, folder / "model.onnx"):
        with pytest.raises(UserError, match=r"model\.onnx' does not match the hash in .*model\.json': the file changed since it was exported "
                                            r"\(damaged, edited, or another export's file mixed in\); export the model again$"):
            load_model(path)  # it said "the folder mixes two exports" of a file changed on its own as well
    done = call_cli("cxr_tune.predict", "--model", str(folder), str(folder))
    assert done.returncode == 2 and "changed since it was exported" in done.stderr and "Traceback" not in done.stderr


def test_a_folder_swapped_in_while_load_model_reads_it_is_called_replaced_not_mixed(tmp_path, monkeypatch):
    """An export swaps a whole new folder in between this load's read of model.json and of model.onnx: the folder was
    whole all along, and loading it said "the folder mixes two exports: export the model again"."""
    import shutil

    import cxr_tune.serving as serving

    folder = write_export(tmp_path / "best", image_size=16)
    write_export(tmp_path / "new", image_size=24)
    real_read_meta = serving.read_meta

    def swapped_after_reading(file):
        read = real_read_meta(file)
        shutil.rmtree(folder)
        shutil.copytree(tmp_path / "new", folder)  # another export's whole folder, in its place
        return read

    monkeypatch.setattr(serving, "read_meta", swapped_after_reading)
    with pytest.raises(UserError) as caught:
        load_model(folder)
    assert str(caught.value) == (f"the model folder '{folder}' was replaced (by another export or adapt) while this command read it; "
                                 "run the command again")
    monkeypatch.setattr(serving, "read_meta", real_read_meta)
    assert load_model(folder).image_size == 24  # whole: run again, it loads


@pytest.mark.parametrize("files", [None, {}, {"model.onnx": ""}, {"weights.safetensors": "0" * 64}])
def test_a_model_json_without_the_graphs_hash_is_refused(tmp_path, files):
    folder = write_export(tmp_path / "best")
    tiny_onnx(folder / "model.onnx", constant=0.9)  # from another export
    (folder / "model.json").write_text(json.dumps(meta() if files is None else meta(files=files)))
    with pytest.raises(UserError) as caught:
        load_model(folder)  # before: loaded, with the threshold of another network
    assert str(caught.value) == f"'{folder / 'model.json'}' records no hash of model.onnx (files); the file was damaged or edited: export the model again"


def _reads_another_file(where: str) -> bytes:
    """A graph with the export's interface whose score adds the bytes of ``secret.txt``, an
    external-data tensor (onnxruntime reads it from the current folder), as an initializer or
    inside an ``If`` branch."""
    from onnx import TensorProto, helper

    outside = TensorProto(name="W", data_type=TensorProto.UINT8, dims=[6], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "secret.txt"), ("offset", "0"), ("length", "6")):
        outside.external_data.add(key=key, value=value)
    nodes = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0)]
    initializers = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]), helper.make_tensor("yes", TensorProto.BOOL, [], [True])]
    if where == "initializer":
        initializers.append(outside)
        nodes.append(helper.make_node("Cast", ["W"], ["read"], to=TensorProto.FLOAT))
    else:
        branch = helper.make_graph([helper.make_node("Constant", [], ["w"], value=outside), helper.make_node("Cast", ["w"], ["got"], to=TensorProto.FLOAT)],
                                   "then", [], [helper.make_tensor_value_info("got", TensorProto.FLOAT, [6])])
        zeros = helper.make_graph([helper.make_node("Constant", [], ["none"], value=helper.make_tensor("z", TensorProto.FLOAT, [6], [0.0] * 6))],
                                  "else", [], [helper.make_tensor_value_info("none", TensorProto.FLOAT, [6])])
        nodes.append(helper.make_node("If", ["yes"], ["read"], then_branch=branch, else_branch=zeros))
    nodes += [helper.make_node("ReduceSum", ["read"], ["sum"], keepdims=0), helper.make_node("Add", ["mean", "sum"], ["probability"])]
    graph = helper.make_graph(nodes, "reader", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 1, 16, 16])],
                              [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("where", ["initializer", "subgraph"])
def test_a_graph_that_reads_another_file_is_refused_and_the_hash_is_checked_first(tmp_path, monkeypatch, where):
    folder = write_export(tmp_path / "best")
    data = _reads_another_file(where)
    (folder / "model.onnx").write_bytes(data)
    (tmp_path / "secret.txt").write_text("SECRET")
    monkeypatch.chdir(tmp_path)  # where onnxruntime looks for it
    (folder / "model.json").write_text(json.dumps(meta(files={"model.onnx": hashlib.sha256(data).hexdigest()})))
    with pytest.raises(UserError, match=r"model\.onnx' keeps tensor 'W' in another file, which cxr_tune never reads"):
        load_model(folder)  # before: loaded, and scored 0 + the secret's bytes
    (tmp_path / "secret.txt").unlink()
    (folder / "model.json").write_text(json.dumps(meta(files={"model.onnx": "0" * 64})))
    with pytest.raises(UserError, match="does not match the hash"):
        load_model(folder)  # before: onnxruntime's "does not exist": the file it names was opened before the hash was read


def _export_of(folder: Path, data: bytes) -> Path:
    """``folder`` holding the graph ``data`` as its model.onnx, with its hash in model.json (as an export records it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    (folder / "model.json").write_text(json.dumps(meta(files={"model.onnx": hashlib.sha256(data).hexdigest()})))
    return folder


def _mean_graph(*, name: str = "image", dtype: int = TensorProto.UINT8, shape: tuple = ("batch", 1, 16, 16), out: tuple = ("batch",),
                twice: bool = False) -> bytes:
    """The mean brightness of each image, with the input ``name``, ``dtype`` and ``shape`` and the output shape ``out`` given;
    ``twice``: each image's score comes twice, though the graph says one per image."""
    from onnx import helper

    nodes = [helper.make_node("Cast", [name], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
             helper.make_node("Unsqueeze", ["mean", "one"], ["probability"]) if len(out) == 2 else
             helper.make_node("Concat", ["mean", "mean"], ["probability"], axis=0) if twice else helper.make_node("Identity", ["mean"], ["probability"])]
    graph = helper.make_graph(nodes, "mean", [helper.make_tensor_value_info(name, dtype, list(shape))],
                              [helper.make_tensor_value_info("probability", TensorProto.FLOAT, list(out))],
                              [helper.make_tensor("axes", TensorProto.INT64, [len(shape) - 1], list(range(1, len(shape)))),
                               helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize(("graph", "takes"), [
    ({"dtype": TensorProto.FLOAT}, "'image' tensor(float) ['batch', 1, 16, 16]"),
    ({"name": "x"}, "'x' tensor(uint8) ['batch', 1, 16, 16]"),
    ({"shape": ("batch", 16, 16)}, "'image' tensor(uint8) ['batch', 16, 16]"),
    ({"shape": ("batch", 3, 16, 16)}, "'image' tensor(uint8) ['batch', 3, 16, 16]"),
    ({"shape": (2, 1, 16, 16), "out": (2,)}, "'image' tensor(uint8) [2, 1, 16, 16]"),
    ({"out": ("batch", 1)}, "gives 'probability' tensor(float) ['batch', 1]"),
])
def test_a_graph_that_does_not_take_and_give_what_an_export_does_is_one_line_naming_it(tmp_path, graph, takes):
    assert np.allclose(probabilities(load_model(_export_of(tmp_path / "good", _mean_graph())), np.zeros((2, 16, 16), np.uint8)), 0)
    folder = _export_of(tmp_path / "best", _mean_graph(**graph))
    with pytest.raises(UserError) as caught:
        load_model(folder)  # before: loaded, then an onnxruntime traceback (or a score per row of pixels) when scoring
    assert f"'{folder / 'model.onnx'}' takes" in str(caught.value) and takes in str(caught.value) and "not what cxr_tune exports" in str(caught.value)


@pytest.mark.parametrize(("value", "shown"), [(float("nan"), "nan"), (1.5, "1.5"), (-0.25, "-0.25"), (float("inf"), "inf")])
def test_scores_that_are_not_probabilities_are_one_line_naming_the_graph(tmp_path, value, shown):
    tiny_onnx(tmp_path / "graph.onnx", constant=value)
    folder = _export_of(tmp_path / "best", (tmp_path / "graph.onnx").read_bytes())
    with pytest.raises(UserError) as caught:
        probabilities(load_model(folder), np.zeros((1, 16, 16), np.uint8))  # before: returned, and NaN is below every threshold
    assert str(caught.value) == (f"'{folder / 'model.onnx'}' gave 1 score(s) outside 0..1 (such as {shown}), not a probability per image; "
                                 "the file was damaged or edited: export the model again")


def test_a_graph_that_gives_more_scores_than_images_is_one_line_naming_it(tmp_path):
    folder = _export_of(tmp_path / "best", _mean_graph(twice=True))
    with pytest.raises(UserError, match=r"model\.onnx' gave 6 scores for 3 image\(s\), not a probability per image"):
        probabilities(load_model(folder), np.zeros((3, 16, 16), np.uint8))  # before: 6 scores, paired with 3 files by whoever read them


def _failing_graph() -> bytes:
    """A graph with an export's interface that fails inside onnxruntime as it scores: it reshapes a batch of N scores to N + 1
    (as a graph allocating more memory than the machine has fails, found only when it runs)."""
    from onnx import helper

    nodes = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
             helper.make_node("Shape", ["image"], ["batch"], end=1),
             helper.make_node("Add", ["batch", "one"], ["more"]),
             helper.make_node("Reshape", ["mean", "more"], ["probability"])]
    graph = helper.make_graph(nodes, "fails", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 1, 16, 16])],
                              [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
                              [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]), helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("command", ["cxr_tune.predict", "cxr_tune.compare"])
def test_a_graph_that_fails_while_scoring_is_one_line_naming_it(tmp_path, command):
    folder = _export_of(tmp_path / "best", _failing_graph())
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / label).mkdir(parents=True)
        Image.fromarray(np.full((16, 16), 90, np.uint8)).save(tmp_path / "data" / label / f"{label}.png")
    other = ["--model", str(write_export(tmp_path / "other"))] if command == "cxr_tune.compare" else []
    done = call_cli(command, "--model", str(folder), *other, str(tmp_path / "data"))
    lines = done.stderr.strip().splitlines()  # before: an onnxruntime traceback (and its log line in colour), status 1
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr and "\x1b" not in done.stderr
    assert lines[0].startswith(f"error: '{folder / 'model.onnx'}' failed while scoring: [ONNXRuntimeError] : 1 : FAIL : ")


def test_predict_never_calls_a_nan_score_normal(tmp_path):
    tiny_onnx(tmp_path / "graph.onnx", constant=float("nan"))
    folder = _export_of(tmp_path / "best", (tmp_path / "graph.onnx").read_bytes())
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(tmp_path / "x.png")
    done = call_cli("cxr_tune.predict", "--model", str(folder), str(tmp_path / "x.png"))
    assert done.returncode == 2 and "NORMAL" not in done.stdout and "Traceback" not in done.stderr  # before: "nan  NORMAL  x.png", exit 0
    assert done.stderr.strip().splitlines() == [f"error: '{folder / 'model.onnx'}' gave 1 score(s) outside 0..1 (such as nan), not a probability per image; "
                                               "the file was damaged or edited: export the model again"]


def test_the_projects_onnxruntime_sessions_write_no_telemetry(tmp_path):
    """onnxruntime 1.31 starts a telemetry uploader as it is imported: every export and predict wrote a device id
    and queued events (OS, CPU, memory, the interpreter's path) to ~/.cache/Microsoft/DeveloperTools, and with a
    read-only HOME printed a warning in colour. Its opt-out is read as it is imported; the package sets it first."""
    import os
    import subprocess
    import sys

    model = _export_of(tmp_path / "best", _mean_graph())
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | {"HOME": str(home)}
    score = "import sys, numpy; from cxr_tune.serving import load_model, probabilities; print(probabilities(load_model(sys.argv[1]), numpy.zeros((1, 16, 16), numpy.uint8)))"
    done = subprocess.run([sys.executable, "-c", score, str(model)], env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


def test_a_model_exported_with_other_preprocessing_loads_without_a_word(tmp_path, capsys):
    """Loading scores nothing: whether the images a command scores decode otherwise is said where they are decoded
    (tests/test_predict.py). Before: every load of a version-1 model warned, whatever it went on to score."""
    from cxr_tune.data.imaging import PREPROCESS_VERSION
    from cxr_tune.serving import read_meta

    old = write_export(tmp_path / "old", preprocessing={"image_size": 16, "preprocess_version": PREPROCESS_VERSION - 1})
    assert load_model(old).threshold == 0.5
    read_meta(old / "model.json")  # search --report-only reads the recorded export options, then exports again
    assert capsys.readouterr().err == ""


class _OnnxruntimeStoppedAsItLoads:
    """``import onnxruntime`` as it fails when a Ctrl-C or SIGTERM lands while its native module initializes: pybind11
    turns the KeyboardInterrupt into ``ImportError: initialization failed`` (about 30-50 ms of every first import)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "onnxruntime":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as stop:
                raise ImportError("initialization failed") from stop


def test_a_stop_while_onnxruntime_loads_stops_predict_and_an_export_as_a_stop_does(tmp_path, monkeypatch):
    """Before: a Ctrl-C that landed as a search's export (or predict) imported onnxruntime came out as a traceback ending in
    "ImportError: initialization failed" and status 1, with no line saying how to go on."""
    import sys

    from cxr_tune.modelfile import build_files
    from tests.model_exports import brightness_members

    model = write_export(tmp_path / "best", image_size=16)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((16, 16), 40, dtype=np.uint8)).save(images / "a.png")
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_OnnxruntimeStoppedAsItLoads(), *sys.meta_path])
    done = call_cli("cxr_tune.predict", "--model", str(model), str(images), "--quiet")
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
    with pytest.raises(KeyboardInterrupt):  # what the search's export turns into its "write them with --report-only" line
        build_files(brightness_members())
