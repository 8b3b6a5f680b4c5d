"""bench train: its summary names the data it trained on."""

from __future__ import annotations

import pandas as pd

from cxr_tune.bench.train import MODEL, summary
from cxr_tune.train.hparams import HParams


def test_the_summary_names_the_data_not_always_real_images():
    frame = pd.DataFrame([{"image_size": 32, "precision": "fp32", "layout": layout, "bare_img_s": 10.0, "ray_img_s": 8.0}
                          for layout in ("contiguous", "channels_last")])
    text = "\n".join(summary(frame, HParams(image_size=32, epochs=2, **MODEL), 2, 64, 2, "SYNTHETIC chest X-rays (generated, not real patients) at /d/syn"))
    assert "64 training images of the SYNTHETIC chest X-rays (generated, not real patients) at /d/syn per epoch" in text
    assert "real training" not in text
