"""``Hierarchy`` at any depth (issue 34): its structure, the node targets it derives from labels on any
node (both rules, by hand), its versioned record (the 2-level record unchanged) and the one error a
malformed tree gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmic.data.hierarchy import Hierarchy, load_hierarchy
from hmic.data.openmic import OPENMIC_TAGS
from hmic.data.taxonomy import from_nested, from_parent_csv
from hmic.errors import HmicError

TOY = {"name": "toy", "tree": {
    "strings": {"bowed": ["violin", "cello"],
                "plucked": ["harp", {"guitars": ["acoustic_guitar", "electric_guitar"]}]},
    "winds": ["flute", {"brass": ["trumpet"]}],
    "percussion": ["drums"],
}}
# the dataset labels one inner node directly ("guitars": a guitar, not which one)
TOY_TAGS = ["violin", "cello", "harp", "acoustic_guitar", "electric_guitar", "guitars", "flute", "trumpet", "drums"]
TOY_H = Hierarchy.from_taxonomy(from_nested(TOY, "toy.yaml"), TOY_TAGS)
DAG_H = Hierarchy.from_taxonomy(from_parent_csv(
    "node,parent\npercussion,\nkeys,\nkit,percussion\ncowbell,percussion\ncowbell,kit\nsnare,kit\npiano,keys\n",
    "dag.csv"), ["cowbell", "snare", "piano"])


def test_structure_of_a_4_level_tree_with_leaves_at_several_depths():
    h = TOY_H
    assert not h.is_two_level and h.n_levels == 4
    assert h.fine_names[:8] == ("violin", "cello", "harp", "acoustic_guitar", "electric_guitar", "flute", "trumpet",
                                "drums")  # the dataset's leaf tags first, in its order
    assert set(h.coarse_names) == {"strings", "bowed", "plucked", "guitars", "winds", "brass", "percussion"}
    depth = dict(zip(h.node_names, h.depth))
    assert (depth["strings"], depth["plucked"], depth["guitars"], depth["electric_guitar"]) == (0, 1, 2, 3)
    assert (depth["drums"], depth["flute"], depth["trumpet"], depth["harp"]) == (1, 1, 2, 2)
    assert [sorted(h.node_names[i] for i in level) for level in h.levels][3] == ["acoustic_guitar", "electric_guitar"]
    c = h.coarse_names.index
    assert {h.fine_names[f] for f in h.children(c("strings"))} == {"violin", "cello", "harp", "acoustic_guitar",
                                                                    "electric_guitar"}
    assert h.membership[c("winds")].sum() == 2 and h.membership[c("guitars")].sum() == 2
    assert h.paths(h.node_names.index("acoustic_guitar")) == [("strings", "plucked", "guitars", "acoustic_guitar")]
    # gap's recursive mean: plucked = (harp + (acoustic + electric) / 2) / 2
    row = dict(zip(h.fine_names, h.average[c("plucked")]))
    assert (row["harp"], row["acoustic_guitar"], row["electric_guitar"], row["violin"]) == (0.5, 0.25, 0.25, 0.0)
    with pytest.raises(HmicError, match="2-level"):
        h.parent


def test_a_dag_node_has_every_path_and_sits_below_its_deepest_parent():
    h = DAG_H
    cowbell = h.node_names.index("cowbell")
    assert sorted(h.paths(cowbell)) == [("percussion", "cowbell"), ("percussion", "kit", "cowbell")]
    assert h.depth[cowbell] == 2 and h.n_levels == 3
    c = h.coarse_names.index
    row = dict(zip(h.fine_names, h.average[c("percussion")]))  # mean of (cowbell, kit = mean(cowbell, snare))
    assert row == pytest.approx({"cowbell": 0.75, "snare": 0.25, "piano": 0.0})


def test_level_weights_deeper_than_two_levels():
    assert TOY_H.level_weights(0.7) == pytest.approx((0.1, 0.1, 0.1, 0.7))
    assert load_hierarchy().level_weights(0.7) == pytest.approx((0.3, 0.7))  # (1 − λ, λ)
    assert TOY_H.check_level_weights([1, 0, 0, 2]) == (1.0, 0.0, 0.0, 2.0)
    with pytest.raises(HmicError, match="3 weights for hierarchy 'toy' of 4 levels"):
        TOY_H.check_level_weights([0.2, 0.2, 0.6])
    with pytest.raises(HmicError, match="non-negative"):
        TOY_H.check_level_weights([0.2, 0.2, -0.1, 0.7])


# ----------------------------------------------------------------------------------------------
# targets, by hand

CLIPS = {  # tag -> label; tags not named are unobserved
    "leaf positive, everything else negative": dict({t: 0 for t in TOY_TAGS}, electric_guitar=1),
    "label on an inner node": {"guitars": 1, "violin": 0},
    "all negative but one leaf unobserved": {t: 0 for t in TOY_TAGS if t != "cello"},
    "one negative leaf": {"electric_guitar": 0},
}
ALL = set(TOY_H.node_names)
EXPECTED = {  # (positive nodes, observed nodes under 'any', observed nodes under 'strict')
    "leaf positive, everything else negative": (
        {"electric_guitar", "guitars", "plucked", "strings"}, ALL, ALL),  # a positive below wins over guitars=0
    "label on an inner node": (
        {"guitars", "plucked", "strings"},
        {"guitars", "plucked", "strings", "violin", "bowed"},
        {"guitars", "plucked", "strings", "violin"}),  # bowed: cello unknown, so not all children negative
    "all negative but one leaf unobserved": (
        set(), ALL - {"cello"}, ALL - {"cello", "bowed", "strings"}),
    "one negative leaf": (
        set(), {"electric_guitar", "guitars", "plucked", "strings"}, {"electric_guitar"}),
}


def _tag_arrays():
    y = np.zeros((len(CLIPS), len(TOY_TAGS)), dtype=np.float32)
    m = np.zeros_like(y, dtype=bool)
    for n, labels in enumerate(CLIPS.values()):
        for tag, value in labels.items():
            y[n, TOY_TAGS.index(tag)], m[n, TOY_TAGS.index(tag)] = value, True
    return y, m


@pytest.mark.parametrize("rule", ["any", "strict"])
def test_targets_at_depth_propagate_labels_on_any_node_to_their_ancestors(rule):
    ft, fm, ct, cm = TOY_H.targets(*_tag_arrays(), rule=rule)
    assert ft.shape == fm.shape == (4, TOY_H.n_fine) and ct.shape == cm.shape == (4, TOY_H.n_coarse)
    y, m = np.concatenate([ct, ft], axis=1), np.concatenate([cm, fm], axis=1)
    names = np.array(TOY_H.node_names)
    for n, clip in enumerate(CLIPS):
        positive, observed_any, observed_strict = EXPECTED[clip]
        assert set(names[(y[n] > 0.5) & m[n]]) == positive, clip
        assert set(names[y[n] > 0.5]) == positive, f"{clip}: an unobserved entry has target 0"
        assert set(names[m[n]]) == (observed_any if rule == "any" else observed_strict), clip


def test_two_level_targets_are_the_papers_coarse_rule():
    h = load_hierarchy(None, list(OPENMIC_TAGS))
    rng = np.random.default_rng(0)
    y, m = (rng.random((30, 20)) < 0.3).astype(np.float32), rng.random((30, 20)) < 0.6
    for rule in ("any", "strict"):
        ft, fm, ct, cm = h.targets(y, m, rule)
        want_ct, want_cm = h.coarse_targets(y, m, rule)
        assert np.array_equal(ft, y) and np.array_equal(fm, m)
        assert np.array_equal(ct, want_ct) and np.array_equal(cm, want_cm)


# ----------------------------------------------------------------------------------------------
# records


@pytest.mark.parametrize("h", [load_hierarchy("openmic-hornbostel-sachs", load_hierarchy().fine_names), TOY_H, DAG_H],
                         ids=["openmic-hs", "toy-with-an-inner-tag", "dag"])
def test_a_deep_record_round_trips(h):
    d = h.to_dict()
    assert d["format"] == "hmic-hierarchy" and d["version"] == 2
    assert set(d) == {"format", "version", "name", "coarse", "fine", "parents", "tags"}
    back = Hierarchy.from_dict(json.loads(json.dumps(d)))
    assert back == h and back.depth == h.depth and back.tags == h.tags
    assert back.to_dict() == d


def test_the_two_level_record_is_the_old_one_with_its_version():
    h = load_hierarchy(None, list(OPENMIC_TAGS))
    old = {  # what hmic wrote before issue 34 (name, coarse, fine_order), fine tags in the dataset's order
        "name": "tone-base-audioset",
        "coarse": {"woodwind": ["clarinet", "flute", "saxophone"], "brass": ["trombone", "trumpet"],
                   "bowed_strings": ["cello", "violin"],
                   "plucked_strings": ["banjo", "bass", "guitar", "mandolin", "ukulele"],
                   "keyboards": ["accordion", "organ", "piano", "synthesizer"],
                   "percussion": ["cymbals", "drums", "mallet_percussion"], "voice": ["voice"]},
        "fine_order": list(OPENMIC_TAGS),
    }
    d = h.to_dict()
    assert d == dict(old, version=1)
    assert list(d["coarse"]) == list(old["coarse"]) and all(d["coarse"][c] == old["coarse"][c] for c in old["coarse"])
    assert Hierarchy.from_dict(old) == h and Hierarchy.from_dict(d) == h  # a record without a version is version 1
    with pytest.raises(HmicError, match="version 3") as e:
        Hierarchy.from_dict(dict(d, version=3), source="run/checkpoint.pt")
    assert "run/checkpoint.pt" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# malformed trees: one HmicError naming the node and the file

MALFORMED = {
    "cycle.csv": ("node,parent\nstrings,\nbowed,strings\nbowed,violin\nviolin,bowed\ncello,bowed\n", "bowed",
                  "cycle"),
    "missing.yaml": ("name: m\ntree:\n  strings:\n    bowed: [violin]\n", "cello", "missing"),
    "twice.yaml": ("name: t\ntree:\n  strings:\n    bowed: [violin, cello]\n    plucked: [cello]\n", "cello",
                   "placed twice"),
    "twice-in-one-mapping.yaml": ("name: t\ntree:\n  strings:\n    bowed: [violin]\n    bowed: [cello]\n", "bowed",
                                  "placed twice"),
    "empty.yaml": ("name: e\ntree:\n  strings:\n    bowed: [violin, cello]\n    plucked: []\n", "plucked", "empty"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_tree_is_one_error_naming_the_node_and_the_file(tmp_path, name):
    text, node, what = MALFORMED[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HmicError) as e:
        load_hierarchy(path, ["violin", "cello"])
    message = str(e.value)
    assert f"'{node}'" in message and str(path) in message and what in message, message
