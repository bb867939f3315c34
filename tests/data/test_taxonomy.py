"""Taxonomies of any depth (issue 34): structure, file forms, refusals, targets, bundled trees."""

import json

import numpy as np
import pytest
import yaml

from hmic.data.hierarchy import DEFAULT_HIERARCHY, Hierarchy, load_hierarchy
from hmic.data.openmic import OPENMIC_TAGS
from hmic.data.taxonomy import (
    BUNDLED, TAXONOMY_DIR, Taxonomy, bundled_taxonomy, encode_labels, from_nested, load_taxonomy, node_targets,
    propagate,
)
from hmic.errors import HmicError

TAGS = list(OPENMIC_TAGS)
EXAMPLE = {  # the example, plus nothing
    "name": "example",
    "tree": {
        "aerophones": {"woodwind": ["clarinet", "flute", "saxophone"], "brass": ["trombone", "trumpet"]},
        "chordophones": {"bowed": ["cello", "violin"]},
    },
}


@pytest.fixture
def example(tmp_path):
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(EXAMPLE, sort_keys=False))
    return load_taxonomy(path)


def test_nested_yaml_structure(example):
    t = example
    assert t.name == "example" and t.n_nodes == 12 and t.n_levels == 3 and t.is_tree
    assert t.nodes[:5] == ("aerophones", "chordophones", "woodwind", "brass", "bowed")  # numbered level by level
    assert [t.nodes[i] for i in t.roots] == ["aerophones", "chordophones"]
    assert set(t.leaf_names) == {"clarinet", "flute", "saxophone", "trombone", "trumpet", "cello", "violin"}
    assert [len(level) for level in t.levels] == [2, 3, 7]
    assert [t.nodes[c] for c in t.children[t.index["woodwind"]]] == ["clarinet", "flute", "saxophone"]
    assert [t.nodes[a] for a in t.ancestors("flute")] == ["aerophones", "woodwind"]
    assert {t.nodes[d] for d in t.descendants("aerophones")} == {"woodwind", "brass", "clarinet", "flute",
                                                                 "saxophone", "trombone", "trumpet"}
    assert t.paths("trumpet") == (("aerophones", "brass", "trumpet"),)
    r = t.descendants_or_self
    assert r.shape == (12, 12) and r.diagonal().all()
    for a in range(12):
        for b in range(12):  # R[a, b] iff b is a or below a
            assert r[a, b] == (a == b or b in t.descendants(a))
    assert r[t.index["aerophones"], t.index["trumpet"]] and not r[t.index["trumpet"], t.index["aerophones"]]
    assert t.child_matrix.sum() == len(t.edges) == 10


def test_format_tree(example):
    assert example.format_tree().splitlines()[:4] == ["aerophones", "  woodwind", "    clarinet", "    flute"]
    dag = Taxonomy.from_edges("d", ["a", "b", "x"], [("a", "x"), ("b", "x")])
    assert dag.format_tree([f"{i / 10:.1f}" for i in range(3)]) == "a  0.0\n  x *  0.2\nb  0.1\n  x *  0.2"


def test_dag_depth_is_the_longest_path_and_parents_sit_above():
    # a -> b -> c and a -> c: c has depth 2 (longest path), not 1
    t = Taxonomy.from_edges("dag", ["a", "b", "c", "x"], [("a", "b"), ("b", "c"), ("a", "c"), ("x", "c")])
    assert not t.is_tree
    assert t.depth[t.index["c"]] == 2 and t.depth[t.index["b"]] == 1 and t.depth[t.index["x"]] == 0
    assert all(t.depth[p] < t.depth[c] for p, c in t.edges)
    assert set(t.paths("c")) == {("a", "b", "c"), ("a", "c"), ("x", "c")}
    assert {t.nodes[i] for i in t.ancestors("c")} == {"a", "b", "x"}


def test_parent_csv_with_several_parents_and_roots(tmp_path):
    path = tmp_path / "bells.csv"
    path.write_text("# a DAG\nnode,parent\npercussion,\nbell,\ncowbell,percussion\ncowbell,bell\ntubular,bell\n")
    t = load_taxonomy(path)
    assert t.name == "bells" and t.n_nodes == 4 and set(t.roots) == {t.index["percussion"], t.index["bell"]}
    assert {t.nodes[p] for p in t.parents[t.index["cowbell"]]} == {"percussion", "bell"}
    assert t.n_levels == 2 and t.leaf_names == ("cowbell", "tubular")


