"""Grad-CAM follows the evidence: a tiny CNN trained for a second to find a bright opacity on noise
puts its map's mass on the opacity. Ensembles average their members' maps, every architecture has
a layer to read, and ``predict --explain`` writes one figure per image from the export's weights."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_tune.bench.bare import BareRun
from cxr_tune.modelfile import Members
from cxr_tune.saliency import grad_cam, target_layer
from cxr_tune.train.hparams import HParams
from cxr_tune.train.model import build_model
from cxr_tune.train.precision import resolve
from tests.conftest import call_cli
from tests.model_exports import export_folder, kermany_set, save_images

SIZE, RADIUS = 32, 5


def opacity_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise films; every second one has a bright disc (the opacity) at a random place. (images, labels, disc masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = rng.normal(90, 25, (n, SIZE, SIZE))
    labels = np.arange(n) % 2
    centres = rng.integers(RADIUS + 2, SIZE - RADIUS - 2, (n, 2))
    discs = np.array([(yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS**2 for cy, cx in centres])
    images[labels == 1] += 90 * discs[labels == 1]
    return np.clip(images, 0, 255).astype(np.uint8), labels, discs


@pytest.fixture(scope="module")
def trained() -> Members:
    """A two-block CNN trained with the project's own step (fp32, CPU) to tell opacity from none."""
    torch.manual_seed(0)
    images, labels, _ = opacity_images(256, seed=0)
    hp = HParams(image_size=SIZE, depth=2, filters=8, intensity="none", augment_strength=0.0, class_weighting="none",
                 lr=3e-3, batch_size=32, epochs=4, warmup_epochs=0, dropout=0.0, seed=0)
    run = BareRun(hp, resolve("fp32", "cpu", "contiguous"), torch.device("cpu"), torch.from_numpy(images), torch.from_numpy(labels).float())
    for _ in range(hp.epochs):
        run.train_epoch()
    test, test_labels, _ = opacity_images(40, seed=1)
    assert ((run.scores(test) >= 0.5) == test_labels).mean() > 0.95  # it learned the task
    return Members([run.net.eval()], [hp])


def test_the_map_sits_on_the_opacity(trained):
    images, labels, discs = opacity_images(40, seed=1)
    maps = grad_cam(trained, images[labels == 1])
    assert maps.shape == (20, SIZE, SIZE) and (maps >= 0).all()
    area = discs[0].mean()  # the disc's share of the image: about 0.08
    shares = np.array([heat[disc].sum() / heat.sum() for heat, disc in zip(maps, discs[labels == 1], strict=True)])
    assert (shares > 4 * area).all() and np.median(shares) > 0.4  # most of the map's mass on 8 % of the image


def test_an_ensembles_map_is_the_mean_of_its_members_maps(trained):
    images, _, _ = opacity_images(6, seed=2)
    torch.manual_seed(1)
    other = build_model(trained.hparams[0]).eval()
    both = Members([trained.nets[0], other], trained.hparams * 2)
    alone = [grad_cam(Members([net], trained.hparams), images) for net in both.nets]
    assert np.allclose(grad_cam(both, images), (alone[0] + alone[1]) / 2, atol=1e-6)


@pytest.mark.parametrize("config", [{"arch": "resnet18"}, {"arch": "densenet121"}, {"arch": "cnn", "block": "residual", "se_ratio": 0.25}])
def test_every_network_has_a_layer_to_read(config):
    hp = HParams(image_size=32, depth=2, filters=4, **config)
    torch.manual_seed(0)
    net = build_model(hp).eval()
    layer, _ = target_layer(net)
    assert isinstance(layer, torch.nn.Module)
    maps = grad_cam(Members([net], [hp]), opacity_images(2, seed=3)[0])
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and (maps >= 0).all()


