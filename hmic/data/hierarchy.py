"""The 2-level instrument hierarchy: a small value object every stage receives.

Nothing else in hmic hard-codes instrument names: fine names come from the dataset's class map,
coarse names and parents from a hierarchy YAML file. The default ships inside the package
(``hmic/data/hierarchy.yaml``); the top-level ``hierarchy.yaml`` is the same file for users to read,
copy and edit, then pass with ``--hierarchy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from hmic.errors import HmicError

COARSE_RULES = ("any", "strict")
DEFAULT_HIERARCHY = Path(__file__).resolve().parent / "hierarchy.yaml"


@dataclass(frozen=True)
class Hierarchy:
    """Coarse tags, fine tags (in dataset class-map order) and the parent of each fine tag."""

    name: str
    coarse_names: tuple[str, ...]
    fine_names: tuple[str, ...]
    parent: tuple[int, ...]  # parent[f] = index of the coarse tag of fine tag f

    @property
    def n_fine(self) -> int:
        return len(self.fine_names)

    @property
    def n_coarse(self) -> int:
        return len(self.coarse_names)

    @property
    def membership(self) -> np.ndarray:
        """(C, F) float32 matrix, membership[c, f] = 1 iff f is a child of c."""
        m = np.zeros((self.n_coarse, self.n_fine), dtype=np.float32)
        m[list(self.parent), list(range(self.n_fine))] = 1.0
        return m

    def children(self, coarse: int) -> list[int]:
        return [f for f, p in enumerate(self.parent) if p == coarse]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "coarse": {c: [self.fine_names[f] for f in self.children(i)] for i, c in enumerate(self.coarse_names)},
            "fine_order": list(self.fine_names),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "<checkpoint>") -> "Hierarchy":
        return parse_hierarchy(d, d.get("fine_order"), source)

    def coarse_targets(
        self, fine_targets: np.ndarray, fine_mask: np.ndarray, rule: str = "any"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Derive coarse labels from fine ones (docs/methods.md, "Project choices").

        fine_targets: (N, F) binary, fine_mask: (N, F) bool (True = observed).
        Returns (coarse_targets (N, C) float32 in {0, 1}, coarse_mask (N, C) bool).

        - ``any``: a coarse tag is observed if any child is observed; its label is the max of the
          observed children's labels.
        - ``strict``: positive if any observed child is positive; negative only if every child is
          observed negative; otherwise unobserved.
        """
        if rule not in COARSE_RULES:
            raise HmicError(f"unknown coarse rule {rule!r}; expected one of {', '.join(COARSE_RULES)}")
        fine_targets = np.asarray(fine_targets, dtype=np.float32)
        fine_mask = np.asarray(fine_mask, dtype=bool)
        if fine_targets.shape != fine_mask.shape or fine_targets.ndim != 2 or fine_targets.shape[1] != self.n_fine:
            raise HmicError(
                f"fine targets {fine_targets.shape} and mask {fine_mask.shape} must both be (N, {self.n_fine})"
            )
        n = fine_targets.shape[0]
        targets = np.zeros((n, self.n_coarse), dtype=np.float32)
        mask = np.zeros((n, self.n_coarse), dtype=bool)
        observed_positive = (fine_targets > 0.5) & fine_mask
        for c in range(self.n_coarse):
            kids = self.children(c)
            any_pos = observed_positive[:, kids].any(axis=1)
            if rule == "any":
                mask[:, c] = fine_mask[:, kids].any(axis=1)
            else:
                all_neg = (fine_mask[:, kids] & ~observed_positive[:, kids]).all(axis=1)
                mask[:, c] = any_pos | all_neg
            targets[:, c] = any_pos.astype(np.float32)
        return targets, mask


def parse_hierarchy(data: object, fine_names: Sequence[str] | None, source: str) -> Hierarchy:
    """Validate a parsed hierarchy mapping; ``fine_names`` (the dataset's tags, in order) if known."""
    where = f"hierarchy {source}"
    if not isinstance(data, dict) or not isinstance(data.get("coarse"), dict) or not data["coarse"]:
        raise HmicError(
            f"{where}: expected a mapping with a non-empty 'coarse' section "
            "(coarse tag -> list of fine tags), e.g. 'coarse: {{woodwind: [clarinet, flute]}}'"
        )
    seen: dict[str, str] = {}
    coarse_names: list[str] = []
    for coarse, kids in data["coarse"].items():
        coarse = str(coarse)
        if kids is None or (isinstance(kids, list) and len(kids) == 0):
            raise HmicError(f"{where}: coarse tag '{coarse}' has no fine tags (empty group); add its tags or remove it")
        if not isinstance(kids, list) or not all(isinstance(k, str) for k in kids):
            raise HmicError(f"{where}: coarse tag '{coarse}' must map to a list of fine tag names, got {kids!r}")
        for k in kids:
            if k in seen:
                raise HmicError(
                    f"{where}: fine tag '{k}' appears under two parents ('{seen[k]}' and '{coarse}'); "
                    "every fine tag needs exactly one parent"
                )
            seen[k] = coarse
        coarse_names.append(coarse)
    if fine_names is None:
        fine_names = [k for c in coarse_names for k in data["coarse"][c]]
    fine_names = [str(f) for f in fine_names]
    unknown = [k for k in seen if k not in fine_names]
    if unknown:
        raise HmicError(
            f"{where}: unknown fine tag '{unknown[0]}' (not in the dataset's classes: {', '.join(fine_names)})"
        )
    missing = [f for f in fine_names if f not in seen]
    if missing:
        raise HmicError(f"{where}: fine tag '{missing[0]}' of the dataset is missing; put it under one coarse tag")
    parent = tuple(coarse_names.index(seen[f]) for f in fine_names)
    return Hierarchy(
        name=str(data.get("name", Path(source).stem)),
        coarse_names=tuple(coarse_names),
        fine_names=tuple(fine_names),
        parent=parent,
    )


def load_hierarchy(path: str | Path | None = None, fine_names: Sequence[str] | None = None) -> Hierarchy:
    """Load and validate a hierarchy YAML file against the dataset's fine tag names."""
    path = Path(path) if path is not None else DEFAULT_HIERARCHY
    if not path.exists():
        raise HmicError(f"hierarchy file {path} does not exist; pass --hierarchy PATH (default: the hierarchy.yaml shipped with hmic)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise HmicError(f"hierarchy {path}: not valid YAML ({e})") from None
    return parse_hierarchy(data, fine_names, str(path))