def test_audioset_json_picks_a_subtree_by_name(tmp_path):
    onto = [
        {"id": "/r", "name": "Music", "child_ids": ["/i", "/g"]},
        {"id": "/i", "name": "Musical instrument", "child_ids": ["/p", "/b"]},
        {"id": "/p", "name": "Percussion", "child_ids": ["/c"]},
        {"id": "/b", "name": "Bell", "child_ids": ["/c"]},
        {"id": "/c", "name": "Cowbell", "child_ids": []},
        {"id": "/g", "name": "Genre", "child_ids": []},
    ]
    path = tmp_path / "ontology.json"
    path.write_text(json.dumps(onto))
    t = load_taxonomy(path, root="Musical instrument")
    assert t.nodes == ("Musical instrument", "Percussion", "Bell", "Cowbell") and t.n_levels == 3
    assert "Genre" not in t.index and len(t.parents[t.index["Cowbell"]]) == 2
    with pytest.raises(HmicError, match=r"no node named 'Musical instruments'.*did you mean 'Musical instrument'"):
        load_taxonomy(path, root="Musical instruments")
    with pytest.raises(HmicError, match="lists child id '/zz'"):
        path.write_text(json.dumps(onto[:5] + [{"id": "/g", "name": "Genre", "child_ids": ["/zz"]}]))
        load_taxonomy(path, root="Music")


# --------------------------------------------------------------------------- refusals
def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text, needles", [
    ("cycle.csv", "node,parent\na,\nb,a\nc,b\nb,c\n", ["cycle", "b -> c -> b", "remove one of these parent links"]),
    ("self.csv", "node,parent\na,a\n", ["cycle a -> a", "row 2"]),
    ("twice.yaml", "tree:\n  aero: {wood: [flute]}\n  chordo: {bowed: [flute, cello]}\n",
     ["node 'flute' is placed twice", "aero/wood/flute", "chordo/bowed/flute", "parent CSV form"]),
    ("inner_twice.yaml", "tree:\n  aero: {wood: [flute]}\n  chordo: {wood: [cello]}\n", ["node 'wood' is placed twice"]),
    ("dupkey.yaml", "tree:\n  aero:\n    wood: [flute]\n    wood: [oboe]\n", ["'wood' is placed twice in one mapping"]),
    ("empty_list.yaml", "tree:\n  aero: {wood: [flute], brass: []}\n", ["node 'brass' is empty"]),
    ("empty_null.yaml", "tree:\n  aero: {wood: [flute], brass: }\n", ["node 'brass' is empty"]),
    ("empty_map.yaml", "tree:\n  aero: {}\n", ["node 'aero' is empty"]),
    ("notree.yaml", "name: x\nnodes: [a]\n", ["non-empty 'tree' section"]),
    ("bool.yaml", "tree:\n  aero: [yes, flute]\n", ["was read as True", "quote the name"]),
    ("noheader.csv", "a,b\n", ["columns 'node' and 'parent'"]),
    ("emptynode.csv", "node,parent\n,a\n", ["row 2 has an empty node"]),
    ("form.txt", "a", ["unknown file form"]),
])
def test_malformed_taxonomies_are_one_error_naming_node_and_file(tmp_path, name, text, needles):
    path = _write(tmp_path, name, text)
    with pytest.raises(HmicError) as e:
        load_taxonomy(path)
    for needle in needles:
        assert needle in str(e.value)
    assert str(path) in str(e.value)


def test_missing_file_and_dataset_tag_missing(tmp_path, example):
    with pytest.raises(HmicError, match="does not exist"):
        load_taxonomy(tmp_path / "nope.yaml")
    path = _write(tmp_path, "ex.yaml", yaml.safe_dump(EXAMPLE))
    with pytest.raises(HmicError) as e:
        load_taxonomy(path, tags=["flute", "voice", "piano"])
    assert "tag 'voice' of the dataset is missing from the tree" in str(e.value) and str(path) in str(e.value)
    assert "add it under its parent" in str(e.value) and "2 dataset tag(s) missing" in str(e.value)
    with pytest.raises(HmicError, match="leaf 'violin' is not a tag of the dataset"):
        example.tag_ids(["clarinet", "flute", "saxophone", "trombone", "trumpet", "cello"], leaves_must_be_tags=True)


