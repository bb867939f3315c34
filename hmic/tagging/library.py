"""Tagging files and folders as a library does it: what ``hmic predict`` runs, callable from Python.

    from hmic.tagging import FileTagger, tag_files
    report = tag_files(FileTagger.load("runs/gmp/lam0.80/seed0"), ["music/"], jsonl="tags.jsonl", labels="labels/")

``plan_tagging`` finds the files (reporting unreadable entries) and, with ``jsonl``, leaves out those
already tagged there; ``run_tagging`` tags the rest, appends each result to the JSON Lines file as it
finishes (a killed run resumes), writes label tracks, compares a song with its truth, and collects
failures without stopping. ``tag_files`` is both in one call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from hmic.errors import HmicError
from hmic.fileio import append_jsonl, read_jsonl, trim_partial_line, write_text
from hmic.tagging.inputs import expand_inputs
from hmic.tagging.results import for_output, label_path, label_track, write_outputs
from hmic.tagging.tagger import DEFAULT_AGGREGATE, DEFAULT_BATCH_SIZE, DEFAULT_HOP_SECONDS, FileTagger


@dataclass
class TaggingPlan:
    """The files to tag now, the name of each one's label track, and what was left out (and why)."""

    files: list[Path]
    names: dict[str, Path]  # file -> its path below the input folder it was found in
    unreadable: list[dict] = field(default_factory=list)  # folder entries that cannot be read: {"file", "error"}
    not_audio: int = 0  # folder entries without an audio suffix
    already_done: int = 0  # files that already have a result in the JSON Lines file
    found: int = 0  # audio files found in all
    truth: dict | None = None  # a song's ground truth (hmic synth-song's .truth.json)
    jsonl: Path | None = None
    skipped: list[str] = field(default_factory=list)  # the folder entries without an audio suffix


@dataclass
class TaggingReport:
    results: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)  # {"file", "error"}, unreadable entries included


