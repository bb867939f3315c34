"""Rendering and mixing: each part to its own stem with tinysoundfont, stems mixed at their levels.

An instrument counts as present only if its stem is audible in the mix (its energy at least
``AUDIBLE_FLOOR_DB`` relative to the mix); inaudible stems are left out of the mix entirely.
Several SoundFonts can serve one dataset: each part names the font it is played with (``InstrumentPart.font``,
an index into the fonts given). With ``variety`` planned (``arrange.Variety``), each stem gets its own
EQ tilt, compression and room send before the audibility measurement, and the mix gets background
noise after it (noise is not an instrument).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from hmic.errors import HmicError
from hmic.data.synth.arrange import ClipPlan, InstrumentPart

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


Fonts = tuple  # of SoundFont bytes; a part's ``font`` indexes it
_SOUNDFONT: Fonts | None = None
_SYNTHS: dict[int, tuple] = {}  # id(font bytes) -> (Synth, sfid, the font bytes it was loaded from)


def as_fonts(soundfont: bytes | Fonts) -> Fonts:
    return (soundfont,) if isinstance(soundfont, (bytes, bytearray)) else tuple(soundfont)


def _synth(font: bytes):
    """One loaded synth per font and process (an SF3 takes seconds to decode), reset before each use:
    ``tsf_reset`` frees the channels and fades out the voices still sounding, and 0.1 s rendered and
    dropped lets those fades end, so a part renders bit for bit as from a freshly loaded font (tested)."""
    import tinysoundfont

    cached = _SYNTHS.get(id(font))
    if cached is None or cached[2] is not font:
        if len(_SYNTHS) >= 4:  # fonts read again (a new bytes object) replace the old ones
            _SYNTHS.clear()
        synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
        cached = (synth, synth.sfload(font), font)
        _SYNTHS[id(font)] = cached
    synth, sfid, _ = cached
    synth.soundfonts[sfid].reset()
    synth.generate(SAMPLE_RATE // 10)
    return synth, sfid


def init_worker(soundfont: bytes | Fonts) -> None:
    global _SOUNDFONT
    _SOUNDFONT = as_fonts(soundfont)
    try:
        import torch  # noqa: F401  (keep workers single-threaded if torch is around)

        torch.set_num_threads(1)
    except Exception:
        pass


def render_part(part: InstrumentPart, duration: float, soundfont: bytes | Fonts) -> np.ndarray:
    """Render one part to a (L, 2) float32 stem at 44.1 kHz with its font (reset synth: deterministic)."""
    fonts = as_fonts(soundfont)
    if part.font >= len(fonts):
        raise HmicError(f"the plan plays {part.tag} with SoundFont #{part.font + 1} but only {len(fonts)} were given")
    synth, sfid = _synth(fonts[part.font])
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


def mix_clip(plan: ClipPlan, soundfont: bytes | Fonts) -> tuple[np.ndarray, dict[str, float]]:
    """Render every part, mix, and measure each stem's level relative to the mix.

    Returns (mix (L, 2) float32 peak-normalised, {tag: level_db}); tags below the audible floor
    are left out of the mix and get level -inf.
    """
    stems = {}
    effects = StemEffects(plan.variety, int(round(plan.duration * SAMPLE_RATE))) if plan.variety is not None else None
    for part in plan.parts:
        stem = render_part(part, plan.duration, soundfont)
        if effects is not None:
            stem = effects(stem, part)
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
    if plan.variety is not None and plan.variety.noise_snr_db is not None:
        mix = add_noise(mix, plan.variety)
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


# ---- variety: per-stem EQ, compression and room; background noise in the mix ----------------------

def _tilt(x: np.ndarray, tilt_db_per_octave: float) -> np.ndarray:
    """A spectral tilt around 1 kHz (dB per octave), limited to ±18 dB."""
    spec = np.fft.rfft(x, axis=0)
    f = np.fft.rfftfreq(x.shape[0], 1 / SAMPLE_RATE)
    gain_db = np.clip(tilt_db_per_octave * np.log2(np.maximum(f, 20.0) / 1000.0), -18, 18)
    return np.fft.irfft(spec * (10 ** (gain_db / 20))[:, None], n=x.shape[0], axis=0).astype(np.float32)


def _compress(x: np.ndarray, ratio: float, frame: int = 1024) -> np.ndarray:
    """Static compression above the stem's own RMS level, per 1024-sample frame, gains interpolated."""
    if ratio <= 1.0:
        return x
    n = x.shape[0] // frame
    if n < 2:
        return x
    env = np.sqrt(np.mean(x[: n * frame].reshape(n, frame, -1) ** 2, axis=(1, 2))) + 1e-9
    threshold = float(np.sqrt(np.mean(x**2))) + 1e-9
    gain = np.where(env > threshold, (env / threshold) ** (1 / ratio - 1), 1.0)
    centres = (np.arange(n) + 0.5) * frame
    g = np.interp(np.arange(x.shape[0]), centres, gain).astype(np.float32)
    return x * g[:, None]


def room_response(seconds: float, seed: int) -> np.ndarray:
    """A stereo room impulse response: exponentially decaying noise with RT60 ``seconds``."""
    rng = np.random.default_rng(seed)
    n = int(min(seconds, 2.0) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal((n, 2)) * np.exp(-6.9 * t / seconds)[:, None]
    return (ir / np.sqrt(np.sum(ir**2, axis=0, keepdims=True))).astype(np.float32)


class StemEffects:
    """One clip's per-stem effects in one FFT pass per stem: compression (time domain), then the EQ
    tilt and the room (dry + send × reverberation) as one spectral product. The room's spectrum is
    computed once per clip."""

    def __init__(self, variety, length: int):
        from scipy.fft import next_fast_len, rfft, rfftfreq

        ir = room_response(variety.room_seconds, variety.room_seed) if variety.room_seconds > 0 else np.zeros((1, 2), np.float32)
        self.length = length
        self.n = next_fast_len(length + ir.shape[0], real=True)
        self.room = rfft(ir, self.n, axis=0)
        self.octaves = np.log2(np.maximum(rfftfreq(self.n, 1 / SAMPLE_RATE), 20.0) / 1000.0)

    def __call__(self, stem: np.ndarray, part: InstrumentPart) -> np.ndarray:
        from scipy.fft import irfft, rfft

        x = _compress(stem, part.compression)
        gain = 10 ** (np.clip(part.eq_tilt * self.octaves, -18, 18) / 20)
        spec = rfft(x, self.n, axis=0) * gain[:, None] * (1 + part.room_send * self.room)
        return irfft(spec, self.n, axis=0)[: self.length].astype(np.float32)


def add_noise(mix: np.ndarray, variety) -> np.ndarray:
    """Pink-ish background noise at ``noise_snr_db`` below the mix."""
    rng = np.random.default_rng(variety.noise_seed)
    white = rng.standard_normal(mix.shape).astype(np.float32)
    noise = _tilt(white, -3.0)
    scale = np.sqrt((np.mean(mix**2) + 1e-12) / (np.mean(noise**2) + 1e-12) / 10 ** (variety.noise_snr_db / 10))
    return (mix + scale * noise).astype(np.float32)
