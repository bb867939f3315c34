"""From probabilities and per-tag thresholds to present/absent marks (``hmic predict --decision``).

The paper scores each level with its own thresholds (``independent``); read together, such marks can
contradict the hierarchy (``violin ✓`` under ``bowed_strings ·``). The consistent rules:

- ``any-child``: a fine tag is present when it reaches its threshold; a coarse tag is present exactly
  when one of its children is (its own threshold is not used). No contradiction is possible.
- ``under-parent``: a coarse tag is present when it reaches its threshold; a fine tag is present only
  when it reaches its own threshold *and* its parent is present. A parent can still be present with no
  child present.

At any depth (``hmic.data.hierarchy``: fine = the leaves, coarse = the inner nodes) the same rules run
along the hierarchy's edges: ``any-child`` bottom-up (an inner node is present exactly when one of its
children is, the deepest nodes first), ``under-parent`` top-down (a node below a root needs its own
threshold and a present parent; in a DAG, one present parent suffices). At depth 2 both are the rules above.

A tag marked "not trained" (``untrained``: no positive or no negative label in validation, or never
labelled in training) is never present and never makes its parent present; an inner node that is not
trained still passes on what its children say (``any-child``: its parent is present when a trained
leaf below is), and under ``under-parent`` nothing below it is present.

docs/reading-predictions.md holds the measurement the default was chosen from.
"""

from __future__ import annotations

import numpy as np

from hmic.errors import HmicError

DECISIONS = ("any-child", "under-parent", "independent")
DEFAULT_DECISION = "any-child"


def structure_edges(structure: np.ndarray, n_coarse: int) -> np.ndarray:
    """(E, 2) (parent node id, child node id), node ids coarse 0..C-1 then fine C..C+F-1, from either
    ``parent`` (F,), the coarse index of each fine tag (the paper's form), or edges (E, 2) themselves
    (``Hierarchy.edges``, any depth)."""
    structure = np.asarray(structure, dtype=np.int64)
    if structure.ndim == 2:
        return structure.reshape(-1, 2)
    return np.stack([structure, n_coarse + np.arange(len(structure))], axis=1)


def _children(edges: np.ndarray, n_coarse: int) -> list[np.ndarray]:
    return [edges[edges[:, 0] == c, 1] for c in range(n_coarse)]


def _bottom_up(edges: np.ndarray, n_nodes: int) -> list[int]:
    """Node ids, every node after all of its descendants (children first)."""
    depth = np.zeros(n_nodes, dtype=np.int64)
    for _ in range(n_nodes):  # longest path from a root; a DAG settles in at most n_nodes passes
        new = depth.copy()
        np.maximum.at(new, edges[:, 1], depth[edges[:, 0]] + 1)
        if np.array_equal(new, depth):
            break
        depth = new
    return [int(i) for i in np.argsort(-depth, kind="stable")]


def decide(fine_p: np.ndarray, coarse_p: np.ndarray, fine_t: np.ndarray, coarse_t: np.ndarray, structure: np.ndarray,
           rule: str = DEFAULT_DECISION, fine_untrained: np.ndarray | None = None,
           coarse_untrained: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Present marks (..., F) and (..., C) bool for probabilities (..., F), (..., C) and thresholds (F,), (C,);
    ``structure``: ``parent`` (F,), the coarse index of each fine tag (the paper's form), or the
    hierarchy's edges (E, 2) (``Hierarchy.edges``, any depth); ``*_untrained`` (F,)/(C,) bool: never present."""
    if rule not in DECISIONS:
        raise HmicError(f"--decision must be one of {', '.join(DECISIONS)}, got {rule!r}")
    fine_p, coarse_p = np.asarray(fine_p), np.asarray(coarse_p)
    n_coarse = coarse_p.shape[-1]
    fu = np.zeros(fine_p.shape[-1], bool) if fine_untrained is None else np.asarray(fine_untrained, bool)
    cu = np.zeros(n_coarse, bool) if coarse_untrained is None else np.asarray(coarse_untrained, bool)
    fine = (fine_p >= np.asarray(fine_t, dtype=np.float64)) & ~fu
    coarse = (coarse_p >= np.asarray(coarse_t, dtype=np.float64)) & ~cu
    if rule == "independent":
        return fine, coarse
    edges = structure_edges(structure, n_coarse)
    nodes = np.concatenate([coarse, fine], axis=-1)
    untrained = np.concatenate([cu, fu])
    order = _bottom_up(edges, nodes.shape[-1])
    if rule == "any-child":
        kids = _children(edges, n_coarse)
        support = nodes.copy()  # what a node passes up: a present leaf, or an inner node with a child's support
        for c in (i for i in order if i < n_coarse):
            support[..., c] = support[..., kids[c]].any(axis=-1)
        nodes[..., :n_coarse] = support[..., :n_coarse] & ~cu
    else:  # under-parent: top-down, a node needs a present parent
        for i in reversed(order):
            parents = edges[edges[:, 1] == i, 0]
            if len(parents):
                nodes[..., i] &= nodes[..., parents].any(axis=-1)
    nodes &= ~untrained
    return nodes[..., n_coarse:], nodes[..., :n_coarse]


def violations(fine: np.ndarray, coarse: np.ndarray, structure: np.ndarray) -> dict:
    """Counts of contradicting (item, coarse tag) pairs: a child present under an absent parent, a parent
    present with no child present. fine (N, F), coarse (N, C) bool; ``structure`` as in ``decide``
    (at any depth: a coarse tag's children may be coarse tags themselves)."""
    n_coarse = coarse.shape[1]
    nodes = np.concatenate([coarse, fine], axis=1)
    kids = _children(structure_edges(structure, n_coarse), n_coarse)
    any_child = np.stack([nodes[:, k].any(axis=1) for k in kids], axis=1)
    child_without_parent = any_child & ~coarse
    parent_without_child = coarse & ~any_child
    return {"child_without_parent": int(child_without_parent.sum()), "parent_without_child": int(parent_without_child.sum()),
            "total": int((child_without_parent | parent_without_child).sum()), "pairs": int(coarse.size)}
