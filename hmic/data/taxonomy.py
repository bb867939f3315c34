"""Hierarchies of any depth: a tree or a DAG of named nodes, the targets it derives, its file forms.

``Taxonomy`` is the structure and its file forms; ``hmic.data.hierarchy.Hierarchy`` (what the heads,
training and outputs receive) is built on it (``Hierarchy.from_taxonomy``, ``Hierarchy.taxonomy``,
``Taxonomy.from_hierarchy``). This module does not import ``hmic.data.hierarchy``.

Definitions (each one a project choice, written down so that heads and metrics agree):

- **Nodes** are named; a name is unique in a taxonomy and a node's id is its position in
  ``Taxonomy.nodes``. A node may have several parents (a DAG); nodes without parents are roots (several
  roots are allowed); nodes without children are leaves, at any depth.
- **Depth** of a node is the length of the *longest* path from a root to it (roots have depth 0). In a tree
  this is the usual depth; in a DAG it puts every node strictly below all of its parents, so the levels
  ``Taxonomy.levels`` are a topological layering (a parent's level is always smaller than its child's).
  The number of levels is the maximum depth plus one.
- **D(A)**, the descendants-or-self of A, is A and every node reachable from A along child links.
  ``Taxonomy.descendants_or_self`` is its matrix R with ``R[a, b] = True`` iff b is in D(A) (the matrix
  C-HMCNN calls the hierarchy's ancestor matrix, indexed parent-first).

Targets (``propagate``), the project's coarse rule (specs/methods.md §2, ``Hierarchy.coarse_targets``)
generalised to any depth. Labels may sit on any node ("guitar" without saying which guitar): the input is
a *direct* label and mask per node (a node that no dataset tag names is never directly observed).

- ``any`` (default): A is observed iff some node of D(A) is directly observed; A is positive iff some node
  of D(A) is directly observed positive (the max of the observed labels in D(A)).
- ``strict``: A is positive iff some node of D(A) is directly observed positive; A is negative iff it is
  not positive and either A is directly observed negative or A has children and every child is negative
  (recursively, so an inner node without a direct label is negative only when every leaf below it is
  observed negative); otherwise A is unobserved.
- Positive wins: a direct negative on A with an observed positive below A yields a positive A (a present
  child implies its parent), under both rules.
- ``negatives_down`` (off by default): a direct negative on A that no positive below A contradicts also
  marks every node of D(A) observed negative (no guitar, so no electric guitar). Off, targets only
  propagate upwards, as the 2-level rule does.

At depth 2 with labels on the fine tags only, both rules give exactly ``Hierarchy.coarse_targets``
(D(c) is c and its children; c itself is never directly observed). Masks stay per node.

File forms (``load_taxonomy``): the nested YAML form (``name:`` + ``tree:``, a mapping for each inner node
and a list for leaf tags; a list may also hold single-key mappings, for a node with both leaf and inner
children), the parent CSV form (``node,parent`` rows, an empty parent for a root, several rows for several
parents), the AudioSet ontology JSON (a subtree chosen by its root's name), and today's 2-level
``coarse:`` YAML files. Tree forms (YAML) refuse a node placed twice; DAGs come from CSV or JSON.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import yaml

from hmic.errors import HmicError

COARSE_RULES = ("any", "strict")  # how labels propagate to ancestors (the module docstring, ``propagate``)
TAXONOMY_FORMAT = "hmic-taxonomy"
TAXONOMY_VERSION = 1  # the version of Taxonomy.to_dict (checkpoints and run folders will store it)
TAXONOMY_DIR = Path(__file__).resolve().parent / "taxonomies"
# name -> (file, root for the JSON form); each file's source and licence are in taxonomies/README.md
BUNDLED = {
    "openmic-hornbostel-sachs": "openmic-hornbostel-sachs.yaml",
    "medleydb": "medleydb.yaml",
    "audioset-musical-instrument": "audioset-musical-instrument.json",
}
GROUP_SUFFIX = " (group)"  # from_hierarchy's name for a coarse tag named like one of the fine tags


def _names(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass(frozen=True)
class Taxonomy:
    """A tree or DAG of named nodes. ``parents[i]`` holds the ids of node i's parents (empty for a root).

    Build one with a loader (``load_taxonomy``, ``from_nested``, ``from_parent_csv``, ``from_audioset``,
    ``from_hierarchy``) or ``Taxonomy.from_edges``; the constructor validates (unique names, known
    parents, no cycle) and names ``source`` in every error.
    """

    name: str
    nodes: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self):
        where = f"taxonomy {self.source}"
        # lists and numpy ints in, tuples and ints stored: a Taxonomy compares and hashes by value
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "parents", tuple(tuple(int(p) for p in ps) for ps in self.parents))
        if len(self.nodes) == 0:
            raise HmicError(f"{where}: no nodes; a taxonomy needs at least one tag")
        if len(self.parents) != len(self.nodes):
            raise HmicError(f"{where}: {len(self.nodes)} nodes but {len(self.parents)} parent lists")
        seen: set[str] = set()
        for n in self.nodes:
            if not isinstance(n, str) or not n:
                raise HmicError(f"{where}: node name {n!r} is not a non-empty string")
            if n in seen:
                raise HmicError(f"{where}: node '{n}' appears twice; node names must be unique")
            seen.add(n)
        k = len(self.nodes)
        for i, ps in enumerate(self.parents):
            for p in ps:
                if not 0 <= p < k:
                    raise HmicError(f"{where}: node '{self.nodes[i]}' has parent id {p}, not a node id (0..{k - 1})")
            if len(set(ps)) != len(ps):
                raise HmicError(f"{where}: node '{self.nodes[i]}' lists the same parent twice")
        self._check_acyclic()

    # ---------------------------------------------------------------- structure
    def _check_acyclic(self) -> None:
        if self._topological is not None:
            return
        # Kahn's algorithm left nodes over: walk parent links from one of them until a node repeats.
        left = set(range(len(self.nodes))) - set(self._kahn())
        start = min(left)
        path, at = [start], start
        while True:
            at = next(p for p in self.parents[at] if p in left)
            if at in path:
                cycle = path[path.index(at):] + [at]
                break
            path.append(at)
        names = " -> ".join(self.nodes[i] for i in reversed(cycle))
        raise HmicError(
            f"taxonomy {self.source}: cycle {names} (node '{self.nodes[cycle[0]]}' is its own ancestor); "
            "remove one of these parent links"
        )

    def _kahn(self) -> list[int]:
        n_parents = [len(ps) for ps in self.parents]
        queue = deque(i for i, n in enumerate(n_parents) if n == 0)
        order = []
        kids = self._children_lists()
        while queue:
            i = queue.popleft()
            order.append(i)
            for c in kids[i]:
                n_parents[c] -= 1
                if n_parents[c] == 0:
                    queue.append(c)
        return order

    def _children_lists(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in self.nodes]
        for i, ps in enumerate(self.parents):
            for p in ps:
                kids[p].append(i)
        return kids

    @cached_property
    def _topological(self) -> tuple[int, ...] | None:
        order = self._kahn()
        return tuple(order) if len(order) == len(self.nodes) else None

    @property
    def topological_order(self) -> tuple[int, ...]:
        """Node ids with every parent before its children."""
        return self._topological

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @cached_property
    def index(self) -> dict[str, int]:
        """Node name -> node id."""
        return {n: i for i, n in enumerate(self.nodes)}

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """children[i]: ids of node i's children, in id order."""
        return tuple(tuple(sorted(k)) for k in self._children_lists())

    @property
    def roots(self) -> tuple[int, ...]:
        return tuple(i for i, ps in enumerate(self.parents) if not ps)

    @property
    def leaves(self) -> tuple[int, ...]:
        return tuple(i for i, ks in enumerate(self.children) if not ks)

    @property
    def leaf_names(self) -> tuple[str, ...]:
        return tuple(self.nodes[i] for i in self.leaves)

    @property
    def is_tree(self) -> bool:
        """True when no node has several parents (a forest: several roots are allowed)."""
        return all(len(ps) <= 1 for ps in self.parents)

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """(parent id, child id) for every parent link."""
        return tuple((p, i) for i, ps in enumerate(self.parents) for p in ps)

    @cached_property
    def depth(self) -> tuple[int, ...]:
        """depth[i]: the longest path from a root to node i (roots 0); see the module docstring."""
        d = [0] * self.n_nodes
        for i in self.topological_order:
            if self.parents[i]:
                d[i] = 1 + max(d[p] for p in self.parents[i])
        return tuple(d)

    @property
    def n_levels(self) -> int:
        return max(self.depth) + 1

    @cached_property
    def levels(self) -> tuple[tuple[int, ...], ...]:
        """levels[d]: ids of the nodes of depth d, in id order."""
        return tuple(tuple(i for i in range(self.n_nodes) if self.depth[i] == d) for d in range(self.n_levels))

    @cached_property
    def descendants_or_self(self) -> np.ndarray:
        """(K, K) bool, R[a, b] = True iff b is a or a descendant of a (C-HMCNN's hierarchy matrix)."""
        r = np.eye(self.n_nodes, dtype=bool)
        for i in reversed(self.topological_order):  # children first: a node's row is itself plus its kids' rows
            for c in self.children[i]:
                r[i] |= r[c]
        r.setflags(write=False)
        return r

    @cached_property
    def child_matrix(self) -> np.ndarray:
        """(K, K) bool, A[p, c] = True iff c is a child of p."""
        a = np.zeros((self.n_nodes, self.n_nodes), dtype=bool)
        for p, c in self.edges:
            a[p, c] = True
        a.setflags(write=False)
        return a

    def ancestors(self, node: int | str) -> tuple[int, ...]:
        """Ids of the ancestors of a node (itself excluded), in id order."""
        i = self._id(node)
        return tuple(int(a) for a in np.flatnonzero(self.descendants_or_self[:, i]) if a != i)

    def descendants(self, node: int | str) -> tuple[int, ...]:
        """Ids of the descendants of a node (itself excluded), in id order."""
        i = self._id(node)
        return tuple(int(b) for b in np.flatnonzero(self.descendants_or_self[i]) if b != i)

    def paths(self, node: int | str) -> tuple[tuple[str, ...], ...]:
        """Every root-to-node path as names (one in a tree, several for a node below a DAG join)."""
        i = self._id(node)
        if not self.parents[i]:
            return ((self.nodes[i],),)
        return tuple(p + (self.nodes[i],) for q in self.parents[i] for p in self.paths(q))

    def format_tree(self, values: Sequence[str] | None = None) -> str:
        """The taxonomy as indented text, one node a line, children under their parent (a node with several
        parents appears under each, marked ``*``). ``values`` (K,) adds a text after each node's name."""
        lines: list[str] = []

        def show(i: int, indent: int) -> None:
            mark = " *" if len(self.parents[i]) > 1 else ""
            extra = f"  {values[i]}" if values is not None else ""
            lines.append(f"{'  ' * indent}{self.nodes[i]}{mark}{extra}")
            for c in self.children[i]:
                show(c, indent + 1)

        for r in self.roots:
            show(r, 0)
        return "\n".join(lines)

    def _id(self, node: int | str) -> int:
        return self.node_id(node) if isinstance(node, str) else int(node)

    def node_id(self, name: str, what: str = "node", where: str | None = None) -> int:
        """The id of a named node, or one HmicError naming the node, where it came from and the fix."""
        if name in self.index:
            return self.index[name]
        close = difflib.get_close_matches(name, self.nodes, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        src = f" in {where}" if where else ""
        raise HmicError(
            f"unknown node '{name}' ({what}{src}): it is not in taxonomy {self.source}{hint}; "
            f"add it to the taxonomy or fix the name (nodes: {_names(self.nodes)})"
        )

    # ---------------------------------------------------------------- dataset tags
    def tag_ids(self, tags: Sequence[str], leaves_must_be_tags: bool = False) -> np.ndarray:
        """Node ids of the dataset's tags, in the dataset's order.

        A dataset tag missing from the tree is refused naming the tag and the taxonomy file; with
        ``leaves_must_be_tags`` a leaf that no dataset tag names is refused too (a node nothing labels).
        """
        missing = [t for t in tags if t not in self.index]
        if missing:
            close = difflib.get_close_matches(missing[0], self.nodes, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise HmicError(
                f"taxonomy {self.source}: tag '{missing[0]}' of the dataset is missing from the tree{hint}; "
                f"add it under its parent ({len(missing)} dataset tag(s) missing: {_names(missing)})"
            )
        if len(set(tags)) != len(tags):
            dup = next(t for t in tags if list(tags).count(t) > 1)
            raise HmicError(f"dataset tag '{dup}' is listed twice; each tag names one node of taxonomy {self.source}")
        if leaves_must_be_tags:
            unlabelled = [self.nodes[i] for i in self.leaves if self.nodes[i] not in set(tags)]
            if unlabelled:
                raise HmicError(
                    f"taxonomy {self.source}: leaf '{unlabelled[0]}' is not a tag of the dataset "
                    f"({_names(tags)}); remove it or rename it to the dataset's tag"
                )
        return np.array([self.index[t] for t in tags], dtype=np.int64)

    def restricted_to(self, tags: Sequence[str]) -> "Taxonomy":
        """The sub-taxonomy of the given tags and all their ancestors (node order kept)."""
        ids = self.tag_ids(tags)
        keep = self.descendants_or_self[:, ids].any(axis=1)
        new_id = {int(i): j for j, i in enumerate(np.flatnonzero(keep))}
        return Taxonomy(
            self.name,
            tuple(self.nodes[i] for i in new_id),
            tuple(tuple(new_id[p] for p in self.parents[i]) for i in new_id),
            self.source,
        )

    # ---------------------------------------------------------------- conversions
    @classmethod
    def from_edges(cls, name: str, nodes: Sequence[str], edges: Iterable[tuple[str, str]],
                   source: str = "<memory>", by_level: bool = True) -> "Taxonomy":
        """From node names and (parent, child) name pairs. ``by_level`` numbers the nodes level by level
        (depth 0 first), keeping the given order within a level."""
        index = {n: i for i, n in enumerate(nodes)}
        if len(index) != len(nodes):
            dup = next(n for n in nodes if list(nodes).count(n) > 1)
            raise HmicError(f"taxonomy {source}: node '{dup}' appears twice; node names must be unique")
        parents: list[list[int]] = [[] for _ in nodes]
        for p, c in edges:
            if p not in index or c not in index:
                raise HmicError(f"taxonomy {source}: link {p!r} -> {c!r} names a node that is not declared")
            if index[p] not in parents[index[c]]:
                parents[index[c]].append(index[p])
        tax = cls(str(name), tuple(nodes), tuple(tuple(ps) for ps in parents), source)
        if not by_level:
            return tax
        order = sorted(range(len(nodes)), key=lambda i: (tax.depth[i], i))
        new_id = {old: new for new, old in enumerate(order)}
        return cls(tax.name, tuple(nodes[i] for i in order),
                   tuple(tuple(new_id[p] for p in parents[i]) for i in order), source)

    @classmethod
    def from_hierarchy(cls, h) -> "Taxonomy":
        """Today's 2-level hierarchy as a taxonomy: the coarse tags (ids 0..C-1) then the fine tags in the
        dataset's order (ids C..C+F-1). A coarse tag named like a fine tag (the default's ``voice:
        [voice]``) becomes the node ``'<name> (group)'``."""
        fine = set(h.fine_names)
        coarse = tuple(c + GROUP_SUFFIX if c in fine else c for c in h.coarse_names)
        parents = tuple(() for _ in coarse) + tuple((p,) for p in h.parent)
        return cls(h.name, coarse + tuple(h.fine_names), parents, f"hierarchy {h.name}")

    def to_dict(self) -> dict:
        """A JSON-able, versioned form (for checkpoints and run folders)."""
        return {"format": TAXONOMY_FORMAT, "version": TAXONOMY_VERSION, "name": self.name,
                "nodes": list(self.nodes), "parents": [[self.nodes[p] for p in ps] for ps in self.parents]}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "<checkpoint>") -> "Taxonomy":
        if not isinstance(d, Mapping) or d.get("format") != TAXONOMY_FORMAT:
            raise HmicError(f"taxonomy {source}: not a {TAXONOMY_FORMAT} record")
        if d.get("version") != TAXONOMY_VERSION:
            raise HmicError(f"taxonomy {source}: format version {d.get('version')!r}; this hmic reads version "
                            f"{TAXONOMY_VERSION} (upgrade hmic to read it)")
        nodes = [str(n) for n in d["nodes"]]
        index = {n: i for i, n in enumerate(nodes)}
        for n, ps in zip(nodes, d["parents"]):
            unknown = [p for p in ps if p not in index]
            if unknown:
                raise HmicError(f"taxonomy {source}: node '{n}' has parent '{unknown[0]}', which is not a node")
        parents = tuple(tuple(index[p] for p in ps) for ps in d["parents"])
        return cls(str(d["name"]), tuple(nodes), parents, source)


# -------------------------------------------------------------------- targets
def scatter_labels(tax: Taxonomy, tags: Sequence[str], targets: np.ndarray, mask: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Dataset labels (N, T) on ``tags`` (node names, any depth) as direct node labels (N, K).

    Returns (direct targets (N, K) float32 in {0, 1}, direct mask (N, K) bool); nodes that no tag names
    are unobserved. Positive iff the relevance is >= 0.5 (specs/methods.md §2).
    """
    targets = np.asarray(targets, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if targets.shape != mask.shape or targets.ndim != 2 or targets.shape[1] != len(tags):
        raise HmicError(f"targets {targets.shape} and mask {mask.shape} must both be (N, {len(tags)}) for tags {_names(tags)}")
    ids = tax.tag_ids(tags)
    direct = np.zeros((targets.shape[0], tax.n_nodes), dtype=np.float32)
    direct_mask = np.zeros((targets.shape[0], tax.n_nodes), dtype=bool)
    direct[:, ids] = (targets >= 0.5).astype(np.float32)
    direct_mask[:, ids] = mask
    return direct, direct_mask


def propagate(tax: Taxonomy, direct_targets: np.ndarray, direct_mask: np.ndarray, rule: str = "any",
              negatives_down: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Node targets and masks from direct node labels, by the rules in the module docstring.

    direct_targets: (N, K) binary, direct_mask: (N, K) bool (True = directly observed).
    Returns (targets (N, K) float32 in {0, 1}, mask (N, K) bool). Unobserved entries have target 0.
    """
    if rule not in COARSE_RULES:
        raise HmicError(f"unknown coarse rule {rule!r}; expected one of {', '.join(COARSE_RULES)}")
    y = np.asarray(direct_targets, dtype=np.float32)
    m = np.asarray(direct_mask, dtype=bool)
    if y.shape != m.shape or y.ndim != 2 or y.shape[1] != tax.n_nodes:
        raise HmicError(f"direct targets {y.shape} and mask {m.shape} must both be (N, {tax.n_nodes})")
    r = tax.descendants_or_self.astype(np.float32)  # (K, K)
    observed_pos = ((y > 0.5) & m).astype(np.float32)
    observed_neg = (~(y > 0.5) & m)
    positive = (observed_pos @ r.T) > 0  # some node of D(A) directly observed positive
    if rule == "any":
        mask = (m.astype(np.float32) @ r.T) > 0
    else:
        negative = np.zeros_like(m)
        for a in reversed(tax.topological_order):  # children before parents
            kids = list(tax.children[a])
            all_kids_neg = negative[:, kids].all(axis=1) if kids else np.zeros(len(y), dtype=bool)
            negative[:, a] = ~positive[:, a] & (observed_neg[:, a] | all_kids_neg)
        mask = positive | negative
    if negatives_down:
        source = (observed_neg & ~positive).astype(np.float32)  # a direct negative nothing below contradicts
        mask = mask | ((source @ r) > 0)
    return positive.astype(np.float32), mask


def node_targets(tax: Taxonomy, tags: Sequence[str], targets: np.ndarray, mask: np.ndarray, rule: str = "any",
                 negatives_down: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Dataset labels (N, T) on ``tags`` -> targets and masks (N, K) for every node (``scatter_labels``
    then ``propagate``)."""
    return propagate(tax, *scatter_labels(tax, tags, targets, mask), rule=rule, negatives_down=negatives_down)


def encode_labels(tax: Taxonomy, clips: Sequence[Mapping[str, float]], where: str = "labels"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Direct labels from per-clip {node name: relevance} records (N of them) -> ((N, K), (N, K) mask).

    An unknown node is refused naming the node, the clip and ``where`` (the label file)."""
    y = np.zeros((len(clips), tax.n_nodes), dtype=np.float32)
    m = np.zeros((len(clips), tax.n_nodes), dtype=bool)
    for n, record in enumerate(clips):
        for name, value in record.items():
            i = tax.node_id(str(name), what=f"a label of clip {n}", where=where)
            y[n, i], m[n, i] = float(value >= 0.5), True
    return y, m


# -------------------------------------------------------------------- file forms
class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key repeated in one mapping (YAML would silently keep the last one)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in keys:
            raise yaml.constructor.ConstructorError(
                None, None, f"node '{key}' is placed twice in one mapping (a key repeated)", key_node.start_mark)
        if isinstance(key, (str, int, float, bool)):
            keys.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: its problem and the line it is on (PyYAML's own text spans several lines)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem}, line {mark.line + 1}" if mark is not None else problem


def _read_text(path: Path) -> str:
    if not path.exists():
        raise HmicError(f"taxonomy file {path} does not exist; pass an existing .yaml, .csv or .json file "
                        f"(bundled: {', '.join(BUNDLED)})")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HmicError(f"taxonomy {path}: cannot be read as UTF-8 text ({e})") from None


def _node_name(key: object, where: str, parent: str | None) -> str:
    under = f" under '{parent}'" if parent else ""
    if isinstance(key, bool) or key is None:
        raise HmicError(f"{where}: a node name{under} was read as {key!r} (YAML reads yes/no/on/off/null as such); "
                        "quote the name")
    if isinstance(key, (dict, list)):
        raise HmicError(f"{where}: a node{under} has no name (got {key!r}); write 'name: [children]'")
    name = str(key).strip()
    if not name:
        raise HmicError(f"{where}: an empty node name{under}")
    return name


def from_nested(data: object, source: str = "<memory>") -> Taxonomy:
    """The nested YAML form, parsed: {name: ..., tree: {node: {child: [...]} | [leaf, ...]}}."""
    where = f"taxonomy {source}"
    if not isinstance(data, dict) or not isinstance(data.get("tree"), (dict, list)) or not data["tree"]:
        raise HmicError(
            f"{where}: expected a mapping with a non-empty 'tree' section, e.g. "
            "'tree: {aerophones: {brass: [trombone, trumpet]}}' (or a 2-level 'coarse:' section)"
        )
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    placed: dict[str, str] = {}

    def place(name: str, parent: str | None) -> None:
        here = "/".join(p for p in (parent_path.get(parent, ""), name) if p) if parent else name
        if name in placed:
            if parent == name:
                raise HmicError(f"{where}: node '{name}' is a child of a group of the same name (at '{here}'); node "
                                f"names are unique: rename the group (e.g. '{name}_group')")
            raise HmicError(
                f"{where}: node '{name}' is placed twice (at '{placed[name]}' and at '{here}'); a tree form "
                "places every node once (use the parent CSV form for several parents)"
            )
        placed[name] = here
        parent_path[name] = here
        nodes.append(name)
        if parent is not None:
            edges.append((parent, name))

    parent_path: dict[str | None, str] = {}

    def visit(value: object, parent: str | None) -> None:
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list):
            items = []
            for item in value:
                if isinstance(item, dict):
                    if len(item) != 1:
                        raise HmicError(f"{where}: under '{parent}', a list item mapping must hold one node, got {item!r}")
                    items.extend(item.items())
                else:
                    items.append((item, ...))  # ... marks a leaf
        else:
            raise HmicError(f"{where}: node '{parent}' must map to a mapping of nodes or a list of tags, got {value!r}")
        for key, kids in items:
            name = _node_name(key, where, parent)
            place(name, parent)
            if kids is ...:
                continue
            if kids is None or (isinstance(kids, (list, dict)) and len(kids) == 0):
                raise HmicError(f"{where}: node '{name}' is empty (no children); add its tags or remove it")
            if not isinstance(kids, (list, dict)):
                raise HmicError(f"{where}: node '{name}' must map to a mapping of nodes or a list of tags, got {kids!r}"
                                " (a leaf tag goes in its parent's list)")
            visit(kids, name)

    visit(data["tree"], None)
    name = data.get("name", Path(source).stem)
    return Taxonomy.from_edges(str(name), nodes, edges, source)


def from_parent_csv(text: str, source: str = "<memory>") -> Taxonomy:
    """The parent CSV form: a header with columns ``node`` and ``parent``, one row per parent link (an
    empty parent makes a root, as does a node named only as a parent; several rows give several parents).
    Lines starting with '#' are comments."""
    where = f"taxonomy {source}"
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "node" not in header or "parent" not in header:
        raise HmicError(f"{where}: expected a header with columns 'node' and 'parent' (got {reader.fieldnames}); "
                        "write 'node,parent' on the first line")
    reader.fieldnames = header
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    for line, row in enumerate(reader, start=2):
        node, parent = (row.get("node") or "").strip(), (row.get("parent") or "").strip()
        if not node:
            raise HmicError(f"{where}: row {line} has an empty node; every row names a node")
        for n in (node, parent):
            if n and n not in nodes:
                nodes.append(n)
        if parent:
            if parent == node:
                raise HmicError(f"taxonomy {source}: cycle {node} -> {node} (node '{node}' is its own parent, row "
                                f"{line}); remove this row")
            edges.append((parent, node))
    if not nodes:
        raise HmicError(f"{where}: no rows; add 'node,parent' rows")
    return Taxonomy.from_edges(Path(source).stem, nodes, edges, source)


def from_audioset(data: object, root: str | None = None, source: str = "<memory>", keep_root: bool = True) -> Taxonomy:
    """The AudioSet ontology JSON (a list of {id, name, child_ids, ...}), the subtree below the node named
    ``root`` (by display name; default: the file's only top node). Nodes are named by display name;
    ``keep_root`` keeps the root itself as a node (it is a class of its own in AudioSet)."""
    where = f"taxonomy {source}"
    if not isinstance(data, list) or not all(isinstance(e, dict) and {"id", "name", "child_ids"} <= e.keys() for e in data):
        raise HmicError(f"{where}: expected the AudioSet ontology JSON, a list of objects with 'id', 'name' and "
                        "'child_ids' (github.com/audioset/ontology, ontology.json)")
    by_id = {e["id"]: e for e in data}
    by_name = {e["name"]: e for e in data}
    if root is None:
        children = {c for e in data for c in e["child_ids"]}
        tops = [e["name"] for e in data if e["id"] not in children]
        if len(tops) != 1:
            raise HmicError(f"{where}: {len(tops)} top nodes ({_names(tops)}); choose the subtree with its root's "
                            "name (root=...)")
        root = tops[0]
    if root not in by_name:
        close = difflib.get_close_matches(root, list(by_name), n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise HmicError(f"{where}: no node named '{root}'{hint}; pass the display name of the subtree's root")
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    queue = deque([by_name[root]["id"]])
    seen = {by_name[root]["id"]}
    while queue:
        entry = by_id[queue.popleft()]
        nodes.append(entry["name"])
        for cid in entry["child_ids"]:
            if cid not in by_id:
                raise HmicError(f"{where}: node '{entry['name']}' lists child id {cid!r}, which the file does not define")
            edges.append((entry["name"], by_id[cid]["name"]))
            if cid not in seen:
                seen.add(cid)
                queue.append(cid)
    if len(set(nodes)) != len(nodes):
        dup = next(n for n in nodes if nodes.count(n) > 1)
        raise HmicError(f"{where}: two nodes share the display name '{dup}'")
    if not keep_root:
        nodes = [n for n in nodes if n != root]
        edges = [(p, c) for p, c in edges if p != root]
    return Taxonomy.from_edges(root, nodes, edges, source)


def load_taxonomy(path: str | Path, tags: Sequence[str] | None = None, root: str | None = None) -> Taxonomy:
    """Load a taxonomy file of any form (by suffix: .yaml/.yml nested or 2-level ``coarse:``, .csv parent
    rows, .json AudioSet ontology with ``root``), or a bundled one by name (``BUNDLED``).

    ``tags`` (the dataset's tags) are checked to be nodes; for a 2-level ``coarse:`` file they are its fine
    tags (the checks of ``load_hierarchy``) and fix their order."""
    if isinstance(path, str) and path in BUNDLED:
        path = TAXONOMY_DIR / BUNDLED[path]
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as e:
            raise HmicError(f"taxonomy {path}: not valid YAML ({yaml_problem(e)}); fix the file") from None
        if isinstance(data, dict) and isinstance(data.get("coarse"), dict) and "tree" not in data:
            # the 2-level form: a coarse tag named like one of its fine tags becomes '<name> (group)'
            leaves = {str(k) for kids in data["coarse"].values() if isinstance(kids, list) for k in kids}
            tree = {(f"{c}{GROUP_SUFFIX}" if str(c) in leaves else c): kids for c, kids in data["coarse"].items()}
            tax = from_nested({"name": data.get("name", path.stem), "tree": tree}, str(path))
        else:
            tax = from_nested(data, str(path))
    elif suffix == ".csv":
        tax = from_parent_csv(text, str(path))
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise HmicError(f"taxonomy {path}: not valid JSON ({e})") from None
        tax = from_audioset(data, root, str(path))
    else:
        raise HmicError(f"taxonomy {path}: unknown file form '{suffix}'; use .yaml (nested tree or 2-level coarse:), "
                        ".csv (node,parent rows) or .json (AudioSet ontology)")
    if tags is not None:
        tax.tag_ids(tags)
    return tax


def bundled_taxonomy(name: str) -> Taxonomy:
    """One of the taxonomies shipped with hmic (``BUNDLED``; sources and licences in taxonomies/README.md)."""
    if name not in BUNDLED:
        raise HmicError(f"no bundled taxonomy '{name}'; bundled: {', '.join(BUNDLED)}")
    return load_taxonomy(TAXONOMY_DIR / BUNDLED[name])
