"""Benchmarks: measurements taken side by side in one run, written to ``results/benchmarks/``.

Run them with ``python -m cxr_tune.bench COMMAND`` (:mod:`cxr_tune.bench.__main__` and its ``--help`` list the
commands). Most need the real data (``../shared/data/chest_xray_224`` or ``--data``) and take minutes; they are never
part of the test suite.
"""
