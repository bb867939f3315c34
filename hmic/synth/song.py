"""A longer song of changing ensembles (sections of 15–30 s) to try ``hmic predict`` on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from .arrange import ENSEMBLES, plan_clip
from .render import AUDIBLE_FLOOR_DB, SAMPLE_RATE, check_soundfont, default_soundfont, mix_clip


def render_song(path: Path, seconds: float, seed: int = 0, soundfont: str | None = None) -> list[dict]:
    """Render a longer piece with changing ensembles (sections of 15-30 s) for `hmic predict` demos.

    Returns the sections [{start, end, ensemble, instruments}] (ground truth for the listener).
    """
    import soundfile as sf

    data = check_soundfont(soundfont or default_soundfont())
    rng = np.random.default_rng([seed, 3])
    pieces, sections, t = [], [], 0.0
    while t < seconds:
        length = float(min(rng.uniform(15, 30), seconds - t))
        if seconds - t - length < 5.0:  # no section shorter than 5 s: the last one takes the rest
            length = seconds - t
        ensemble = str(rng.choice([e for e in ENSEMBLES if e != "solo"]))
        plan = plan_clip(rng, f"song_{len(sections)}", 0, ensemble, length)
        mix, levels = mix_clip(plan, data)
        pieces.append(mix)
        sections.append({"start": round(t, 2), "end": round(t + length, 2), "ensemble": ensemble,
                         "instruments": sorted(k for k, v in levels.items() if v >= AUDIBLE_FLOOR_DB)})
        t += length
    with atomic_path(path) as tmp:
        sf.write(tmp, np.concatenate(pieces), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return sections