def test_unknown_node_in_a_label_names_node_clip_and_file(example):
    y, m = encode_labels(example, [{"flute": 1}, {"brass": 0, "cello": 1.0}], where="labels.csv")
    assert y[0, example.index["flute"]] == 1 and m[1, example.index["brass"]] and not y[1, example.index["brass"]]
    assert m.sum() == 3
    with pytest.raises(HmicError) as e:
        encode_labels(example, [{"flute": 1}, {"flutes": 1}], where="labels.csv")
    msg = str(e.value)
    assert "unknown node 'flutes'" in msg and "clip 1" in msg and "labels.csv" in msg and "did you mean 'flute'" in msg


def test_cycle_and_bad_parent_in_the_constructor():
    with pytest.raises(HmicError, match="cycle"):
        Taxonomy("x", ("a", "b"), ((1,), (0,)), "mem")
    with pytest.raises(HmicError, match="node 'a' appears twice"):
        Taxonomy("x", ("a", "a"), ((), ()), "mem")


# --------------------------------------------------------------------------- 2-level files
def test_two_level_hierarchy_converts_both_ways():
    h = load_hierarchy(DEFAULT_HIERARCHY, TAGS)
    t = Taxonomy.from_hierarchy(h)
    assert t.n_nodes == 27 and t.n_levels == 2 and t.is_tree
    assert t.nodes[:7] == tuple(c if c != "voice" else "voice (group)" for c in h.coarse_names)
    assert t.nodes[7:] == tuple(TAGS)  # fine tags after the coarse ones, in the dataset's order
    assert Hierarchy.from_taxonomy(t, TAGS).node_parents == h.node_parents
    assert (t.child_matrix[:7, 7:] == h.membership.astype(bool)).all()
    via_file = load_taxonomy(DEFAULT_HIERARCHY, tags=TAGS)  # the same tree, numbered in file order
    assert str(DEFAULT_HIERARCHY) in via_file.source
    names = lambda tax: {(tax.nodes[p], tax.nodes[c]) for p, c in tax.edges}  # noqa: E731
    assert names(via_file) == names(t)
    rt = Taxonomy.from_dict(json.loads(json.dumps(t.to_dict())))
    assert rt == t


def test_deeper_trees_and_dags_are_hierarchies_too(example):
    assert Hierarchy.from_taxonomy(example).n_levels == 3
    dag = Taxonomy.from_edges("d", ["a", "b", "x"], [("a", "x"), ("b", "x")])
    assert Hierarchy.from_taxonomy(dag).node_parents[-1] == (0, 1)
    with pytest.raises(HmicError, match="format version 2"):
        Taxonomy.from_dict({**example.to_dict(), "version": 2})
    record = example.to_dict()
    record["parents"][-1] = ["strings"]
    with pytest.raises(HmicError, match="node 'violin' has parent 'strings', which is not a node"):
        Taxonomy.from_dict(record)


# --------------------------------------------------------------------------- targets
NODES = ("aerophones", "chordophones", "woodwind", "brass", "bowed", "clarinet", "flute", "saxophone", "trombone",
         "trumpet", "cello", "violin")
DATASET_TAGS = ["clarinet", "flute", "saxophone", "brass", "trombone", "trumpet", "cello", "violin"]


def _labels(rows):
    """rows: per clip, {tag: 0/1} of observed dataset labels -> (N, T) targets and mask."""
    y = np.zeros((len(rows), len(DATASET_TAGS)), dtype=np.float32)
    m = np.zeros_like(y, dtype=bool)
    for n, row in enumerate(rows):
        for tag, v in row.items():
            y[n, DATASET_TAGS.index(tag)], m[n, DATASET_TAGS.index(tag)] = v, True
    return y, m


