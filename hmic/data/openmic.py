"""The OpenMIC-2018 layout: class map, partitions, labels from the aggregated CSV, audio paths.

The same code reads the real dataset, the stand-in rendered by ``hmic synth`` and a dataset made by
``hmic import``. Labels are built from ``openmic-2018-aggregated-labels.csv`` (the last row of a
duplicated pair wins, as in the official npz); the npz is never read because its ``sample_key`` is a
pickled object array.

Two optional files extend the layout (``hmic import`` writes them; OpenMIC has neither):
``clips.csv`` (sample_key, path, start, end): a clip is a stretch of an audio file (path relative to
the root, seconds; ``end`` blank = the file's end), instead of ``audio/<key[:3]>/<key>.ogg``;
``groups.csv`` (sample_key, group): clips of one group (a file, an artist, a session) are never split
between train and validation (``hmic split``).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmic.errors import HmicError

DEFAULT_DATA_DIR = "data/openmic-2018"
DATA_DIR_ENV = "HMIC_DATA_DIR"
WORK_DIR_ENV = "HMIC_WORK_DIR"

CLASS_MAP = "class-map.json"
LABELS_CSV = "openmic-2018-aggregated-labels.csv"
LABELS_HEADER = ("sample_key", "instrument", "relevance", "num_responses")
METADATA_CSV = "openmic-2018-metadata.csv"
TRAIN_PARTITION = "partitions/split01_train.csv"
TEST_PARTITION = "partitions/split01_test.csv"
CLIPS_CSV = "clips.csv"
GROUPS_CSV = "groups.csv"
AUDIO_EXTENSIONS = (".ogg", ".wav", ".flac", ".mp3")
# The 20 instrument tags of OpenMIC-2018's class map, in index order (what ``hmic synth`` writes too).
OPENMIC_TAGS = (
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
)


def audio_relpath(key: str, suffix: str = AUDIO_EXTENSIONS[0]) -> Path:
    """Where OpenMIC keeps a clip's audio, relative to the dataset root: ``audio/<key[:3]>/<key>.ogg``."""
    return Path("audio") / key[:3] / f"{key}{suffix}"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """--data-dir, else $HMIC_DATA_DIR, else data/openmic-2018."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def resolve_work_dir(data_dir: Path, work_dir: str | os.PathLike | None = None) -> Path:
    """Where derived data (splits, features) of a dataset goes: --work-dir, else $HMIC_WORK_DIR,
    else a sibling folder ``<data-dir>.hmic`` that never mixes with the dataset's own files."""
    if work_dir or os.environ.get(WORK_DIR_ENV):
        return Path(work_dir or os.environ[WORK_DIR_ENV])
    data_dir = Path(data_dir)
    return data_dir.parent / f"{data_dir.name}.hmic"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise HmicError(
            f"{path} is missing ({what}). Is --data-dir the root of an OpenMIC-2018 layout folder? "
            "Get one with 'hmic download openmic' or 'hmic synth --out DIR'."
        )
    return path


def read_class_map(root: Path) -> list[str]:
    """Class names in index order from class-map.json ({"accordion": 0, ...})."""
    path = _need(root / CLASS_MAP, "the class map, a JSON object {tag: index}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HmicError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise HmicError(f"{path}: expected a non-empty JSON object {{tag: index}}")
    indices = sorted(mapping.values()) if all(isinstance(v, int) for v in mapping.values()) else None
    if indices != list(range(len(mapping))):
        raise HmicError(f"{path}: indices must be the integers 0..{len(mapping) - 1}, each once")
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]


def read_keys(path: Path) -> list[str]:
    """One sample key per line, no header (partitions and split files)."""
    _need(path, "one sample key per line")
    keys = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, k in enumerate(keys):
        if "," in k or " " in k or "/" in k:
            raise HmicError(f"{path}, line {i + 1}: {k!r} is not a sample key (expected e.g. 000046_3840)")
    if len(set(keys)) != len(keys):
        raise HmicError(f"{path}: a sample key appears twice")
    return keys


@dataclass
class Labels:
    """Fine-level labels of a set of clips, rows in the order of ``keys``."""

    keys: list[str]
    relevance: np.ndarray  # (N, F) float32, 0.5 where unobserved
    mask: np.ndarray  # (N, F) bool, True = observed

    @property
    def targets(self) -> np.ndarray:
        """(N, F) float32 binary targets: positive iff observed and relevance >= 0.5."""
        return ((self.relevance >= 0.5) & self.mask).astype(np.float32)

    def subset(self, keys: list[str]) -> "Labels":
        index = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise HmicError(f"sample key {missing[0]} has no row in the dataset ({len(missing)} missing in all)")
        rows = np.array([index[k] for k in keys], dtype=np.int64)
        return Labels(list(keys), self.relevance[rows], self.mask[rows])


