"""`hmic predict` on a hierarchy deeper than two levels (issue 34): the decision rules along the tree's
edges, the printed tree, the nested JSON, CSV and label tracks by path, explanations equal to what the head
computed, ONNX at depth 3; and a 2-level hierarchy's output as before (plus its format version)."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from hmic.audio.decoding import FrontendConfig
from hmic.cli import app
from hmic.data.hierarchy import Hierarchy, load_hierarchy
from hmic.errors import HmicError
from hmic.evaluation.decision import DECISIONS, decide, violations
from hmic.models.backbones import BackboneConfig
from hmic.models.checkpoint import save_checkpoint
from hmic.models.model import HierarchicalModel
from hmic.tagging import FileTagger, tag_files
from hmic.tagging.results import CSV_COLUMNS, PREDICT_FORMAT_VERSION, TREE_CSV_COLUMNS, explain_node, walk

ROOT = Path(__file__).resolve().parents[2]
DEEP_METHODS = ("gmp", "gap", "resatt", "mcm", "lp")


def deep_hierarchy() -> Hierarchy:
    return load_hierarchy("openmic-hornbostel-sachs", load_hierarchy().fine_names)


def save_run(folder: Path, method: str, h: Hierarchy, seed: int = 0, not_trained: dict | None = None) -> Path:
    """A run folder holding an untrained tiny model (cnn14-tiny) with thresholds: enough to tag with."""
    torch.manual_seed(seed)
    model = HierarchicalModel(BackboneConfig("cnn14-tiny"), method, h).eval()
    rng = np.random.default_rng(seed)
    thresholds = {"fine": {n: float(rng.uniform(0.45, 0.55)) for n in h.fine_names},
                  "coarse": {n: float(rng.uniform(0.45, 0.55)) for n in h.coarse_names},
                  "not_trained": not_trained or {"fine": {}, "coarse": {}}}
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.pt", model, FrontendConfig(), {"arch": "cnn14-tiny"}, epoch=0, best={},
                    thresholds=thresholds)
    return folder


@pytest.fixture(scope="module")
def deep_runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("deep-runs")
    h = deep_hierarchy()
    runs = {m: save_run(root / m, m, h) for m in DEEP_METHODS}
    runs["untrained"] = save_run(root / "untrained", "gmp", h, not_trained={
        "fine": {"flute": "no positive validation label"}, "coarse": {"woodwind": "no positive validation label"}})
    return runs


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "noise.wav"
    sf.write(path, np.random.default_rng(0).standard_normal(16000 * 22).astype(np.float32) * 0.1, 16000)
    return path


# -- the decision rules along the edges ------------------------------------------------------------------------

def paper_decide(fine_p, coarse_p, fine_t, coarse_t, parent, rule, fu, cu):
    """The 2-level rules as they were written before any depth (the reference for depth 2)."""
    fine = (fine_p >= fine_t) & ~fu
    coarse = (coarse_p >= coarse_t) & ~cu
    if rule == "any-child":
        coarse = np.stack([fine[..., parent == c].any(axis=-1) for c in range(len(coarse_t))], axis=-1) & ~cu
    elif rule == "under-parent":
        fine = fine & coarse[..., parent]
    return fine, coarse


@pytest.mark.parametrize("rule", DECISIONS)
def test_depth_two_decisions_are_the_paper_forms_whether_given_parent_or_edges(rule):
    h = load_hierarchy()
    rng = np.random.default_rng(0)
    fp, cp = rng.random((50, h.n_fine)), rng.random((50, h.n_coarse))
    ft, ct = rng.uniform(0.3, 0.7, h.n_fine), rng.uniform(0.3, 0.7, h.n_coarse)
    fu, cu = rng.random(h.n_fine) < 0.2, rng.random(h.n_coarse) < 0.2
    want = paper_decide(fp, cp, ft, ct, np.asarray(h.parent), rule, fu, cu)
    for structure in (np.asarray(h.parent), h.edges):
        got = decide(fp, cp, ft, ct, structure, rule, fu, cu)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert violations(*want, np.asarray(h.parent)) == violations(*want, h.edges)


def test_any_child_is_coherent_at_depth_three_and_under_parent_never_puts_a_child_under_an_absent_parent():
    h = deep_hierarchy()
    rng = np.random.default_rng(1)
    fp, cp = rng.random((200, h.n_fine)), rng.random((200, h.n_coarse))
    ft, ct = np.full(h.n_fine, 0.6), np.full(h.n_coarse, 0.5)
    f, c = decide(fp, cp, ft, ct, h.edges, "any-child")
    assert violations(f, c, h.edges)["total"] == 0 and c.any() and not c.all()
    assert np.array_equal(c, (f.astype(np.float32) @ h.membership.T) > 0)  # present iff a leaf below is
    f, c = decide(fp, cp, ft, ct, h.edges, "under-parent")
    assert violations(f, c, h.edges)["child_without_parent"] == 0
    nodes = np.concatenate([c, f], axis=1)
    for p, k in h.edges:
        assert not (nodes[:, k] & ~nodes[:, p]).any()
    f, c = decide(fp, cp, ft, ct, h.edges, "independent")
    assert violations(f, c, h.edges)["child_without_parent"] > 0  # the paper's thresholds can contradict


def test_an_untrained_inner_node_is_never_present_but_passes_its_leaves_on():
    h = deep_hierarchy()
    woodwind, aerophones, flute = h.coarse_names.index("woodwind"), h.coarse_names.index("aerophones"), h.fine_names.index("flute")
    fp, cp = np.zeros(h.n_fine), np.zeros(h.n_coarse)
    fp[flute] = 0.9
    cu = np.zeros(h.n_coarse, bool)
    cu[woodwind] = True
    f, c = decide(fp, cp, np.full(h.n_fine, 0.5), np.full(h.n_coarse, 0.5), h.edges, "any-child", None, cu)
    assert f[flute] and not c[woodwind] and c[aerophones] and c.sum() == 1
    fu = np.zeros(h.n_fine, bool)
    fu[flute] = True  # an untrained leaf makes nothing present
    f, c = decide(fp, cp, np.full(h.n_fine, 0.5), np.full(h.n_coarse, 0.5), h.edges, "any-child", fu, None)
    assert not f.any() and not c.any()


# -- explanations: what the head computed ------------------------------------------------------------------------

@pytest.mark.parametrize("method", DEEP_METHODS)
def test_explanations_at_depth_three_are_the_heads_own_output(deep_runs, method):
    tagger = FileTagger.load(deep_runs[method])
    h = tagger.hierarchy
    head = tagger.runner.model.head
    torch.manual_seed(2)
    with torch.no_grad():
        out = head(torch.randn(3, head.fine.in_features) * 3)
    fine, coarse = out.fine_probs.numpy(), out.coarse_probs.numpy()
    att = out.attention.numpy() if out.attention is not None else None
    starts = np.array([0.0, 5.0, 10.0])
    node_of = {"/".join(h.paths(i)[0]): i for i in range(h.n_nodes)}
    for c in range(h.n_coarse):
        e = explain_node(tagger, c, fine, coarse, att, starts, "x")
        w = int(np.argmax(coarse[:, c]))
        nodes = np.concatenate([coarse[w], fine[w]])
        kids = list(h.node_children[c])
        assert e["coarse_probability"] == pytest.approx(float(coarse[w, c]), abs=1e-4)
        named = [node_of[x["path"]] for x in e["carried_by"]]
        for x, i in zip(e["carried_by"], named):
            assert x["probability"] == pytest.approx(float(nodes[i]), abs=1e-4)
            assert x["path"].split("/")[-1] == x["tag"]
        if method in ("gmp", "mcm"):  # the max child, and P_c is its probability (mcm: or its own score, higher)
            (kid,) = named
            assert kid in kids and nodes[kid] == pytest.approx(max(nodes[kids]), abs=1e-6)
            if e["basis"] == "max child":
                assert e["carried_by"][0]["probability"] == pytest.approx(e["coarse_probability"], abs=1e-4)
            else:
                assert method == "mcm" and e["basis"] == "own score" and coarse[w, c] > max(nodes[kids])
        elif method == "gap":  # the mean of the children's probabilities, term by term
            assert set(named) <= set(kids) and e["basis"] == "mean"
            assert e["sum_of_terms"] == pytest.approx(float(coarse[w, c]), abs=1e-4)
            assert all(x["term"] == pytest.approx(float(nodes[i]) / len(kids), abs=1e-4) for x, i in zip(e["carried_by"], named))
        else:  # attention: resatt over the level below (its sources), lp over the leaves
            sources = list(h.attention_sources) if method == "resatt" else list(range(h.n_coarse, h.n_nodes))
            assert e["sum_of_terms"] == pytest.approx(float(coarse[w, c]), abs=1e-4)
            for x, i in zip(e["carried_by"], named):
                assert x["weight"] == pytest.approx(float(att[w, sources.index(i), c]), abs=1e-4)
            if method == "resatt":
                assert all(h.depth[i] == h.depth[c] + 1 for i in named)
                assert e["over"] == "the level below"
            else:
                assert all(i >= h.n_coarse for i in named) and e["over"] == "the leaves"


# -- predict's outputs at depth 3 ---------------------------------------------------------------------------------

def check_tree(tree: list[dict], h: Hierarchy) -> None:
    """Every node once per path, the keys of the schema, any-child coherent, paths that name the ancestors."""
    assert [n["tag"] for n in tree] == [h.node_names[i] for i in range(h.n_nodes) if not h.node_parents[i]]
    leaves = 0
    for depth, n in walk(tree):
        assert {"tag", "path", "probability", "threshold", "present", "children"} <= set(n)
        assert n["path"].count("/") == depth and n["path"].endswith(n["tag"])
        if n["children"]:
            assert n["present"] == any(k["present"] for k in n["children"]) or "not_trained" in n
            assert ("explanation" in n) == n["present"]
            assert all(k["path"].startswith(n["path"] + "/") for k in n["children"])
        else:
            leaves += 1
    assert leaves == h.n_fine


def test_predict_prints_the_tree_and_writes_nested_json_csv_paths_and_label_tracks(deep_runs, song, tmp_path):
    h = deep_hierarchy()
    out = CliRunner().invoke(app, ["predict", str(song), "--run", str(deep_runs["gmp"]), "--explain", "--segments",
                                   "--json", str(tmp_path / "p.json"), "--csv", str(tmp_path / "p.csv"),
                                   "--labels", str(tmp_path / "labels"), "--precision", "fp32"],
                             env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    # the printed tree: each node indented under its parent, with p, threshold and mark
    row = {line.split()[0]: line for line in lines if line.strip() and line.split()[0] in h.node_names}
    indent = {name: len(line) - len(line.lstrip()) for name, line in row.items()}
    assert indent["woodwind"] == indent["aerophones"] + 2 and indent["flute"] == indent["woodwind"] + 2
    assert "any child" in row["woodwind"] and "≥" in row["flute"]
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format_version"] == PREDICT_FORMAT_VERSION == 2
    (r,) = data["results"]
    assert r["format_version"] == 2 and "coarse" not in r
    check_tree(r["tree"], h)
    flute = next(n for _, n in walk(r["tree"]) if n["tag"] == "flute")
    assert flute["path"] == "aerophones/woodwind/flute" and flute["children"] == []
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert tuple(rows[0]) == TREE_CSV_COLUMNS and len(rows) == h.n_nodes
    by_path = {x["path"]: x for x in rows}
    assert by_path["aerophones/woodwind/flute"]["parent"] == "aerophones/woodwind"
    assert by_path["aerophones/woodwind/flute"]["depth"] == "2" and by_path["aerophones"]["depth"] == "0"
    assert {x["format_version"] for x in rows} == {"2"}
    present = {n["path"] for _, n in walk(r["tree"]) if n["present"]}
    assert present, "the thresholds near 0.5 should mark some node present"
    for path in present:  # each present inner node explained, named by its path
        if next(n for _, n in walk(r["tree"]) if n["path"] == path)["children"]:
            assert sum(line.startswith(f"  {path}: max child ") for line in lines) == 1
    track = (tmp_path / "labels" / (song.name + ".txt")).read_text().splitlines()
    labels = {line.split("\t")[2] for line in track}
    assert labels and labels <= {n["path"] for _, n in walk(r["tree"])}
    assert all(label.rpartition("/")[0] in labels for label in labels if "/" in label)  # parents of a label labelled


def test_untrained_nodes_in_the_tree_are_not_trained_and_decisions_still_cohere(deep_runs, song):
    tagger = FileTagger.load(deep_runs["untrained"])
    r = tagger.tag(song)
    nodes = {n["path"]: n for _, n in walk(r["tree"])}
    assert nodes["aerophones/woodwind"]["not_trained"] and not nodes["aerophones/woodwind"]["present"]
    assert nodes["aerophones/woodwind/flute"]["threshold"] is None and not nodes["aerophones/woodwind/flute"]["present"]
    assert r["not_trained"] == {"fine": ["flute"], "coarse": ["woodwind"]}
    check_tree(r["tree"], tagger.hierarchy)


def test_library_tagging_at_depth_three_and_the_truth_comparison(deep_runs, song, tmp_path):
    from hmic.tagging.truth import compare_song

    tagger = FileTagger.load(deep_runs["resatt"])
    report = tag_files(tagger, [song], json_out=tmp_path / "t.json", jsonl=tmp_path / "t.jsonl", segments=True)
    (r,) = report.results
    check_tree(r["tree"], tagger.hierarchy)
    line = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert line["format_version"] == 2 and line["tree"] == json.loads(json.dumps(r["tree"]))
    truth = {"instruments": ["flute"], "sections": [{"start": 0.0, "end": 10.0, "instruments": ["flute"]}]}
    cmp = compare_song(r, truth, tagger)
    song_coarse = cmp["song"]["coarse"]
    assert set(song_coarse["found"]) | set(song_coarse["missed"]) == {"aerophones", "woodwind"}


def test_onnx_export_and_tagging_at_depth_three(deep_runs, song, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from hmic.tagging.export import export_onnx
    from hmic.tagging.onnxrun import FORMAT_VERSION, METADATA_KEY, load_onnx_tagger

    model = tmp_path / "deep.onnx"
    report = export_onnx(deep_runs["resatt"], model)
    assert report["max_abs_probability_difference"] < 1e-4 and report["outputs"][-1] == "attention"
    a, b = load_onnx_tagger(model).tag(song), FileTagger.load(deep_runs["resatt"]).tag(song)
    graph = onnx.load(str(model), load_external_data=False)
    meta = json.loads(next(p.value for p in graph.metadata_props if p.key == METADATA_KEY))
    assert meta["format_version"] == FORMAT_VERSION == 4 and meta["hierarchy"]["version"] == 2
    assert Hierarchy.from_dict(meta["hierarchy"]) == deep_hierarchy()
    pa, pb = [(n["path"], n["present"], n.get("explanation", {}).get("basis")) for _, n in walk(a["tree"])], \
             [(n["path"], n["present"], n.get("explanation", {}).get("basis")) for _, n in walk(b["tree"])]
    assert pa == pb and a["backend"] == "onnx"
    # the deep file is read and explained without torch
    code = ("import sys; from hmic.tagging.onnxrun import load_onnx_tagger; r = load_onnx_tagger(sys.argv[1]).tag(sys.argv[2]); "
            "print(len(r['tree']), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(model), str(song)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6", "False"]
    # today's version 3 (a 2-level hierarchy's layout) is still read; an older one is refused in one line
    for version, loads in ((3, True), (2, False), (None, False)):
        g = onnx.load(str(model), load_external_data=False)
        m = dict(meta)
        if version is None:
            m.pop("format_version")
        else:
            m["format_version"] = version
        next(p for p in g.metadata_props if p.key == METADATA_KEY).value = json.dumps(m)
        onnx.save_model(g, str(model))
        if loads:
            assert load_onnx_tagger(model).hierarchy == deep_hierarchy()
        else:
            with pytest.raises(HmicError, match="export the run again with 'hmic export RUN --onnx"):
                load_onnx_tagger(model)


# -- depth 2: as before ---------------------------------------------------------------------------------------------

def test_a_two_level_result_keeps_its_layout_csv_and_labels_and_says_its_version(tmp_path, song):
    h = load_hierarchy()
    run = save_run(tmp_path / "gmp2", "gmp", h)
    out = CliRunner().invoke(app, ["predict", str(song), "--run", str(run), "--segments", "--json", str(tmp_path / "p.json"),
                                   "--csv", str(tmp_path / "p.csv"), "--labels", str(tmp_path / "labels")])
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "p.json").read_text())
    (r,) = data["results"]
    assert data["format_version"] == r["format_version"] == 2 and "tree" not in r
    assert [c["tag"] for c in r["coarse"]] == list(h.coarse_names)
    assert all({"tag", "probability", "threshold", "present", "fine"} <= set(c) for c in r["coarse"])
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    track = (tmp_path / "labels" / (song.name + ".txt")).read_text().splitlines()
    assert all(line.split("\t")[2].split(":")[0] in ("fine", "coarse") for line in track)
