"""`hmic synth`: render a realistic OpenMIC-format stand-in dataset from a General MIDI SoundFont.

Each clip is a short piece of music arranged for an ensemble (rock band, jazz combo, string quartet,
...): a key, a tempo, a chord progression, and one part per instrument (bass line, chords, melody,
arpeggio, groove). Every part is rendered to its own stem with tinysoundfont; the stems are mixed at
varied levels. An instrument is labelled present only if its stem is audible in the mix (its energy
at least ``AUDIBLE_FLOOR_DB`` relative to the mix); inaudible stems are left out of the mix entirely.
Labels are then observed OpenMIC-style: a few tags per clip, positives and negatives, relevance in
[0, 0.25] ∪ [0.75, 1], optional label noise.

Nothing downstream knows the data is synthetic: the output is the OpenMIC-2018 layout.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from .errors import HmicError
from .io import atomic_path, write_json, write_text

SAMPLE_RATE = 44_100
AUDIBLE_FLOOR_DB = -20.0  # a stem quieter than this relative to the mix is not labelled present
OPENMIC_TAGS = (
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
)


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
class Part:
    tag: str
    program: int
    role: str
    gain_db: float
    pan: float  # -1 (left) .. 1 (right)
    notes: list[tuple[float, float, int, int]] = field(default_factory=list)  # (start s, dur s, key, velocity)


@dataclass
class ClipPlan:
    key: str
    artist: int
    ensemble: str
    tempo: float
    tonic: int
    mode: str
    duration: float
    parts: list[Part]


# ----------------------------------------------------------------------------------------------
# Arrangement


def _scale_notes(tonic: int, mode: str, low: int, high: int) -> list[int]:
    steps = MAJOR if mode == "major" else MINOR
    return [n for n in range(low, high + 1) if (n - tonic) % 12 in steps]


def _chord(tonic: int, mode: str, degree: int) -> list[int]:
    """Pitch classes of the triad on a scale degree."""
    steps = MAJOR if mode == "major" else MINOR
    return [(tonic + steps[(degree + k) % 7]) % 12 for k in (0, 2, 4)]


def _in_range(pitch_classes: list[int], low: int, high: int) -> list[int]:
    return [n for n in range(low, high + 1) if n % 12 in pitch_classes]


def _write_part(rng: np.random.Generator, part: Part, voice: Voice, plan: ClipPlan, chords: list[list[int]]) -> None:
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
        part = Part(tag, program, role, gain, float(rng.uniform(-0.6, 0.6)))
        _write_part(rng, part, voice, plan, chords)
        plan.parts.append(part)
    return plan


# ----------------------------------------------------------------------------------------------
# Rendering


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


def _init_worker(soundfont: bytes) -> None:
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


def _render_job(job: tuple[ClipPlan, str]) -> tuple[str, dict[str, float]]:
    import soundfile as sf

    plan, out_path = job
    mix, levels = mix_clip(plan, _SOUNDFONT)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        sf.write(tmp, mix, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    return plan.key, levels


# ----------------------------------------------------------------------------------------------
# The dataset


@dataclass
class SynthOptions:
    clips: int = 2000
    seed: int = 0
    duration: float = 10.0
    label_noise: float = 0.0
    soundfont: str = ""
    test_fraction: float = 0.25
    observed_per_clip: float = 3.0

    def key(self) -> dict:
        return asdict(self)


def plan_dataset(opts: SynthOptions) -> list[ClipPlan]:
    """Deterministic plan of every clip: artists, their style, each clip's arrangement."""
    rng = np.random.default_rng([opts.seed, 0])
    n_artists = max(8, opts.clips // 10)
    styles = list(ENSEMBLES)
    artist_style = [str(rng.choice(styles)) for _ in range(n_artists)]
    plans = []
    used = set()
    for i in range(opts.clips):
        artist = int(rng.integers(n_artists))
        ensemble = artist_style[artist] if rng.random() < 0.7 else str(rng.choice(styles))
        while True:
            track = int(rng.integers(1, 160_000))
            key = f"{track:06d}_{int(rng.integers(0, 30)) * 1920}"
            if key not in used:
                used.add(key)
                break
        clip_rng = np.random.default_rng([opts.seed, 1, i])
        plans.append(plan_clip(clip_rng, key, artist, ensemble, opts.duration))
    return plans


def observe_labels(rng: np.random.Generator, present: set[str], label_noise: float, per_clip: float) -> list[tuple[str, float]]:
    """OpenMIC-style partial annotation: a few tags per clip, positives and plausible negatives."""
    absent = [t for t in OPENMIC_TAGS if t not in present]
    k = int(np.clip(rng.poisson(per_clip - 1) + 1, 1, 6))
    n_pos = min(len(present), int(rng.integers(0, k + 1))) if present else 0
    pos = list(rng.choice(sorted(present), size=n_pos, replace=False)) if n_pos else []
    neg = list(rng.choice(absent, size=min(len(absent), k - n_pos), replace=False)) if k > n_pos else []
    rows = []
    for tag, truth in [(t, True) for t in pos] + [(t, False) for t in neg]:
        label = truth if rng.random() >= label_noise else not truth
        confidence = float(rng.uniform(0.5, 1.0))
        rows.append((str(tag), round(0.5 + confidence / 2 if label else 0.5 - confidence / 2, 6)))
    rows.sort()
    return rows


def synthesize(out: Path, opts: SynthOptions, workers: int = 1, progress: bool = True, console=None) -> dict:
    """Render a dataset into ``out`` (OpenMIC-2018 layout); resumes an interrupted run of the same options."""
    from rich.console import Console
    from tqdm import tqdm

    console = console or Console(stderr=True)
    out = Path(out)
    if opts.clips < 1:
        raise HmicError("--clips must be at least 1")
    if not 1.0 <= opts.duration <= 600:
        raise HmicError(f"--duration must be between 1 and 600 seconds, got {opts.duration}")
    if not 0.0 <= opts.label_noise < 0.5:
        raise HmicError(f"--label-noise must be in [0, 0.5), got {opts.label_noise}")
    sf_path = Path(opts.soundfont) if opts.soundfont else default_soundfont()
    soundfont = check_soundfont(sf_path)
    opts_record = {**opts.key(), "soundfont": str(sf_path), "soundfont_bytes": len(soundfont)}
    marker = out / "hmic-synth.json"
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise HmicError(f"{out} exists and is not an hmic synth folder; it is never overwritten. Choose another --out")
        previous = json.loads(marker.read_text())
        if previous.get("options") != opts_record:
            raise HmicError(
                f"{out} holds a dataset rendered with other options ({previous.get('options')}); "
                "it is never overwritten. Choose another --out or delete the folder"
            )
        if previous.get("complete"):
            console.print(f"[green]✓[/] {out} is already complete with these options, nothing to do")
            return previous
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"options": opts_record, "complete": False})

    t0 = time.time()
    plans = plan_dataset(opts)
    jobs = []
    for plan in plans:
        path = out / "audio" / plan.key[:3] / f"{plan.key}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((plan, str(path)))
    levels_path = out / "synth-levels.jsonl"
    done: dict[str, dict[str, float]] = {}
    if levels_path.exists():
        for line in levels_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if Path(jobs[0][1]).parent.parent.joinpath(row["key"][:3], f"{row['key']}.ogg").exists():
                done[row["key"]] = row["levels"]
    todo = [j for j in jobs if j[0].key not in done]
    if done:
        console.print(f"resuming: {len(done)} clips already rendered, {len(todo)} to go")
    bar = tqdm(total=len(jobs), initial=len(done), desc="rendering clips", unit="clip", disable=not progress)
    with open(levels_path, "a") as log:
        def record(key: str, levels: dict) -> None:
            done[key] = levels
            log.write(json.dumps({"key": key, "levels": levels}) + "\n")
            log.flush()
            bar.update(1)

        if workers <= 1:
            _init_worker(soundfont)
            for job in todo:
                record(*_render_job(job))
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(soundfont,)) as pool:
                for key, levels in pool.map(_render_job, todo, chunksize=4):
                    record(key, levels)
    bar.close()
    render_s = time.time() - t0

    labels = build_labels(plans, done, opts)
    write_json(out / "class-map.json", {t: i for i, t in enumerate(OPENMIC_TAGS)})
    meta_rows = labels["metadata"]
    _write_csv(out / "openmic-2018-aggregated-labels.csv", ["sample_key", "instrument", "relevance", "num_responses"], labels["labels"])
    _write_csv(out / "openmic-2018-metadata.csv", list(meta_rows[0]), [list(r.values()) for r in meta_rows])
    _write_csv(out / "synth-ground-truth.csv", ["sample_key", "instrument", "gm_program", "role", "gain_db", "level_db", "present"], labels["stems"])
    train, test = labels["train"], labels["test"]
    write_text(out / "partitions" / "split01_train.csv", "\n".join(train) + "\n")
    write_text(out / "partitions" / "split01_test.csv", "\n".join(test) + "\n")
    summary = {"options": opts_record, "complete": True, "clips": len(plans), "train": len(train), "test": len(test),
               "render_seconds": round(render_s, 2), "audible_floor_db": AUDIBLE_FLOOR_DB}
    write_json(marker, summary)
    return summary


