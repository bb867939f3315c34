"""Which fine tags carried a coarse decision (``hmic predict --explain``), in numpy alone.

A head says *how* its coarse decisions are explained as data, an ``Explainer``: a rule and, for the
``projection`` rule, the weights it needs (``Head.explainer()`` in ``hmic.models.heads``). The same object is
stored in an exported ONNX file's metadata, so a tagger over onnxruntime explains exactly as the
PyTorch model does without importing torch. Rules:

- ``children``: the coarse tag's children, in proportion to their probabilities;
- ``max child``: the winning child decides alone (grouped max pooling, flat);
- ``attention``: each fine tag's share of W[f, c]·P_f over all fine tags (resatt's map, lp's softmax);
- ``projection``: each fine tag's positive share of A[c, f]·P_f (an unconstrained linear projection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmic.errors import HmicError

MIN_SHARE = 0.05  # fine tags carrying less of a coarse decision are not named
TOP = 5
RULES = ("children", "max child", "attention", "projection")


@dataclass
class Explanation:
    """Which fine tags carried one coarse decision: ``shares`` (F,) sum to 1 over the fine tags
    considered; ``weights`` (F,) are attention or projection weights where the head has them."""

    basis: str
    shares: np.ndarray
    order: list[int]  # fine tags by decreasing share, already cut to the ones worth naming
    weights: np.ndarray | None = None


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
        if self.rule == "children":
            return shares("children", self.membership[c] * fine_probs)
        if self.rule == "max child":
            contrib = self.membership[c] * fine_probs
            top = [int(f) for f in np.argsort(-contrib) if contrib[f] > 0][:1]
            return Explanation("max child", shares("max child", contrib).shares, top)
        if self.rule == "attention":
            if attention is None:
                raise HmicError("the 'attention' explanation rule needs the model's attention output")
            return shares("attention", attention[:, c] * fine_probs, attention[:, c])
        weights = self.weights[c]
        return shares("projection", np.clip(weights * fine_probs, 0.0, None), weights)

    def to_dict(self) -> dict:
        """JSON-ready (the hierarchy travels separately)."""
        return {"rule": self.rule, "weights": None if self.weights is None else self.weights.tolist()}

    @classmethod
    def from_dict(cls, d: dict, membership: np.ndarray) -> "Explainer":
        weights = d.get("weights")
        return cls(d["rule"], membership, None if weights is None else np.asarray(weights, dtype=np.float32))


def shares(basis: str, contrib: np.ndarray, weights: np.ndarray | None = None) -> Explanation:
    total = float(contrib.sum()) or 1.0
    part = contrib / total
    order = [int(f) for f in np.argsort(-contrib) if contrib[f] > 0][:TOP]
    return Explanation(basis, part, [f for f in order if part[f] >= MIN_SHARE], weights)
