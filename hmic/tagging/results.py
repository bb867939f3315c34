"""The result of one tagged file (the JSON schema: docs/tagging.md) and the files written from results:
JSON, CSV, JSON Lines and label tracks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hmic.fileio import csv_text, write_text
from hmic.models.inference import Outputs
from hmic.runs.run import LEVELS
from hmic.tagging.workers import Prepared

CSV_COLUMNS = ("file", "level", "tag", "parent", "probability", "threshold", "present")


def file_result(tagger, prepared: Prepared, windows: Outputs, hop_seconds: float, aggregate: str) -> dict:
    """Window probabilities (W, F), (W, C) and attention (W, F, C) of one file → the file's result.
    ``tagger``: the ``FileTagger`` (its hierarchy, thresholds, explainer, front-end, method, runner)."""
    fine_w, coarse_w, attention = windows.fine_probs, windows.coarse_probs, windows.attention
    starts, duration = prepared.starts, prepared.duration
    reduce = np.max if aggregate == "max" else np.mean
    fine_p, coarse_p = reduce(fine_w, axis=0), reduce(coarse_w, axis=0)
    thresholds, basis = tagger.thresholds.for_file(duration, len(starts), aggregate)
    h = tagger.hierarchy
    coarse_rows = []
    for c, cname in enumerate(h.coarse_names):
        kids = h.children(c)
        row = {"tag": cname, "probability": round(float(coarse_p[c]), 4),
               "threshold": round(float(thresholds["coarse"][c]), 4),
               "present": bool(coarse_p[c] >= thresholds["coarse"][c]),
               "fine": [{"tag": h.fine_names[f], "probability": round(float(fine_p[f]), 4),
                         "threshold": round(float(thresholds["fine"][f]), 4),
                         "present": bool(fine_p[f] >= thresholds["fine"][f])} for f in kids]}
        if tagger.fine_sources is not None and windows.classes is not None:
            for entry, f in zip(row["fine"], kids):
                entry["audioset_class"] = carrier(tagger, f, fine_w, windows.classes, starts)
        if row["present"]:
            row["explanation"] = explain(tagger, c, fine_w, coarse_w, attention, starts)
        coarse_rows.append(row)
    end = np.minimum(starts + tagger.frontend.clip_seconds, duration)
    segments = [{"start": round(float(s), 3), "end": round(float(e), 3),
                 "fine": {n: round(float(v), 4) for n, v in zip(h.fine_names, fine_w[i])},
                 "coarse": {n: round(float(v), 4) for n, v in zip(h.coarse_names, coarse_w[i])}}
                for i, (s, e) in enumerate(zip(starts, end))]
    return {"file": prepared.path, "duration_seconds": round(duration, 3), "checkpoint": tagger.source,
            "method": tagger.method, "backend": tagger.runner.backend, "precision": tagger.runner.precision,
            "aggregate": aggregate, "window_seconds": tagger.frontend.clip_seconds,
            "hop_seconds": hop_seconds, "threshold_basis": basis, "coarse": coarse_rows,
            "window_thresholds": {level: {n: round(float(t), 4) for n, t in zip(names, tagger.thresholds.clip[level])}
                                  for level, names in zip(LEVELS, (h.fine_names, h.coarse_names))},
            "segments": segments}


def explain(tagger, c: int, fine_w: np.ndarray, coarse_w: np.ndarray, attention: np.ndarray | None,
            starts: np.ndarray) -> dict:
    """Which fine tags carried coarse tag c, at the window where c is most probable (the head decides how)."""
    w = int(np.argmax(coarse_w[:, c]))
    e = tagger.explainer.explain(c, fine_w[w], attention[w] if attention is not None else None)
    names = tagger.hierarchy.fine_names
    return {"basis": e.basis, "window_start": round(float(starts[w]), 3), "carried_by": [
        {"tag": names[f], "share": round(float(e.shares[f]), 4),
         **({"weight": round(float(e.weights[f]), 4)} if e.weights is not None else {})} for f in e.order]}


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
    stretches covered by windows whose probability reaches the tag's window (clip) threshold;
    overlapping or touching windows merge. Labels are ``fine:<tag>`` and ``coarse:<tag>``."""
    rows = []
    for level in LEVELS:
        for tag, threshold in result["window_thresholds"][level].items():
            stretch = None
            for seg in result["segments"]:
                if seg[level][tag] < threshold:
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
    rows = []
    for r in results:
        for c in r["coarse"]:
            rows.append([r["file"], "coarse", c["tag"], "", c["probability"], c["threshold"], int(c["present"])])
            rows += [[r["file"], "fine", f["tag"], c["tag"], f["probability"], f["threshold"], int(f["present"])]
                     for f in c["fine"]]
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