def build_labels(plans: list[ClipPlan], levels: dict[str, dict[str, float]], opts: SynthOptions) -> dict:
    """Partitions (artist-disjoint), observed labels, metadata and stem ground truth from the plans
    and each stem's measured level in its mix."""
    label_rng = np.random.default_rng([opts.seed, 2])
    artists = sorted({p.artist for p in plans})
    order = label_rng.permutation(len(artists))
    n_test_artists = max(1, int(round(len(artists) * opts.test_fraction)))
    test_artists = {artists[i] for i in order[:n_test_artists]}
    label_rows, meta_rows, stem_rows = [], [], []
    for plan in plans:
        clip_levels = levels[plan.key]
        present = {t for t, lv in clip_levels.items() if lv >= AUDIBLE_FLOOR_DB}
        for tag, relevance in observe_labels(label_rng, present, opts.label_noise, opts.observed_per_clip):
            label_rows.append((plan.key, tag, relevance, 3))
        meta_rows.append({
            "sample_key": plan.key, "track_id": int(plan.key.split("_")[0]), "start_time": int(plan.key.split("_")[1]) / 1000,
            "artist_id": plan.artist, "ensemble": plan.ensemble, "tempo_bpm": round(plan.tempo, 2),
            "tonic": plan.tonic, "mode": plan.mode, "instruments": ";".join(sorted(present)),
            "license_title": "synthetic (hmic synth)", "license_url": "",
        })
        for part in plan.parts:
            stem_rows.append((plan.key, part.tag, part.program, part.role, round(part.gain_db, 3),
                              round(clip_levels.get(part.tag, float("-inf")), 3), int(part.tag in present)))
    return {"labels": label_rows, "metadata": meta_rows, "stems": stem_rows,
            "train": sorted(p.key for p in plans if p.artist not in test_artists),
            "test": sorted(p.key for p in plans if p.artist in test_artists)}


def measure_levels(plans: list[ClipPlan], soundfont: bytes, workers: int = 1) -> dict[str, dict[str, float]]:
    """Each stem's level in its mix, without writing audio (used to check label statistics)."""
    if workers <= 1:
        return {p.key: mix_clip(p, soundfont)[1] for p in plans}
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(soundfont,)) as pool:
        return dict(pool.map(_levels_job, plans, chunksize=16))


def _levels_job(plan: ClipPlan) -> tuple[str, dict[str, float]]:
    return plan.key, mix_clip(plan, _SOUNDFONT)[1]


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


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
