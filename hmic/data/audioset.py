"""AudioSet's 527 classes (the rows of PANNs' CNN14 classifier ``fc_audioset``) and the mapping of a
hierarchy's fine tags to them (the ``audioset`` head, ``hmic predict --model audioset``).

The class list ships as ``audioset_class_labels_indices.csv`` (AudioSet labels, CC BY 4.0: see
``AUDIOSET_LABELS.txt`` beside it); hmic's mapping of OpenMIC's 20 tags as ``openmic_audioset.yaml``
(fine tag → list of AudioSet display names, exactly as in the class list; its choices are explained in
docs/audioset-model.md). ``--audioset-map FILE`` replaces the mapping for another vocabulary.
"""

from __future__ import annotations

import csv
import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from hmic.data.hierarchy import Hierarchy
from hmic.errors import HmicError

HERE = Path(__file__).resolve().parent
CLASS_FILE = HERE / "audioset_class_labels_indices.csv"
DEFAULT_MAP = HERE / "openmic_audioset.yaml"
N_CLASSES = 527


@functools.cache
def audioset_classes() -> tuple[str, ...]:
    """The 527 display names in the classifier's row order."""
    with open(CLASS_FILE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = tuple(r["display_name"] for r in rows)
    if len(names) != N_CLASSES or [int(r["index"]) for r in rows] != list(range(N_CLASSES)):
        raise HmicError(f"{CLASS_FILE} is damaged: expected the {N_CLASSES} AudioSet classes in row order")
    return names


def closest_classes(name: str, n: int = 3) -> list[str]:
    """The AudioSet display names closest to ``name`` (case-insensitive), best first."""
    classes = audioset_classes()
    lower = {c.lower(): c for c in classes}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.4)
    if not hits:  # a word of a longer name ('guitar' → 'Electric guitar', ...)
        hits = [c for c in lower if name.lower() in c][:n]
    return [lower[h] for h in hits]


def _closest_text(name: str) -> str:
    close = closest_classes(name)
    return f"closest AudioSet classes: {', '.join(repr(c) for c in close)}" if close else "no AudioSet class is close"


@dataclass(frozen=True)
class AudioSetMapping:
    """Fine tag → AudioSet display names, read from ``source``."""

    tags: dict[str, tuple[str, ...]]
    source: str

    def rows_for(self, hierarchy: Hierarchy) -> tuple[list[int], list[int]]:
        """The classifier rows a hierarchy's fine tags read, and the fine tag each one feeds (indices into
        ``hierarchy.fine_names``), tag by tag in the hierarchy's order. A fine tag the mapping leaves out
        is an error naming it, the mapping file and the closest class names; tags of the mapping that the
        hierarchy does not have are not read."""
        index = {name: i for i, name in enumerate(audioset_classes())}
        rows, fine_of = [], []
        for f, tag in enumerate(hierarchy.fine_names):
            if tag not in self.tags:
                raise HmicError(f"the AudioSet mapping {self.source} has no entry for the fine tag {tag!r} of hierarchy "
                                f"{hierarchy.name!r}; add '{tag}: [AudioSet class, ...]' to it ({_closest_text(tag)}) "
                                "or pass another --audioset-map")
            for name in self.tags[tag]:
                rows.append(index[name])
                fine_of.append(f)
        return rows, fine_of


def load_mapping(path: str | Path | None = None) -> AudioSetMapping:
    """Read and check a mapping file (default: the shipped ``openmic_audioset.yaml``): YAML with
    ``tags: {fine tag: [AudioSet display name, ...]}``; every name must be an AudioSet class exactly."""
    path = Path(path).expanduser() if path else DEFAULT_MAP
    if not path.is_file():
        raise HmicError(f"AudioSet mapping {path} does not exist; pass --audioset-map FILE "
                        "(default: the openmic_audioset.yaml shipped with hmic)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise HmicError(f"AudioSet mapping {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    tags = data.get("tags") if isinstance(data, dict) else None
    if not isinstance(tags, dict) or not tags:
        raise HmicError(f"AudioSet mapping {path}: expected 'tags:' mapping each fine tag to a list of AudioSet class names")
    known = set(audioset_classes())
    out: dict[str, tuple[str, ...]] = {}
    for tag, names in tags.items():
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise HmicError(f"AudioSet mapping {path}: the fine tag {tag!r} needs a non-empty list of AudioSet class names")
        for name in names:
            if name not in known:
                raise HmicError(f"AudioSet mapping {path}: {name!r} (for the fine tag {tag!r}) is not an AudioSet class "
                                f"name; {_closest_text(name)} (names as in the class list, "
                                f"{CLASS_FILE.name})")
        out[str(tag)] = tuple(names)
    return AudioSetMapping(out, str(path))
