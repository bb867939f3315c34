"""Tagging audio files of any length: sliding windows → batched model → song-level fine and coarse tags.

``Tagger.stream(files)`` is the library path: decoding, resampling and the log-mel run in worker
processes ahead of the model (bounded read-ahead), windows of several files share batches, and each
file's result comes back in input order as soon as its last window is through. ``Tagger.tag(path)``
tags one file. The model runs behind a *runner*: PyTorch (``hmic.inference.TorchRunner``, fp32 or bf16
backbone) or onnxruntime (``hmic.onnxrun.OnnxRunner``: the graph takes waveforms and holds the
front-end). Importing this module does not import torch: over onnxruntime, nothing does.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol

import numpy as np

from .audio import AudioError, FrontendConfig, fit_length, load_wave, window_starts  # noqa: F401 (re-exported)
from .devices import resolve_device, resolve_precision
from .errors import HmicError
from .explain import Explainer
from .fileio import csv_text, write_text
from .hierarchy import Hierarchy
from .inference import Outputs, TorchRunner
from .metrics import SONG_CLIPS, song_clips_for
from .runs import LEVELS, Run

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".opus", ".w64", ".caf"}
MEL_CHUNK = 16  # windows per log-mel call while preparing a file (bounds its memory)


class Runner(Protocol):
    """Runs the model on one batch of prepared windows."""

    inputs: str  # "logmel": (B, T, M) log-mel; "wave": (B, clip_samples) 16-kHz waveforms
    backend: str
    precision: str

    def __call__(self, x: np.ndarray) -> Outputs: ...


@dataclass
class Prepared:
    """One file made ready for the model (in a worker process): its windows' inputs and start times."""

    index: int
    path: str
    duration: float = 0.0
    starts: np.ndarray | None = None  # (W,) seconds
    inputs: np.ndarray | None = None  # (W, T, M) log-mel or (W, L) waves
    error: str | None = None


@dataclass
class Job:
    """What every worker needs to prepare a file (sent once, to each worker's initializer)."""

    frontend: FrontendConfig
    min_samples: int
    hop_seconds: float
    inputs: str


def prepare(index: int, path: str | Path, job: Job) -> Prepared:
    """Decode → mono → resample → windows (``window_starts``) → log-mel (when the runner takes it)."""
    try:
        wave = load_wave(path, job.frontend, job.min_samples)
    except AudioError as e:
        return Prepared(index, str(path), error=str(e))
    except OSError as e:  # unreadable although it exists (permissions, I/O error)
        return Prepared(index, str(path), error=f"{path}: cannot be read ({e.strerror or e})")
    sr, size = job.frontend.sample_rate, job.frontend.clip_samples
    starts = window_starts(wave.shape[0], size, max(1, int(round(job.hop_seconds * sr))))
    chunks = np.stack([fit_length(wave[s:s + size], size) for s in starts])
    if job.inputs == "wave":
        inputs = chunks
    else:
        from .logmel import logmel_of_wave

        inputs = np.concatenate([logmel_of_wave(chunks[i:i + MEL_CHUNK], job.frontend).numpy()
                                 for i in range(0, len(chunks), MEL_CHUNK)])
    return Prepared(index, str(path), wave.shape[0] / sr, np.array(starts) / sr, inputs)


_WORKER_JOB: Job | None = None


_BLAS_LIMIT = None  # kept alive for the worker's life


def _init_worker(job: Job) -> None:
    """One thread per worker process (BLAS for the resampler, torch for the log-mel): the workers run
    beside the model, whose threads already take the cores."""
    global _WORKER_JOB, _BLAS_LIMIT
    from threadpoolctl import threadpool_limits

    _BLAS_LIMIT = threadpool_limits(limits=1)
    if job.inputs == "logmel":
        import torch

        torch.set_num_threads(1)
    _WORKER_JOB = job


def _prepare_in_worker(index: int, path: str) -> Prepared:
    assert _WORKER_JOB is not None
    return prepare(index, path, _WORKER_JOB)


