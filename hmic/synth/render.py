"""Rendering and mixing: each part to its own stem with tinysoundfont, stems mixed at their levels.

An instrument counts as present only if its stem is audible in the mix (its energy at least
``AUDIBLE_FLOOR_DB`` relative to the mix); inaudible stems are left out of the mix entirely.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from ..errors import HmicError
from .arrange import ClipPlan, Part

SAMPLE_RATE = 44_100
AUDIBLE_FLOOR_DB = -20.0  # a stem quieter than this relative to the mix is not labelled present


def default_soundfont() -> Path:
    """TimGM6mb.sf2, shipped inside the pretty_midi wheel (GPL-2; loaded in place, never copied)."""
    spec = find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        raise HmicError("pretty_midi is not installed, so there is no default SoundFont; pass --soundfont PATH")
    path = Path(spec.origin).parent / "TimGM6mb.sf2"
    if not path.exists():
        raise HmicError(f"{path} is missing from the pretty_midi package; pass --soundfont PATH")
    return path


def check_soundfont(path: str | os.PathLike) -> bytes:
    """Read and test-load a SoundFont; a clear error names the file when it is not one."""
    import tinysoundfont

    path = Path(path)
    if not path.is_file():
        raise HmicError(f"SoundFont {path} does not exist; pass --soundfont with an .sf2/.sf3 file")
    data = path.read_bytes()
    try:
        tinysoundfont.Synth(samplerate=SAMPLE_RATE).sfload(data)
    except Exception as e:  # tinysoundfont raises its own exception type for unreadable files
        raise HmicError(f"SoundFont {path} could not be loaded ({e}); pass a valid .sf2/.sf3 file") from None
    return data


_SOUNDFONT: bytes | None = None


def init_worker(soundfont: bytes) -> None:
    global _SOUNDFONT
    _SOUNDFONT = soundfont
    try:
        import torch  # noqa: F401  (keep workers single-threaded if torch is around)

        torch.set_num_threads(1)
    except Exception:
        pass


def render_part(part: Part, duration: float, soundfont: bytes) -> np.ndarray:
    """Render one part to a (L, 2) float32 stem at 44.1 kHz; a fresh synth makes it deterministic."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
    sfid = synth.sfload(soundfont)
    drums = part.program < 0
    chan = 9 if drums else 0
    try:
        if drums:
            synth.program_select(chan, sfid, 128, 0, is_drums=True)
        else:
            synth.program_select(chan, sfid, 0, part.program)
    except Exception:
        raise HmicError(f"the SoundFont has no preset for GM program {part.program} ({part.tag}); use a full GM SoundFont")
    total = int(round(duration * SAMPLE_RATE))
    events = []
    for start, dur, key, vel in part.notes:
        events.append((int(start * SAMPLE_RATE), 1, key, vel))
        events.append((int(min(start + dur, duration) * SAMPLE_RATE), 0, key, 0))
    events.sort(key=lambda e: (e[0], e[1]))
    out = np.zeros((total, 2), dtype=np.float32)
    pos = 0
    for at, on, key, vel in events + [(total, -1, 0, 0)]:
        at = min(at, total)
        if at > pos:
            out[pos:at] = np.frombuffer(synth.generate(at - pos), dtype=np.float32).reshape(-1, 2)
            pos = at
        if on == 1:
            synth.noteon(chan, key, vel)
        elif on == 0:
            synth.noteoff(chan, key)
    return out


def mix_clip(plan: ClipPlan, soundfont: bytes) -> tuple[np.ndarray, dict[str, float]]:
    """Render every part, mix, and measure each stem's level relative to the mix.

    Returns (mix (L, 2) float32 peak-normalised, {tag: level_db}); tags below the audible floor
    are left out of the mix and get level -inf.
    """
    stems = {}
    for part in plan.parts:
        stem = render_part(part, plan.duration, soundfont)
        rms = float(np.sqrt(np.mean(stem**2)))
        if rms < 1e-6:
            stems[part.tag] = None
            continue
        left, right = np.sqrt((1 - part.pan) / 2), np.sqrt((1 + part.pan) / 2)
        stem = stem / rms * (10 ** (part.gain_db / 20)) * np.array([left, right], dtype=np.float32) * np.sqrt(2)
        stems[part.tag] = stem.astype(np.float32)
    levels: dict[str, float] = {}
    for _ in range(2):  # dropping an inaudible stem raises the others' relative level: re-measure
        active = {t: s for t, s in stems.items() if s is not None}
        mix = sum(active.values()) if active else np.zeros((int(plan.duration * SAMPLE_RATE), 2), np.float32)
        mix_energy = float(np.mean(mix**2)) + 1e-12
        for tag, stem in stems.items():
            levels[tag] = 10 * np.log10(float(np.mean(stem**2)) / mix_energy) if stem is not None else float("-inf")
            if levels[tag] < AUDIBLE_FLOOR_DB:
                stems[tag] = None
    peak = float(np.abs(mix).max()) if mix.size else 0.0
    if peak > 0:
        mix = mix / peak * (10 ** (-1.0 / 20))
    return mix.astype(np.float32), {t: float(v) for t, v in levels.items()}


def measure_levels(plans: list[ClipPlan], soundfont: bytes, workers: int = 1) -> dict[str, dict[str, float]]:
    """Each stem's level in its mix, without writing audio (used to check label statistics)."""
    if workers <= 1:
        return {p.key: mix_clip(p, soundfont)[1] for p in plans}
    with ProcessPoolExecutor(workers, initializer=init_worker, initargs=(soundfont,)) as pool:
        return dict(pool.map(_levels_job, plans, chunksize=16))


def _levels_job(plan: ClipPlan) -> tuple[str, dict[str, float]]:
    return plan.key, mix_clip(plan, _SOUNDFONT)[1]


def worker_soundfont() -> bytes:
    """The SoundFont bytes a worker process was started with (``init_worker``)."""
    if _SOUNDFONT is None:
        raise RuntimeError("init_worker was not called in this process")
    return _SOUNDFONT
