"""A tagged song against its ground truth (the ``.truth.json`` that ``hmic synth-song`` writes): which
tags were found, missed or false for the whole song and per section, with precision, recall and F1."""

from __future__ import annotations

import numpy as np

from hmic.evaluation.decision import decide
from hmic.tagging.results import marks
from hmic.tagging.tagger import FileTagger

RIGHT_F1 = 0.8  # a section counts as right when its fine-level F1 reaches this


def set_scores(predicted: set[str], truth: set[str]) -> dict:
    found, missed, false = sorted(predicted & truth), sorted(truth - predicted), sorted(predicted - truth)
    precision = len(found) / len(predicted) if predicted else (1.0 if not truth else 0.0)
    recall = len(found) / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"found": found, "missed": missed, "false": false, "precision": precision, "recall": recall, "f1": f1}


def compare_song(result: dict, truth: dict, tagger: FileTagger) -> dict:
    """``result``: ``FileTagger.tag`` output (with its segments); ``truth``: a song truth file's content
    (``hmic.data.synth.song.read_truth``)."""
    h = tagger.hierarchy
    below = h.membership > 0  # (C, F): the coarse (inner) nodes above each fine tag, at any depth
    truth_fine = set(truth["instruments"])
    truth_ids = [i for i, f in enumerate(h.fine_names) if f in truth_fine]
    truth_coarse = {c for c, row in zip(h.coarse_names, below) if row[truth_ids].any()}
    present_coarse, present_fine = marks(result)
    song = {"fine": set_scores(set(present_fine), truth_fine), "coarse": set_scores(set(present_coarse), truth_coarse)}
    segments = result["segments"]
    centres = np.array([(s["start"] + s["end"]) / 2 for s in segments])
    sections = []
    for section in truth["sections"]:
        start, end = float(section["start"]), float(section["end"])
        inside = [i for i, c in enumerate(centres) if start <= c < end]
        if not inside:  # a section shorter than a window: the window that overlaps it most
            overlap = [min(end, s["end"]) - max(start, s["start"]) for s in segments]
            inside = [int(np.argmax(overlap))]
        fine = np.array([[segments[i]["fine"][f] for f in h.fine_names] for i in inside]).max(axis=0)
        coarse = np.array([[segments[i]["coarse"][c] for c in h.coarse_names] for i in inside]).max(axis=0)
        thresholds, basis = tagger.thresholds.for_file(end - start, len(inside), result["aggregate"])
        on, _ = decide(fine, coarse, thresholds["fine"], thresholds["coarse"], h.edges, tagger.decision,
                       tagger.thresholds.untrained("fine", list(h.fine_names)),
                       tagger.thresholds.untrained("coarse", list(h.coarse_names)))
        predicted = {f for f, present in zip(h.fine_names, on) if present}
        scores = set_scores(predicted, set(section["instruments"]))
        sections.append({"start": start, "end": end, "windows": len(inside), "thresholds": basis, **scores})
    right = sum(s["f1"] >= RIGHT_F1 for s in sections)
    return {"song": song, "sections": sections, "sections_right": right, "right_f1": RIGHT_F1}
