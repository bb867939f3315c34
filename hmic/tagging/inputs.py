"""What to tag: files as given, folders walked for audio files (links followed, sorted), and the entries
that cannot be read (reported like any other failure, never skipped silently)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".opus", ".w64", ".caf"}


@dataclass
class AudioInputs:
    """The files to tag, the name each one's outputs take (its path below the folder it was found in),
    and the entries that could not be read."""

    files: list[Path] = field(default_factory=list)
    names: list[Path] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)  # {"file", "error"}
    not_audio: int = 0  # folder entries skipped for their suffix (see AUDIO_SUFFIXES)
    skipped: list[str] = field(default_factory=list)  # those entries' paths


def expand_inputs(inputs: Iterable[str | Path]) -> AudioInputs:
    """Files stay as given; folders are walked (links followed, in sorted order) for AUDIO_SUFFIXES.
    A dangling link, an entry without read permission or a folder that cannot be listed is reported."""
    found = AudioInputs()
    for arg in map(Path, inputs):
        if not arg.is_dir():
            found.files.append(arg)
            found.names.append(Path(arg.name))
            continue

        def unlistable(e: OSError) -> None:
            found.unreadable.append({"file": str(e.filename), "error": f"{e.filename}: folder cannot be read ({e.strerror})"})

        for folder, dirs, names in os.walk(arg, onerror=unlistable, followlinks=True):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                if path.suffix.lower() not in AUDIO_SUFFIXES:
                    found.not_audio += 1
                    found.skipped.append(str(path))
                elif not path.exists():
                    found.unreadable.append({"file": str(path), "error": f"{path}: dangling symbolic link "
                                                                         f"(to {os.readlink(path)})"})
                elif not os.access(path, os.R_OK):
                    found.unreadable.append({"file": str(path), "error": f"{path}: cannot be read (permission denied)"})
                else:
                    found.files.append(path)
                    found.names.append(path.relative_to(arg))
    return found
