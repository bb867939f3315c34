"""The stand-in's ground truth, as seen through the hierarchy: what is really playing in each clip
(from ``synth-ground-truth.csv``), and how right coarse labels derived from partial fine labels are."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hmic.data.openmic import OpenMIC
from hmic.errors import HmicError
from hmic.data.hierarchy import COARSE_RULES, Hierarchy, load_hierarchy


def coarse_truth(root: Path, keys: list[str], hierarchy: Hierarchy) -> np.ndarray:
    """(N, C) bool: coarse tag c truly present in clip i (any child's stem audible)."""
    path = root / "synth-ground-truth.csv"
    if not path.exists():
        raise HmicError(f"{path} is missing: only a stand-in made by 'hmic synth' carries its ground truth")
    index = {k: i for i, k in enumerate(keys)}
    fine = {n: j for j, n in enumerate(hierarchy.fine_names)}
    truth = np.zeros((len(keys), hierarchy.n_coarse), dtype=bool)
    above = hierarchy.membership.T > 0  # (F, C): the coarse nodes above each fine tag (its parent at depth 2)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            i = index.get(row["sample_key"])
            if i is not None and row["present"] == "1":
                truth[i, above[fine[row["instrument"]]]] = True
    return truth


def coarse_rule_accuracy(root: Path, hierarchy_path: str | None = None) -> dict[str, dict[str, float]]:
    dataset = OpenMIC.load(root)
    hierarchy = load_hierarchy(hierarchy_path, dataset.class_names)
    labels = dataset.labels
    truth = coarse_truth(root, labels.keys, hierarchy)
    out = {}
    for rule in COARSE_RULES:
        _, _, targets, mask = hierarchy.targets(labels.targets, labels.mask, rule)
        said = targets > 0.5
        wrong = (said != truth) & mask
        out[rule] = {"observed_share": float(mask.mean()), "wrong_share": float(wrong.sum() / max(mask.sum(), 1)),
                     "wrong_positive_share": float((wrong & said).sum() / max((mask & said).sum(), 1)),
                     "wrong_negative_share": float((wrong & ~said).sum() / max((mask & ~said).sum(), 1)),
                     "observed": int(mask.sum()), "entries": int(mask.size)}
    return out