def test_predict_explain_writes_one_figure_per_image_and_needs_the_networks_model_onnx_was_built_from(tmp_path):
    export_folder(tmp_path / "model")
    folder = save_images(kermany_set(4, 6), tmp_path / "images")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "explained"
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(folder), "--explain", str(out), "--operating-point", "sens95")
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.with_suffix(".png").name for p in folder.rglob("*.png") if p.name != "broken.png")
    assert "Wrote 4 Grad-CAM explanation(s)" in done.stdout
    with Image.open(out / written[0]) as figure:
        assert figure.size[0] > figure.size[1] > 100  # the image and its map side by side

    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    meta["members"][0]["hparams"]["dropout"] = 5  # an edit
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(folder), "--explain", str(tmp_path / "x"))
    assert done.returncode == 2 and "model.json': members[0] is not a network" in done.stderr and "Traceback" not in done.stderr

    # Before: maps of the network the edited model.json rebuilt (another intensity map) beside model.onnx's probability.
    meta["members"][0]["hparams"].update(dropout=0.0, intensity="zscore")  # the graph maps intensity with none
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(folder), "--explain", str(tmp_path / "edited"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"'{tmp_path / 'model' / 'model.json'}' no longer describes '{tmp_path / 'model' / 'model.onnx'}': " in done.stderr
    assert not list((tmp_path / "edited").glob("*.png"))

    (tmp_path / "model" / "weights.safetensors").unlink()
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(tmp_path / "no-such-folder"), "--explain", str(tmp_path / "x"))
    assert done.returncode == 2 and "weights.safetensors' is missing; --explain needs" in done.stderr
    assert not (tmp_path / "x").exists()


def test_predict_explain_on_a_model_folder_replaced_after_it_was_loaded_says_so_in_one_line(tmp_path, monkeypatch):
    """An export swapped a whole new folder in while --explain imported torch (seconds, between model.onnx and
    weights.safetensors): it said "the folder mixes two exports: export the model again" of a folder whole all along."""
    import cxr_tune.predict
    from cxr_tune.modelfile import build_files, write_model_folder
    from tests.model_exports import brightness_members

    export_folder(tmp_path / "model")
    images = save_images(kermany_set(2, 6), tmp_path / "images")
    real_load = cxr_tune.predict.load_model

    def swapped_after_loading(path):
        loaded = real_load(path)
        other = {key: value for key, value in loaded.meta.items() if key != "files"}
        write_model_folder(str(tmp_path / "model"), build_files(brightness_members(90.0)), other)  # export --out model, meanwhile
        return loaded

    monkeypatch.setattr(cxr_tune.predict, "load_model", swapped_after_loading)
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(images), "--explain", str(tmp_path / "maps"))
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: the model folder '{tmp_path / 'model'}' was replaced (by another export or adapt) while this command read it; "
        "run the command again")


def test_figures_of_images_with_the_same_file_name_name_their_paths_and_the_csv_maps_each_to_its_figure(tmp_path, monkeypatch):
    """x.jpeg in two folders gave x.png and x-1.png, both captioned "x.jpeg", and nothing said which was which."""
    import cxr_tune.saliency

    export_folder(tmp_path / "model")
    scored = kermany_set(1, 6)
    pixels = scored.images[0]
    for site in ("siteA", "siteB"):
        (tmp_path / site).mkdir()
        Image.fromarray(pixels).save(tmp_path / site / "x.png")
    captions = {}
    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", lambda path, image, heat, caption, grid: captions.__setitem__(path.name, caption))
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(tmp_path / "siteA"), str(tmp_path / "siteB"),
                    "--explain", str(tmp_path / "out"), "--csv", str(tmp_path / "p.csv"))
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(tmp_path / "p.csv")
    assert sorted(rows["explanation"]) == ["x-1.png", "x.png"]
    for row in rows.itertuples():  # the caption names the folder given (its end, when long), not just x.png
        name, folder = captions[row.explanation].splitlines()[:2]
        assert name == "x.png" and folder.startswith("in ") and folder.endswith(f"/{row.path.rsplit('/', 2)[1]}")
    assert len({caption.splitlines()[1] for caption in captions.values()}) == 2