def prepare_all(paths: list[str], job: Job, workers: int, read_ahead: int | None = None) -> Iterator[Prepared]:
    """Prepared files in input order. ``workers`` > 0: that many processes work ahead of the caller,
    at most ``read_ahead`` files (default 2 per worker) beyond the one being consumed."""
    if workers <= 0:
        for i, p in enumerate(paths):
            yield prepare(i, p, job)
        return
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(job,))
    try:
        todo = iter(enumerate(paths))
        futures = deque(pool.submit(_prepare_in_worker, i, p) for i, p in islice(todo, read_ahead or 2 * workers))
        while futures:
            prepared = futures.popleft().result()
            futures.extend(pool.submit(_prepare_in_worker, i, p) for i, p in islice(todo, 1))
            yield prepared
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Pending:
    prepared: Prepared
    taken: int = 0  # windows sent to the model
    outputs: list[Outputs] = field(default_factory=list)
    done: int = 0  # windows back from the model

    @property
    def windows(self) -> int:
        return 0 if self.prepared.inputs is None else len(self.prepared.inputs)


def load_checkpoint(run_or_checkpoint: str | Path) -> tuple["Checkpoint", dict]:
    """A run folder's best.pt (or a checkpoint file) and its tuned thresholds (stored in the file, or
    the run's thresholds.json); untuned is an error naming the command that tunes it."""
    from .checkpoint import Checkpoint

    path = Path(run_or_checkpoint)
    run = Run(path) if path.is_dir() else None
    ckpt = Checkpoint.load(run.best_path if run else path)
    thresholds = ckpt.thresholds
    if thresholds is None and run is not None and run.tuned:
        thresholds = run.thresholds()
    if thresholds is None:
        raise HmicError(f"{ckpt.path} has no tuned thresholds; run 'hmic tune-thresholds {run or path.parent}'")
    return ckpt, thresholds


