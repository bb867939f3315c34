"""A longer song of changing ensembles (sections of 15–30 s) to try ``hmic predict`` on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hmic.errors import HmicError
from hmic.fileio import atomic_path, write_json
from hmic.data.synth.arrange import ENSEMBLES, ClipPlan, plan_clip
from hmic.data.synth.render import AUDIBLE_FLOOR_DB, SAMPLE_RATE, check_soundfont, default_soundfont, mix_clip


def truth_path(audio: str | Path) -> Path:
    """Where a rendered song's ground truth lives: ``song.wav`` → ``song.truth.json``."""
    return Path(audio).with_suffix(".truth.json")


def plan_song(seconds: float, seed: int = 0) -> list[tuple[float, float, str, ClipPlan]]:
    """The song's sections, deterministic in ``seed``: (start s, length s, ensemble, plan) each.

    Sections last 15–30 s; none is shorter than 5 s (the last one takes the rest).
    """
    rng = np.random.default_rng([seed, 3])
    sections, t = [], 0.0
    while t < seconds:
        length = float(min(rng.uniform(15, 30), seconds - t))
        if seconds - t - length < 5.0:
            length = seconds - t
        ensemble = str(rng.choice([e for e in ENSEMBLES if e != "solo"]))
        sections.append((t, length, ensemble, plan_clip(rng, f"song_{len(sections)}", 0, ensemble, length)))
        t += length
    return sections


def render_song(path: Path, seconds: float, seed: int = 0, soundfont: str | None = None) -> list[dict]:
    """Render a longer piece with changing ensembles for `hmic predict` demos, and write its ground
    truth next to it (``truth_path``): per section, the instruments audible by the stand-in's own
    labelling rule (a stem at least AUDIBLE_FLOOR_DB relative to the section's mix).

    Returns the sections [{start, end, ensemble, instruments}].
    """
    import soundfile as sf

    data = check_soundfont(soundfont or default_soundfont())
    pieces, sections = [], []
    for start, length, ensemble, plan in plan_song(seconds, seed):
        mix, levels = mix_clip(plan, data)
        pieces.append(mix)
        sections.append({"start": round(start, 2), "end": round(start + length, 2), "ensemble": ensemble,
                         "instruments": sorted(k for k, v in levels.items() if v >= AUDIBLE_FLOOR_DB)})
    with atomic_path(path) as tmp:
        sf.write(tmp, np.concatenate(pieces), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    truth = {"audio": Path(path).name, "seconds": round(float(seconds), 3), "seed": seed,
             "rule": f"an instrument is present in a section when its stem is at least {AUDIBLE_FLOOR_DB:g} dB "
                     "relative to the section's mix",
             "instruments": sorted({i for s in sections for i in s["instruments"]}), "sections": sections}
    write_json(truth_path(path), truth)
    return sections


def read_truth(path: str | Path) -> dict:
    """A song truth file (as written by ``render_song``), checked enough to compare predictions with."""
    path = Path(path)
    if not path.is_file():
        raise HmicError(f"truth file {path} does not exist; 'hmic synth-song' writes one next to the song")
    try:
        truth = json.loads(path.read_text())
        sections = [(float(s["start"]), float(s["end"]), list(s["instruments"])) for s in truth["sections"]]
    except (ValueError, KeyError, TypeError) as e:
        raise HmicError(f"{path}: not a song truth file (expected sections with start, end, instruments; {e})") from None
    if not sections:
        raise HmicError(f"{path}: the truth file lists no sections")
    return truth