CLIPS = [
    {"clarinet": 1, "flute": 0},                                   # A: a positive leaf
    {"clarinet": 0, "flute": 0, "saxophone": 0, "trombone": 0},    # B: negatives, trumpet unknown
    {"brass": 0, "cello": 1},                                      # C: a label on an inner node
    {"brass": 0, "trumpet": 1},                                    # D: a conflict: positive wins
]
# Worked by hand: node -> target (1/0) or None (unobserved), per clip and rule.
EXPECTED = {
    "any": [
        {"aerophones": 1, "woodwind": 1, "clarinet": 1, "flute": 0},
        {"aerophones": 0, "woodwind": 0, "brass": 0, "clarinet": 0, "flute": 0, "saxophone": 0, "trombone": 0},
        {"aerophones": 0, "brass": 0, "chordophones": 1, "bowed": 1, "cello": 1},
        {"aerophones": 1, "brass": 1, "trumpet": 1},
    ],
    "strict": [
        {"aerophones": 1, "woodwind": 1, "clarinet": 1, "flute": 0},
        # brass is unobserved (trumpet unknown), so aerophones is too; woodwind: every child negative
        {"woodwind": 0, "clarinet": 0, "flute": 0, "saxophone": 0, "trombone": 0},
        # brass directly negative; woodwind unknown, so aerophones unobserved
        {"brass": 0, "chordophones": 1, "bowed": 1, "cello": 1},
        {"aerophones": 1, "brass": 1, "trumpet": 1},
    ],
}


def _as_dicts(targets, mask):
    return [{NODES[k]: int(targets[n, k]) for k in range(len(NODES)) if mask[n, k]} for n in range(len(targets))]


@pytest.mark.parametrize("rule", ["any", "strict"])
def test_targets_at_depth_3_match_the_hand_worked_cases(example, rule):
    assert example.nodes == NODES
    y, m = _labels(CLIPS)
    targets, mask = node_targets(example, DATASET_TAGS, y, m, rule=rule)
    assert _as_dicts(targets, mask) == EXPECTED[rule]
    assert (targets[~mask] == 0).all() and targets.dtype == np.float32 and mask.dtype == bool


def test_negatives_down_marks_the_subtree_of_an_uncontradicted_negative(example):
    y, m = _labels(CLIPS)
    targets, mask = node_targets(example, DATASET_TAGS, y, m, rule="any", negatives_down=True)
    got = _as_dicts(targets, mask)
    assert got[2] == {**EXPECTED["any"][2], "trombone": 0, "trumpet": 0}  # no brass, so no trombone or trumpet
    assert got[3] == EXPECTED["any"][3]  # contradicted by trumpet: nothing pushed down
    assert got[0] == EXPECTED["any"][0] and got[1] == EXPECTED["any"][1]


def test_strict_rule_on_a_dag():
    t = Taxonomy.from_edges("d", ["p1", "p2", "x", "y"], [("p1", "x"), ("p2", "x"), ("p2", "y")])
    direct = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    observed = np.array([[0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 1, 0]], dtype=bool)
    targets, mask = propagate(t, direct, observed, rule="strict")
    order = [t.index[n] for n in ("p1", "p2", "x", "y")]
    assert mask[:, order].tolist() == [[True, True, True, True], [True, False, True, False], [True, True, True, False]]
    assert targets[:, order].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]