@dataclass
class Tagger:
    runner: Runner
    hierarchy: Hierarchy
    method: str
    explainer: Explainer  # how the head explains a coarse decision (hmic.explain)
    frontend: FrontendConfig
    min_samples: int
    thresholds: dict[str, np.ndarray]  # level -> (K,): for one window (clip)
    source: str
    song_thresholds: dict[str, np.ndarray] | None = None  # level -> (len(SONG_CLIPS), K): max over a song's windows

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, device: str = "cpu", precision: str = "fp32") -> "Tagger":
        """From a run folder (its best.pt) or an hmic checkpoint, over PyTorch; needs tuned thresholds.
        (An exported ONNX file: ``hmic.onnxrun.load_onnx_tagger``.)"""
        from .stack import require_torch_stack

        require_torch_stack()
        import torch

        dev = resolve_device(device)
        precision = resolve_precision(dev, precision)
        ckpt, thresholds = load_checkpoint(run_or_checkpoint)
        model = ckpt.model.eval()
        model.backbone.for_inference()  # the same function, faster (README, "Project choices")
        model = model.to(dev, memory_format=torch.channels_last)
        runner = TorchRunner(model, dev, precision)
        return cls.build(runner, model.hierarchy, model.method, model.head.explainer(), ckpt.frontend,
                         model.backbone.min_samples(ckpt.frontend), thresholds, str(ckpt.path))

    @classmethod
    def build(cls, runner: Runner, hierarchy: Hierarchy, method: str, explainer: Explainer, frontend: FrontendConfig,
              min_samples: int, thresholds: dict, source: str) -> "Tagger":
        """``thresholds``: as stored by tune-thresholds ({"fine": {tag: t}, "coarse": …, "song": …})."""
        h = hierarchy
        levels = dict(zip(LEVELS, (h.fine_names, h.coarse_names)))
        try:
            thr = {level: np.array([thresholds[level][n] for n in names]) for level, names in levels.items()}
        except KeyError as e:
            raise HmicError(f"{source}: its thresholds have no entry for {e}; re-run 'hmic tune-thresholds'") from None
        song = thresholds.get("song")
        song_thr = None
        if song is not None and tuple(song.get("clips", ())) == SONG_CLIPS:
            song_thr = {level: np.array([song[level][n] for n in names]).T for level, names in levels.items()}
        return cls(runner, h, method, explainer, frontend, min_samples, thr, source, song_thr)

    def thresholds_for(self, seconds: float, windows: int, aggregate: str = "max") -> tuple[dict[str, np.ndarray], str]:
        """The thresholds for the max over ``windows`` windows spanning ``seconds``: the clip thresholds
        for one window (or for mean aggregation, or a run tuned without song thresholds), else the song
        thresholds of the nearest pseudo-song length. Returns (level -> (K,), what they are)."""
        if windows <= 1 or aggregate != "max" or self.song_thresholds is None:
            return self.thresholds, "clip"
        clips = song_clips_for(seconds, self.frontend.clip_seconds)
        i = SONG_CLIPS.index(clips)
        return {level: t[i] for level, t in self.song_thresholds.items()}, f"song ({clips} clips)"

    def job(self, hop_seconds: float) -> Job:
        return Job(self.frontend, self.min_samples, hop_seconds, self.runner.inputs)

    def tag(self, path: str | Path, hop_seconds: float = 5.0, aggregate: str = "max", batch_size: int = 8) -> dict:
        """Tag one audio file of any length (raises AudioError). See the README for the JSON schema."""
        for _, result, error in self.stream([path], hop_seconds, aggregate, batch_size):
            if error is not None:
                raise AudioError(error)
            return result
        raise AssertionError("unreachable")

    def stream(self, paths: Iterable[str | Path], hop_seconds: float = 5.0, aggregate: str = "max",
               batch_size: int = 8, workers: int = 0) -> Iterator[tuple[str, dict | None, str | None]]:
        """(path, result, None) or (path, None, error) for every file, in input order."""
        if aggregate not in ("max", "mean"):
            raise HmicError("--aggregate must be max or mean")
        if hop_seconds <= 0:
            raise HmicError("--hop must be positive")
        if batch_size < 1:
            raise HmicError("--batch-size must be at least 1")
        pending: deque[_Pending] = deque()
        for prepared in prepare_all([str(p) for p in paths], self.job(hop_seconds), workers):
            pending.append(_Pending(prepared))
            while sum(p.windows - p.taken for p in pending) >= batch_size:
                self._run_batch(pending, batch_size)
            yield from self._finished(pending, hop_seconds, aggregate)
        while any(p.windows > p.taken for p in pending):
            self._run_batch(pending, batch_size)
        yield from self._finished(pending, hop_seconds, aggregate)

    def _run_batch(self, pending: deque[_Pending], batch_size: int) -> None:
        """One forward pass over the next ``batch_size`` windows, whichever files they come from."""
        parts, owners = [], []
        for p in pending:
            n = min(p.windows - p.taken, batch_size - sum(len(x) for x in parts))
            if n > 0:
                parts.append(p.prepared.inputs[p.taken:p.taken + n])
                owners.append((p, n))
                p.taken += n
        out = self.runner(np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0]))
        i = 0
        for p, n in owners:
            p.outputs.append(Outputs(out.fine_probs[i:i + n], out.coarse_probs[i:i + n],
                                     None if out.attention is None else out.attention[i:i + n]))
            p.done += n
            i += n
            if p.done == p.windows:
                p.prepared.inputs = None  # free it: the result needs only the outputs

    def _finished(self, pending: deque[_Pending], hop_seconds: float, aggregate: str):
        while pending and (pending[0].prepared.error is not None or
                           (pending[0].done == len(pending[0].prepared.starts) and pending[0].done > 0)):
            p = pending.popleft()
            if p.prepared.error is not None:
                yield p.prepared.path, None, p.prepared.error
                continue
            outs = p.outputs
            attention = None if outs[0].attention is None else np.concatenate([o.attention for o in outs])
            yield p.prepared.path, self.summarize(p.prepared, np.concatenate([o.fine_probs for o in outs]),
                                                  np.concatenate([o.coarse_probs for o in outs]), attention,
                                                  hop_seconds, aggregate), None

    def summarize(self, prepared: Prepared, fine_w: np.ndarray, coarse_w: np.ndarray, attention: np.ndarray | None,
                  hop_seconds: float, aggregate: str) -> dict:
        """Window probabilities (W, F), (W, C), attention (W, F, C) → the file's result."""
        starts, duration = prepared.starts, prepared.duration
        reduce = np.max if aggregate == "max" else np.mean
        fine_p, coarse_p = reduce(fine_w, axis=0), reduce(coarse_w, axis=0)
        thresholds, basis = self.thresholds_for(duration, len(starts), aggregate)
        h = self.hierarchy
        coarse_rows = []
        for c, cname in enumerate(h.coarse_names):
            kids = h.children(c)
            row = {"tag": cname, "probability": round(float(coarse_p[c]), 4),
                   "threshold": round(float(thresholds["coarse"][c]), 4),
                   "present": bool(coarse_p[c] >= thresholds["coarse"][c]),
                   "fine": [{"tag": h.fine_names[f], "probability": round(float(fine_p[f]), 4),
                             "threshold": round(float(thresholds["fine"][f]), 4),
                             "present": bool(fine_p[f] >= thresholds["fine"][f])} for f in kids]}
            if row["present"]:
                row["explanation"] = self.explain(c, fine_w, coarse_w, attention, starts)
            coarse_rows.append(row)
        end = np.minimum(starts + self.frontend.clip_seconds, duration)
        segments = [{"start": round(float(s), 3), "end": round(float(e), 3),
                     "fine": {n: round(float(v), 4) for n, v in zip(h.fine_names, fine_w[i])},
                     "coarse": {n: round(float(v), 4) for n, v in zip(h.coarse_names, coarse_w[i])}}
                    for i, (s, e) in enumerate(zip(starts, end))]
        return {"file": prepared.path, "duration_seconds": round(duration, 3), "checkpoint": self.source,
                "method": self.method, "backend": self.runner.backend, "precision": self.runner.precision,
                "aggregate": aggregate, "window_seconds": self.frontend.clip_seconds,
                "hop_seconds": hop_seconds, "threshold_basis": basis, "coarse": coarse_rows,
                "window_thresholds": {level: {n: round(float(t), 4) for n, t in zip(names, self.thresholds[level])}
                                      for level, names in zip(LEVELS, (h.fine_names, h.coarse_names))},
                "segments": segments}

    def explain(self, c: int, fine_w: np.ndarray, coarse_w: np.ndarray, attention: np.ndarray | None,
                starts: np.ndarray) -> dict:
        """Which fine tags carried coarse tag c, at the window where c is most probable (the head decides how)."""
        w = int(np.argmax(coarse_w[:, c]))
        e = self.explainer.explain(c, fine_w[w], attention[w] if attention is not None else None)
        names = self.hierarchy.fine_names
        return {"basis": e.basis, "window_start": round(float(starts[w]), 3), "carried_by": [
            {"tag": names[f], "share": round(float(e.shares[f]), 4),
             **({"weight": round(float(e.weights[f]), 4)} if e.weights is not None else {})} for f in e.order]}


