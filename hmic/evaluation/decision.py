"""From probabilities and per-tag thresholds to present/absent marks (``hmic predict --decision``).

The paper scores each level with its own thresholds (``independent``); read together, such marks can
contradict the hierarchy (``violin ✓`` under ``bowed_strings ·``). The consistent rules:

- ``any-child``: a fine tag is present when it reaches its threshold; a coarse tag is present exactly
  when one of its children is (its own threshold is not used). No contradiction is possible.
- ``under-parent``: a coarse tag is present when it reaches its threshold; a fine tag is present only
  when it reaches its own threshold *and* its parent is present. A parent can still be present with no
  child present.

A tag marked "not trained" (``untrained``: no positive or no negative label in validation, or never
labelled in training) is never present and never makes its parent present.

docs/reading-predictions.md holds the measurement the default was chosen from.
"""

from __future__ import annotations

import numpy as np

from hmic.errors import HmicError

DECISIONS = ("any-child", "under-parent", "independent")
DEFAULT_DECISION = "any-child"


def decide(fine_p: np.ndarray, coarse_p: np.ndarray, fine_t: np.ndarray, coarse_t: np.ndarray, parent: np.ndarray,
           rule: str = DEFAULT_DECISION, fine_untrained: np.ndarray | None = None,
           coarse_untrained: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Present marks (..., F) and (..., C) bool for probabilities (..., F), (..., C) and thresholds (F,), (C,);
    ``parent`` (F,) the coarse index of each fine tag; ``*_untrained`` (F,)/(C,) bool: never present."""
    if rule not in DECISIONS:
        raise HmicError(f"--decision must be one of {', '.join(DECISIONS)}, got {rule!r}")
    fine_p, coarse_p = np.asarray(fine_p), np.asarray(coarse_p)
    n_coarse = coarse_p.shape[-1]
    fu = np.zeros(fine_p.shape[-1], bool) if fine_untrained is None else np.asarray(fine_untrained, bool)
    cu = np.zeros(n_coarse, bool) if coarse_untrained is None else np.asarray(coarse_untrained, bool)
    fine = (fine_p >= np.asarray(fine_t, dtype=np.float64)) & ~fu
    coarse = (coarse_p >= np.asarray(coarse_t, dtype=np.float64)) & ~cu
    parent = np.asarray(parent)
    if rule == "any-child":
        coarse = np.stack([fine[..., parent == c].any(axis=-1) for c in range(n_coarse)], axis=-1) & ~cu
    elif rule == "under-parent":
        fine = fine & coarse[..., parent]
    return fine, coarse


def violations(fine: np.ndarray, coarse: np.ndarray, parent: np.ndarray) -> dict:
    """Counts of contradicting (item, coarse tag) pairs: a child present under an absent parent, a parent
    present with no child present. fine (N, F), coarse (N, C) bool."""
    parent = np.asarray(parent)
    any_child = np.stack([fine[:, parent == c].any(axis=1) for c in range(coarse.shape[1])], axis=1)
    child_without_parent = any_child & ~coarse
    parent_without_child = coarse & ~any_child
    return {"child_without_parent": int(child_without_parent.sum()), "parent_without_child": int(parent_without_child.sum()),
            "total": int((child_without_parent | parent_without_child).sum()), "pairs": int(coarse.size)}