@pytest.mark.parametrize("rule", ["any", "strict"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_level_targets_equal_todays_coarse_targets(rule, seed):
    h = load_hierarchy(DEFAULT_HIERARCHY, TAGS)
    t = Taxonomy.from_hierarchy(h)
    rng = np.random.default_rng(seed)
    n = 500
    relevance = rng.random((n, 20)).astype(np.float32)
    fine = (relevance >= 0.5).astype(np.float32)
    fine_mask = rng.random((n, 20)) < rng.choice([0.1, 0.5, 0.9], size=(n, 1))  # sparse to dense clips
    coarse, coarse_mask = h.coarse_targets(fine, fine_mask, rule)
    targets, mask = node_targets(t, TAGS, relevance, fine_mask, rule=rule)
    assert (mask[:, :7] == coarse_mask).all() and (targets[:, :7] == coarse).all()
    assert (mask[:, 7:] == fine_mask).all() and (targets[:, 7:][fine_mask] == fine[fine_mask]).all()
    assert coarse_mask.any() and (~coarse_mask).any() and coarse.any()  # the comparison has both kinds


def test_targets_refuse_a_bad_rule_and_shape(example):
    y, m = _labels(CLIPS)
    with pytest.raises(HmicError, match="unknown coarse rule"):
        node_targets(example, DATASET_TAGS, y, m, rule="all")
    with pytest.raises(HmicError, match="must both be"):
        node_targets(example, DATASET_TAGS, y[:, :3], m[:, :3])


# --------------------------------------------------------------------------- bundled
def test_bundled_openmic_tree_places_every_tag_once_at_depth_2():
    t = bundled_taxonomy("openmic-hornbostel-sachs")
    ids = t.tag_ids(TAGS, leaves_must_be_tags=True)
    assert t.is_tree and t.n_levels == 3 and t.n_nodes == 36 and sorted(t.leaf_names) == sorted(TAGS)
    assert all(t.depth[i] == 2 for i in ids)
    assert [len(level) for level in t.levels] == [6, 10, 20]
    assert t.paths("clarinet") == (("aerophones", "woodwind", "clarinet"),)
    assert t.paths("voice") == (("human_voice", "singing", "voice"),)


def test_bundled_medleydb_taxonomy():
    t = bundled_taxonomy("medleydb")
    assert t.is_tree and t.n_nodes == 140 and len(t.leaves) == 122 and t.n_levels == 3
    assert [t.nodes[i] for i in t.roots] == ["strings", "winds", "voices", "percussion", "electric", "other"]
    assert t.paths("tack piano") == (("strings", "struck", "tack piano"),)
    assert t.depth[t.index["choir"]] == 1 and t.paths("choir") == (("voices", "choir"),)  # a leaf at depth 1
    assert "MIT License" in (TAXONOMY_DIR / BUNDLED["medleydb"]).read_text()
    assert load_taxonomy("medleydb") == t  # a bundled taxonomy by name
    with pytest.raises(HmicError, match="no bundled taxonomy 'medley'"):
        bundled_taxonomy("medley")


def test_bundled_audioset_musical_instrument_subtree_is_a_dag():
    t = bundled_taxonomy("audioset-musical-instrument")
    assert t.n_nodes == 92 and t.n_levels == 5 and not t.is_tree
    assert [t.nodes[i] for i in t.roots] == ["Musical instrument"]
    assert {t.nodes[p] for p in t.parents[t.index["Cowbell"]]} == {"Percussion", "Bell"}
    # Choir and Bell have further parents only outside the subtree (Singing; Sounds of things)
    assert [t.nodes[p] for p in t.parents[t.index["Choir"]]] == ["Musical instrument"]
    assert [t.nodes[p] for p in t.parents[t.index["Bell"]]] == ["Musical instrument"]
    assert t.paths("Clavinet") == (("Musical instrument", "Keyboard (musical)", "Piano", "Electric piano", "Clavinet"),)
    assert [n for n, ps in zip(t.nodes, t.parents) if len(ps) > 1] == ["Cowbell"]
    entries = json.loads((TAXONOMY_DIR / BUNDLED["audioset-musical-instrument"]).read_text())
    assert {e["id"] for e in entries} >= {c for e in entries for c in e["child_ids"]}  # a closed subtree
    keyboards = load_taxonomy(TAXONOMY_DIR / BUNDLED["audioset-musical-instrument"], root="Keyboard (musical)")
    assert keyboards.nodes[0] == "Keyboard (musical)" and "Clavinet" in keyboards.index and "Cowbell" not in keyboards.index


def test_restricted_to_keeps_tags_and_their_ancestors():
    t = bundled_taxonomy("audioset-musical-instrument")
    r = t.restricted_to(["Cowbell", "Clavinet"])
    assert set(r.nodes) == {"Musical instrument", "Percussion", "Bell", "Cowbell", "Keyboard (musical)", "Piano",
                            "Electric piano", "Clavinet"}
    assert r.n_levels == 5 and {r.nodes[p] for p in r.parents[r.index["Cowbell"]]} == {"Percussion", "Bell"}


def test_nested_lists_may_mix_leaves_and_inner_nodes():
    t = from_nested({"tree": {"strings": ["piano", {"bowed": ["violin"]}]}}, "mixed.yaml")
    assert t.paths("violin") == (("strings", "bowed", "violin"),) and t.depth[t.index["piano"]] == 1