def test_the_figures_say_the_image_is_the_squashed_model_input_and_each_map_has_its_own_scale(tmp_path, monkeypatch):
    """A wide film showed as a square titled "image", and a P=0.1 map as red as a P=0.99 one's with nothing saying why."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from cxr_tune.saliency import explain_figure, plot_gallery

    texts, save = [], Figure.savefig

    def saving(fig: Figure, *args, **kwargs) -> None:
        texts.append(" ".join(text.get_text() for text in fig.findobj(Text)))
        save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", saving)
    image, heat = opacity_images(1, seed=4)[0][0], np.ones((SIZE, SIZE))
    explain_figure(tmp_path / "one.png", image, heat, "x.png")
    plot_gallery(tmp_path / "all.png", {"true positives": [(image, heat, "x.png")]})
    assert f"model input ({SIZE}x{SIZE}, aspect ratio not kept)" in texts[0] and "aspect ratio not kept" in texts[1]
    assert all("Each map is scaled to its own image's maximum" in text for text in texts)


def test_a_figure_titled_with_a_file_name_the_font_lacks_glyphs_for_escapes_them_without_a_warning(tmp_path, monkeypatch):
    """'肺炎_1.png' was titled with two empty boxes (matplotlib's DejaVu Sans has no CJK) and matplotlib warned "Glyph ...
    missing from font(s) DejaVu Sans"; a name with '$\\x$' in it was read as mathtext and stopped the figure's savefig."""
    import warnings

    from matplotlib.figure import Figure

    from cxr_tune.saliency import plot_gallery

    export_folder(tmp_path / "model")
    pixels = kermany_set(1, 6).images[0]
    folder = tmp_path / "NORMAL"
    folder.mkdir()
    for name in ("肺炎_1.png", "scan$\\x$_2.png", "tête_3.png"):
        Image.fromarray(pixels).save(folder / name)
    titles, save = [], Figure.savefig

    def saving(fig: Figure, path, *args, **kwargs) -> None:
        titles.append(fig.get_suptitle().splitlines()[0])
        save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", saving)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(folder), "--explain", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert not [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan$\\x$_2.png", "tête_3.png", "肺炎_1.png"]
    assert "\\u80ba\\u708e_1.png" in titles  # 肺炎_1.png, as the console shows what it cannot print
    assert "tête_3.png" in titles  # what the font has stays as it is
    assert "scan\\$\\x\\$_2.png" in titles and len(titles) == 3  # scan$\x$_2.png, drawn as written, not as mathtext

    with warnings.catch_warnings(record=True) as caught:  # the report's gallery titles each map with its file name too
        warnings.simplefilter("always")
        plot_gallery(tmp_path / "gallery.png", {"true positives": [(pixels, np.ones(pixels.shape), "肺炎_1.png\nP(PNEUMONIA) 0.9")]})
    assert not [str(w.message) for w in caught if "Glyph" in str(w.message)]


def test_an_explanation_figure_stopped_while_it_is_written_leaves_no_cut_png(tmp_path, monkeypatch):
    """Before: written in place; a Ctrl-C inside the write left a cut PNG (124 bytes seen) among predict --explain's figures."""
    import io
    from pathlib import Path

    from matplotlib.figure import Figure

    from cxr_tune.saliency import explain_figure

    whole = Figure.savefig

    def cut_short(self, target, **kwargs):
        buffer = io.BytesIO()
        whole(self, buffer, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if hasattr(target, "write"):
            target.write(half)
        else:
            Path(target).write_bytes(half)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", cut_short)
    image = np.full((16, 16), 128, dtype=np.uint8)
    with pytest.raises(KeyboardInterrupt):
        explain_figure(tmp_path / "one.png", image, np.zeros((16, 16)), "one.png")
    assert list(tmp_path.iterdir()) == []


def test_a_figure_holds_the_whole_caption_of_a_long_file_name(tmp_path, monkeypatch):
    """The caption names the image's file: a long name (a hospital's export, say) ran past the 7-inch figure's edges and
    the saved PNG cut it at both ends, as confusion.png cut its threshold."""
    from matplotlib.figure import Figure

    from cxr_tune.saliency import explain_figure

    drawn, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (drawn.append((fig.get_tightbbox(), kwargs["dpi"])), save(fig, *args, **kwargs)))
    image, heat = opacity_images(1, seed=4)[0][0], np.ones((SIZE, SIZE))
    caption = "site_export_2026-12-07/" + "series_0042_frontal_view_" * 4 + "0001.png\nP(PNEUMONIA) 0.91 at threshold 0.91"
    explain_figure(tmp_path / "one.png", image, heat, caption)
    (bbox, dpi), = drawn
    width, height = Image.open(tmp_path / "one.png").size
    assert width / dpi >= bbox.width - 0.01 and height / dpi >= bbox.height - 0.01, (width / dpi, bbox.width)


def test_the_maps_hottest_colour_is_their_brightest_and_a_colourbar_says_low_to_high(tmp_path, monkeypatch):
    """cmap="jet" and no colourbar: in greyscale its hottest (dark red) printed as dark as its coldest (dark blue), the
    hot spots lost, and nothing on the figure said which colour was high."""
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

    from cxr_tune.saliency import explain_figure, plot_gallery

    drawn, save = [], Figure.savefig

    def saving(fig: Figure, *args, **kwargs) -> None:
        maps = [image for image in fig.findobj(AxesImage) if image.get_alpha() is not None]  # the maps, over the gray images
        bars = [ax.get_ylabel() or ax.get_xlabel() for ax in fig.axes if hasattr(ax, "_colorbar")]
        drawn.append((maps, bars))
        save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", saving)
    image, heat = opacity_images(1, seed=4)[0][0], np.ones((SIZE, SIZE))
    explain_figure(tmp_path / "one.png", image, heat, "x.png")
    plot_gallery(tmp_path / "all.png", {"true positives": [(image, heat, "x.png")] * 3, "false positives": [(image, heat, "y.png")]})
    for maps, bars in drawn:
        assert maps and bars == ["Grad-CAM, low to high (scaled per image)"]  # one colourbar, the gallery's too
        for shown in maps:
            rgb = shown.get_cmap()(np.linspace(0, 1, 256))[:, :3]
            luminance = rgb @ [0.2126, 0.7152, 0.0722]
            assert (np.diff(luminance) > -1e-3).all() and luminance[-1] > 0.8 > 0.1 > luminance[0]  # dark to bright, in grey too


