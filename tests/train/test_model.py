"""The CNN builds for every depth the image allows and refuses the rest."""

from __future__ import annotations

import pytest
import torch

from cxr_tune.train.hparams import HParams, HParamsError
from cxr_tune.train.model import ServingModel, build_model, max_depth


@pytest.mark.parametrize("depth", range(1, max_depth(32) + 1))
def test_every_possible_depth_builds_and_gives_one_logit(depth):
    hp = HParams(image_size=32, depth=depth, filters=4, width_growth=1.5, convs_per_block=2)
    logits = build_model(hp)(torch.randn(3, 1, 32, 32))
    assert logits.shape == (3,)


@pytest.mark.parametrize(("size", "depth"), [(32, 6), (64, 7), (16, 5)])
def test_a_depth_that_shrinks_the_map_below_one_pixel_is_refused(size, depth):
    with pytest.raises(HParamsError, match=rf"depth={depth} would shrink a {size} px image below 1x1"):
        build_model(HParams(image_size=size, depth=depth))


@pytest.mark.parametrize("intensity", ["none", "zscore", "equalize"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_the_exported_model_sees_what_training_saw(intensity, layout):
    """No drift between the training pipeline and what ships: the network's input in a training
    step (uint8 batch -> [0, 1] -> intensity normalization, augmentation off), the scores the loop
    stores with a checkpoint, the ServingModel and the exported ONNX graph agree on the same pixels."""
    import numpy as np

    from cxr_tune.modelfile import Members, build_files
    from cxr_tune.train.intensity import normalize_intensity
    from cxr_tune.train.precision import resolve
    from cxr_tune.train.steps import score_batches, to_inputs

    hp = HParams(image_size=32, depth=3, filters=8, intensity=intensity, block="residual", se_ratio=0.25)
    torch.manual_seed(0)
    net = build_model(hp).eval()
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 32, 32), dtype=np.uint8))
    precision = resolve("bf16", "cpu", layout)  # how the loop trains; scoring is fp32 whatever the precision
    seen_in_training = normalize_intensity(to_inputs(pixels, precision.memory_format), hp.intensity)
    serving = ServingModel(net, hp.intensity).eval()
    seen_when_serving = normalize_intensity(pixels[:, None].float() / 255.0, hp.intensity)
    assert torch.allclose(seen_in_training, seen_when_serving, atol=1e-6)
    stored = score_batches(net.to(memory_format=precision.memory_format), [{"image": pixels, "label": np.zeros(6), "content_hash": np.arange(6)}],
                           hp, torch.device("cpu"), precision)[1]
    with torch.no_grad():
        served = serving(pixels[:, None]).numpy()
    onnx = build_files(Members([net], [hp])).scores(pixels.numpy())
    assert np.abs(stored - served).max() < 1e-5 and np.abs(onnx - served).max() < 1e-5


@pytest.mark.parametrize("config", [{"arch": "cnn", "block": "residual", "se_ratio": 0.25, "convs_per_block": 2},
                                    {"arch": "resnet18"}, {"arch": "densenet121"}])
def test_every_architecture_trains_a_step_and_exports_to_onnx_as_it_scores(config):
    import numpy as np

    from cxr_tune.bench.bare import BareRun
    from cxr_tune.modelfile import Members, build_files
    from cxr_tune.train.precision import resolve

    hp = HParams(image_size=32, depth=2, filters=4, epochs=1, batch_size=8, **config)
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (16, 32, 32), dtype=np.uint8))
    run = BareRun(hp, resolve("bf16", "cpu"), torch.device("cpu"), pixels, (torch.arange(16) % 2).float())
    run.train_epoch()
    scores = run.scores(pixels.numpy())
    files = build_files(Members([run.net.eval()], [hp]), check_images=pixels.numpy())  # refuses an ONNX graph that disagrees with PyTorch
    assert np.abs(files.scores(pixels.numpy()) - scores).max() < 1e-4


