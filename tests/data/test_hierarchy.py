import numpy as np
import pytest

from hmic.errors import HmicError
from hmic.data.hierarchy import DEFAULT_HIERARCHY, load_hierarchy, parse_hierarchy
from hmic.data.openmic import OPENMIC_TAGS

TAGS = list(OPENMIC_TAGS)


def test_default_hierarchy_is_the_seven_families():
    h = load_hierarchy(DEFAULT_HIERARCHY, TAGS)
    assert h.n_fine == 20 and h.n_coarse == 7
    assert list(h.fine_names) == TAGS  # dataset class-map order
    assert [h.fine_names[f] for f in h.children(h.coarse_names.index("woodwind"))] == ["clarinet", "flute", "saxophone"]
    m = h.membership
    assert m.shape == (7, 20) and (m.sum(axis=0) == 1).all()
    assert h.coarse_names[h.parent[TAGS.index("mallet_percussion")]] == "percussion"


@pytest.mark.parametrize("coarse, needle", [
    ({"a": TAGS[:10], "b": TAGS[10:] + ["theremin"]}, "unknown fine tag 'theremin'"),
    ({"a": TAGS[:10], "b": TAGS[10:19]}, "fine tag 'voice' of the dataset is missing"),
    ({"a": TAGS[:10], "b": TAGS[9:]}, f"fine tag '{TAGS[9]}' appears under two parents"),
    ({"a": TAGS, "b": []}, "coarse tag 'b' has no fine tags"),
])
def test_bad_hierarchy_files_are_refused_naming_the_tag_and_file(tmp_path, coarse, needle):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"coarse": coarse}))
    with pytest.raises(HmicError) as e:
        load_hierarchy(path, TAGS)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_not_a_mapping_and_missing_file(tmp_path):
    (tmp_path / "x.yaml").write_text("- just\n- a list\n")
    with pytest.raises(HmicError, match="non-empty 'coarse' section"):
        load_hierarchy(tmp_path / "x.yaml", TAGS)
    with pytest.raises(HmicError, match="does not exist"):
        load_hierarchy(tmp_path / "nope.yaml", TAGS)


def small():
    # coarse A = {f0, f1}, B = {f2}
    return parse_hierarchy({"coarse": {"A": ["f0", "f1"], "B": ["f2"]}}, ["f0", "f1", "f2"], "test")


def test_coarse_rule_any_on_hand_made_examples():
    h = small()
    targets = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    mask = np.array([[1, 0, 0], [1, 1, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    t, m = h.coarse_targets(targets, mask, "any")
    # row 0: f0 observed positive -> A pos; B unobserved
    # row 1: A's children observed negative -> A neg; f2 pos -> B pos
    # row 2: f1 observed negative (f0 unobserved) -> A observed negative under "any"
    # row 3: f1 positive -> A pos
    np.testing.assert_array_equal(m, [[1, 0], [1, 1], [1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(t, [[1, 0], [0, 1], [0, 0], [1, 0], [0, 0]])


def test_coarse_rule_strict_on_hand_made_examples():
    h = small()
    targets = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    mask = np.array([[1, 0, 0], [1, 1, 1], [0, 1, 0], [1, 1, 0]], dtype=bool)
    t, m = h.coarse_targets(targets, mask, "strict")
    # row 0: positive child observed -> A positive even though f1 unobserved
    # row 1: every child of A observed negative -> A negative; B positive
    # row 2: only f1 observed (negative), f0 unknown -> A unobserved under "strict"
    # row 3: both children observed negative -> A negative
    np.testing.assert_array_equal(m, [[1, 0], [1, 1], [0, 0], [1, 0]])
    np.testing.assert_array_equal(t, [[1, 0], [0, 1], [0, 0], [0, 0]])


def test_unknown_rule_refused():
    with pytest.raises(HmicError, match="unknown coarse rule"):
        small().coarse_targets(np.zeros((1, 3)), np.zeros((1, 3), bool), "most")


def test_round_trip_through_dict():
    h = load_hierarchy(None, TAGS)
    h2 = type(h).from_dict(h.to_dict())
    assert h2 == h