@dataclass
class Inputs:
    """The files to tag, the name each one's outputs take (its path below the folder it was found in),
    and the entries that could not be read (reported like any other failure)."""

    files: list[Path] = field(default_factory=list)
    names: list[Path] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    not_audio: int = 0  # folder entries skipped for their suffix (see AUDIO_SUFFIXES)


def expand_inputs(inputs: Iterable[str | Path]) -> Inputs:
    """Files stay as given; folders are walked (links followed, in sorted order) for AUDIO_SUFFIXES.
    A dangling link, an entry without read permission or a folder that cannot be listed is reported."""
    found = Inputs()
    for arg in map(Path, inputs):
        if not arg.is_dir():
            found.files.append(arg)
            found.names.append(Path(arg.name))
            continue

        def unlistable(e: OSError) -> None:
            found.unreadable.append({"file": str(e.filename), "error": f"{e.filename}: folder cannot be read ({e.strerror})"})

        for folder, dirs, names in os.walk(arg, onerror=unlistable, followlinks=True):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                if path.suffix.lower() not in AUDIO_SUFFIXES:
                    found.not_audio += 1
                elif not path.exists():
                    found.unreadable.append({"file": str(path), "error": f"{path}: dangling symbolic link "
                                                                         f"(to {os.readlink(path)})"})
                elif not os.access(path, os.R_OK):
                    found.unreadable.append({"file": str(path), "error": f"{path}: cannot be read (permission denied)"})
                else:
                    found.files.append(path)
                    found.names.append(path.relative_to(arg))
    return found


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


def done_in_jsonl(path: Path) -> set[str]:
    """Absolute paths of the files that already have a result line in a --jsonl file (failures are
    retried). A last line cut short by a killed run is removed first, so appending stays valid."""
    from .fileio import read_jsonl, trim_partial_line

    if not Path(path).exists():
        return set()
    trim_partial_line(path)
    return {os.path.abspath(r["file"]) for r in read_jsonl(path) if "error" not in r and "file" in r}


CSV_COLUMNS = ("file", "level", "tag", "parent", "probability", "threshold", "present")


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

