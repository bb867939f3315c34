"""How right are coarse labels derived from partial fine labels? Measured on a stand-in dataset,
whose every stem's truth is known (``synth-ground-truth.csv``).

    python benchmarks/coarse_rules.py DATA_DIR [--hierarchy FILE]

For each rule of ``--coarse-rule``: the share of coarse entries that end up observed, and the share of
observed coarse labels that are wrong (a coarse tag is truly present when any of its fine tags'
stems is audible), split into wrong positives and wrong negatives.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hmic.dataset import OpenMIC  # noqa: E402
from hmic.errors import HmicError  # noqa: E402
from hmic.hierarchy import COARSE_RULES, Hierarchy, load_hierarchy  # noqa: E402


def true_coarse(root: Path, keys: list[str], hierarchy: Hierarchy) -> np.ndarray:
    """(N, C) bool: coarse tag c truly present in clip i (any child's stem audible)."""
    path = root / "synth-ground-truth.csv"
    if not path.exists():
        raise HmicError(f"{path} is missing: only a stand-in made by 'hmic synth' carries its ground truth")
    index = {k: i for i, k in enumerate(keys)}
    fine = {n: j for j, n in enumerate(hierarchy.fine_names)}
    truth = np.zeros((len(keys), hierarchy.n_coarse), dtype=bool)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            i = index.get(row["sample_key"])
            if i is not None and row["present"] == "1":
                truth[i, hierarchy.parent[fine[row["instrument"]]]] = True
    return truth


def measure(root: Path, hierarchy_path: str | None = None) -> dict[str, dict[str, float]]:
    dataset = OpenMIC.load(root)
    hierarchy = load_hierarchy(hierarchy_path, dataset.class_names)
    labels = dataset.labels
    truth = true_coarse(root, labels.keys, hierarchy)
    out = {}
    for rule in COARSE_RULES:
        targets, mask = hierarchy.coarse_targets(labels.targets, labels.mask, rule)
        said = targets > 0.5
        wrong = (said != truth) & mask
        out[rule] = {"observed_share": float(mask.mean()), "wrong_share": float(wrong.sum() / max(mask.sum(), 1)),
                     "wrong_positive_share": float((wrong & said).sum() / max((mask & said).sum(), 1)),
                     "wrong_negative_share": float((wrong & ~said).sum() / max((mask & ~said).sum(), 1)),
                     "observed": int(mask.sum()), "entries": int(mask.size)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--hierarchy", default=None)
    args = ap.parse_args()
    result = measure(args.data_dir, args.hierarchy)
    print(f"{args.data_dir}: {next(iter(result.values()))['entries']} coarse entries")
    print(f"{'rule':<8}{'observed':>10}{'wrong':>9}{'wrong +':>9}{'wrong -':>9}")
    for rule, r in result.items():
        print(f"{rule:<8}{100 * r['observed_share']:>9.1f}%{100 * r['wrong_share']:>8.1f}%"
              f"{100 * r['wrong_positive_share']:>8.1f}%{100 * r['wrong_negative_share']:>8.1f}%")


if __name__ == "__main__":
    main()
