"""`hmic split`: carve a validation set out of the official train partition.

Iterative multi-label stratification (Sechidis et al. 2011, scikit-multilearn) on the binary fine
targets, 15% by default (the paper's choice). The official test partition is kept as is.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmic.data.openmic import OpenMIC, read_keys
from hmic.errors import HmicError
from hmic.fileio import write_json, write_text

PARTS = ("train", "val", "test")


@dataclass
class Split:
    train: list[str]
    val: list[str]
    test: list[str]

    def part(self, name: str) -> list[str]:
        if name not in PARTS:
            raise HmicError(f"unknown split part {name!r}; expected one of {', '.join(PARTS)}")
        return getattr(self, name)

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in PARTS:
            h.update(name.encode() + b"\n" + "\n".join(self.part(name)).encode() + b"\n")
        return h.hexdigest()[:16]


def stratified_split(targets: np.ndarray, val_fraction: float, seed: int, order: int = 2) -> np.ndarray:
    """Boolean (N,) mask of the rows chosen for validation.

    targets: (N, F) binary. scikit-multilearn draws its tie-breaks from numpy's global generator, so
    it is seeded here and the caller's global state is restored afterwards.
    """
    from skmultilearn.model_selection import IterativeStratification

    if not 0.0 < val_fraction < 1.0:
        raise HmicError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    state_np, state_py = np.random.get_state(), random.getstate()
    try:
        np.random.seed(seed)
        random.seed(seed)
        strat = IterativeStratification(
            n_splits=2, order=order, sample_distribution_per_fold=[val_fraction, 1.0 - val_fraction]
        )
        x = np.zeros((targets.shape[0], 1))
        _, val_idx = next(strat.split(x, targets.astype(int)))
    finally:
        np.random.set_state(state_np)
        random.setstate(state_py)
    mask = np.zeros(targets.shape[0], dtype=bool)
    mask[val_idx] = True
    return mask


def make_split(dataset: OpenMIC, val_fraction: float = 0.15, seed: int = 0, order: int = 2) -> Split:
    """Validation carved out of the train partition by iterative stratification; a dataset with
    groups (``groups.csv``) is stratified over its groups (a group's labels: any of its clips'), so
    that no group is split between train and validation."""
    train_labels = dataset.labels.subset(dataset.train_keys)
    if dataset.groups:
        groups = [dataset.groups.get(k, k) for k in dataset.train_keys]
        names = sorted(set(groups))
        member = _indices(groups, names)
        group_targets = np.zeros((len(names), train_labels.targets.shape[1]), dtype=np.float32)
        np.maximum.at(group_targets, member, train_labels.targets)
        is_val = stratified_split(group_targets, val_fraction, seed, order)[member]
    else:
        is_val = stratified_split(train_labels.targets, val_fraction, seed, order)
    keys = np.array(dataset.train_keys)
    return Split(sorted(keys[~is_val].tolist()), sorted(keys[is_val].tolist()), sorted(dataset.test_keys))


def _indices(values: list[str], names: list[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[v] for v in values])


def split_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "split"


def save_split(split: Split, folder: Path, meta: dict, force: bool = False) -> Path:
    """Write train.txt / val.txt / test.txt (+ split.json); refuse to replace a different split."""
    folder = Path(folder)
    if all((folder / f"{p}.txt").exists() for p in PARTS):
        existing = load_split(folder)
        if existing.digest() == split.digest():
            return folder
        if not force:
            raise HmicError(
                f"a different split already exists in {folder} (features and runs may depend on it); "
                "pass --force to replace it"
            )
    for name in PARTS:
        write_text(folder / f"{name}.txt", "\n".join(split.part(name)) + "\n")
    write_json(folder / "split.json", {**meta, "digest": split.digest(), **{f"n_{p}": len(split.part(p)) for p in PARTS}})
    return folder


def load_split(folder: Path) -> Split:
    folder = Path(folder)
    missing = [p for p in PARTS if not (folder / f"{p}.txt").exists()]
    if missing:
        raise HmicError(f"{folder / (missing[0] + '.txt')} is missing; run 'hmic split' first")
    split = Split(*(read_keys(folder / f"{p}.txt") for p in PARTS))
    test = set(split.test)
    if test & (set(split.train) | set(split.val)):
        raise HmicError(f"{folder}: a test key is also in train or val; re-run 'hmic split --force'")
    return split


def positives_table(dataset: OpenMIC, split: Split) -> dict[str, dict[str, tuple[int, int]]]:
    """Per part, per tag: (observed positives, observed entries)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for name in PARTS:
        labels = dataset.labels.subset(split.part(name))
        pos = labels.targets.sum(axis=0).astype(int)
        obs = labels.mask.sum(axis=0).astype(int)
        out[name] = {tag: (int(pos[j]), int(obs[j])) for j, tag in enumerate(dataset.class_names)}
    return out


def split_meta(dataset: OpenMIC, val_fraction: float, seed: int, order: int) -> dict:
    return {"data_dir": str(dataset.root), "val_fraction": val_fraction, "seed": seed,
            "stratification_order": order, "method": "skmultilearn IterativeStratification"}

