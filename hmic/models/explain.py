"""Which fine tags carried a coarse decision (``hmic predict --explain``), in numpy alone.

A head says *how* its coarse decisions are explained as data, an ``Explainer``: a rule and, for the
``projection`` rule, the weights it needs (``Head.explainer()`` in ``hmic.models.heads``). The same object is
stored in an exported ONNX file's metadata, so a tagger over onnxruntime explains exactly as the
PyTorch model does without importing torch. Each rule reports what the head computes, nothing more:

- ``max child``: P_c is the largest child's P_f (gmp, flat): that child and its probability;
- ``mean``: P_c is the mean of the children's P_f (gap): each child's term P_f / n, summing to P_c;
- ``attention``: P_c = Σ_f W[f, c]·P_f (resatt's input-dependent map, lp's fixed softmax): each fine
  tag's weight W[f, c] and term W[f, c]·P_f, the largest first (the terms over all fine tags sum to P_c);
- ``projection``: the coarse logit holds A[c, f]·P_f (lp-linear): the largest positive terms;
- ``children``: the head has a coarse classifier of its own (levelwise, topdown): its children and their
  probabilities are listed, nothing is attributed.

At any depth (``Explainer.explain_node``) an inner node is explained over the nodes the head computes it
from, named by node id: ``max child`` and ``mean`` over its children (which may be inner nodes: gmp's and
flat's max child carries the max leaf below it), ``attention`` over the level below (resatt:
``Hierarchy.attention_sources``; lp: the leaves), ``projection`` over the leaves. A node whose probability
is above its largest child's (mcm: its own score won the max) is explained as ``own score``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmic.errors import HmicError

TOP = 5  # at most this many fine tags are named
MIN_TERM = 0.005  # attention/projection terms smaller than this are not named
RULES = ("children", "max child", "mean", "attention", "projection")
OWN_SCORE_TOLERANCE = 1e-6  # a node above its max child by more than this: its own score won


CHILD_RULES = ("max child", "mean", "children")  # rules that read the children's probabilities alone


def _over_children(rule: str, p: np.ndarray, kids: np.ndarray) -> "Explanation":
    """The explanation of a node by its children ``kids`` (indices into the probabilities ``p``)."""
    if rule == "max child":
        top = int(kids[np.argmax(p[kids])])
        return Explanation("max child", [top], p, total=float(p[top]))
    if rule == "mean":
        terms = np.zeros_like(p)
        terms[kids] = p[kids] / len(kids)
        return Explanation("mean", _largest(terms, kids), p, terms=terms, total=float(terms.sum()))
    return Explanation("children", _largest(p, kids), p)


@dataclass
class Explanation:
    """How one coarse decision came about, in the head's own terms: ``order`` the fine tags named (at most
    ``TOP``), ``probabilities`` (F,) the window's P_f, ``weights`` (F,) W[:, c] or A[c, :] where the head
    has them, ``terms`` (F,) each fine tag's term where P_c is a sum of terms (mean, attention, projection),
    ``total`` what the terms add up to (P_c for mean and attention; for max child the child's P_f)."""

    basis: str
    order: list[int]
    probabilities: np.ndarray
    weights: np.ndarray | None = None
    terms: np.ndarray | None = None
    total: float | None = None
    over: str | None = None  # explain_node's attention: "the level below" (resatt) or "the leaves" (lp)


@dataclass
class Explainer:
    """How one head explains coarse tag c for one window (see the module's rules)."""

    rule: str
    membership: np.ndarray  # (C, F) 0/1: the hierarchy
    weights: np.ndarray | None = None  # (C, F): the ``projection`` rule's A

    def __post_init__(self):
        if self.rule not in RULES:
            raise HmicError(f"explanation rule {self.rule!r} is unknown; one of {', '.join(RULES)}")
        if self.rule == "projection" and self.weights is None:
            raise HmicError("the 'projection' explanation rule needs its weights")

    def explain(self, c: int, fine_probs: np.ndarray, attention: np.ndarray | None) -> Explanation:
        """fine_probs (F,) of one window; attention (F, C) for the ``attention`` rule."""
        p = np.asarray(fine_probs, dtype=np.float64)
        kids = np.flatnonzero(self.membership[c])
        if self.rule in CHILD_RULES:
            return _over_children(self.rule, p, kids)
        if self.rule == "attention":
            if attention is None:
                raise HmicError("the 'attention' explanation rule needs the model's attention output")
            w = np.asarray(attention[:, c], dtype=np.float64)
            terms = w * p
            named = [f for f in _largest(terms, np.arange(len(p))) if terms[f] >= MIN_TERM]
            return Explanation("attention", named, p, w, terms, float(terms.sum()))
        w = np.asarray(self.weights[c], dtype=np.float64)
        terms = w * p
        named = [f for f in _largest(terms, np.arange(len(p))) if terms[f] >= MIN_TERM]
        return Explanation("projection", named, p, w, terms, None)

    def explain_node(self, hierarchy, node: int, node_probs: np.ndarray, attention: np.ndarray | None) -> Explanation:
        """Inner node ``node`` of a hierarchy of any depth (``hmic.data.hierarchy.Hierarchy``) for one window:
        ``node_probs`` (K,) every node's probability (coarse ids then fine ids), ``attention`` (S, C) the head's
        attention (resatt: S = ``hierarchy.attention_sources``; lp: the leaves) or None. ``order``, the
        weights and terms are over node ids."""
        p = np.asarray(node_probs, dtype=np.float64)
        c0 = hierarchy.n_coarse
        kids = np.asarray(hierarchy.node_children[node], dtype=np.int64)
        if self.rule == "max child":
            top = int(kids[np.argmax(p[kids])])
            if p[node] > p[top] + OWN_SCORE_TOLERANCE:  # the max over itself and its children: itself
                return Explanation("own score", [top], p, total=float(p[node]))
        if self.rule in CHILD_RULES:
            return _over_children(self.rule, p, kids)
        if self.rule == "attention":
            if attention is None:
                raise HmicError("the 'attention' explanation rule needs the model's attention output")
            w = np.zeros_like(p)
            ids = attention_nodes(hierarchy, attention, node, p)
            w[ids] = np.asarray(attention[:, node], dtype=np.float64)
            terms = w * p
            named = [i for i in _largest(terms, np.arange(len(p))) if terms[i] >= MIN_TERM]
            over = "the leaves" if np.array_equal(ids, np.arange(c0, hierarchy.n_nodes)) else "the level below"
            return Explanation("attention", named, p, w, terms, float(terms.sum()), over)
        w = np.zeros_like(p)
        w[c0:] = np.asarray(self.weights[node], dtype=np.float64)  # A[c, :] over the leaves
        terms = w * p
        named = [i for i in _largest(terms, np.arange(len(p))) if terms[i] >= MIN_TERM]
        return Explanation("projection", named, p, w, terms, None)

    def to_dict(self) -> dict:
        """JSON-ready (the hierarchy travels separately)."""
        return {"rule": self.rule, "weights": None if self.weights is None else self.weights.tolist()}

    @classmethod
    def from_dict(cls, d: dict, membership: np.ndarray) -> "Explainer":
        weights = d.get("weights")
        return cls(d["rule"], membership, None if weights is None else np.asarray(weights, dtype=np.float32))


def attention_nodes(hierarchy, attention: np.ndarray, node: int, node_probs: np.ndarray) -> np.ndarray:
    """The node ids along an attention map's first axis (S, C): resatt's ``attention_sources`` (every
    non-root node) or lp's leaves. The shape tells them apart; where both have S entries (only in a
    hierarchy with root leaves), the one whose Σ w·p is the node's probability."""
    sources = np.asarray(hierarchy.attention_sources, dtype=np.int64)
    leaves = np.arange(hierarchy.n_coarse, hierarchy.n_nodes)
    fits = [ids for ids in (sources, leaves) if len(ids) == attention.shape[0]]
    if not fits:
        raise HmicError(f"attention of {attention.shape[0]} rows fits neither the {len(sources)} non-root nodes "
                        f"nor the {len(leaves)} leaves of hierarchy {hierarchy.name}")
    w = np.asarray(attention[:, node], dtype=np.float64)
    return min(fits, key=lambda ids: abs(float(w @ node_probs[ids]) - float(node_probs[node])))


def _largest(values: np.ndarray, among: np.ndarray) -> list[int]:
    """Up to ``TOP`` of the indices ``among``, by decreasing value."""
    among = np.asarray(among)
    return [int(f) for f in among[np.argsort(-values[among], kind="stable")][:TOP]]
