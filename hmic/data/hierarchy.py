"""The instrument hierarchy every stage receives: the paper's two levels, or a tree or DAG of any depth.

Nothing else in hmic hard-codes instrument names: the dataset's tags come from its class map, the rest
of the hierarchy from a file. The default ships inside the package (``hmic/data/hierarchy.yaml``, the
2-level ``coarse:`` form); the top-level ``hierarchy.yaml`` is the same file for users to read, copy and
edit, then pass with ``--hierarchy``. Deeper taxonomies (the nested ``tree:`` YAML form, a ``node,parent``
CSV, the AudioSet ontology JSON, or a bundled name such as ``openmic-hornbostel-sachs``) load through
``hmic.data.taxonomy`` into the same object (docs/taxonomies.md).

How any depth maps onto hmic's arrays (a project choice, docs/taxonomies.md): the **fine** arrays hold the
hierarchy's *leaves* and the **coarse** arrays its *inner* nodes. At depth 2 those are the paper's two
levels, and every file, head and table reads exactly as before; deeper, a node's *level* (its depth, the
longest path from a root) groups nodes for the loss weights and the per-level metrics. Node ids run over
the coarse nodes first, then the fine ones (``node_names``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from hmic.data.taxonomy import (BUNDLED, COARSE_RULES, GROUP_SUFFIX, TAXONOMY_DIR, Taxonomy, load_taxonomy,
                                node_targets, yaml_problem)
from hmic.errors import HmicError

DEFAULT_HIERARCHY = Path(__file__).resolve().parent / "hierarchy.yaml"
HIERARCHY_FORMAT = "hmic-hierarchy"
HIERARCHY_VERSION = 2  # 1: the 2-level {name, coarse, fine_order} record (read unchanged); 2: nodes and parents


@dataclass(frozen=True)
class Hierarchy:
    """Inner ("coarse") nodes, leaves ("fine", the dataset's leaf tags first, in its class-map order) and each
    node's parents as node ids (coarse ids 0..C-1, then fine ids C..C+F-1). ``tags``: the dataset's tags
    (node names, any depth), in its order; by default the fine names.

    Build the paper's form with ``Hierarchy.two_level``, any depth with ``Hierarchy.from_taxonomy``, or
    load a file with ``load_hierarchy``."""

    name: str
    coarse_names: tuple[str, ...]
    fine_names: tuple[str, ...]
    node_parents: tuple[tuple[int, ...], ...]
    tags: tuple[str, ...] | None = None
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "coarse_names", tuple(self.coarse_names))
        object.__setattr__(self, "fine_names", tuple(self.fine_names))
        object.__setattr__(self, "node_parents", tuple(tuple(int(p) for p in ps) for ps in self.node_parents))
        object.__setattr__(self, "tags", tuple(self.tags) if self.tags is not None else self.fine_names)
        if len(self.node_parents) != self.n_nodes:
            raise HmicError(f"hierarchy {self.name}: {self.n_nodes} nodes but {len(self.node_parents)} parent lists")

    @classmethod
    def two_level(cls, name: str, coarse_names: Sequence[str], fine_names: Sequence[str], parent: Sequence[int],
                  source: str = "<memory>") -> "Hierarchy":
        """The paper's form: coarse tags, fine tags and the coarse index of each fine tag."""
        return cls(name, tuple(coarse_names), tuple(fine_names),
                   tuple(() for _ in coarse_names) + tuple((int(p),) for p in parent), source=source)

    @classmethod
    def from_taxonomy(cls, tax, tags: Sequence[str] | None = None) -> "Hierarchy":
        """A ``hmic.data.taxonomy.Taxonomy`` (any depth) with the dataset's ``tags``: inner nodes in the
        taxonomy's order, leaves with the dataset's leaf tags first (in its order), then the unlabelled ones."""
        tags = tuple(tags) if tags is not None else tax.leaf_names
        tax.tag_ids(tags)
        leaves = set(tax.leaves)
        inner = [i for i in range(tax.n_nodes) if i not in leaves]
        tag_leaves = [tax.index[t] for t in tags if tax.index[t] in leaves]
        fine = tag_leaves + [i for i in tax.leaves if i not in set(tag_leaves)]
        order = inner + fine
        new_id = {old: new for new, old in enumerate(order)}
        return cls(tax.name, tuple(tax.nodes[i] for i in inner), tuple(tax.nodes[i] for i in fine),
                   tuple(tuple(sorted(new_id[p] for p in tax.parents[i])) for i in order), tags, source=tax.source)

    # ---------------------------------------------------------------- sizes and names
    @property
    def n_fine(self) -> int:
        return len(self.fine_names)

    @property
    def n_coarse(self) -> int:
        return len(self.coarse_names)

    @property
    def n_nodes(self) -> int:
        return self.n_coarse + self.n_fine

    @property
    def node_names(self) -> tuple[str, ...]:
        """Every node's name in node-id order: the coarse (inner) nodes, then the fine (leaf) ones."""
        return self.coarse_names + self.fine_names

    # ---------------------------------------------------------------- structure
    @cached_property
    def is_two_level(self) -> bool:
        """The paper's form: every coarse node a root, every fine node the child of exactly one of them."""
        c = self.n_coarse
        return (all(not ps for ps in self.node_parents[:c])
                and all(len(ps) == 1 and ps[0] < c for ps in self.node_parents[c:]))

    @cached_property
    def node_children(self) -> tuple[tuple[int, ...], ...]:
        kids: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for i, ps in enumerate(self.node_parents):
            for p in ps:
                kids[p].append(i)
        return tuple(tuple(k) for k in kids)

    @cached_property
    def edges(self) -> np.ndarray:
        """(E, 2) int64: (parent id, child id) of every parent link, in child-id order."""
        e = [(p, i) for i, ps in enumerate(self.node_parents) for p in ps]
        return np.array(e, dtype=np.int64).reshape(-1, 2)

    @cached_property
    def depth(self) -> tuple[int, ...]:
        """Each node's level: the longest path from a root to it (roots 0; a parent always above its child)."""
        return self.taxonomy.depth

    @property
    def n_levels(self) -> int:
        return self.taxonomy.n_levels

    @property
    def levels(self) -> tuple[tuple[int, ...], ...]:
        """levels[d]: node ids of depth d (top first), in id order."""
        return self.taxonomy.levels

    @property
    def descendants_or_self(self) -> np.ndarray:
        """(K, K) bool, R[a, b] iff b is a or below a (C-HMCNN's hierarchy matrix; read-only)."""
        return self.taxonomy.descendants_or_self

    @property
    def membership(self) -> np.ndarray:
        """(C, F) float32, membership[c, f] = 1 iff leaf f lies below inner node c (at depth 2: is its child)."""
        return self.descendants_or_self[: self.n_coarse, self.n_coarse:].astype(np.float32)

    @cached_property
    def average(self) -> np.ndarray:
        """(C, F) float32: an inner node's value as the mean of its children's, recursively, over the leaves
        (gap at any depth; at depth 2 each row is membership / its sum)."""
        c = self.n_coarse
        rows = np.zeros((self.n_nodes, self.n_fine), dtype=np.float64)
        rows[c:] = np.eye(self.n_fine)
        for i in sorted(range(c), key=lambda i: -self.depth[i]):
            kids = self.node_children[i]
            rows[i] = rows[list(kids)].mean(axis=0)
        if self.is_two_level:  # the float32 arithmetic of the paper's form, exactly
            m = self.membership
            return m / m.sum(axis=1, keepdims=True)
        return rows[:c].astype(np.float32)

    @property
    def attention_sources(self) -> tuple[int, ...]:
        """The node ids resatt's attention reads from: every non-root node (at depth 2: the fine tags)."""
        return tuple(i for i, ps in enumerate(self.node_parents) if ps)

    def children(self, coarse: int) -> list[int]:
        """The fine indices below coarse node ``coarse`` (at depth 2: its children)."""
        return [int(f) for f in np.flatnonzero(self.descendants_or_self[coarse, self.n_coarse:])]

    @property
    def parent(self) -> tuple[int, ...]:
        """The coarse index of each fine tag's parent: the paper's form only."""
        if not self.is_two_level:
            raise HmicError(f"hierarchy {self.name} has {self.n_levels} levels (or several parents); "
                            "'parent' is defined for a 2-level hierarchy only: use node_parents")
        return tuple(ps[0] for ps in self.node_parents[self.n_coarse:])

    def ancestors_or_self(self) -> np.ndarray:
        """(K, K) bool, A[i, a] iff a is i or one of its ancestors."""
        return self.descendants_or_self.T

    def paths(self, node: int) -> list[tuple[str, ...]]:
        """Every root-to-node path as names (one in a tree)."""
        if not self.node_parents[node]:
            return [(self.node_names[node],)]
        return [p + (self.node_names[node],) for q in self.node_parents[node] for p in self.paths(q)]

    @cached_property
    def taxonomy(self) -> Taxonomy:
        """This hierarchy as a ``hmic.data.taxonomy.Taxonomy`` (node ids as here; a coarse node named like a
        fine one, the default's ``voice: [voice]``, becomes '<name> (group)')."""
        fine = set(self.fine_names)
        names = tuple(c + GROUP_SUFFIX if c in fine else c for c in self.coarse_names) + self.fine_names
        return Taxonomy(self.name, names, self.node_parents, self.source)

    # ---------------------------------------------------------------- loss weights
    def level_weights(self, lam: float) -> tuple[float, ...]:
        """The loss weight of each level (top first) that λ stands for: at depth 2 (1 − λ, λ), the paper's
        λ·fine + (1 − λ)·coarse; deeper, λ on the deepest level and 1 − λ shared equally by the others
        (a project choice; --level-weights sets any vector)."""
        n = self.n_levels
        if n == 1:
            return (1.0,)
        return tuple([(1 - lam) / (n - 1)] * (n - 1) + [lam])

    def check_level_weights(self, weights: Sequence[float], where: str = "--level-weights") -> tuple[float, ...]:
        weights = tuple(float(w) for w in weights)
        if len(weights) != self.n_levels:
            raise HmicError(f"{where}: {len(weights)} weights for hierarchy '{self.name}' of {self.n_levels} levels; "
                            f"give one per level, top first (e.g. {','.join(['0.2'] * (self.n_levels - 1) + ['0.6'])})")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise HmicError(f"{where}: weights {weights} must be non-negative and not all 0")
        return weights

    # ---------------------------------------------------------------- records
    def to_dict(self) -> dict:
        """The hierarchy as a JSON-able, versioned record (checkpoints, ONNX metadata, run folders): the
        paper's form as version 1 (the record hmic always wrote), any other as version 2."""
        if self.is_two_level and self.tags == self.fine_names:
            return {"name": self.name, "version": 1,
                    "coarse": {c: [self.fine_names[f] for f in self.children(i)] for i, c in enumerate(self.coarse_names)},
                    "fine_order": list(self.fine_names)}
        return {"format": HIERARCHY_FORMAT, "version": HIERARCHY_VERSION, "name": self.name,
                "coarse": list(self.coarse_names), "fine": list(self.fine_names),
                "parents": [list(ps) for ps in self.node_parents], "tags": list(self.tags)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "<checkpoint>") -> "Hierarchy":
        version = d.get("version", 1) if isinstance(d, dict) else None
        if version == 1:
            return parse_hierarchy(d, d.get("fine_order"), source)
        if version != HIERARCHY_VERSION:
            raise HmicError(f"{source}: hierarchy record of version {version!r}; this hmic reads versions 1 and "
                            f"{HIERARCHY_VERSION} (upgrade hmic, or retrain the run with this one)")
        return cls(str(d["name"]), tuple(d["coarse"]), tuple(d["fine"]), tuple(tuple(p) for p in d["parents"]),
                   tuple(d["tags"]), source=source)

    # ---------------------------------------------------------------- targets
    def targets(self, tag_targets: np.ndarray, tag_mask: np.ndarray, rule: str = "any"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The dataset's labels (N, T) on ``tags`` → (fine targets (N, F), fine mask, coarse targets (N, C),
        coarse mask): the paper's coarse rule at depth 2, its generalisation (labels on any node, targets
        propagated to ancestors, ``hmic.data.taxonomy.propagate``) at any depth."""
        if self.is_two_level and self.tags == self.fine_names:
            targets = np.asarray(tag_targets, dtype=np.float32)
            mask = np.asarray(tag_mask, dtype=bool)
            ct, cm = self.coarse_targets(targets, mask, rule)
            return targets, mask, ct, cm
        y, m = node_targets(self.taxonomy, self.tags, tag_targets, tag_mask, rule)
        c = self.n_coarse
        return y[:, c:], m[:, c:], y[:, :c], m[:, :c]

    def coarse_targets(
        self, fine_targets: np.ndarray, fine_mask: np.ndarray, rule: str = "any"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Derive coarse labels from fine ones (docs/methods.md, "Project choices").

        fine_targets: (N, F) binary, fine_mask: (N, F) bool (True = observed).
        Returns (coarse_targets (N, C) float32 in {0, 1}, coarse_mask (N, C) bool).

        - ``any``: a coarse tag is observed if any fine tag below it is observed; its label is the max of
          the observed ones' labels.
        - ``strict``: positive if any observed fine tag below is positive; negative only if every one is
          observed negative; otherwise unobserved.
        (For labels on leaves only; ``targets`` handles labels on any node.)
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
    return Hierarchy.two_level(str(data.get("name", Path(source).stem)), coarse_names, fine_names, parent, source)


def load_hierarchy(path: str | Path | None = None, fine_names: Sequence[str] | None = None) -> Hierarchy:
    """Load and validate a hierarchy against the dataset's tags (``fine_names``, in its order).

    ``path``: a 2-level ``coarse:`` YAML file (the default's form), a taxonomy of any depth (nested
    ``tree:`` YAML, ``node,parent`` CSV, AudioSet ontology JSON, optionally ``FILE.json#Root name`` for
    the subtree below that node), or the name of a bundled taxonomy (docs/taxonomies.md)."""
    root = None
    if path is not None and str(path) in BUNDLED and not Path(path).exists():
        path = TAXONOMY_DIR / BUNDLED[str(path)]
    elif path is not None and "#" in str(path) and not Path(path).exists():
        path, root = str(path).split("#", 1)
    path = Path(path) if path is not None else DEFAULT_HIERARCHY
    if not path.exists():
        raise HmicError(f"hierarchy file {path} does not exist; pass --hierarchy PATH (a .yaml, .csv or .json file) "
                        f"or a bundled taxonomy ({', '.join(BUNDLED)}); default: the hierarchy.yaml shipped with hmic")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise HmicError(f"hierarchy {path}: not valid YAML ({yaml_problem(e)}); fix the file") from None
        if not (isinstance(data, dict) and "tree" in data and "coarse" not in data):
            return parse_hierarchy(data, fine_names, str(path))
    tax = load_taxonomy(path, fine_names, root=root)
    return Hierarchy.from_taxonomy(tax, fine_names)