def read_labels(root: Path, class_names: list[str], keys: list[str]) -> Labels:
    """Build relevance and mask from the aggregated-labels CSV (last row of a duplicate wins)."""
    path = _need(root / LABELS_CSV, "the aggregated labels CSV sample_key,instrument,relevance,num_responses")
    index = {k: i for i, k in enumerate(keys)}
    col = {c: j for j, c in enumerate(class_names)}
    relevance = np.full((len(keys), len(class_names)), 0.5, dtype=np.float32)
    mask = np.zeros((len(keys), len(class_names)), dtype=bool)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"sample_key", "instrument", "relevance"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise HmicError(f"{path}: header must contain {', '.join(sorted(need))}; got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            key, tag = row["sample_key"], row["instrument"]
            if tag not in col:
                raise HmicError(f"{path}, line {line}: instrument {tag!r} is not in {CLASS_MAP}")
            try:
                value = float(row["relevance"])
            except (TypeError, ValueError):
                raise HmicError(f"{path}, line {line}: relevance {row['relevance']!r} is not a number") from None
            if not 0.0 <= value <= 1.0:
                raise HmicError(f"{path}, line {line}: relevance {value} is outside [0, 1]")
            i = index.get(key)
            if i is None:  # a labelled clip outside the partitions: not part of any split
                continue
            relevance[i, col[tag]] = value
            mask[i, col[tag]] = True
    return Labels(list(keys), relevance, mask)


@dataclass(frozen=True)
class AudioSource:
    """Where a clip's audio is: a file, or a stretch of one (seconds; ``end`` None = to the end)."""

    path: Path
    start: float = 0.0
    end: float | None = None

    def __str__(self) -> str:
        if self.start == 0.0 and self.end is None:
            return str(self.path)
        return f"{self.path} [{self.start:g}-{'end' if self.end is None else f'{self.end:g}'} s]"


def read_clips(root: Path) -> dict[str, AudioSource]:
    """``clips.csv`` if the dataset has one, else {}."""
    path = root / CLIPS_CSV
    if not path.exists():
        return {}
    clips = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"sample_key", "path", "start", "end"} <= set(reader.fieldnames):
            raise HmicError(f"{path}: header must be sample_key,path,start,end; got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                start = float(row["start"] or 0)
                end = float(row["end"]) if row["end"] else None
            except ValueError:
                raise HmicError(f"{path}, line {line}: start/end {row['start']!r}/{row['end']!r} are not seconds") from None
            clips[row["sample_key"]] = AudioSource(root / row["path"], start, end)
    return clips


def read_groups(root: Path) -> dict[str, str]:
    """``groups.csv`` if the dataset has one, else {}."""
    path = root / GROUPS_CSV
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"sample_key", "group"} <= set(reader.fieldnames):
            raise HmicError(f"{path}: header must be sample_key,group; got {reader.fieldnames}")
        return {row["sample_key"]: row["group"] for row in reader}


@dataclass
class OpenMIC:
    """An OpenMIC-layout folder: the official partitions, the labels of every partitioned clip."""

    root: Path
    class_names: list[str]
    train_keys: list[str]
    test_keys: list[str]
    labels: Labels = field(repr=False)
    clips: dict[str, AudioSource] = field(default_factory=dict, repr=False)
    groups: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: str | os.PathLike) -> "OpenMIC":
        root = Path(root)
        if not root.is_dir():
            raise HmicError(
                f"dataset folder {root} does not exist. Pass --data-dir (or set ${DATA_DIR_ENV}); "
                "get the data with 'hmic download openmic' or render a stand-in with 'hmic synth --out DIR'"
            )
        class_names = read_class_map(root)
        train = read_keys(root / TRAIN_PARTITION)
        test = read_keys(root / TEST_PARTITION)
        overlap = set(train) & set(test)
        if overlap:
            raise HmicError(f"{root / TEST_PARTITION}: {len(overlap)} keys are also in the train partition, e.g. {min(overlap)}")
        keys = sorted(train + test)
        return cls(root, class_names, train, test, read_labels(root, class_names, keys), read_clips(root),
                   read_groups(root))

    def audio_source(self, key: str) -> AudioSource:
        """The clip's stretch of audio: from ``clips.csv`` where the dataset has one, else its file."""
        return self.clips.get(key) or AudioSource(self.audio_path(key))

    def audio_path(self, key: str) -> Path:
        """``audio_relpath(key)`` under the root (another extension is accepted if the .ogg is absent)."""
        if key in self.clips:
            return self.clips[key].path
        path = self.root / audio_relpath(key)
        folder = path.parent
        if not path.exists():
            for ext in AUDIO_EXTENSIONS[1:]:
                if (folder / f"{key}{ext}").exists():
                    return folder / f"{key}{ext}"
        return path
