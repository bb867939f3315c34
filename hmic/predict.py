"""Whole-song tagging: sliding windows → batched model → song-level fine and coarse tags.

``Tagger.tag(path)`` returns clip-level (song) probabilities, presence by the run's tuned thresholds,
the per-window timeline with timestamps, and, for each present coarse tag, which fine tags carried it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio import FrontendConfig, fit_length, load_wave, logmel_of_wave
from .errors import HmicError
from .hierarchy import Hierarchy
from .io import write_text
from .model import BackboneConfig, HierarchicalTagger

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".opus", ".w64", ".caf"}


def find_latest_run(runs_dir: Path) -> Path:
    """The most recently trained finished run that has tuned thresholds."""
    candidates = [p.parent for p in Path(runs_dir).rglob("thresholds.json") if (p.parent / "best.pt").exists()]
    if not candidates:
        raise HmicError(f"no run with tuned thresholds under {runs_dir}; train one and run 'hmic tune-thresholds RUN', "
                        "or pass --run")
    return max(candidates, key=lambda p: (p / "done.json").stat().st_mtime if (p / "done.json").exists() else 0)


@dataclass
class Tagger:
    model: HierarchicalTagger
    hierarchy: Hierarchy
    frontend: FrontendConfig
    thresholds: dict[str, np.ndarray]  # level -> (K,)
    method: str
    source: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, device: str = "cpu") -> "Tagger":
        path = Path(run_or_checkpoint)
        ckpt = path / "best.pt" if path.is_dir() else path
        if not ckpt.exists():
            raise HmicError(f"{ckpt} does not exist; pass a run folder with best.pt or a checkpoint file")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        for key in ("model", "config", "hierarchy", "frontend", "backbone"):
            if key not in state:
                raise HmicError(f"{ckpt} is not an hmic checkpoint (no '{key}')")
        hierarchy = Hierarchy.from_dict(state["hierarchy"])
        backbone = BackboneConfig(**state["backbone"])
        method = state["config"]["method"]
        model = HierarchicalTagger(backbone, method, hierarchy)
        model.load_state_dict(state["model"])
        thresholds = state.get("thresholds")
        if thresholds is None and path.is_dir() and (path / "thresholds.json").exists():
            thresholds = json.loads((path / "thresholds.json").read_text())
        if thresholds is None:
            raise HmicError(f"{ckpt} has no tuned thresholds; run 'hmic tune-thresholds {path.parent if not path.is_dir() else path}'")
        thr = {"fine": np.array([thresholds["fine"][n] for n in hierarchy.fine_names]),
               "coarse": np.array([thresholds["coarse"][n] for n in hierarchy.coarse_names])}
        dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
        model = model.to(dev, memory_format=torch.channels_last).eval()
        return cls(model, hierarchy, FrontendConfig(**state["frontend"]), thr, method, str(ckpt), dev)

    def windows(self, wave: torch.Tensor, hop_seconds: float) -> tuple[torch.Tensor, np.ndarray]:
        """(L,) → (W, window) windows and their start times in seconds; the last one zero-padded."""
        sr, size = self.frontend.sample_rate, self.frontend.clip_samples
        hop = max(1, int(round(hop_seconds * sr)))
        length = wave.shape[0]
        starts = list(range(0, max(length - size, 0) + 1, hop))
        if starts[-1] + size < length:  # cover the tail
            starts.append(starts[-1] + hop)
        chunks = torch.stack([fit_length(wave[s:s + size], size) for s in starts])
        return chunks, np.array(starts) / sr

    @torch.no_grad()
    def tag(self, path: str | Path, hop_seconds: float = 5.0, aggregate: str = "max", batch_size: int = 8) -> dict:
        """Tag one audio file of any length. See the README for the returned (JSON) schema."""
        if aggregate not in ("max", "mean"):
            raise HmicError("--aggregate must be max or mean")
        if hop_seconds <= 0:
            raise HmicError("--hop must be positive")
        wave = load_wave(path, self.frontend)
        duration = wave.shape[0] / self.frontend.sample_rate
        chunks, starts = self.windows(wave, hop_seconds)
        fine, coarse, attn = [], [], []
        for i in range(0, len(chunks), batch_size):
            logmel = logmel_of_wave(chunks[i:i + batch_size], self.frontend).to(self.device)
            out = self.model(logmel)
            fine.append(out.fine_probs.float().cpu())
            coarse.append(out.coarse_probs.float().cpu())
            if out.attention is not None:
                attn.append(out.attention.float().cpu())
        fine_w, coarse_w = torch.cat(fine).numpy(), torch.cat(coarse).numpy()  # (W, F), (W, C)
        attention = torch.cat(attn).numpy() if attn else None  # (W, F, C)
        reduce = np.max if aggregate == "max" else np.mean
        fine_p, coarse_p = reduce(fine_w, axis=0), reduce(coarse_w, axis=0)
        h = self.hierarchy
        coarse_rows = []
        for c, cname in enumerate(h.coarse_names):
            kids = h.children(c)
            row = {"tag": cname, "probability": round(float(coarse_p[c]), 4),
                   "threshold": round(float(self.thresholds["coarse"][c]), 4),
                   "present": bool(coarse_p[c] >= self.thresholds["coarse"][c]),
                   "fine": [{"tag": h.fine_names[f], "probability": round(float(fine_p[f]), 4),
                             "threshold": round(float(self.thresholds["fine"][f]), 4),
                             "present": bool(fine_p[f] >= self.thresholds["fine"][f])} for f in kids]}
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
                "hop_seconds": hop_seconds, "coarse": coarse_rows, "segments": segments}

    def explain(self, c: int, fine_w: np.ndarray, coarse_w: np.ndarray, attention: np.ndarray | None,
                starts: np.ndarray) -> dict:
        """Which fine tags carried coarse tag c, at the window where c is most probable.

        resatt (and lp): the attention share W[f, c]·P_f / P_c over all fine tags (no hierarchy prior).
        Other heads: the children's probabilities; for gmp and flat the winning child decides alone.
        """
        w = int(np.argmax(coarse_w[:, c]))
        h = self.hierarchy
        if attention is not None:
            contrib = attention[w, :, c] * fine_w[w]
            basis = "attention"
        else:
            contrib = h.membership[c] * fine_w[w]
            basis = "max child" if self.method in ("gmp", "flat") else "children"
        total = float(contrib.sum()) or 1.0
        order = [int(f) for f in np.argsort(-contrib) if contrib[f] > 0]
        if basis == "max child":
            order = order[:1]
        return {"basis": basis, "window_start": round(float(starts[w]), 3), "carried_by": [
            {"tag": h.fine_names[f], "share": round(float(contrib[f] / total), 4),
             **({"weight": round(float(attention[w, f, c]), 4)} if attention is not None else {})}
            for f in order[:5] if contrib[f] / total >= 0.05 or basis == "max child"]}


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
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        for c in r["coarse"]:
            w.writerow([r["file"], "coarse", c["tag"], "", c["probability"], c["threshold"], int(c["present"])])
            for f in c["fine"]:
                w.writerow([r["file"], "fine", f["tag"], c["tag"], f["probability"], f["threshold"], int(f["present"])])
    return buf.getvalue()


def write_outputs(results: list[dict], failures: list[dict], json_path: Path | None, csv_path: Path | None,
                  segments: bool) -> None:
    if json_path:
        payload = [r if segments else {k: v for k, v in r.items() if k != "segments"} for r in results]
        write_text(json_path, json.dumps({"results": payload, "failures": failures}, indent=2) + "\n")
    if csv_path:
        write_text(csv_path, to_csv(results))

