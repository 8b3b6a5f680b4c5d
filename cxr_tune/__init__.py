"""cxr_tune: Ray-distributed hyperparameter search for pediatric chest X-ray pneumonia CNNs.

The pieces, in the order data flows through them:

- :mod:`cxr_tune.data`   — manifest, leak-free splits, Ray Data image cache
- :mod:`cxr_tune.train`  — hyperparameters, CNN, augmentation, metrics, Ray Train loop
- :mod:`cxr_tune.search` — search-space files, Ray Tune + Optuna + ASHA, selection, report
- :mod:`cxr_tune.export` / :mod:`cxr_tune.predict` — a pickle-free ONNX model and its use
"""

__version__ = "0.1.0"
