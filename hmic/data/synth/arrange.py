"""Arranging music: ensembles, voices, keys, chord progressions and one part per instrument.

Pure planning (no audio): ``plan_clip`` turns a seeded generator into a ``ClipPlan`` whose parts hold
notes (start s, duration s, MIDI key, velocity) and mix settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hmic.data.openmic import OPENMIC_TAGS


@dataclass(frozen=True)
class Voice:
    """How a tag is played: GM programs (or drum-kit notes), register and allowed roles."""

    programs: tuple[int, ...] = ()
    low: int = 48
    high: int = 84
    roles: tuple[str, ...] = ("melody",)
    drum_notes: tuple[int, ...] = ()
    tremolo: bool = False  # mandolin approximation: rapidly repeated notes
    short: bool = False  # plucked, damped notes (ukulele approximation)


VOICES: dict[str, Voice] = {
    "accordion": Voice((21, 23), 53, 81, ("chords", "melody")),
    "banjo": Voice((105,), 55, 84, ("arpeggio",)),
    "bass": Voice((32, 33, 34, 35), 28, 52, ("bass",)),
    "cello": Voice((42,), 36, 67, ("bass", "melody", "chords")),
    "clarinet": Voice((71,), 50, 84, ("melody",)),
    "cymbals": Voice(drum_notes=(42, 46, 44, 49, 51, 55, 57), roles=("cymbals",)),
    "drums": Voice(drum_notes=(35, 36, 38, 40, 41, 43, 45, 47, 48, 50, 37), roles=("drums",)),
    "flute": Voice((73,), 60, 96, ("melody",)),
    "guitar": Voice((24, 25, 26, 27, 29, 30), 40, 76, ("chords", "arpeggio", "melody")),
    "mallet_percussion": Voice((9, 11, 12, 13, 14), 60, 96, ("melody", "arpeggio")),
    # GM has no mandolin: a steel-string guitar in the mandolin's register (G3-E6) with tremolo.
    "mandolin": Voice((25,), 55, 88, ("melody", "arpeggio"), tremolo=True),
    "organ": Voice((16, 17, 18, 19), 48, 84, ("chords",)),
    "piano": Voice((0, 1, 4, 5), 36, 96, ("chords", "arpeggio", "melody")),
    "saxophone": Voice((64, 65, 66, 67), 46, 80, ("melody",)),
    "synthesizer": Voice((80, 81, 88, 89, 90), 48, 88, ("chords", "melody", "arpeggio")),
    "trombone": Voice((57,), 40, 72, ("melody", "bass", "chords")),
    "trumpet": Voice((56, 59), 55, 82, ("melody", "chords")),
    # GM has no ukulele: a nylon guitar in the ukulele's register (C4-A5), short strummed chords.
    "ukulele": Voice((24,), 60, 81, ("chords",), short=True),
    "violin": Voice((40, 110), 55, 96, ("melody", "chords")),
    "voice": Voice((52, 53), 48, 79, ("melody", "chords")),
}

# Ensembles: (required tags, optional tags with probability, one-of groups).
ENSEMBLES: dict[str, dict] = {
    "rock_band": {"req": ["drums", "bass", "guitar"], "opt": {"cymbals": 0.8, "voice": 0.6, "organ": 0.2, "synthesizer": 0.2, "piano": 0.15}},
    "jazz_combo": {"req": ["bass", "piano"], "opt": {"drums": 0.6, "cymbals": 0.8, "saxophone": 0.6, "trumpet": 0.4, "trombone": 0.3, "guitar": 0.2, "mallet_percussion": 0.2}},
    "string_quartet": {"req": ["violin", "cello"], "opt": {"bass": 0.3, "piano": 0.2, "flute": 0.15}},
    "brass_band": {"req": ["trumpet", "trombone"], "opt": {"drums": 0.5, "cymbals": 0.5, "saxophone": 0.3, "clarinet": 0.2, "bass": 0.3}},
    "orchestra": {"req": ["violin"], "opt": {"cello": 0.7, "flute": 0.5, "clarinet": 0.4, "trumpet": 0.35, "trombone": 0.35, "mallet_percussion": 0.3, "cymbals": 0.3, "bass": 0.3}},
    "electronic": {"req": ["synthesizer"], "opt": {"drums": 0.8, "cymbals": 0.7, "bass": 0.5, "voice": 0.3, "piano": 0.2}},
    "folk": {"req": ["guitar"], "opt": {"banjo": 0.4, "mandolin": 0.4, "violin": 0.4, "bass": 0.4, "accordion": 0.25, "voice": 0.4, "ukulele": 0.2}},
    "piano_trio": {"req": ["piano"], "opt": {"bass": 0.7, "drums": 0.4, "cymbals": 0.6, "violin": 0.2, "cello": 0.2}},
    "choir": {"req": ["voice"], "opt": {"organ": 0.5, "piano": 0.3, "cello": 0.15}},
    "tango": {"req": ["accordion"], "opt": {"violin": 0.6, "bass": 0.5, "piano": 0.5, "guitar": 0.2}},
    "island": {"req": ["ukulele"], "opt": {"voice": 0.5, "guitar": 0.3, "bass": 0.4, "mallet_percussion": 0.2}},
    "bluegrass": {"req": ["banjo"], "opt": {"mandolin": 0.6, "guitar": 0.6, "violin": 0.5, "bass": 0.5}},
    "organ_gospel": {"req": ["organ"], "opt": {"voice": 0.7, "drums": 0.4, "cymbals": 0.4, "bass": 0.4, "piano": 0.3}},
    "wind_ensemble": {"req": ["flute"], "opt": {"clarinet": 0.6, "saxophone": 0.3, "trombone": 0.3, "mallet_percussion": 0.3, "piano": 0.2}},
    "percussion_ensemble": {"req": ["mallet_percussion"], "opt": {"drums": 0.6, "cymbals": 0.6, "bass": 0.3}},
    "solo": {"req": [], "opt": {}},
}
PROGRESSIONS = ([0, 5, 3, 4], [0, 3, 4, 0], [0, 4, 5, 3], [1, 4, 0, 0], [0, 5, 1, 4], [5, 3, 0, 4], [0, 0, 3, 4])
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


@dataclass
class InstrumentPart:
    tag: str
    program: int
    role: str
    gain_db: float
    pan: float  # -1 (left) .. 1 (right)
    notes: list[tuple[float, float, int, int]] = field(default_factory=list)  # (start s, dur s, key, velocity)
    font: int = 0  # which of the dataset's SoundFonts plays it
    # variety (``plan_variety``); the defaults leave the stem as rendered
    eq_tilt: float = 0.0  # dB per octave around 1 kHz
    compression: float = 1.0  # ratio above the stem's RMS
    room_send: float = 0.0  # share of the room's reverberation added


@dataclass
class Variety:
    """Per-mix variety of one clip: its room and its background noise."""

    room_seconds: float
    room_seed: int
    noise_snr_db: float | None
    noise_seed: int


@dataclass
class ClipPlan:
    key: str
    artist: int
    ensemble: str
    tempo: float
    tonic: int
    mode: str
    duration: float
    parts: list[InstrumentPart]
    variety: Variety | None = None


def plan_variety(rng: np.random.Generator, plan: ClipPlan) -> None:
    """Vary one arranged clip so that what is learnt is the instrument, not one rendering of it:
    tempo spread (time scale 0.8-1.25), articulation (note lengths 0.5-1.3x), register (an octave up
    or down for pitched parts, where it stays in MIDI range), and per stem an EQ tilt (±3 dB/octave),
    compression (ratio 1-4) and a room send (0-0.6) into the clip's room (RT60 0.2-1.8 s), plus
    background noise 15-45 dB below the mix in 70% of clips."""
    stretch = float(rng.uniform(0.8, 1.25))
    plan.tempo /= stretch
    for part in plan.parts:
        articulation = float(rng.uniform(0.5, 1.3))
        shift = int(rng.choice([-12, 0, 0, 12])) if part.program >= 0 else 0
        keys = [n[2] + shift for n in part.notes]
        if keys and not (21 <= min(keys) and max(keys) <= 108):
            shift = 0
        notes = [(start * stretch, dur * stretch * articulation, key + shift, vel) for start, dur, key, vel in part.notes]
        part.notes = [n for n in notes if n[0] < plan.duration] or notes[:1]
        part.eq_tilt = float(rng.uniform(-3, 3))
        part.compression = float(rng.choice([1.0, rng.uniform(1.5, 4.0)]))
        part.room_send = float(rng.uniform(0, 0.6))
    plan.variety = Variety(float(rng.uniform(0.2, 1.8)), int(rng.integers(2**31)),
                           float(rng.uniform(15, 45)) if rng.random() < 0.7 else None, int(rng.integers(2**31)))


def _scale_notes(tonic: int, mode: str, low: int, high: int) -> list[int]:
    steps = MAJOR if mode == "major" else MINOR
    return [n for n in range(low, high + 1) if (n - tonic) % 12 in steps]


def _chord(tonic: int, mode: str, degree: int) -> list[int]:
    """Pitch classes of the triad on a scale degree."""
    steps = MAJOR if mode == "major" else MINOR
    return [(tonic + steps[(degree + k) % 7]) % 12 for k in (0, 2, 4)]


def _in_range(pitch_classes: list[int], low: int, high: int) -> list[int]:
    return [n for n in range(low, high + 1) if n % 12 in pitch_classes]


def _write_part(rng: np.random.Generator, part: InstrumentPart, voice: Voice, plan: ClipPlan, chords: list[list[int]]) -> None:
    beat = 60.0 / plan.tempo
    bar = 4 * beat
    n_bars = int(np.ceil(plan.duration / bar)) + 1
    vel_base = int(rng.integers(60, 115))
    notes = part.notes

    def add(start: float, dur: float, key: int, vel: int | None = None) -> None:
        if start >= plan.duration:
            return
        v = int(np.clip((vel or vel_base) + rng.integers(-10, 11), 20, 127))
        notes.append((float(start), float(max(dur, 0.03)), int(key), v))

    # Some parts enter late or stop early: durations vary inside the clip.
    enter = float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0, plan.duration * 0.4)]))
    leave = float(rng.choice([plan.duration, plan.duration, rng.uniform(plan.duration * 0.6, plan.duration)]))
    scale = _scale_notes(plan.tonic, plan.mode, voice.low, voice.high)
    mid = (voice.low + voice.high) // 2
    pitch = min(scale, key=lambda n: abs(n - mid)) if scale else mid
    for b in range(n_bars):
        t0 = b * bar
        chord = chords[b % len(chords)]
        tones = _in_range(chord, voice.low, voice.high) or [mid]
        if part.role == "drums":
            pattern = rng.integers(0, 3)
            for i in range(8):
                t = t0 + i * beat / 2
                if i in (0, 4) or (pattern == 1 and i == 5) or (pattern == 2 and i in (3, 6)):
                    add(t, beat / 2, int(rng.choice([35, 36])))
                if i in (2, 6):
                    add(t, beat / 2, int(rng.choice([38, 40, 37])))
                if b % 4 == 3 and i >= 5 and rng.random() < 0.7:
                    add(t, beat / 4, int(rng.choice([41, 43, 45, 47, 48, 50])))
        elif part.role == "cymbals":
            hat = int(rng.choice([42, 42, 46, 51]))
            for i in range(8):
                add(t0 + i * beat / 2, beat / 2, hat, vel_base - (15 if i % 2 else 0))
            if b % 4 == 0 or rng.random() < 0.2:
                add(t0, 2 * bar, int(rng.choice([49, 57, 55])), 110)
        elif part.role == "bass":
            root = min(tones, key=lambda n: abs(n - (voice.low + 7)))
            step = beat if rng.random() < 0.6 else beat / 2
            for i in range(int(bar / step)):
                key = root if i % 4 != 2 else min(tones, key=lambda n: abs(n - root - 7))
                add(t0 + i * step, step * 0.9, key)
        elif part.role == "chords":
            voicing = sorted(tones, key=lambda n: abs(n - mid))[:3 if not voice.short else 4]
            if voice.short:  # ukulele: strummed, damped
                for i in range(8):
                    if rng.random() < 0.8:
                        for k, n in enumerate(sorted(voicing)):
                            add(t0 + i * beat / 2 + 0.012 * k, beat * 0.35, n)
            else:
                hits = [0.0] if rng.random() < 0.5 else [0.0, 2 * beat]
                for h in hits:
                    for n in voicing:
                        add(t0 + h, (bar if len(hits) == 1 else 2 * beat) * 0.95, n)
        elif part.role == "arpeggio":
            step = beat / 2 if rng.random() < 0.6 else beat / 4
            ordered = sorted(tones, key=lambda n: abs(n - mid))[:4]
            ordered.sort()
            for i in range(int(bar / step)):
                add(t0 + i * step, step * 1.5, ordered[i % len(ordered)])
        else:  # melody: a random walk on the scale, varied rhythm
            t = t0
            while t < t0 + bar:
                dur = float(rng.choice([beat / 2, beat, beat, 1.5 * beat, 2 * beat]))
                if rng.random() < 0.15:
                    t += dur  # a rest
                    continue
                if scale:
                    idx = scale.index(pitch) if pitch in scale else 0
                    idx = int(np.clip(idx + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, len(scale) - 1))
                    pitch = scale[idx]
                if voice.tremolo:
                    k = t
                    while k < t + dur:
                        add(k, beat / 4 * 0.9, pitch)
                        k += beat / 4
                else:
                    add(t, dur * 0.95, pitch)
                t += dur
    part.notes = [n for n in notes if enter <= n[0] < leave]
    if not part.notes and notes:  # keep at least the first phrase
        part.notes = notes[: max(1, len(notes) // 4)]


def plan_clip(rng: np.random.Generator, key: str, artist: int, ensemble: str, duration: float,
              tags: list[str] | None = None) -> ClipPlan:
    """Arrange one clip: the instruments of the ensemble, a key, a tempo, chords and each part."""
    spec = ENSEMBLES[ensemble]
    if tags is None:
        if ensemble == "solo":
            tags = [str(rng.choice(OPENMIC_TAGS))]
        else:
            tags = list(spec["req"]) + [t for t, p in spec["opt"].items() if rng.random() < p]
    plan = ClipPlan(key, artist, ensemble, float(rng.uniform(60, 170)), int(rng.integers(0, 12)),
                    str(rng.choice(["major", "minor"])), duration, [])
    degrees = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    chords = [_chord(plan.tonic, plan.mode, d) for d in degrees]
    has_bass = any(VOICES[t].roles == ("bass",) for t in tags)
    quiet = int(rng.integers(len(tags))) if len(tags) > 1 and rng.random() < 0.3 else -1
    for i, tag in enumerate(tags):
        voice = VOICES[tag]
        roles = [r for r in voice.roles if not (r == "bass" and has_bass and voice.roles != ("bass",))] or list(voice.roles)
        role = str(rng.choice(roles))
        program = int(rng.choice(voice.programs)) if voice.programs else -1
        gain = float(rng.uniform(-4, 2)) if i != quiet else float(rng.uniform(-15, -10))
        part = InstrumentPart(tag, program, role, gain, float(rng.uniform(-0.6, 0.6)))
        _write_part(rng, part, voice, plan, chords)
        plan.parts.append(part)
    return plan
