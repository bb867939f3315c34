"""The result of one tagged file (the JSON schema: docs/tagging.md) and the files written from results:
JSON, CSV, JSON Lines and label tracks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hmic.evaluation.decision import decide
from hmic.fileio import csv_text, write_text
from hmic.models.inference import Outputs
from hmic.runs.run import LEVELS
from hmic.tagging.workers import Prepared

CSV_COLUMNS = ("file", "level", "tag", "parent", "probability", "threshold", "present", "note",
               "model", "method", "backbone", "dataset", "train_clips", "stand_in", "decision")
NOT_TRAINED = "not trained"


def file_result(tagger, prepared: Prepared, windows: Outputs, hop_seconds: float, aggregate: str) -> dict:
    """Window probabilities (W, F), (W, C) and attention (W, F, C) of one file → the file's result.
    ``tagger``: the ``FileTagger`` (its hierarchy, thresholds, explainer, front-end, method, runner, the
    model's description and the decision rule). A tag without a threshold ("not trained") has threshold
    None, is never present and never makes its parent present."""
    fine_w, coarse_w, attention = windows.fine_probs, windows.coarse_probs, windows.attention
    starts, duration = prepared.starts, prepared.duration
    reduce = np.max if aggregate == "max" else np.mean
    fine_p, coarse_p = reduce(fine_w, axis=0), reduce(coarse_w, axis=0)
    thresholds, basis = tagger.thresholds.for_file(duration, len(starts), aggregate)
    h = tagger.hierarchy
    untrained = {"fine": tagger.thresholds.untrained("fine", list(h.fine_names)),
                 "coarse": tagger.thresholds.untrained("coarse", list(h.coarse_names))}
    fine_on, coarse_on = decide(fine_p, coarse_p, thresholds["fine"], thresholds["coarse"], np.asarray(h.parent),
                                tagger.decision, untrained["fine"], untrained["coarse"])
    why = tagger.thresholds.not_trained

    def row(level: str, name: str, k: int, p: float, t: float, present: bool) -> dict:
        if untrained[level][k]:
            return {"tag": name, "probability": round(float(p), 4), "threshold": None, "present": False,
                    "not_trained": why.get(level, {}).get(name, NOT_TRAINED)}
        return {"tag": name, "probability": round(float(p), 4), "threshold": round(float(t), 4), "present": bool(present)}

    coarse_rows = []
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
        coarse_rows.append(r)
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
            "hop_seconds": hop_seconds, "threshold_basis": basis, "coarse": coarse_rows,
            "window_thresholds": window_thresholds, "segments": segments}


def explain(tagger, c: int, fine_w: np.ndarray, coarse_w: np.ndarray, attention: np.ndarray | None,
            starts: np.ndarray) -> dict:
    """How coarse tag c came about at the window where it is most probable, in the head's own terms
    (``hmic.models.explain``): the fine tags named with their probability, and their weight and term
    where the head has them; ``coarse_probability`` is the head's P_c at that window."""
    w = int(np.argmax(coarse_w[:, c]))
    e = tagger.explainer.explain(c, fine_w[w], attention[w] if attention is not None else None)
    names = tagger.hierarchy.fine_names
    out = {"basis": e.basis, "window_start": round(float(starts[w]), 3),
           "coarse_probability": round(float(coarse_w[w, c]), 4), "carried_by": [
               {"tag": names[f], "probability": round(float(e.probabilities[f]), 4),
                **({"weight": round(float(e.weights[f]), 4)} if e.weights is not None else {}),
                **({"term": round(float(e.terms[f]), 4)} if e.terms is not None else {})} for f in e.order]}
    if e.total is not None and e.basis != "max child":
        out["sum_of_terms"] = round(float(e.total), 4)
    return out


def window_marks(result: dict) -> list[tuple[dict, set[str], set[str]]]:
    """Per window of a result with segments: (segment, present fine tags, present coarse tags), by the
    window (clip) thresholds and the result's decision rule; tags without a threshold are never present."""
    wt = result["window_thresholds"]
    fine_names, coarse_names = list(wt["fine"]), list(wt["coarse"])
    rule = result.get("decision", "independent") if "coarse" in result else "independent"
    parent_of = {f["tag"]: i for i, c in enumerate(result.get("coarse", ())) for f in c["fine"]}
    parent = np.array([parent_of.get(n, 0) for n in fine_names])
    ft = np.array([np.inf if wt["fine"][n] is None else wt["fine"][n] for n in fine_names])
    ct = np.array([np.inf if wt["coarse"][n] is None else wt["coarse"][n] for n in coarse_names])
    fu, cu = np.isinf(ft), np.isinf(ct)
    out = []
    for seg in result["segments"]:
        f_on, c_on = decide(np.array([seg["fine"][n] for n in fine_names]), np.array([seg["coarse"][n] for n in coarse_names]),
                            np.where(fu, 0, ft), np.where(cu, 0, ct), parent, rule, fu, cu)
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
    decision rule); overlapping or touching windows merge. Labels are ``fine:<tag>`` and ``coarse:<tag>``.
    Tags without a threshold ("not trained") get no label."""
    marks = window_marks(result)
    rows = []
    for level in LEVELS:
        for tag in result["window_thresholds"][level]:
            stretch = None
            for seg, fine_on, coarse_on in marks:
                if tag not in (fine_on if level == "fine" else coarse_on):
                    continue
                if stretch is not None and seg["start"] <= stretch[1]:
                    stretch[1] = max(stretch[1], seg["end"])
                else:
                    if stretch is not None:
                        rows.append((*stretch, f"{level}:{tag}"))
                    stretch = [seg["start"], seg["end"]]
            if stretch is not None:
                rows.append((*stretch, f"{level}:{tag}"))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return "".join(f"{a:.3f}\t{b:.3f}\t{label}\n" for a, b, label in rows)


def label_path(labels_dir: Path, name: Path) -> Path:
    """Where a file's label track goes: its name below the input folder, plus ``.txt``."""
    return Path(labels_dir) / name.with_name(name.name + ".txt")


def to_csv(results: list[dict]) -> str:
    """One row per file and tag; each row names the model that tagged (a flat file has no header block)."""
    rows = []
    for r in results:
        m = r.get("model") or {}
        model = [m.get(k, "unknown") for k in ("model", "method", "backbone", "dataset", "train_clips", "stand_in")]
        model.append(r.get("decision", "independent"))

        def cells(level: str, x: dict, parent: str) -> list:
            untrained = "not_trained" in x
            return [r["file"], level, x["tag"], parent, x["probability"], "" if untrained else x["threshold"],
                    "" if untrained else int(x["present"]), f"not trained: {x['not_trained']}" if untrained else "", *model]

        for c in r["coarse"]:
            rows.append(cells("coarse", c, ""))
            rows += [cells("fine", f, c["tag"]) for f in c["fine"]]
    return csv_text(CSV_COLUMNS, rows)


def for_output(result: dict, segments: bool) -> dict:
    """A result as written to --json/--jsonl: the per-window timeline only with --segments."""
    return result if segments else {k: v for k, v in result.items() if k != "segments"}


def write_outputs(results: list[dict], failures: list[dict], json_path: Path | None, csv_path: Path | None,
                  segments: bool) -> None:
    if json_path:
        payload = [for_output(r, segments) for r in results]
        write_text(json_path, json.dumps({"results": payload, "failures": failures}, indent=2) + "\n")
    if csv_path:
        write_text(csv_path, to_csv(results))