def test_an_explanation_of_an_image_deep_in_long_folders_keeps_its_width_and_reads_as_the_console(tmp_path, monkeypatch, capsys):
    """The caption was the whole path: a long one made a 1856x387 figure (bbox tight), and its P 0.550 at threshold 0.557
    did not read as the console's 0.5500 / 0.5566."""
    import cxr_tune.saliency
    from cxr_tune.predict import main

    export_folder(tmp_path / "model")
    deep = tmp_path.joinpath(*(["hospital_export_2026_series_0042_frontal_views"] * 4))
    save_images(kermany_set(1, 6), deep)
    captions, draw = [], cxr_tune.saliency.explain_figure
    monkeypatch.setattr(cxr_tune.saliency, "explain_figure",
                        lambda path, image, heat, caption, grid: (captions.append(caption), draw(path, image, heat, caption, grid=grid)))
    assert main(["--model", str(tmp_path / "model"), str(deep), "--explain", str(tmp_path / "out")]) == 0
    console = capsys.readouterr().out.splitlines()
    (caption,), (figure,) = captions, list((tmp_path / "out").iterdir())
    image = next(deep.rglob("*.png"))
    name, folder, called, _ = caption.splitlines()  # then the model and the score's meaning
    assert name == image.name and folder.startswith("in ...") and folder.endswith(f"/{image.parent.name}")  # which of two x.png
    probability = next(line.split()[0] for line in console if line.endswith(image.name))  # the console's, four decimals
    assert called.startswith(f"P(PNEUMONIA) {probability}: ") and re.search(r"\(threshold \d\.\d{4}\)", called)
    with Image.open(figure) as drawn:
        assert drawn.size[0] < 900, drawn.size  # the two panels, not a path's width


def test_every_figure_of_maps_says_the_grid_its_model_resolves(tmp_path, monkeypatch):
    """The committed model's maps are 4x4 cells smoothed up to 64 px: their soft shading looked fine enough to tell a lung
    zone from a marker, and neither an --explain figure nor the report's gallery said how coarse they are."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from cxr_tune.modelfile import load_members
    from cxr_tune.saliency import cam_grid, explain_figure, plot_gallery
    from cxr_tune.serving import load_model
    from tests.conftest import ROOT

    committed = load_model(str(ROOT / "results" / "real" / "best"))
    assert cam_grid(load_members(str(committed.folder), committed.meta)) == "Grad-CAM at 4x4 cells, each 16x16 px of the input"
    torch.manual_seed(0)
    nets = {arch: build_model(HParams(image_size=SIZE, depth=2, filters=4, arch=arch)).eval() for arch in ("cnn", "resnet18")}
    hparams = [HParams(image_size=SIZE, depth=2, filters=4, arch=arch) for arch in nets]
    assert cam_grid(Members([nets["resnet18"]], hparams[1:])) == "Grad-CAM at 1x1 cells, each 32x32 px of the input"  # layer4: 1/32
    assert cam_grid(Members(list(nets.values()), hparams)) == ("Grad-CAM averaged over members at 16x16 cells, each 2x2 px of the "
                                                               "input, and 1x1 cells, each 32x32 px")

    texts, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (texts.append(" ".join(t.get_text() for t in fig.findobj(Text))),
                                                                         save(fig, *args, **kwargs)))
    image, heat = opacity_images(1, seed=4)[0][0], np.ones((SIZE, SIZE))
    grid = cam_grid(Members([nets["cnn"]], hparams[:1]))
    explain_figure(tmp_path / "one.png", image, heat, "x.png", grid=grid)
    plot_gallery(tmp_path / "all.png", {"true positives": [(image, heat, "x.png")]}, grid=grid)
    assert all("Grad-CAM at 16x16 cells, each 2x2 px of the input" in text for text in texts), texts
