"""hmic: hierarchical multi-label music instrument classification.

The public surface for Python users, one import away::

    import hmic

    tagger = hmic.FileTagger.load("runs/gmp/lam0.80/seed0")      # a tuned run (or its best.pt)
    report = hmic.tag_files(tagger, ["song.wav"], json_out="tags.json")

    cfg = hmic.TrainConfig(method="gmp", lam=0.8, seed=0, data_dir="data/openmic-2018")
    summary = hmic.train_run(cfg)                                  # one run into its folder
    hmic.tune_run(hmic.Run(summary["run"]))                        # its per-tag thresholds
    scores = hmic.evaluate_runs(hmic.find_runs(["runs"]))          # mean ± std over runs

Names are imported when first used, so ``import hmic`` is cheap and imports no torch. The stages behind
them, lowest first: ``hmic.audio``, ``hmic.data``, ``hmic.models``, ``hmic.runs``, ``hmic.evaluation``,
``hmic.training``, ``hmic.tagging``; the command line is ``hmic.cli``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    # errors and configs
    "HmicError": "hmic.errors",
    "TrainConfig": "hmic.training.config",
    "FrontendConfig": "hmic.audio.decoding",
    "BackboneConfig": "hmic.models",
    # the hierarchy
    "Hierarchy": "hmic.data.hierarchy",
    "load_hierarchy": "hmic.data.hierarchy",
    # training
    "train_run": "hmic.training.finetune",
    "plan_grid": "hmic.training.grid",
    "run_grid": "hmic.training.grid",
    # runs and their evaluation
    "Run": "hmic.runs.run",
    "find_runs": "hmic.runs.run",
    "select_lambda": "hmic.runs.selection",
    "tune_run": "hmic.evaluation.scoring",
    "evaluate_run": "hmic.evaluation.scoring",
    "evaluate_runs": "hmic.evaluation.scoring",
    # tagging
    "FileTagger": "hmic.tagging.tagger",
    "tag_files": "hmic.tagging.library",
    "expand_inputs": "hmic.tagging.inputs",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hmic' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