def default_workers(n_files: int) -> int:
    """Decoding processes: none for one file (start-up would cost more), else min(4, half the CPUs)."""
    return 0 if n_files <= 1 else max(1, min(4, (os.cpu_count() or 2) // 2))


def producer(tagger: FileTagger, hop_seconds: float, aggregate: str) -> dict:
    """What produced a result line, so that a --jsonl file is resumed only by the same model and
    options: the checkpoint (absolute path, size, modification time) and every option that changes
    a result."""
    source = Path(tagger.source).resolve()
    stat = source.stat() if source.exists() else None
    return {"checkpoint": str(source), "checkpoint_bytes": stat.st_size if stat else None,
            "checkpoint_mtime_ns": stat.st_mtime_ns if stat else None, "backend": tagger.runner.backend,
            "precision": tagger.runner.precision, "hop_seconds": float(hop_seconds), "aggregate": aggregate,
            "decision": tagger.decision}


def done_in_jsonl(path: str | Path, made_by: dict | None = None) -> set[str]:
    """Absolute paths of the files that already have a result line in a --jsonl file (failures are
    retried). A last line cut short by a killed run is removed first, so appending stays valid; a
    damaged line elsewhere is an error naming it. With ``made_by`` (``producer``), a line written by
    another model or with other options is an error naming the difference (write another file)."""
    if not Path(path).exists():
        return set()
    trim_partial_line(path)
    done = set()
    for number, row in enumerate(read_jsonl(path), start=1):
        # a line from before --decision existed was made with the paper's independent thresholds
        theirs = {"decision": "independent", **row["producer"]} if row.get("producer") else None
        if made_by is not None and theirs != made_by:
            theirs = theirs or {}
            diff = [f"{k} {theirs.get(k)!r} there, {v!r} now" for k, v in made_by.items() if theirs.get(k) != v]
            raise HmicError(f"{path}, line {number}, was written by another model or with other options ("
                            + ("; ".join(diff) if theirs else "no producer recorded: an older hmic") +
                            "); resume it with the same --run and options, or write to another --jsonl file")
        if "error" not in row and "path" in row:
            done.add(row["path"])
    return done


def plan_tagging(audio: Iterable[str | Path], jsonl: str | Path | None = None, truth: str | Path | None = None,
                 labels: str | Path | None = None, made_by: dict | None = None) -> TaggingPlan:
    """The files to tag. With ``labels``, two files whose label tracks would have the same name are
    refused before anything is written; with ``jsonl``, files already tagged there (by ``made_by``)
    are left out."""
    from hmic.data.synth.song import read_truth

    audio = list(audio)
    truth_data = read_truth(truth) if truth else None
    found = expand_inputs(audio)
    if not found.files and not found.unreadable:
        raise HmicError("no audio files found in " + ", ".join(map(str, audio)))
    if truth_data is not None and len(found.files) != 1:
        raise HmicError("--truth compares one song: give exactly one audio file")
    if labels is not None:
        seen: dict[Path, Path] = {}
        for file, name in zip(found.files, found.names):
            if name in seen:
                raise HmicError(f"--labels: {seen[name]} and {file} would both write {label_path(Path(labels), name)}; "
                                "tag them into separate --labels folders (or one input folder that holds both)")
            seen[name] = file
    todo = found.files
    if jsonl is not None:
        done = done_in_jsonl(jsonl, made_by)
        todo = [f for f in todo if os.path.abspath(f) not in done]
    return TaggingPlan(todo, dict(zip(map(str, found.files), found.names)), found.unreadable, found.not_audio,
                       len(found.files) - len(todo), len(found.files), truth_data, Path(jsonl) if jsonl else None,
                       found.skipped)


def run_tagging(tagger: FileTagger, plan: TaggingPlan, *, hop_seconds: float = DEFAULT_HOP_SECONDS,
                aggregate: str = DEFAULT_AGGREGATE, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                labels: str | Path | None = None, segments: bool = False, json_out: str | Path | None = None,
                csv_out: str | Path | None = None,
                on_file: Callable[[str, dict | None, str | None], None] | None = None) -> TaggingReport:
    """Tag the plan's files; ``on_file(path, result, error)`` after each one (progress, printing).
    A failed file is reported and the others go on. ``json_out``/``csv_out`` hold this call's files only."""
    from hmic.tagging.truth import compare_song

    report = TaggingReport()
    made_by = producer(tagger, hop_seconds, aggregate)

    def record(entry: dict) -> None:  # a JSON line: the file's absolute path and what produced it, too
        append_jsonl(plan.jsonl, {**entry, "path": os.path.abspath(entry["file"]), "producer": made_by})

    def failed(entry: dict) -> None:
        report.failures.append(entry)
        if plan.jsonl is not None:
            record(entry)

    for entry in plan.unreadable:
        failed(entry)
    workers = default_workers(len(plan.files)) if workers is None else workers
    for path, result, error in tagger.stream(plan.files, hop_seconds, aggregate, batch_size, workers):
        if error is not None:
            failed({"file": path, "error": error})
        else:
            if plan.truth is not None:
                result["truth_comparison"] = compare_song(result, plan.truth, tagger)
            if labels is not None:
                write_text(label_path(Path(labels), plan.names[path]), label_track(result))
            if plan.jsonl is not None:
                record(for_output(result, segments))
            report.results.append(result)
        if on_file is not None:
            on_file(path, result, error)
    write_outputs(report.results, report.failures, Path(json_out) if json_out else None,
                  Path(csv_out) if csv_out else None, segments)
    return report


def tag_files(tagger: FileTagger, audio: Iterable[str | Path], *, jsonl: str | Path | None = None,
              truth: str | Path | None = None, **options) -> TaggingReport:
    """``plan_tagging`` then ``run_tagging`` (its keyword options: hop_seconds, aggregate, batch_size,
    workers, labels, segments, json_out, csv_out, on_file)."""
    made_by = producer(tagger, options.get("hop_seconds", DEFAULT_HOP_SECONDS), options.get("aggregate", DEFAULT_AGGREGATE))
    plan = plan_tagging(audio, jsonl, truth, options.get("labels"), made_by)
    return run_tagging(tagger, plan, **options)
