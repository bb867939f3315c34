"""Whole-song tagging: sliding windows → batched model → song-level fine and coarse tags.

``Tagger.tag(path)`` returns clip-level (song) probabilities, presence by the run's tuned thresholds,
the per-window timeline with timestamps, and, for each present coarse tag, which fine tags carried it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio import FrontendConfig, fit_length, load_wave, logmel_of_wave
from .checkpoint import Checkpoint
from .devices import resolve_device
from .errors import HmicError
from .fileio import csv_text, write_text
from .hierarchy import Hierarchy
from .inference import infer
from .metrics import SONG_CLIPS, song_clips_for
from .model import HierarchicalTagger
from .runs import LEVELS, Run

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".opus", ".w64", ".caf"}


@dataclass
class Tagger:
    model: HierarchicalTagger
    frontend: FrontendConfig
    thresholds: dict[str, np.ndarray]  # level -> (K,): for one window (clip)
    source: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    song_thresholds: dict[str, np.ndarray] | None = None  # level -> (len(SONG_CLIPS), K): max over a song's windows

    @property
    def hierarchy(self) -> Hierarchy:
        return self.model.hierarchy

    @property
    def method(self) -> str:
        return self.model.method

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, device: str = "cpu") -> "Tagger":
        """From a run folder (its best.pt) or a checkpoint file; needs tuned thresholds."""
        path = Path(run_or_checkpoint)
        run = Run(path) if path.is_dir() else None
        ckpt = Checkpoint.load(run.best_path if run else path)
        thresholds = ckpt.thresholds
        if thresholds is None and run is not None and run.tuned:
            thresholds = run.thresholds()
        if thresholds is None:
            raise HmicError(f"{ckpt.path} has no tuned thresholds; run 'hmic tune-thresholds {run or path.parent}'")
        h = ckpt.hierarchy
        levels = dict(zip(LEVELS, (h.fine_names, h.coarse_names)))
        thr = {level: np.array([thresholds[level][n] for n in names]) for level, names in levels.items()}
        song = thresholds.get("song")
        song_thr = None
        if song is not None and tuple(song.get("clips", ())) == SONG_CLIPS:
            song_thr = {level: np.array([song[level][n] for n in names]).T for level, names in levels.items()}
        dev = resolve_device(device)
        model = ckpt.model.to(dev, memory_format=torch.channels_last).eval()
        return cls(model, ckpt.frontend, thr, str(ckpt.path), dev, song_thr)

    def thresholds_for(self, seconds: float, windows: int, aggregate: str = "max") -> tuple[dict[str, np.ndarray], str]:
        """The thresholds for the max over ``windows`` windows spanning ``seconds``: the clip thresholds
        for one window (or for mean aggregation, or a run tuned without song thresholds), else the song
        thresholds of the nearest pseudo-song length. Returns (level -> (K,), what they are)."""
        if windows <= 1 or aggregate != "max" or self.song_thresholds is None:
            return self.thresholds, "clip"
        clips = song_clips_for(seconds, self.frontend.clip_seconds)
        i = SONG_CLIPS.index(clips)
        return {level: t[i] for level, t in self.song_thresholds.items()}, f"song ({clips} clips)"

    def windows(self, wave: torch.Tensor, hop_seconds: float) -> tuple[torch.Tensor, np.ndarray]:
        """(L,) → (W, window) windows and their start times in seconds (see ``window_starts``)."""
        sr, size = self.frontend.sample_rate, self.frontend.clip_samples
        starts = window_starts(wave.shape[0], size, max(1, int(round(hop_seconds * sr))))
        chunks = torch.stack([fit_length(wave[s:s + size], size) for s in starts])
        return chunks, np.array(starts) / sr

    @torch.no_grad()
    def tag(self, path: str | Path, hop_seconds: float = 5.0, aggregate: str = "max", batch_size: int = 8) -> dict:
        """Tag one audio file of any length. See the README for the returned (JSON) schema."""
        if aggregate not in ("max", "mean"):
            raise HmicError("--aggregate must be max or mean")
        if hop_seconds <= 0:
            raise HmicError("--hop must be positive")
        wave = load_wave(path, self.frontend, self.model.backbone.min_samples(self.frontend))
        duration = wave.shape[0] / self.frontend.sample_rate
        chunks, starts = self.windows(wave, hop_seconds)
        out = infer(self.model, (logmel_of_wave(chunks[i:i + batch_size], self.frontend)
                                 for i in range(0, len(chunks), batch_size)), self.device)
        fine_w, coarse_w, attention = out.fine_probs, out.coarse_probs, out.attention  # (W, F), (W, C), (W, F, C)
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
        return {"file": str(path), "duration_seconds": round(duration, 3), "checkpoint": self.source,
                "method": self.method, "aggregate": aggregate, "window_seconds": self.frontend.clip_seconds,
                "hop_seconds": hop_seconds, "threshold_basis": basis, "coarse": coarse_rows,
                "window_thresholds": {level: {n: round(float(t), 4) for n, t in zip(names, self.thresholds[level])}
                                      for level, names in zip(LEVELS, (h.fine_names, h.coarse_names))},
                "segments": segments}

    def explain(self, c: int, fine_w: np.ndarray, coarse_w: np.ndarray, attention: np.ndarray | None,
                starts: np.ndarray) -> dict:
        """Which fine tags carried coarse tag c, at the window where c is most probable (the head decides how)."""
        w = int(np.argmax(coarse_w[:, c]))
        e = self.model.head.explain(c, fine_w[w], attention[w] if attention is not None else None)
        names = self.hierarchy.fine_names
        return {"basis": e.basis, "window_start": round(float(starts[w]), 3), "carried_by": [
            {"tag": names[f], "share": round(float(e.shares[f]), 4),
             **({"weight": round(float(e.weights[f]), 4)} if e.weights is not None else {})} for f in e.order]}


def window_starts(length: int, size: int, hop: int) -> list[int]:
    """Start samples of the windows that cover a file of ``length`` samples: one every ``hop``, and for
    a file longer than a window a last one that ends exactly at the file's end, so that no window holds
    padding the model never saw in training. Only a file shorter than one window is zero-padded."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, hop))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def expand_inputs(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in AUDIO_SUFFIXES))
        else:
            files.append(p)
    return files


CSV_COLUMNS = ("file", "level", "tag", "parent", "probability", "threshold", "present")


def to_csv(results: list[dict]) -> str:
    rows = []
    for r in results:
        for c in r["coarse"]:
            rows.append([r["file"], "coarse", c["tag"], "", c["probability"], c["threshold"], int(c["present"])])
            rows += [[r["file"], "fine", f["tag"], c["tag"], f["probability"], f["threshold"], int(f["present"])]
                     for f in c["fine"]]
    return csv_text(CSV_COLUMNS, rows)


def write_outputs(results: list[dict], failures: list[dict], json_path: Path | None, csv_path: Path | None,
                  segments: bool) -> None:
    if json_path:
        payload = [r if segments else {k: v for k, v in r.items() if k != "segments"} for r in results]
        write_text(json_path, json.dumps({"results": payload, "failures": failures}, indent=2) + "\n")
    if csv_path:
        write_text(csv_path, to_csv(results))

