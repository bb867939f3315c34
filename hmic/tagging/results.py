"""The result of one tagged file (the JSON schema: docs/tagging.md) and the files written from results:
JSON, CSV, JSON Lines and label tracks.

Format version 2 (``PREDICT_FORMAT_VERSION``, in every result and at the top of a --json file; a result
without it is version 1): a 2-level hierarchy keeps version 1's ``coarse`` rows (each coarse tag with its
``fine`` children) and CSV columns unchanged; deeper, the result holds ``tree`` instead (every root with
its ``children``, recursively, each node named by its ``path``), the CSV names each node's path and the
label tracks label a stretch by the node's path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hmic.evaluation.decision import decide
from hmic.fileio import csv_text, write_text
from hmic.models.explain import OWN_SCORE_TOLERANCE
from hmic.models.inference import Outputs
from hmic.runs.run import LEVELS
from hmic.tagging.workers import Prepared

MODEL_COLUMNS = ("model", "method", "backbone", "dataset", "train_clips", "stand_in", "decision")
CSV_COLUMNS = ("file", "level", "tag", "parent", "probability", "threshold", "present", "note", *MODEL_COLUMNS)
TREE_CSV_COLUMNS = ("file", "path", "depth", "tag", "parent", "probability", "threshold", "present", "note",
                    *MODEL_COLUMNS, "format_version")  # a hierarchy deeper than 2 levels
NOT_TRAINED = "not trained"
PREDICT_FORMAT_VERSION = 2  # 1: no version key, 2-level ``coarse`` rows only; 2: ``format_version``, ``tree`` deeper
PATH_SEPARATOR = "/"


def file_result(tagger, prepared: Prepared, windows: Outputs, hop_seconds: float, aggregate: str) -> dict:
    """Window probabilities (W, F), (W, C) and attention (W, F, C) of one file → the file's result.
    ``tagger``: the ``FileTagger`` (its hierarchy, thresholds, explainer, front-end, method, runner, the
    model's description and the decision rule). A tag without a threshold ("not trained") has threshold
    None, is never present and never makes its parent present."""
    fine_w, coarse_w = windows.fine_probs, windows.coarse_probs
    starts, duration = prepared.starts, prepared.duration
    reduce = np.max if aggregate == "max" else np.mean
    fine_p, coarse_p = reduce(fine_w, axis=0), reduce(coarse_w, axis=0)
    thresholds, basis = tagger.thresholds.for_file(duration, len(starts), aggregate)
    h = tagger.hierarchy
    untrained = {"fine": tagger.thresholds.untrained("fine", list(h.fine_names)),
                 "coarse": tagger.thresholds.untrained("coarse", list(h.coarse_names))}
    fine_on, coarse_on = decide(fine_p, coarse_p, thresholds["fine"], thresholds["coarse"], h.edges,
                                tagger.decision, untrained["fine"], untrained["coarse"])
    why = tagger.thresholds.not_trained

    def row(level: str, name: str, k: int, p: float, t: float, present: bool) -> dict:
        if untrained[level][k]:
            return {"tag": name, "probability": round(float(p), 4), "threshold": None, "present": False,
                    "not_trained": why.get(level, {}).get(name, NOT_TRAINED)}
        r = {"tag": name, "probability": round(float(p), 4), "threshold": round(float(t), 4), "present": bool(present)}
        if tagger.decision == "under-parent" and not present and p >= t:
            r["decided_by"] = "parent"  # reached its threshold, absent because no parent is present
        return r

    if h.is_two_level:
        shape = {"coarse": coarse_rows(tagger, row, fine_p, coarse_p, thresholds, fine_on, coarse_on, windows, starts)}
    else:
        shape = {"tree": tree_rows(tagger, row, fine_p, coarse_p, thresholds, fine_on, coarse_on, windows, starts)}
    end = np.minimum(starts + tagger.frontend.clip_seconds, duration)
    segments = [{"start": round(float(s), 3), "end": round(float(e), 3),
                 "fine": {n: round(float(v), 4) for n, v in zip(h.fine_names, fine_w[i])},
                 "coarse": {n: round(float(v), 4) for n, v in zip(h.coarse_names, coarse_w[i])}}
                for i, (s, e) in enumerate(zip(starts, end))]
    window_thresholds = {level: {n: (None if untrained[level][k] else round(float(t), 4))
                                 for k, (n, t) in enumerate(zip(names, tagger.thresholds.clip[level]))}
                         for level, names in zip(LEVELS, (h.fine_names, h.coarse_names))}
    return {"file": prepared.path, "duration_seconds": round(duration, 3), "checkpoint": tagger.source,
            "method": tagger.method, "model": tagger.info, "decision": tagger.decision,
            "not_trained": {level: sorted(n for n, flag in zip(names, untrained[level]) if flag)
                            for level, names in zip(LEVELS, (h.fine_names, h.coarse_names))},
            "backend": tagger.runner.backend, "precision": tagger.runner.precision,
            "aggregate": aggregate, "window_seconds": tagger.frontend.clip_seconds,
            "hop_seconds": hop_seconds, "threshold_basis": basis, **shape,
            "window_thresholds": window_thresholds, "segments": segments, "format_version": PREDICT_FORMAT_VERSION}


def coarse_rows(tagger, row, fine_p, coarse_p, thresholds, fine_on, coarse_on, windows: Outputs, starts) -> list[dict]:
    """The paper's 2-level form: each coarse tag's row with its ``fine`` children (format version 1's rows)."""
    h = tagger.hierarchy
    fine_w, coarse_w, attention = windows.fine_probs, windows.coarse_probs, windows.attention
    rows = []
    for c, cname in enumerate(h.coarse_names):
        r = row("coarse", cname, c, coarse_p[c], thresholds["coarse"][c], coarse_on[c])
        if tagger.decision == "any-child" and "not_trained" not in r:
            r["decided_by"] = "children"  # present exactly when a child is; its own threshold is not used
        kids = h.children(c)
        r["fine"] = [row("fine", h.fine_names[f], f, fine_p[f], thresholds["fine"][f], fine_on[f]) for f in kids]
        if tagger.fine_sources is not None and windows.classes is not None:
            for entry, f in zip(r["fine"], kids):  # the audioset model: the AudioSet class behind each fine tag
                entry["audioset_class"] = carrier(tagger, f, fine_w, windows.classes, starts)
        if r["present"]:
            r["explanation"] = explain(tagger, c, fine_w, coarse_w, attention, starts)
        rows.append(r)
    return rows


def node_path(h, node: int) -> str:
    """A node's name with its ancestors', top first (``aerophones/woodwind/flute``); in a DAG, its first path."""
    return PATH_SEPARATOR.join(h.paths(node)[0])


def tree_rows(tagger, row, fine_p, coarse_p, thresholds, fine_on, coarse_on, windows: Outputs, starts) -> list[dict]:
    """Any depth: every root with its ``children``, recursively; each node {tag, path, probability, threshold,
    present, children} (a node with several parents appears under each, its path the one it is reached by);
    present inner nodes carry their ``explanation``."""
    h = tagger.hierarchy
    c0 = h.n_coarse
    fine_w, coarse_w, attention = windows.fine_probs, windows.coarse_probs, windows.attention

    def node(i: int, above: str) -> dict:
        path = f"{above}{PATH_SEPARATOR}{h.node_names[i]}" if above else h.node_names[i]
        if i < c0:
            r = row("coarse", h.coarse_names[i], i, coarse_p[i], thresholds["coarse"][i], coarse_on[i])
            if tagger.decision == "any-child" and "not_trained" not in r:
                r["decided_by"] = "children"  # present exactly when a child is; its own threshold is not used
        else:
            f = i - c0
            r = row("fine", h.fine_names[f], f, fine_p[f], thresholds["fine"][f], fine_on[f])
            if tagger.fine_sources is not None and windows.classes is not None:
                r["audioset_class"] = carrier(tagger, f, fine_w, windows.classes, starts)
        r = {"tag": r.pop("tag"), "path": path, **r}
        if i < c0 and r["present"]:
            r["explanation"] = explain_node(tagger, i, fine_w, coarse_w, attention, starts, path)
        r["children"] = [node(k, path) for k in h.node_children[i]]
        return r

    return [node(i, "") for i in range(h.n_nodes) if not h.node_parents[i]]


def explain(tagger, c: int, fine_w: np.ndarray, coarse_w: np.ndarray, attention: np.ndarray | None,
            starts: np.ndarray) -> dict:
    """How coarse tag c came about at the window where it is most probable, in the head's own terms
    (``hmic.models.explain``): the fine tags named with their probability, and their weight and term
    where the head has them; ``coarse_probability`` is the head's P_c at that window."""
    w = int(np.argmax(coarse_w[:, c]))
    e = tagger.explainer.explain(c, fine_w[w], attention[w] if attention is not None else None)
    if e.basis == "max child" and coarse_w[w, c] > e.total + OWN_SCORE_TOLERANCE:
        e.basis = "own score"  # mcm: the max over the node's own score and its children's was its own
    names = tagger.hierarchy.fine_names
    out = {"basis": e.basis, "window_start": round(float(starts[w]), 3),
           "coarse_probability": round(float(coarse_w[w, c]), 4), "carried_by": [
               {"tag": names[f], "probability": round(float(e.probabilities[f]), 4),
                **({"weight": round(float(e.weights[f]), 4)} if e.weights is not None else {}),
                **({"term": round(float(e.terms[f]), 4)} if e.terms is not None else {})} for f in e.order]}
    if e.total is not None and e.basis not in ("max child", "own score"):
        out["sum_of_terms"] = round(float(e.total), 4)
    return out


def explain_node(tagger, c: int, fine_w: np.ndarray, coarse_w: np.ndarray, attention: np.ndarray | None,
                 starts: np.ndarray, path: str) -> dict:
    """``explain`` at any depth: inner node c over the nodes the head computes it from
    (``Explainer.explain_node``), each named with its tag and path."""
    h = tagger.hierarchy
    w = int(np.argmax(coarse_w[:, c]))
    node_probs = np.concatenate([coarse_w[w], fine_w[w]])
    e = tagger.explainer.explain_node(h, c, node_probs, attention[w] if attention is not None else None)
    out = {"basis": e.basis, "window_start": round(float(starts[w]), 3),
           "coarse_probability": round(float(coarse_w[w, c]), 4), "carried_by": [
               {"tag": h.node_names[i], "path": node_path(h, i), "probability": round(float(e.probabilities[i]), 4),
                **({"weight": round(float(e.weights[i]), 4)} if e.weights is not None else {}),
                **({"term": round(float(e.terms[i]), 4)} if e.terms is not None else {})} for i in e.order]}
    if e.total is not None and e.basis not in ("max child", "own score"):
        out["sum_of_terms"] = round(float(e.total), 4)
    if e.over is not None:
        out["over"] = e.over
    return out


def walk(tree: list[dict], depth: int = 0):
    """(depth, node) for every node of a result's ``tree``, parents before their children."""
    for n in tree:
        yield depth, n
        yield from walk(n["children"], depth + 1)


def marks(result: dict) -> tuple[list[str], list[str]]:
    """The present (coarse, fine) tags of a result of any version: coarse (inner) first, in result order."""
    if "tree" in result:
        seen = {}
        for _, n in walk(result["tree"]):
            if n["present"]:
                seen.setdefault((bool(n["children"]), n["tag"]), None)
        return [t for inner, t in seen if inner], [t for inner, t in seen if not inner]
    return ([c["tag"] for c in result["coarse"] if c["present"]],
            [f["tag"] for c in result["coarse"] for f in c["fine"] if f["present"]])


def result_edges(result: dict) -> np.ndarray:
    """(E, 2) node ids (coarse in ``window_thresholds`` order, then fine) of the hierarchy a result was made with."""
    wt = result["window_thresholds"]
    coarse_id = {n: i for i, n in enumerate(wt["coarse"])}
    fine_id = {n: len(coarse_id) + i for i, n in enumerate(wt["fine"])}

    def ident(n: dict) -> int:
        return coarse_id[n["tag"]] if n["children"] else fine_id[n["tag"]]

    if "tree" in result:
        edges = {(ident(n), ident(k)) for _, n in walk(result["tree"]) for k in n["children"]}
    else:
        edges = {(coarse_id[c["tag"]], fine_id[f["tag"]]) for c in result.get("coarse", ()) for f in c["fine"]}
    return np.array(sorted(edges, key=lambda e: (e[1], e[0])), dtype=np.int64).reshape(-1, 2)


def window_marks(result: dict) -> list[tuple[dict, set[str], set[str]]]:
    """Per window of a result with segments: (segment, present fine tags, present coarse tags), by the
    window (clip) thresholds and the result's decision rule; tags without a threshold are never present."""
    wt = result["window_thresholds"]
    fine_names, coarse_names = list(wt["fine"]), list(wt["coarse"])
    rule = result.get("decision", "independent") if ("coarse" in result or "tree" in result) else "independent"
    edges = result_edges(result) if rule != "independent" else np.zeros((0, 2), dtype=np.int64)
    ft = np.array([np.inf if wt["fine"][n] is None else wt["fine"][n] for n in fine_names])
    ct = np.array([np.inf if wt["coarse"][n] is None else wt["coarse"][n] for n in coarse_names])
    fu, cu = np.isinf(ft), np.isinf(ct)
    out = []
    for seg in result["segments"]:
        f_on, c_on = decide(np.array([seg["fine"][n] for n in fine_names]), np.array([seg["coarse"][n] for n in coarse_names]),
                            np.where(fu, 0, ft), np.where(cu, 0, ct), edges, rule, fu, cu)
        out.append((seg, {n for n, on in zip(fine_names, f_on) if on}, {n for n, on in zip(coarse_names, c_on) if on}))
    return out


def carrier(tagger, f: int, fine_w: np.ndarray, classes_w: np.ndarray, starts: np.ndarray) -> dict:
    """The AudioSet class that carried fine tag f (the audioset head: its probability is the max of its
    classes'), at the window where f is most probable: {"name", "probability", "window_start"}."""
    names, fine_of = tagger.fine_sources
    w = int(np.argmax(fine_w[:, f]))
    mine = np.flatnonzero(fine_of == f)
    k = int(mine[np.argmax(classes_w[w, mine])])
    return {"name": names[k], "probability": round(float(classes_w[w, k]), 4), "window_start": round(float(starts[w]), 3)}


def label_track(result: dict) -> str:
    """Audacity / Sonic Visualiser labels (``start<TAB>end<TAB>label``, seconds): for each tag, the
    stretches covered by windows where it is present (the tag's window (clip) threshold, the result's
    decision rule); overlapping or touching windows merge. Labels are ``fine:<tag>`` and ``coarse:<tag>``
    for a 2-level hierarchy, the node's path (``aerophones/woodwind/flute``) deeper.
    Tags without a threshold ("not trained") get no label."""
    per_window = window_marks(result)
    paths = {}
    if "tree" in result:
        for _, n in walk(result["tree"]):
            paths.setdefault(("coarse" if n["children"] else "fine", n["tag"]), n["path"])
    rows = []
    for level in LEVELS:
        for tag in result["window_thresholds"][level]:
            label = paths.get((level, tag), f"{level}:{tag}")
            stretch = None
            for seg, fine_on, coarse_on in per_window:
                if tag not in (fine_on if level == "fine" else coarse_on):
                    continue
                if stretch is not None and seg["start"] <= stretch[1]:
                    stretch[1] = max(stretch[1], seg["end"])
                else:
                    if stretch is not None:
                        rows.append((*stretch, label))
                    stretch = [seg["start"], seg["end"]]
            if stretch is not None:
                rows.append((*stretch, label))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return "".join(f"{a:.3f}\t{b:.3f}\t{label}\n" for a, b, label in rows)


def label_path(labels_dir: Path, name: Path) -> Path:
    """Where a file's label track goes: its name below the input folder, plus ``.txt``."""
    return Path(labels_dir) / name.with_name(name.name + ".txt")


ANY_CHILD_NOTE = "any child: present exactly when a child is (its own threshold unused)"
PARENT_ABSENT_NOTE = "parent absent: reached its threshold, present only under a present parent"


def decision_cells(x: dict) -> list:
    """A CSV row's ``threshold``, ``present`` and ``note`` cells: a tag not trained has the first two empty
    and its reason in ``note``; a mark not read from the tag's own threshold says why there (``any-child``:
    an inner node's mark is its children's, 1 below its threshold or 0 above it; ``under-parent``: 0 above
    its threshold under an absent parent)."""
    if "not_trained" in x:
        return ["", "", f"{NOT_TRAINED}: {x['not_trained']}"]
    note = {"children": ANY_CHILD_NOTE, "parent": PARENT_ABSENT_NOTE}.get(x.get("decided_by"), "")
    return [x["threshold"], int(x["present"]), note]


def to_csv(results: list[dict]) -> str:
    """One row per file and tag; each row names the model that tagged (a flat file has no header block).
    Deeper than 2 levels (results with a ``tree``): one row per node, named by its path, with its depth
    (0: a root) and its parent's path (``TREE_CSV_COLUMNS``)."""
    if results and "tree" in results[0]:
        return _tree_csv(results)
    rows = []
    for r in results:
        m = r.get("model") or {}
        model = [m.get(k, "unknown") for k in ("model", "method", "backbone", "dataset", "train_clips", "stand_in")]
        model.append(r.get("decision", "independent"))

        def cells(level: str, x: dict, parent: str) -> list:
            return [r["file"], level, x["tag"], parent, x["probability"], *decision_cells(x), *model]

        for c in r["coarse"]:
            rows.append(cells("coarse", c, ""))
            rows += [cells("fine", f, c["tag"]) for f in c["fine"]]
    return csv_text(CSV_COLUMNS, rows)


def _tree_csv(results: list[dict]) -> str:
    rows = []
    for r in results:
        m = r.get("model") or {}
        model = [m.get(k, "unknown") for k in MODEL_COLUMNS[:-1]] + [r.get("decision", "independent")]
        for depth, x in walk(r["tree"]):
            parent = x["path"].rpartition(PATH_SEPARATOR)[0]
            rows.append([r["file"], x["path"], depth, x["tag"], parent, x["probability"], *decision_cells(x), *model,
                         r.get("format_version", PREDICT_FORMAT_VERSION)])
    return csv_text(TREE_CSV_COLUMNS, rows)


def for_output(result: dict, segments: bool) -> dict:
    """A result as written to --json/--jsonl: the per-window timeline only with --segments."""
    return result if segments else {k: v for k, v in result.items() if k != "segments"}


def write_outputs(results: list[dict], failures: list[dict], json_path: Path | None, csv_path: Path | None,
                  segments: bool) -> None:
    if json_path:
        payload = [for_output(r, segments) for r in results]
        write_text(json_path, json.dumps({"format_version": PREDICT_FORMAT_VERSION, "results": payload,
                                          "failures": failures}, indent=2) + "\n")
    if csv_path:
        write_text(csv_path, to_csv(results))