def test_a_local_pretrained_file_starts_a_grayscale_network_without_downloading(tmp_path):
    """torchvision's ImageNet layout (three-channel stem, 1000-class head), as a user's own file."""
    import torchvision
    from safetensors.torch import save_file

    from cxr_tune.train.model import load_weights

    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    save_file({k: v.contiguous() for k, v in imagenet.items()}, tmp_path / "resnet18.safetensors")
    torch.save(imagenet, tmp_path / "resnet18.pth")
    for path in (tmp_path / "resnet18.safetensors", tmp_path / "resnet18.pth"):
        net = build_model(HParams(image_size=64, arch="resnet18"))
        missing = load_weights(net, str(path))
        assert torch.allclose(net.net.conv1.weight, imagenet["conv1.weight"].sum(dim=1, keepdim=True))  # RGB stem summed to gray
        assert torch.equal(net.net.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])
        assert set(missing) == {"net.fc.1.weight", "net.fc.1.bias"}  # the one-logit head starts fresh
    with pytest.raises(ValueError, match="fills"):
        load_weights(build_model(HParams(image_size=64, depth=2)), str(tmp_path / "resnet18.pth"))
    (tmp_path / "empty.pth").write_bytes(b"")  # torch says EOFError('') of it, KeyError('101') of a text file: neither says what is wrong
    (tmp_path / "page.safetensors").write_text("<html>a download that failed</html>")
    torch.save([imagenet["conv1.weight"]], tmp_path / "list.pth")
    for name, reason in (("empty.pth", "cannot be read as a PyTorch file of tensors"), ("page.safetensors", "cannot be read as a safetensors file"),
                         ("list.pth", "holds a list, not a state dict")):
        with pytest.raises(ValueError, match=f"'{tmp_path / name}' {reason}"):
            load_weights(build_model(HParams(image_size=64, arch="resnet18")), str(tmp_path / name))


def test_a_densenet_file_with_torchvisions_legacy_key_names_fills_the_whole_network(tmp_path):
    import re

    import torchvision

    from cxr_tune.train.model import load_weights

    state = torchvision.models.densenet121(weights=None).state_dict()
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}  # as the ImageNet file names them
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "densenet121.pth")
    net = build_model(HParams(image_size=64, arch="densenet121"))
    missing = load_weights(net, str(tmp_path / "densenet121.pth"))
    assert set(missing) == {"net.classifier.1.weight", "net.classifier.1.bias"}
    with pytest.raises(ValueError, match="fills"):  # a ResNet file for a DenseNet: the wrong architecture
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
        load_weights(net, str(tmp_path / "resnet18.pth"))


def test_a_deeper_siblings_or_another_widths_file_is_refused_not_loaded_in_part(tmp_path):
    import torchvision

    from cxr_tune.train.model import load_weights

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")  # ResNet-18's names, and more
    with pytest.raises(ValueError, match=r"fills 120 of this network's 122 tensors and does not fit it: 96 of the file's tensors are left over \(layer1\.2\."):
        load_weights(build_model(HParams(image_size=64, arch="resnet18")), str(tmp_path / "resnet34.pth"))
    torch.save(build_model(HParams(image_size=64, depth=4, filters=32)).state_dict(), tmp_path / "cnn.pth")
    assert load_weights(build_model(HParams(image_size=64, depth=4, filters=32)), str(tmp_path / "cnn.pth")) == []  # its own: all of it
    with pytest.raises(ValueError, match=r"3 of its parameters find no tensor of their shape \(features\.12\.weight"):
        load_weights(build_model(HParams(image_size=64, depth=4, block_filters=(32, 64, 128, 512))), str(tmp_path / "cnn.pth"))


def test_a_weights_file_that_is_missing_or_not_weights_is_one_line_and_a_bug_of_ours_is_not_blamed_on_it(tmp_path, monkeypatch):
    """train and search check --weights with this one rule (before: two copies, each catching any exception, so an error
    of our own in building or loading the network was reported as the user's file)."""
    import cxr_tune.train.model as model
    from cxr_tune.errors import UserError

    net = build_model(HParams(image_size=64, arch="resnet18"))
    with pytest.raises(UserError, match=rf"^--weights resnet18: '{tmp_path / 'missing.pth'}' does not exist$"):
        model.check_weights_file(net, str(tmp_path / "missing.pth"), flag="--weights resnet18")
    (tmp_path / "page.html").write_text("<html>a download that failed</html>")
    with pytest.raises(UserError, match=rf"^--weights: '{tmp_path / 'page.html'}' cannot be read as a PyTorch file of tensors"):
        model.check_weights_file(net, str(tmp_path / "page.html"))

    def ours(*args):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(model, "load_weights", ours)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        model.check_weights_file(net, str(tmp_path / "page.html"))
